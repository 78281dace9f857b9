"""The tenant's do-not-call list: add, remove, bulk import, check.

The scheduler checks it just before each call is created; a record whose
number is on it ends with status ``dnc`` (and says so in its webhook), it is
never silently skipped.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api.context import POOL, bearer_tenant, check_query, int_query, phone_query, read_json_object
from api.errors import ApiError, json_response
from api.validation import FieldError, normalise_phone

__all__ = ["MAX_IMPORT", "routes"]

routes = web.RouteTableDef()

MAX_IMPORT = 10_000


def _phone(raw: Any, field: str) -> str:
    try:
        return normalise_phone(raw, allow_e164=True, field=field)
    except FieldError as exc:
        raise ApiError(422, exc.message, field=exc.field) from None


def _reason(body: dict[str, Any]) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500 or "\x00" in reason:
        raise ApiError(422, "reason must be a string of at most 500 characters", field="reason")
    return reason


@routes.post("/v1/dnc")
async def add(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    body = await read_json_object(request)
    unknown = set(body) - {"phone_number", "reason"}
    if unknown:
        field = sorted(unknown)[0]
        raise ApiError(422, f"{field} is not a known field", field=field)
    if "phone_number" not in body:
        raise ApiError(422, "phone_number is required", field="phone_number")
    phone = _phone(body["phone_number"], "phone_number")
    await request.app[POOL].execute(
        """INSERT INTO dnc (tenant_id, phone_e164, reason) VALUES ($1, $2, $3)
           ON CONFLICT (tenant_id, phone_e164) DO UPDATE SET reason = EXCLUDED.reason""",
        tenant,
        phone,
        _reason(body),
    )
    return json_response({"phone_e164": phone, "on_list": True}, status=201)


@routes.post("/v1/dnc/import")
async def bulk_import(request: web.Request) -> web.Response:
    """Up to 10,000 numbers; each accepted or rejected on its own."""
    tenant = await bearer_tenant(request)
    body = await read_json_object(request)
    numbers = body.get("phone_numbers")
    if not isinstance(numbers, list) or not numbers:
        raise ApiError(422, "phone_numbers must be a non-empty list", field="phone_numbers")
    if len(numbers) > MAX_IMPORT:
        raise ApiError(422, f"at most {MAX_IMPORT} numbers per call", field="phone_numbers")
    reason = _reason(body)
    accepted: list[str] = []
    errors: list[dict[str, Any]] = []
    for index, raw in enumerate(numbers):
        try:
            accepted.append(normalise_phone(raw, allow_e164=True, field="phone_numbers"))
        except FieldError as exc:
            errors.append({"index": index, "field": "phone_numbers", "message": exc.message})
    await request.app[POOL].execute(
        """INSERT INTO dnc (tenant_id, phone_e164, reason)
           SELECT $1, p, $3 FROM unnest($2::text[]) AS p
           ON CONFLICT (tenant_id, phone_e164) DO NOTHING""",
        tenant,
        sorted(set(accepted)),
        reason,
    )
    return json_response(
        {"status": "success", "accepted": len(accepted), "rejected": len(errors), "errors": errors}
    )


@routes.get("/v1/dnc")
async def check_or_list(request: web.Request) -> web.Response:
    """``?phone=`` checks one number; without it, the list, paged by number."""
    tenant = await bearer_tenant(request)
    check_query(request, frozenset({"phone", "limit", "after"}))
    pool = request.app[POOL]
    if "phone" in request.query:
        phone = phone_query(request)
        row = await pool.fetchrow(
            "SELECT reason, created_at FROM dnc WHERE tenant_id = $1 AND phone_e164 = $2",
            tenant,
            phone,
        )
        return json_response(
            {
                "phone_e164": phone,
                "on_list": row is not None,
                "reason": row["reason"] if row else None,
                "added_at": row["created_at"].isoformat() if row else None,
            }
        )
    limit = int_query(request, "limit", 100, 1, 1000)
    after = request.query.get("after", "")
    rows = await pool.fetch(
        """SELECT phone_e164, reason, created_at FROM dnc
           WHERE tenant_id = $1 AND phone_e164 > $2 ORDER BY phone_e164 LIMIT $3""",
        tenant,
        after,
        limit + 1,
    )
    items = [
        {
            "phone_e164": r["phone_e164"],
            "reason": r["reason"],
            "added_at": r["created_at"].isoformat(),
        }
        for r in rows[:limit]
    ]
    return json_response(
        {"items": items, "next_after": items[-1]["phone_e164"] if len(rows) > limit else None}
    )


@routes.delete(r"/v1/dnc/{phone:\+?[0-9]+}")
async def remove(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    phone = _phone(request.match_info["phone"], "phone")
    status = await request.app[POOL].execute(
        "DELETE FROM dnc WHERE tenant_id = $1 AND phone_e164 = $2", tenant, phone
    )
    if status.endswith(" 0"):
        raise ApiError(404, "this number is not on the list", field="phone")
    return web.Response(status=204)

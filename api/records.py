"""Record look-ups: by id, search, edit, delete, and which workflow holds whom."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from api.context import (
    POOL,
    bearer_tenant,
    check_query,
    int_query,
    parse_uuid,
    phone_query,
    read_json_object,
    uuid_query,
)
from api.errors import ApiError, json_response
from api.validation import FieldError, validate_record
from scheduler.steps import complete_list_if_done

__all__ = ["RECORD_STATUSES", "record_json", "routes"]

routes = web.RouteTableDef()

RECORD_STATUSES = ("queued", "in_progress", "waiting", "completed", "cancelled", "dnc", "failed")
RECORD_SELECT = """SELECT r.id, r.workflow_id, w.workflow_key, r.workflow_version, r.list_id,
    r.case_id, r.phone_e164, r.first_name, r.last_name, r.zip_code, r.placeholders, r.meta,
    r.status, r.current_node, r.attempts, r.next_attempt_at, r.outcome, r.created_at,
    r.updated_at, r.completed_at
    FROM records r JOIN workflows w ON w.id = r.workflow_id"""
_SEARCH_PARAMS = frozenset(
    {"phone", "case_id", "first_name", "last_name", "workflow_id", "list_id", "status"}
    | {"limit", "cursor"}
)
_EDITABLE = {
    "record_first_name",
    "record_last_name",
    "record_zip_code",
    "placeholders",
    "meta",
    "case_id",
}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def record_json(row: asyncpg.Record) -> dict[str, Any]:
    phone = row["phone_e164"]
    return {
        "id": str(row["id"]),
        "workflow_id": str(row["workflow_id"]),
        "workflow_key": row["workflow_key"],
        "workflow_version": row["workflow_version"],
        "list_id": str(row["list_id"]) if row["list_id"] else None,
        "case_id": row["case_id"],
        "phone_e164": phone,
        # The reference API's spelling: ten digits for US numbers.
        "record_phone_number": phone[2:] if phone.startswith("+1") else phone,
        "record_first_name": row["first_name"],
        "record_last_name": row["last_name"],
        "record_zip_code": row["zip_code"],
        "placeholders": row["placeholders"],
        "meta": row["meta"],
        "status": row["status"],
        "current_node": row["current_node"],
        "attempts": row["attempts"],
        "next_attempt_at": _iso(row["next_attempt_at"]),
        "outcome": row["outcome"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "completed_at": _iso(row["completed_at"]),
    }


async def _load(conn: asyncpg.Connection | asyncpg.Pool, tenant: Any, ident: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"{RECORD_SELECT} WHERE r.tenant_id = $1 AND r.id = $2",
        tenant,
        parse_uuid(ident, "record_id"),
    )
    if row is None:
        raise ApiError(404, "no such record", field="record_id")
    return row


@routes.get("/v1/records")
async def search_records(request: web.Request) -> web.Response:
    """Search by phone, case_id, first or last name, workflow, list or status; paged by cursor."""
    tenant = await bearer_tenant(request)
    check_query(request, _SEARCH_PARAMS)
    limit = int_query(request, "limit", 50, 1, 500)
    args: list[Any] = [tenant]
    where = ["r.tenant_id = $1"]

    def add(sql: str, value: Any) -> None:
        args.append(value)
        where.append(sql.replace("?", f"${len(args)}"))

    query = request.query
    if "phone" in query:
        add("r.phone_e164 = ?", phone_query(request))
    if "case_id" in query:
        add("r.case_id = ?", query["case_id"])
    if "first_name" in query:
        add("lower(r.first_name) = lower(?)", query["first_name"])
    if "last_name" in query:
        add("lower(r.last_name) = lower(?)", query["last_name"])
    for name in ("workflow_id", "list_id"):
        if (value := uuid_query(request, name)) is not None:
            add(f"r.{name} = ?", value)
    if "status" in query:
        if query["status"] not in RECORD_STATUSES:
            choices = ", ".join(RECORD_STATUSES)
            raise ApiError(422, f"status must be one of {choices}", field="status")
        add("r.status = ?", query["status"])
    if (cursor := uuid_query(request, "cursor")) is not None:
        add("r.id > ?", cursor)
    args.append(limit + 1)
    rows = await request.app[POOL].fetch(
        f"{RECORD_SELECT} WHERE {' AND '.join(where)} ORDER BY r.id LIMIT ${len(args)}", *args
    )
    items = [record_json(r) for r in rows[:limit]]
    return json_response(
        {"items": items, "next_cursor": items[-1]["id"] if len(rows) > limit else None}
    )


@routes.get("/v1/records/locate")
async def locate(request: web.Request) -> web.Response:
    """Which workflows hold a given case_id or callee number."""
    tenant = await bearer_tenant(request)
    check_query(request, frozenset({"case_id", "phone"}))
    if "case_id" in request.query:
        where, value = "r.case_id = $2", request.query["case_id"]
    elif "phone" in request.query:
        where, value = "r.phone_e164 = $2", phone_query(request)
    else:
        raise ApiError(422, "give case_id or phone", field="case_id")
    rows = await request.app[POOL].fetch(
        f"""SELECT w.id, w.workflow_key, w.name, w.status, count(*) AS records,
                   array_agg(r.id ORDER BY r.id) AS record_ids
            FROM records r JOIN workflows w ON w.id = r.workflow_id
            WHERE r.tenant_id = $1 AND {where}
            GROUP BY w.id ORDER BY w.id LIMIT 500""",
        tenant,
        value,
    )
    return json_response(
        {
            "items": [
                {
                    "workflow_id": str(r["id"]),
                    "workflow_key": r["workflow_key"],
                    "workflow_name": r["name"],
                    "workflow_status": r["status"],
                    "records": r["records"],
                    "record_ids": [str(x) for x in r["record_ids"][:100]],
                }
                for r in rows
            ]
        }
    )


@routes.get("/v1/records/{record_id:[0-9a-fA-F-]{32,36}}")
async def get_record(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    row = await _load(request.app[POOL], tenant, request.match_info["record_id"])
    return json_response(record_json(row))


@routes.patch("/v1/records/{record_id:[0-9a-fA-F-]{32,36}}")
async def edit_record(request: web.Request) -> web.Response:
    """Change names, ZIP, placeholders, meta or case_id; the number is the record's identity."""
    tenant = await bearer_tenant(request)
    body = await read_json_object(request)
    for key in body:
        if key not in _EDITABLE:
            raise ApiError(
                422,
                f"{key} cannot be changed (editable: {', '.join(sorted(_EDITABLE))})",
                field=key,
            )
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _load(conn, tenant, request.match_info["record_id"])
        merged = {
            "record_phone_number": row["phone_e164"],
            "record_first_name": body.get("record_first_name", row["first_name"]),
            "record_last_name": body.get("record_last_name", row["last_name"]),
            "record_zip_code": body.get("record_zip_code", row["zip_code"]),
            "placeholders": body.get("placeholders", row["placeholders"]),
            "meta": body.get("meta", row["meta"]),
            "case_id": body.get("case_id", row["case_id"]),
        }
        try:
            valid = validate_record(merged, allow_e164=True, allow_case_id=True)
        except FieldError as exc:
            raise ApiError(422, exc.message, field=exc.field) from None
        await conn.execute(
            """UPDATE records SET first_name = $3, last_name = $4, zip_code = $5,
                   placeholders = $6, meta = $7, case_id = $8, updated_at = now()
               WHERE tenant_id = $1 AND id = $2""",
            tenant,
            row["id"],
            valid.first_name,
            valid.last_name,
            valid.zip_code,
            valid.placeholders,
            valid.meta,
            valid.case_id,
        )
        row = await _load(conn, tenant, str(row["id"]))
    return json_response(record_json(row))


@routes.delete("/v1/records/{record_id:[0-9a-fA-F-]{32,36}}")
async def delete_record(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _load(conn, tenant, request.match_info["record_id"])
        if row["status"] == "in_progress":
            raise ApiError(
                409,
                "the record is being called; complete it (POST /v1/records/complete) "
                "or retry later",
                field="record_id",
            )
        await conn.execute(
            "DELETE FROM records WHERE tenant_id = $1 AND id = $2", tenant, row["id"]
        )
        if row["list_id"] is not None:
            workflow = await conn.fetchrow(
                "SELECT name FROM workflows WHERE id = $1", row["workflow_id"]
            )
            await complete_list_if_done(
                conn, {**row, "tenant_id": tenant}, workflow or {"name": None}
            )
    return web.Response(status=204)

"""Webhook endpoints, their attempts, redelivery and the tenant's notices.

An endpoint receives the tenant's events (all, or those listed in
``events``; all workflows, or the one in ``workflow_id``). Its signing secret
(``whsec_`` and base64, as the Standard Webhooks specification writes it) is
shown once, when the endpoint is created or the secret rotated; after a
rotation the previous secret keeps signing beside the new one for an overlap,
so receivers can switch without losing an event.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import uuid
from typing import Any

import asyncpg
from aiohttp import web

from api.context import (
    POOL,
    bearer_tenant,
    check_query,
    int_query,
    parse_uuid,
    read_json_object,
    uuid_query,
)
from api.errors import ApiError, json_response
from api.notifier import AddressGuard
from api.urlsafety import UnsafeUrl
from api.workflows import load_workflow
from dialer.ids import new_id
from dialer.outbox import EVENT_TYPES

__all__ = [
    "DEFAULT_OVERLAP_S",
    "URL_GUARD",
    "endpoint_json",
    "new_secret",
    "routes",
]

routes = web.RouteTableDef()

URL_GUARD = web.AppKey("url_guard", AddressGuard)
DEFAULT_OVERLAP_S = 24 * 3600
MAX_OVERLAP_S = 7 * 24 * 3600
MAX_ENDPOINTS = 500
_SECRET_BYTES = 32  # the specification asks for 24 to 64 random bytes
_ID_PATH = "{endpoint_id:[0-9a-fA-F-]{32,36}}"

_COLUMNS = """id, url, description, events, workflow_id, enabled, disabled_reason,
    disabled_at, failing_since, last_success_at, last_failure_at, previous_expires_at,
    created_at, updated_at"""


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def endpoint_json(row: asyncpg.Record) -> dict[str, Any]:
    """An endpoint as shown after creation: never its secret."""
    previous = row["previous_expires_at"]
    return {
        "id": str(row["id"]),
        "url": row["url"],
        "description": row["description"],
        "events": list(row["events"]),
        "workflow_id": str(row["workflow_id"]) if row["workflow_id"] else None,
        "enabled": row["enabled"],
        "disabled_reason": row["disabled_reason"],
        "disabled_at": _iso(row["disabled_at"]),
        "failing_since": _iso(row["failing_since"]),
        "last_success_at": _iso(row["last_success_at"]),
        "last_failure_at": _iso(row["last_failure_at"]),
        "previous_secret_expires_at": _iso(previous)
        if previous and previous > dt.datetime.now(dt.UTC)
        else None,
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }


async def _load(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: uuid.UUID, ident: str, *, lock: bool = False
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM webhook_endpoints
            WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
            {"FOR UPDATE" if lock else ""}""",
        tenant,
        parse_uuid(ident, "endpoint_id"),
    )
    if row is None:
        raise ApiError(404, "no such webhook endpoint", field="endpoint_id")
    return row


def _check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ApiError(422, f"{key} is not a known field (known: {known})", field=key)


async def _url(request: web.Request, value: Any) -> str:
    if not isinstance(value, str):
        raise ApiError(422, "url must be a string (an http:// or https:// URL)", field="url")
    try:
        checked = await request.app[URL_GUARD].check_url(value)
    except UnsafeUrl as exc:
        raise ApiError(422, exc.reason, field="url") from None
    return checked.url


def _events(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(422, "events must be an array of event types", field="events")
    for item in value:
        if item not in EVENT_TYPES:
            raise ApiError(
                422, f"{item!r} is not an event type ({', '.join(EVENT_TYPES)})", field="events"
            )
    return sorted(set(value))


def _description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 500 or "\x00" in value:
        raise ApiError(
            422, "description must be a string of at most 500 characters", field="description"
        )
    return value


async def _workflow(conn: asyncpg.Connection, tenant: uuid.UUID, value: Any) -> uuid.UUID | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(422, "workflow_id must be a workflow id or key", field="workflow_id")
    try:
        row = await load_workflow(conn, tenant, value)
    except ApiError:
        raise ApiError(422, "no such workflow", field="workflow_id") from None
    return row["id"]


@routes.post("/v1/webhook-endpoints")
async def create_endpoint(request: web.Request) -> web.Response:
    """Register an endpoint; the answer carries its secret, which is never shown again."""
    tenant = await bearer_tenant(request)
    check_query(request, frozenset())
    body = await read_json_object(request)
    _check_fields(body, {"url", "events", "workflow_id", "description"})
    if "url" not in body:
        raise ApiError(422, "url is required", field="url")
    events = _events(body.get("events"))
    description = _description(body.get("description"))
    url = await _url(request, body["url"])
    secret = new_secret()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        workflow_id = await _workflow(conn, tenant, body.get("workflow_id"))
        count = await conn.fetchval(
            """SELECT count(*) FROM webhook_endpoints
               WHERE tenant_id = $1 AND deleted_at IS NULL""",
            tenant,
        )
        if count >= MAX_ENDPOINTS:
            raise ApiError(409, f"a tenant may have at most {MAX_ENDPOINTS} endpoints", field="url")
        endpoint_id = new_id()
        await conn.execute(
            """INSERT INTO webhook_endpoints
                   (id, tenant_id, workflow_id, url, events, secret, description)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            endpoint_id,
            tenant,
            workflow_id,
            url,
            events,
            secret,
            description,
        )
        row = await _load(conn, tenant, str(endpoint_id))
    return json_response({**endpoint_json(row), "secret": secret}, status=201)


@routes.get("/v1/webhook-endpoints")
async def list_endpoints(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    check_query(request, frozenset({"limit", "cursor"}))
    limit = int_query(request, "limit", 50, 1, 500)
    args: list[Any] = [tenant, limit + 1]
    where = ""
    if (cursor := uuid_query(request, "cursor")) is not None:
        args.append(cursor)
        where = " AND id > $3"
    rows = await request.app[POOL].fetch(
        f"""SELECT {_COLUMNS} FROM webhook_endpoints
            WHERE tenant_id = $1 AND deleted_at IS NULL{where} ORDER BY id LIMIT $2""",
        *args,
    )
    items = [endpoint_json(r) for r in rows[:limit]]
    return json_response(
        {"items": items, "next_cursor": items[-1]["id"] if len(rows) > limit else None}
    )


@routes.get(f"/v1/webhook-endpoints/{_ID_PATH}")
async def get_endpoint(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    check_query(request, frozenset())
    row = await _load(request.app[POOL], tenant, request.match_info["endpoint_id"])
    return json_response(endpoint_json(row))


@routes.patch(f"/v1/webhook-endpoints/{_ID_PATH}")
async def update_endpoint(request: web.Request) -> web.Response:
    """Change the URL, filters or description; ``enabled: true`` revives a disabled endpoint."""
    tenant = await bearer_tenant(request)
    check_query(request, frozenset())
    body = await read_json_object(request)
    _check_fields(body, {"url", "events", "workflow_id", "description", "enabled"})
    url = await _url(request, body["url"]) if "url" in body else None
    events = _events(body["events"]) if "events" in body else None
    description = _description(body["description"]) if "description" in body else None
    enabled = body.get("enabled")
    if "enabled" in body and not isinstance(enabled, bool):
        raise ApiError(422, "enabled must be true or false", field="enabled")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _load(conn, tenant, request.match_info["endpoint_id"], lock=True)
        workflow_id = row["workflow_id"]
        if "workflow_id" in body:
            workflow_id = await _workflow(conn, tenant, body["workflow_id"])
        await conn.execute(
            """UPDATE webhook_endpoints SET
                   url = coalesce($3, url), events = coalesce($4, events),
                   description = coalesce($5, description), workflow_id = $6,
                   enabled = coalesce($7, enabled),
                   disabled_reason = CASE WHEN $7 THEN NULL
                                          WHEN $7 = false THEN 'disabled by the tenant'
                                          ELSE disabled_reason END,
                   disabled_at = CASE WHEN $7 THEN NULL
                                      WHEN $7 = false AND enabled THEN now()
                                      ELSE disabled_at END,
                   failing_since = CASE WHEN $7 THEN NULL ELSE failing_since END,
                   updated_at = now()
               WHERE tenant_id = $1 AND id = $2""",
            tenant,
            row["id"],
            url,
            events,
            description,
            workflow_id,
            enabled,
        )
        row = await _load(conn, tenant, str(row["id"]))
    return json_response(endpoint_json(row))


@routes.delete(f"/v1/webhook-endpoints/{_ID_PATH}")
async def delete_endpoint(request: web.Request) -> web.Response:
    """Delete the endpoint; its pending deliveries are cancelled, its attempts kept."""
    tenant = await bearer_tenant(request)
    check_query(request, frozenset())
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _load(conn, tenant, request.match_info["endpoint_id"], lock=True)
        await conn.execute(
            """UPDATE webhook_endpoints SET deleted_at = now(), enabled = false,
                   secret = '', previous_secret = NULL, updated_at = now()
               WHERE id = $1""",
            row["id"],
        )
        await conn.execute(
            """UPDATE webhook_deliveries SET status = 'cancelled', completed_at = now()
               WHERE endpoint_id = $1 AND status = 'pending'""",
            row["id"],
        )
    return web.Response(status=204)


async def _optional_body(request: web.Request) -> dict[str, Any]:
    if not (await request.read()).strip():
        return {}
    return await read_json_object(request)


@routes.post(f"/v1/webhook-endpoints/{_ID_PATH}/rotate")
async def rotate_secret(request: web.Request) -> web.Response:
    """A new secret, shown once; the old one keeps signing for ``overlap_s`` (default 24 h)."""
    tenant = await bearer_tenant(request)
    check_query(request, frozenset())
    body = await _optional_body(request)
    _check_fields(body, {"overlap_s"})
    overlap = body.get("overlap_s", DEFAULT_OVERLAP_S)
    valid = isinstance(overlap, int) and not isinstance(overlap, bool)
    if not valid or not 0 <= overlap <= MAX_OVERLAP_S:
        raise ApiError(
            422, f"overlap_s must be an integer 0-{MAX_OVERLAP_S} (seconds)", field="overlap_s"
        )
    secret = new_secret()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _load(conn, tenant, request.match_info["endpoint_id"], lock=True)
        await conn.execute(
            """UPDATE webhook_endpoints SET previous_secret = secret, secret = $2,
                   previous_expires_at = now() + make_interval(secs => $3), updated_at = now()
               WHERE id = $1""",
            row["id"],
            secret,
            float(overlap),
        )
        row = await _load(conn, tenant, str(row["id"]))
    return json_response({**endpoint_json(row), "secret": secret})


def _attempt_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "event_id": str(row["event_id"]),
        "event_type": row["event_type"],
        "endpoint_id": str(row["endpoint_id"]),
        "delivery_id": row["delivery_id"],
        "attempt": row["attempt"],
        "url": row["url"],
        "outcome": row["outcome"],
        "status_code": row["status_code"],
        "error": row["error"],
        "duration_ms": row["duration_ms"],
        "response_excerpt": row["response_excerpt"],
        "retry_after_s": row["retry_after_s"],
        "started_at": _iso(row["started_at"]),
        "ended_at": _iso(row["ended_at"]),
        "next_attempt_at": _iso(row["next_attempt_at"]),
        "delivery_status": row["delivery_status"],
    }


_ATTEMPT_SELECT = """SELECT a.id, a.event_id, o.event_type, a.endpoint_id, a.delivery_id,
    a.attempt, a.url, a.outcome, a.status_code, a.error, a.duration_ms, a.response_excerpt,
    a.retry_after_s, a.started_at, a.ended_at, a.next_attempt_at, d.status AS delivery_status
    FROM webhook_attempts a
    JOIN webhook_deliveries d ON d.id = a.delivery_id
    JOIN outbox o ON o.id = d.outbox_id"""


async def _attempts_page(request: web.Request, tenant: uuid.UUID, column: str, value: Any) -> Any:
    check_query(request, frozenset({"limit", "after"}))
    limit = int_query(request, "limit", 50, 1, 500)
    after = int_query(request, "after", 0, 0, 2**62)
    rows = await request.app[POOL].fetch(
        f"""{_ATTEMPT_SELECT} WHERE a.tenant_id = $1 AND {column} = $2 AND a.id > $3
            ORDER BY a.id LIMIT $4""",
        tenant,
        value,
        after,
        limit + 1,
    )
    items = [_attempt_json(r) for r in rows[:limit]]
    return json_response(
        {"items": items, "next_after": items[-1]["id"] if len(rows) > limit else None}
    )


@routes.get(f"/v1/webhook-endpoints/{_ID_PATH}/attempts")
async def endpoint_attempts(request: web.Request) -> web.Response:
    """Every attempt to this endpoint, oldest first, paged by ``after`` (an attempt id)."""
    tenant = await bearer_tenant(request)
    pool = request.app[POOL]
    ident = parse_uuid(request.match_info["endpoint_id"], "endpoint_id")
    exists = await pool.fetchval(
        "SELECT true FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2", tenant, ident
    )
    if not exists:
        raise ApiError(404, "no such webhook endpoint", field="endpoint_id")
    return await _attempts_page(request, tenant, "a.endpoint_id", ident)


async def _event(pool: asyncpg.Pool, tenant: uuid.UUID, ident: str) -> asyncpg.Record:
    row = await pool.fetchrow(
        """SELECT id, event_id, event_type, record_id, workflow_id, payload, created_at,
                  dispatched_at
           FROM outbox WHERE tenant_id = $1 AND event_id = $2""",
        tenant,
        parse_uuid(ident, "event_id"),
    )
    if row is None:
        raise ApiError(404, "no such event", field="event_id")
    return row


def _event_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["event_id"]),
        "type": row["event_type"],
        "record_id": str(row["record_id"]) if row["record_id"] else None,
        "workflow_id": str(row["workflow_id"]) if row["workflow_id"] else None,
        "created_at": _iso(row["created_at"]),
        "dispatched_at": _iso(row["dispatched_at"]),
        "payload": row["payload"],
    }


@routes.get("/v1/webhook-events")
async def list_events(request: web.Request) -> web.Response:
    """The tenant's events, newest first; filter by ``type`` or ``record_id``."""
    tenant = await bearer_tenant(request)
    check_query(request, frozenset({"type", "record_id", "limit", "cursor"}))
    limit = int_query(request, "limit", 50, 1, 500)
    args: list[Any] = [tenant]
    where = ["tenant_id = $1"]
    if "type" in request.query:
        if request.query["type"] not in EVENT_TYPES:
            raise ApiError(422, f"type must be one of {', '.join(EVENT_TYPES)}", field="type")
        args.append(request.query["type"])
        where.append(f"event_type = ${len(args)}")
    if (record_id := uuid_query(request, "record_id")) is not None:
        args.append(record_id)
        where.append(f"record_id = ${len(args)}")
    if (cursor := uuid_query(request, "cursor")) is not None:
        args.append(cursor)
        where.append(f"event_id < ${len(args)}")
    args.append(limit + 1)
    # Event ids are UUIDv7, ordered to the millisecond: descending id is newest
    # first, and a total order, so pages neither overlap nor skip.
    rows = await request.app[POOL].fetch(
        f"""SELECT id, event_id, event_type, record_id, workflow_id, payload, created_at,
                   dispatched_at FROM outbox WHERE {" AND ".join(where)}
            ORDER BY event_id DESC LIMIT ${len(args)}""",
        *args,
    )
    items = [_event_json(r) for r in rows[:limit]]
    return json_response(
        {"items": items, "next_cursor": items[-1]["id"] if len(rows) > limit else None}
    )


@routes.get("/v1/webhook-events/{event_id}")
async def get_event(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    check_query(request, frozenset())
    return json_response(
        _event_json(await _event(request.app[POOL], tenant, request.match_info["event_id"]))
    )


@routes.get("/v1/webhook-events/{event_id}/attempts")
async def event_attempts(request: web.Request) -> web.Response:
    """Every attempt to deliver this event, to any endpoint."""
    tenant = await bearer_tenant(request)
    row = await _event(request.app[POOL], tenant, request.match_info["event_id"])
    return await _attempts_page(request, tenant, "a.event_id", row["event_id"])


@routes.post("/v1/webhook-events/{event_id}/redeliver")
async def redeliver(request: web.Request) -> web.Response:
    """Send the event again (same ``webhook-id``) to one endpoint or to every matching one.

    A redelivery stands alone: it neither waits for nor holds up the record's
    other events.
    """
    tenant = await bearer_tenant(request)
    check_query(request, frozenset())
    body = await _optional_body(request)
    _check_fields(body, {"endpoint_id"})
    pool = request.app[POOL]
    event = await _event(pool, tenant, request.match_info["event_id"])
    endpoint_id = None
    if body.get("endpoint_id") is not None:
        if not isinstance(body["endpoint_id"], str):
            raise ApiError(422, "endpoint_id must be a string", field="endpoint_id")
        try:
            endpoint_id = uuid.UUID(body["endpoint_id"])
        except ValueError:
            raise ApiError(422, "endpoint_id must be a UUID", field="endpoint_id") from None
    async with pool.acquire() as conn, conn.transaction():
        if endpoint_id is not None:
            targets = await conn.fetch(
                """SELECT id FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2
                       AND deleted_at IS NULL""",
                tenant,
                endpoint_id,
            )
            if not targets:
                raise ApiError(422, "no such webhook endpoint", field="endpoint_id")
        else:
            targets = await conn.fetch(
                """SELECT id FROM webhook_endpoints WHERE tenant_id = $1 AND enabled
                       AND deleted_at IS NULL
                       AND (workflow_id IS NULL OR workflow_id = $2)
                       AND (cardinality(events) = 0 OR $3 = ANY (events))
                   ORDER BY id""",
                tenant,
                event["workflow_id"],
                event["event_type"],
            )
        ids = []
        for target in targets:
            ids.append(
                await conn.fetchval(
                    """INSERT INTO webhook_deliveries
                           (tenant_id, endpoint_id, outbox_id, order_key, redelivery)
                       VALUES ($1, $2, $3, $4, true) RETURNING id""",
                    tenant,
                    target["id"],
                    event["id"],
                    new_id(),
                )
            )
        await conn.execute("SELECT pg_notify('dialer_outbox', '')")
    return json_response(
        {
            "event_id": str(event["event_id"]),
            "deliveries": [
                {"id": d, "endpoint_id": str(t["id"])} for d, t in zip(ids, targets, strict=True)
            ],
        },
        status=202,
    )


@routes.get("/v1/notices")
async def list_notices(request: web.Request) -> web.Response:
    """What the platform had to tell the tenant (an endpoint disabled, ...), newest first."""
    tenant = await bearer_tenant(request)
    check_query(request, frozenset({"limit", "cursor"}))
    limit = int_query(request, "limit", 50, 1, 500)
    args: list[Any] = [tenant, limit + 1]
    where = ""
    if (cursor := uuid_query(request, "cursor")) is not None:
        args.append(cursor)
        where = " AND id < $3"
    rows = await request.app[POOL].fetch(
        f"""SELECT id, kind, subject_id, message, detail, created_at FROM tenant_notices
            WHERE tenant_id = $1{where} ORDER BY id DESC LIMIT $2""",
        *args,
    )
    items = [
        {
            "id": str(r["id"]),
            "kind": r["kind"],
            "subject_id": str(r["subject_id"]) if r["subject_id"] else None,
            "message": r["message"],
            "detail": r["detail"],
            "created_at": _iso(r["created_at"]),
        }
        for r in rows[:limit]
    ]
    return json_response(
        {"items": items, "next_cursor": items[-1]["id"] if len(rows) > limit else None}
    )

"""Lists: a batch of records added to a workflow together, named and cancellable."""

from __future__ import annotations

import uuid
from datetime import datetime
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
from api.ingest import idempotent, ingest_batch
from api.workflows import load_workflow
from dialer.ids import new_id
from scheduler.steps import report_records_ended

__all__ = ["routes", "validate_list_settings"]

routes = web.RouteTableDef()

_LIST_SELECT = """SELECT l.id, l.workflow_id, l.name, l.settings, l.status, l.created_at,
    l.updated_at, l.cancelled_at, l.completed_at,
    (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM
        (SELECT status, count(*) AS n FROM records WHERE list_id = l.id GROUP BY status) c)
        AS counts
    FROM lists l"""


def validate_list_settings(settings: Any) -> dict[str, Any]:
    """``priority`` (0-100, higher first) and ``start_at`` (ISO 8601: not called before)."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ApiError(422, "settings must be an object", field="settings")
    clean: dict[str, Any] = {}
    for key, value in settings.items():
        if key == "priority":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
                raise ApiError(422, "must be an integer 0-100", field="settings.priority")
            clean[key] = value
        elif key == "start_at":
            clean[key] = _start_at(value)
        else:
            raise ApiError(
                422,
                f"{key} is not a list setting (known: priority, start_at)",
                field=f"settings.{key}",
            )
    return clean


def _start_at(value: Any) -> str:
    """``start_at`` in the one form PostgreSQL's ``::timestamptz`` always reads.

    Python reads ISO 8601 forms PostgreSQL does not (``2026-01-05T09Z``, week
    dates, a decimal comma), and the scheduler casts the stored text in SQL on
    every tick, so the text stored is Python's own rendering of the time.
    """
    try:
        if not isinstance(value, str):
            raise ValueError
        stamp = datetime.fromisoformat(value)
        offset = stamp.utcoffset()
        if offset is None:
            raise ValueError
    except ValueError:
        raise ApiError(
            422,
            "must be an ISO 8601 time with an offset, e.g. 2026-01-05T09:00:00Z",
            field="settings.start_at",
        ) from None
    # PostgreSQL reads offsets to the second; Python would write a fraction too.
    if offset.microseconds:
        raise ApiError(
            422, "the offset must be whole seconds, e.g. +05:30", field="settings.start_at"
        )
    return stamp.isoformat()


def _name(body: dict[str, Any], *, required: bool) -> str | None:
    name = body.get("name")
    if name is None and not required:
        return None
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or "\x00" in name:
        raise ApiError(
            422, "name must be a non-empty string of at most 200 characters", field="name"
        )
    return name.strip()


def list_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "workflow_id": str(row["workflow_id"]),
        "name": row["name"],
        "settings": row["settings"],
        "status": row["status"],
        "counts": row["counts"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "cancelled_at": row["cancelled_at"].isoformat() if row["cancelled_at"] else None,
        "completed_at": row["completed_at"].isoformat() if row["completed_at"] else None,
    }


async def _load(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: uuid.UUID, ident: str
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"{_LIST_SELECT} WHERE l.tenant_id = $1 AND l.id = $2", tenant, parse_uuid(ident, "list_id")
    )
    if row is None:
        raise ApiError(404, "no such list", field="list_id")
    return row


@routes.post("/v1/workflows/{workflow_id}/lists")
async def create_list(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    body = await read_json_object(request)
    unknown = set(body) - {"name", "settings", "records"}
    if unknown:
        field = sorted(unknown)[0]
        raise ApiError(422, f"{field} is not a known field", field=field)
    name = _name(body, required=True)
    settings = validate_list_settings(body.get("settings"))

    async def work(conn: asyncpg.Connection) -> tuple[int, dict[str, Any]]:
        workflow = await load_workflow(conn, tenant, request.match_info["workflow_id"])
        if workflow["status"] == "stopped":
            raise ApiError(
                409, "the workflow is stopped and takes no new records", field="workflow_id"
            )
        list_id = new_id()
        await conn.execute(
            """INSERT INTO lists (id, tenant_id, workflow_id, name, settings)
               VALUES ($1, $2, $3, $4, $5)""",
            list_id,
            tenant,
            workflow["id"],
            name,
            settings,
        )
        ingest_row = {"id": workflow["id"], "current_version": workflow["current_version"]}
        result = await ingest_batch(
            conn, tenant, ingest_row, body.get("records"), allow_e164=True, list_id=list_id
        )
        return 201, {"list": list_json(await _load(conn, tenant, str(list_id))), **result}

    return await idempotent(request, tenant, work)


@routes.get("/v1/workflows/{workflow_id}/lists")
async def workflow_lists(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    pool = request.app[POOL]
    workflow = await load_workflow(pool, tenant, request.match_info["workflow_id"])
    check_query(request, frozenset({"limit", "cursor"}))
    limit = int_query(request, "limit", 50, 1, 500)
    args: list[Any] = [tenant, workflow["id"], limit + 1]
    where = ""
    if (cursor := uuid_query(request, "cursor")) is not None:
        args.append(cursor)
        where = " AND l.id > $4"
    rows = await pool.fetch(
        f"""{_LIST_SELECT} WHERE l.tenant_id = $1 AND l.workflow_id = $2{where}
            ORDER BY l.id LIMIT $3""",
        *args,
    )
    items = [list_json(r) for r in rows[:limit]]
    return json_response(
        {"items": items, "next_cursor": items[-1]["id"] if len(rows) > limit else None}
    )


@routes.get("/v1/lists/{list_id}")
async def get_list(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    return json_response(
        list_json(await _load(request.app[POOL], tenant, request.match_info["list_id"]))
    )


@routes.patch("/v1/lists/{list_id}")
async def update_list(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    body = await read_json_object(request)
    unknown = set(body) - {"name", "settings"}
    if unknown:
        field = sorted(unknown)[0]
        raise ApiError(422, f"{field} cannot be changed (name, settings)", field=field)
    name = _name(body, required=False)
    settings = validate_list_settings(body["settings"]) if "settings" in body else None
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _load(conn, tenant, request.match_info["list_id"])
        await conn.execute(
            """UPDATE lists SET name = coalesce($3, name), settings = coalesce($4, settings),
                   updated_at = now() WHERE tenant_id = $1 AND id = $2""",
            tenant,
            row["id"],
            name,
            settings,
        )
        row = await _load(conn, tenant, str(row["id"]))
    return json_response(list_json(row))


@routes.post("/v1/lists/{list_id}/cancel")
async def cancel_list(request: web.Request) -> web.Response:
    """Queued records become cancelled; a record being dialled finishes and is reported."""
    tenant = await bearer_tenant(request)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _load(conn, tenant, request.match_info["list_id"])
        if row["status"] == "active":
            await conn.execute(
                """UPDATE lists SET status = 'cancelled', cancelled_at = now(), updated_at = now()
                   WHERE id = $1""",
                row["id"],
            )
            cancelled = await conn.fetch(
                """UPDATE records SET status = 'cancelled', outcome = 'list_cancelled',
                       completed_at = now(), updated_at = now()
                   WHERE list_id = $1 AND status IN ('queued', 'waiting')
                   RETURNING id, tenant_id, workflow_id, case_id, phone_e164, attempts, meta""",
                row["id"],
            )
            workflow = await conn.fetchrow(
                "SELECT workflow_key FROM workflows WHERE id = $1", row["workflow_id"]
            )
            await report_records_ended(
                conn, cancelled, workflow or {}, "cancelled", "list_cancelled"
            )
        elif row["status"] == "completed":
            raise ApiError(409, "the list has already completed", field="list_id")
        row = await _load(conn, tenant, str(row["id"]))
    return json_response(list_json(row))

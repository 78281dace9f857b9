"""The reference API's look-ups: calls, recordings, a workflow's tasks and subtasks.

A *task* is a record in a workflow; a *subtask* is one step it took (a node
run). Every list is paged by cursor (the last id of the page; ids are
time-ordered) and filtered by query parameters; an unknown parameter is a
422, so a misspelt filter never silently matches everything.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
from aiohttp import web

from api.context import (
    POOL,
    SETTINGS,
    bearer_tenant,
    check_query,
    int_query,
    parse_uuid,
    phone_query,
    uuid_query,
)
from api.errors import ApiError, json_response
from api.links import recording_json
from api.records import RECORD_SELECT, RECORD_STATUSES, record_json
from api.workflows import load_workflow

__all__ = ["call_json", "routes"]

routes = web.RouteTableDef()

_CALL_STATES = ("queued", "dialing", "ringing", "answered", "ended")
_NODE_RUN_STATUSES = ("running", "completed", "failed", "cancelled")
_CALL_SELECT = """SELECT c.id, c.record_id, c.workflow_id, w.workflow_key, c.node_id,
    c.node_run_id, c.attempt, c.phone_e164, c.state, c.disposition, c.sip_status, c.sip_reason,
    c.hangup_by, c.amd_verdict, c.bot_result, c.media_stats, c.created_at, c.dialing_at,
    c.ringing_at, c.answered_at, c.ended_at, c.ring_s, c.talk_s, r.case_id, r.meta
    FROM calls c JOIN workflows w ON w.id = c.workflow_id JOIN records r ON r.id = c.record_id"""
_RECORDING_FILTERS = (
    ("workflow_id", "c.workflow_id"),
    ("call_id", "c.id"),
    ("record_id", "c.record_id"),
)
_RECORDING_SELECT = """SELECT g.id, g.tenant_id, g.call_id, g.path, g.content_type, g.bytes,
    g.duration_s, g.sha256, g.created_at, g.expires_at, g.deleted_at, c.phone_e164,
    c.record_id, c.workflow_id
    FROM recordings g JOIN calls c ON c.id = g.call_id"""


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _now() -> float:
    return dt.datetime.now(dt.UTC).timestamp()


def call_json(row: asyncpg.Record, recordings: list[dict[str, Any]]) -> dict[str, Any]:
    phone = row["phone_e164"]
    return {
        "id": str(row["id"]),
        "call_id": str(row["id"]),
        "record_id": str(row["record_id"]),
        "case_id": row["case_id"],
        "workflow_id": str(row["workflow_id"]),
        "workflow_key": row["workflow_key"],
        "node_id": row["node_id"],
        "node_run_id": str(row["node_run_id"]) if row["node_run_id"] else None,
        "attempt": row["attempt"],
        "phone": phone,
        "callee_number": phone[2:] if phone.startswith("+1") else phone,
        "meta": row["meta"],
        "state": row["state"],
        "disposition": row["disposition"],
        "sip_status": row["sip_status"],
        "sip_reason": row["sip_reason"],
        "hangup_by": row["hangup_by"],
        "amd_verdict": row["amd_verdict"],
        "bot_result": row["bot_result"],
        "media_stats": row["media_stats"],
        "created_at": _iso(row["created_at"]),
        "dialing_at": _iso(row["dialing_at"]),
        "ringing_at": _iso(row["ringing_at"]),
        "answered_at": _iso(row["answered_at"]),
        "ended_at": _iso(row["ended_at"]),
        "ring_s": row["ring_s"],
        "talk_s": row["talk_s"],
        "recordings": recordings,
    }


def _choice(request: web.Request, name: str, choices: tuple[str, ...]) -> str | None:
    value = request.query.get(name)
    if value is not None and value not in choices:
        raise ApiError(422, f"{name} must be one of {', '.join(choices)}", field=name)
    return value


class _Where:
    """WHERE clauses with numbered parameters, built one filter at a time."""

    def __init__(self, first: str, value: Any) -> None:
        self.args: list[Any] = [value]
        self.parts = [first.replace("?", "$1")]

    def add(self, sql: str, value: Any) -> None:
        self.args.append(value)
        self.parts.append(sql.replace("?", f"${len(self.args)}"))

    def page(self, column: str, request: web.Request) -> tuple[str, list[Any], int]:
        limit = int_query(request, "limit", 50, 1, 500)
        if (cursor := uuid_query(request, "cursor")) is not None:
            self.add(f"{column} > ?", cursor)
        self.args.append(limit + 1)
        sql = f"WHERE {' AND '.join(self.parts)} ORDER BY {column} LIMIT ${len(self.args)}"
        return sql, self.args, limit


def _paged(items: list[dict[str, Any]], rows: list[asyncpg.Record], limit: int) -> web.Response:
    page = items[:limit]
    return json_response(
        {"items": page, "next_cursor": page[-1]["id"] if len(rows) > limit else None}
    )


async def _recordings_for(
    request: web.Request, tenant: uuid.UUID, call_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    found: dict[uuid.UUID, list[dict[str, Any]]] = {c: [] for c in call_ids}
    if not call_ids:
        return found
    rows = await request.app[POOL].fetch(
        f"""{_RECORDING_SELECT} WHERE g.tenant_id = $1 AND g.call_id = ANY ($2::uuid[])
            ORDER BY g.created_at""",
        tenant,
        call_ids,
    )
    settings, now = request.app[SETTINGS], _now()
    for row in rows:
        found[row["call_id"]].append(recording_json(row, settings, now))
    return found


async def _call(request: web.Request) -> tuple[uuid.UUID, asyncpg.Record]:
    tenant = await bearer_tenant(request)
    check_query(request, frozenset())
    row = await request.app[POOL].fetchrow(
        f"{_CALL_SELECT} WHERE c.tenant_id = $1 AND c.id = $2",
        tenant,
        parse_uuid(request.match_info["call_id"], "call_id"),
    )
    if row is None:
        raise ApiError(404, "no such call", field="call_id")
    return tenant, row


@routes.get("/v1/calls/{call_id}")
async def get_call(request: web.Request) -> web.Response:
    """A call's information with its recordings and their signed links."""
    tenant, row = await _call(request)
    recordings = await _recordings_for(request, tenant, [row["id"]])
    return json_response(call_json(row, recordings[row["id"]]))


@routes.get("/v1/calls/{call_id}/recording")
async def get_call_recording(request: web.Request) -> web.Response:
    """The call's recording (the first, if several) with a signed link; 404 without one."""
    tenant, row = await _call(request)
    found = (await _recordings_for(request, tenant, [row["id"]]))[row["id"]]
    live = [r for r in found if r["deleted_at"] is None]
    if not live:
        raise ApiError(404, "the call has no recording", field="call_id")
    return json_response(live[0])


@routes.get("/v1/workflows/{workflow_id}/calls")
async def workflow_calls(request: web.Request) -> web.Response:
    """The workflow's calls, filtered by callee (``phone``), ``case_id``, task or state."""
    tenant = await bearer_tenant(request)
    check_query(
        request,
        frozenset({"phone", "case_id", "record_id", "state", "disposition", "limit", "cursor"}),
    )
    pool = request.app[POOL]
    workflow = await load_workflow(pool, tenant, request.match_info["workflow_id"])
    where = _Where("c.tenant_id = ?", tenant)
    where.add("c.workflow_id = ?", workflow["id"])
    if "phone" in request.query:
        where.add("c.phone_e164 = ?", phone_query(request))
    if "case_id" in request.query:
        where.add("r.case_id = ?", request.query["case_id"])
    if (record_id := uuid_query(request, "record_id")) is not None:
        where.add("c.record_id = ?", record_id)
    if (state := _choice(request, "state", _CALL_STATES)) is not None:
        where.add("c.state = ?", state)
    if "disposition" in request.query:
        where.add("c.disposition = ?", request.query["disposition"])
    sql, args, limit = where.page("c.id", request)
    rows = await pool.fetch(f"{_CALL_SELECT} {sql}", *args)
    recordings = await _recordings_for(request, tenant, [r["id"] for r in rows[:limit]])
    return _paged([call_json(r, recordings[r["id"]]) for r in rows[:limit]], rows, limit)


@routes.get("/v1/recordings")
async def list_recordings(request: web.Request) -> web.Response:
    """Recordings, e.g. every recording of one number (``phone``), with signed links."""
    tenant = await bearer_tenant(request)
    check_query(
        request,
        frozenset({"phone", "workflow_id", "call_id", "record_id", "include_deleted"})
        | {"limit", "cursor"},
    )
    where = _Where("g.tenant_id = ?", tenant)
    if "phone" in request.query:
        where.add("c.phone_e164 = ?", phone_query(request))
    for name, column in _RECORDING_FILTERS:
        if (value := uuid_query(request, name)) is not None:
            where.add(f"{column} = ?", value)
    include = _choice(request, "include_deleted", ("true", "false"))
    if include != "true":
        where.parts.append("g.deleted_at IS NULL")
    sql, args, limit = where.page("g.id", request)
    rows = await request.app[POOL].fetch(f"{_RECORDING_SELECT} {sql}", *args)
    settings, now = request.app[SETTINGS], _now()
    items = [
        {
            **recording_json(r, settings, now),
            "phone": r["phone_e164"],
            "record_id": str(r["record_id"]),
            "workflow_id": str(r["workflow_id"]),
        }
        for r in rows[:limit]
    ]
    return _paged(items, rows, limit)


@routes.get("/v1/workflows/{workflow_id}/tasks")
async def workflow_tasks(request: web.Request) -> web.Response:
    """The workflow's tasks (its records), filtered by status, phone, case, list or node."""
    tenant = await bearer_tenant(request)
    check_query(
        request,
        frozenset({"status", "phone", "case_id", "list_id", "current_node", "limit", "cursor"}),
    )
    pool = request.app[POOL]
    workflow = await load_workflow(pool, tenant, request.match_info["workflow_id"])
    where = _Where("r.tenant_id = ?", tenant)
    where.add("r.workflow_id = ?", workflow["id"])
    if (status := _choice(request, "status", RECORD_STATUSES)) is not None:
        where.add("r.status = ?", status)
    if "phone" in request.query:
        where.add("r.phone_e164 = ?", phone_query(request))
    if "case_id" in request.query:
        where.add("r.case_id = ?", request.query["case_id"])
    if (list_id := uuid_query(request, "list_id")) is not None:
        where.add("r.list_id = ?", list_id)
    if "current_node" in request.query:
        where.add("r.current_node = ?", request.query["current_node"])
    sql, args, limit = where.page("r.id", request)
    rows = await pool.fetch(f"{RECORD_SELECT} {sql}", *args)
    items = [{**record_json(r), "task_id": str(r["id"])} for r in rows[:limit]]
    return _paged(items, rows, limit)


def _node_run_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "nodetask_id": str(row["id"]),
        "task_id": str(row["record_id"]),
        "record_id": str(row["record_id"]),
        "workflow_id": str(row["workflow_id"]),
        "nodetask_name": row["node_id"],
        "node_id": row["node_id"],
        "node_type": row["node_type"],
        "status": row["status"],
        "outcome": row["outcome"],
        "detail": row["detail"],
        "case_id": row["case_id"],
        "callee_number": row["phone_e164"],
        "started_at": _iso(row["started_at"]),
        "ended_at": _iso(row["ended_at"]),
    }


@routes.get("/v1/workflows/{workflow_id}/subtasks")
async def workflow_subtasks(request: web.Request) -> web.Response:
    """The workflow's subtasks (node runs), filtered by task, node, type, status or case."""
    tenant = await bearer_tenant(request)
    check_query(
        request,
        frozenset({"task_id", "node_id", "node_type", "status", "case_id", "phone"})
        | {"limit", "cursor"},
    )
    pool = request.app[POOL]
    workflow = await load_workflow(pool, tenant, request.match_info["workflow_id"])
    where = _Where("n.tenant_id = ?", tenant)
    where.add("n.workflow_id = ?", workflow["id"])
    if (task_id := uuid_query(request, "task_id")) is not None:
        where.add("n.record_id = ?", task_id)
    for name in ("node_id", "node_type"):
        if name in request.query:
            where.add(f"n.{name} = ?", request.query[name])
    if (status := _choice(request, "status", _NODE_RUN_STATUSES)) is not None:
        where.add("n.status = ?", status)
    if "case_id" in request.query:
        where.add("r.case_id = ?", request.query["case_id"])
    if "phone" in request.query:
        where.add("r.phone_e164 = ?", phone_query(request))
    sql, args, limit = where.page("n.id", request)
    rows = await pool.fetch(
        f"""SELECT n.id, n.record_id, n.workflow_id, n.node_id, n.node_type, n.status,
                   n.outcome, n.detail, n.started_at, n.ended_at, r.case_id, r.phone_e164
            FROM node_runs n JOIN records r ON r.id = n.record_id {sql}""",
        *args,
    )
    return _paged([_node_run_json(r) for r in rows[:limit]], rows, limit)

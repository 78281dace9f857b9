"""Workflows: CRUD, versions, status, templates.

Every change to a definition or its settings makes a new version; records
keep the version they started on. A workflow is addressed by its id or by its
six-character ``workflow_key``; either way only within the caller's tenant.
"""

from __future__ import annotations

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
from dialer.ids import new_id, new_workflow_key
from dialer.outbox import write_event
from scheduler.definition import DefinitionError, validate_definition, validate_settings
from scheduler.steps import complete_list_if_done, report_records_ended
from scheduler.templates import TEMPLATES, get_template

__all__ = ["STATUS_TRANSITIONS", "load_workflow", "routes", "workflow_json"]

routes = web.RouteTableDef()

STATUSES = ("draft", "active", "paused", "stopped")
# Stopped is final: its queued records were cancelled, so reviving it would
# leave them behind silently. Make a new workflow instead.
STATUS_TRANSITIONS: dict[str, frozenset[str]] = {
    "draft": frozenset({"active", "stopped"}),
    "active": frozenset({"paused", "stopped"}),
    "paused": frozenset({"active", "stopped"}),
    "stopped": frozenset(),
}
_WORKFLOW_COLUMNS = """w.id, w.workflow_key, w.name, w.description, w.status, w.current_version,
    w.created_at, w.updated_at, v.definition, v.settings"""


def workflow_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "workflow_key": row["workflow_key"],
        "name": row["name"],
        "description": row["description"],
        "status": row["status"],
        "version": row["current_version"],
        "definition": row["definition"],
        "settings": row["settings"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


async def load_workflow(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: uuid.UUID, ident: str, *, lock: bool = False
) -> asyncpg.Record:
    """The tenant's workflow by id or key, or a 404 (another tenant's looks the same)."""
    suffix = " FOR UPDATE OF w" if lock else ""
    arg: str | uuid.UUID
    if len(ident) == 6 and ident.isalnum():
        where, arg = "w.workflow_key = $2", ident
    else:
        where, arg = "w.id = $2", parse_uuid(ident, "workflow_id")
    row = await conn.fetchrow(
        f"""SELECT {_WORKFLOW_COLUMNS} FROM workflows w
            JOIN workflow_versions v ON v.workflow_id = w.id AND v.version = w.current_version
            WHERE w.tenant_id = $1 AND {where} AND w.deleted_at IS NULL{suffix}""",
        tenant,
        arg,
    )
    if row is None:
        raise ApiError(404, "no such workflow", field="workflow_id")
    return row


def _text_field(body: dict[str, Any], key: str, *, required: bool, max_len: int) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(422, f"{key} is required", field=key)
        return None
    if not isinstance(value, str):
        raise ApiError(422, f"{key} must be a string", field=key)
    value = value.strip()
    if required and not value:
        raise ApiError(422, f"{key} must not be empty", field=key)
    if len(value) > max_len or "\x00" in value:
        raise ApiError(422, f"{key} must be at most {max_len} characters, no NUL", field=key)
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target`` as a JSON merge patch (RFC 7396).

    Objects merge key by key, recursively; a null removes its key; anything
    else replaces what was there.
    """
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


async def _check_trunk(conn: asyncpg.Connection, tenant: uuid.UUID, settings: Any) -> None:
    """A workflow's ``settings.trunk`` names one of the tenant's trunks."""
    name = settings.get("trunk") if isinstance(settings, dict) else None
    if name is None:
        return
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM trunks WHERE tenant_id = $1 AND name = $2)", tenant, name
    )
    if not found:
        raise ApiError(
            422,
            f"settings.trunk: no trunk named {name!r} (see /v1/trunks)",
            field="settings.trunk",
        )


def _validated(definition: Any, settings: Any) -> tuple[Any, Any]:
    try:
        return validate_definition(definition), validate_settings(settings)
    except DefinitionError as exc:
        first = exc.problems[0]
        raise ApiError(
            422,
            str(exc),
            field=first.field,
            problems=[p.as_dict() for p in exc.problems],
        ) from None


@routes.get("/v1/workflow-templates")
async def list_templates(request: web.Request) -> web.Response:
    await bearer_tenant(request)
    return json_response({"items": [{"id": key, **value} for key, value in TEMPLATES.items()]})


@routes.get("/v1/workflow-templates/{template_id}")
async def get_one_template(request: web.Request) -> web.Response:
    await bearer_tenant(request)
    template_id = request.match_info["template_id"]
    template = get_template(template_id)
    if template is None:
        raise ApiError(404, "no such template", field="template_id")
    return json_response({"id": template_id, **template})


@routes.post("/v1/workflows")
async def create_workflow(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    body = await read_json_object(request)
    unknown = set(body) - {"name", "description", "definition", "settings", "status", "template"}
    if unknown:
        field = sorted(unknown)[0]
        raise ApiError(422, f"{field} is not a known field", field=field)
    template = None
    if "template" in body:
        if not isinstance(body["template"], str) or get_template(body["template"]) is None:
            known = ", ".join(TEMPLATES)
            raise ApiError(422, f"template must be one of {known}", field="template")
        template = get_template(body["template"])
    name = _text_field(body, "name", required=template is None, max_len=200)
    description = _text_field(body, "description", required=False, max_len=5000)
    if template is not None:
        name = name or template["name"]
        description = description if description is not None else template["description"]
    definition = body.get("definition", template["definition"] if template else None)
    settings = body.get("settings", template["settings"] if template else {})
    if definition is None:
        raise ApiError(422, "definition is required (or name a template)", field="definition")
    definition, settings = _validated(definition, settings)
    status = body.get("status", "draft")
    if status not in ("draft", "active", "paused"):
        raise ApiError(422, "status must be draft, active or paused", field="status")
    pool = request.app[POOL]
    workflow_id = new_id()
    async with pool.acquire() as conn, conn.transaction():
        await _check_trunk(conn, tenant, settings)
        for _ in range(5):  # a key collision is rare; draw again
            key = new_workflow_key()
            inserted = await conn.fetchval(
                """INSERT INTO workflows (id, tenant_id, workflow_key, name, description, status)
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workflow_key) DO NOTHING
                   RETURNING id""",
                workflow_id,
                tenant,
                key,
                name,
                description or "",
                status,
            )
            if inserted is not None:
                break
        else:  # pragma: no cover - 57^6 keys
            raise ApiError(409, "could not allocate a workflow key; retry")
        await conn.execute(
            """INSERT INTO workflow_versions (workflow_id, version, definition, settings)
               VALUES ($1, 1, $2, $3)""",
            workflow_id,
            definition,
            settings,
        )
        row = await load_workflow(conn, tenant, str(workflow_id))
    return json_response(workflow_json(row), status=201)


@routes.get("/v1/workflows")
async def list_workflows(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    check_query(request, frozenset({"limit", "cursor", "status"}))
    limit = int_query(request, "limit", 50, 1, 500)
    after = uuid_query(request, "cursor")
    args: list[Any] = [tenant, limit + 1]
    where = ""
    if after is not None:
        args.append(after)
        where = " AND w.id > $3"
    if (status := request.query.get("status")) is not None:
        if status not in STATUSES:
            raise ApiError(422, f"status must be one of {', '.join(STATUSES)}", field="status")
        args.append(status)
        where += f" AND w.status = ${len(args)}"
    rows = await request.app[POOL].fetch(
        f"""SELECT {_WORKFLOW_COLUMNS} FROM workflows w
            JOIN workflow_versions v ON v.workflow_id = w.id AND v.version = w.current_version
            WHERE w.tenant_id = $1 AND w.deleted_at IS NULL{where}
            ORDER BY w.id LIMIT $2""",
        *args,
    )
    items = [workflow_json(r) for r in rows[:limit]]
    cursor = items[-1]["id"] if len(rows) > limit else None
    return json_response({"items": items, "next_cursor": cursor})


@routes.get("/v1/workflows/{workflow_id}")
async def get_workflow(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    row = await load_workflow(request.app[POOL], tenant, request.match_info["workflow_id"])
    return json_response(workflow_json(row))


@routes.patch("/v1/workflows/{workflow_id}")
async def update_workflow(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    body = await read_json_object(request)
    unknown = set(body) - {"name", "description", "definition", "settings"}
    if unknown:
        field = sorted(unknown)[0]
        extra = " (change status with POST .../status)" if field == "status" else ""
        raise ApiError(422, f"{field} is not a field you can change here{extra}", field=field)
    name = _text_field(body, "name", required=False, max_len=200)
    if "name" in body and not name:
        raise ApiError(422, "name must not be empty", field="name")
    description = _text_field(body, "description", required=False, max_len=5000)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await load_workflow(conn, tenant, request.match_info["workflow_id"], lock=True)
        if "definition" in body or "settings" in body:
            # Settings are merged into the current ones (RFC 7396: null removes a key).
            definition, settings = _validated(
                body.get("definition", row["definition"]),
                merge_patch(row["settings"], body["settings"])
                if "settings" in body
                else row["settings"],
            )
            if "settings" in body:
                await _check_trunk(conn, tenant, settings)
            version = row["current_version"] + 1
            await conn.execute(
                """INSERT INTO workflow_versions (workflow_id, version, definition, settings)
                   VALUES ($1, $2, $3, $4)""",
                row["id"],
                version,
                definition,
                settings,
            )
        else:
            version = row["current_version"]
        await conn.execute(
            """UPDATE workflows SET name = coalesce($2, name),
                   description = coalesce($3, description), current_version = $4,
                   updated_at = now() WHERE id = $1""",
            row["id"],
            name,
            description,
            version,
        )
        row = await load_workflow(conn, tenant, str(row["id"]))
    return json_response(workflow_json(row))


async def change_status(
    conn: asyncpg.Connection, tenant: uuid.UUID, ident: str, target: str
) -> asyncpg.Record:
    row = await load_workflow(conn, tenant, ident, lock=True)
    current = row["status"]
    if target == current:
        return row
    if target not in STATUS_TRANSITIONS[current]:
        raise ApiError(
            409,
            f"a {current} workflow cannot become {target}",
            field="status",
            code="bad_transition",
        )
    await conn.execute(
        "UPDATE workflows SET status = $2, updated_at = now() WHERE id = $1", row["id"], target
    )
    await write_event(
        conn,
        tenant_id=tenant,
        event_type="workflow.status_changed",
        workflow_id=row["id"],
        payload={
            "workflow_id": str(row["id"]),
            "workflow_key": row["workflow_key"],
            "name": row["name"],
            "status": target,
            "previous_status": current,
        },
    )
    if target == "stopped":
        # Queued records will never be called now; anything dialling finishes.
        cancelled = await conn.fetch(
            """UPDATE records SET status = 'cancelled', outcome = 'workflow_stopped',
                   updated_at = now(), completed_at = now()
               WHERE workflow_id = $1 AND status IN ('queued', 'waiting')
               RETURNING id, list_id, tenant_id, workflow_id, case_id, phone_e164,
                   attempts, meta""",
            row["id"],
        )
        await report_records_ended(conn, cancelled, row, "cancelled", "workflow_stopped")
        # A list left with no open record is complete now; one with a call still in
        # progress completes when that call's record finishes.
        last_of_list = {r["list_id"]: r for r in cancelled if r["list_id"] is not None}
        for list_id in sorted(last_of_list):
            await complete_list_if_done(conn, last_of_list[list_id], row)
    return await load_workflow(conn, tenant, str(row["id"]))


@routes.post("/v1/workflows/{workflow_id}/status")
async def set_status(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    body = await read_json_object(request)
    target = body.get("status")
    if target not in STATUSES:
        raise ApiError(422, f"status must be one of {', '.join(STATUSES)}", field="status")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await change_status(conn, tenant, request.match_info["workflow_id"], target)
    return json_response(workflow_json(row))


@routes.post("/v1/workflows/{workflow_id}/toggle")
async def toggle(request: web.Request) -> web.Response:
    """Active becomes paused; paused or draft becomes active."""
    tenant = await bearer_tenant(request)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        ident = request.match_info["workflow_id"]
        current = (await load_workflow(conn, tenant, ident))["status"]
        if current == "stopped":
            raise ApiError(409, "a stopped workflow cannot be toggled", field="status")
        target = "paused" if current == "active" else "active"
        row = await change_status(conn, tenant, ident, target)
    return json_response(workflow_json(row))


@routes.delete("/v1/workflows/{workflow_id}")
async def delete_workflow(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await load_workflow(conn, tenant, request.match_info["workflow_id"], lock=True)
        if row["status"] != "stopped":
            await change_status(conn, tenant, str(row["id"]), "stopped")
        await conn.execute("UPDATE workflows SET deleted_at = now() WHERE id = $1", row["id"])
    return web.Response(status=204)


@routes.get("/v1/workflows/{workflow_id}/versions")
async def list_versions(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    pool = request.app[POOL]
    row = await load_workflow(pool, tenant, request.match_info["workflow_id"])
    rows = await pool.fetch(
        """SELECT version, definition, settings, created_at FROM workflow_versions
           WHERE workflow_id = $1 ORDER BY version DESC LIMIT 500""",
        row["id"],
    )
    items = [
        {
            "version": r["version"],
            "definition": r["definition"],
            "settings": r["settings"],
            "created_at": r["created_at"].isoformat(),
        }
        for r in rows
    ]
    return json_response({"items": items})

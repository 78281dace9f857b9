"""Trunks through the API: a tenant's SIP carriers, named, with limits and credentials.

A workflow dials through the trunk its settings name (``"trunk": "main"``);
without one it uses the process's default trunk (``DIALER_TRUNK_URI``).
Passwords are write-only: never returned.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg
from aiohttp import web

from api.context import POOL, bearer_tenant, parse_uuid, read_json_object
from api.errors import ApiError, json_response
from dialer.ids import new_id
from dialer.trunk import parse_trunk_uri

__all__ = ["routes", "trunk_json"]

routes = web.RouteTableDef()

_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_FIELDS = (
    "name",
    "uri",
    "outbound_proxy",
    "username",
    "password",
    "cps",
    "max_channels",
    "options_interval_s",
    "register_expires_s",
)
_COLUMNS = """id, name, uri, outbound_proxy, username, password IS NOT NULL AS has_password,
    cps, max_channels, options_interval_s, register_expires_s, created_at, updated_at"""


def trunk_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "uri": row["uri"],
        "outbound_proxy": row["outbound_proxy"],
        "username": row["username"],
        "has_password": row["has_password"],
        "cps": row["cps"],
        "max_channels": row["max_channels"],
        "options_interval_s": row["options_interval_s"],
        "register_expires_s": row["register_expires_s"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def _validated(body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    unknown = set(body) - set(_FIELDS)
    if unknown:
        field = sorted(unknown)[0]
        raise ApiError(422, f"{field} is not a known field", field=field)
    out: dict[str, Any] = {}
    for key in ("name", "uri") if not partial else ():
        if key not in body:
            raise ApiError(422, f"{key} is required", field=key)
    for key, value in body.items():
        if key == "name":
            if not isinstance(value, str) or not _NAME.match(value):
                raise ApiError(422, "must be 1-64 letters, digits, '_' or '-'", field=key)
        elif key in ("uri", "outbound_proxy"):
            if value is None and key == "outbound_proxy":
                pass
            elif not isinstance(value, str) or len(value) > 512:
                raise ApiError(422, "must be a sip: or sips: URI", field=key)
            else:
                try:
                    parse_trunk_uri(value)
                except ValueError as exc:
                    raise ApiError(422, str(exc), field=key) from None
        elif key in ("username", "password"):
            if value is not None and (
                not isinstance(value, str) or not value or len(value) > 256 or "\x00" in value
            ):
                raise ApiError(422, "must be a non-empty string of at most 256", field=key)
        elif key in ("cps", "options_interval_s"):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value <= 10_000
            ):
                raise ApiError(422, "must be a number above 0 (at most 10000)", field=key)
        elif value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000
        ):
            raise ApiError(422, "must be a positive integer", field=key)
        out[key] = value
    return out


async def _load(conn: asyncpg.Connection | asyncpg.Pool, tenant: Any, ident: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM trunks WHERE tenant_id = $1 AND id = $2",
        tenant,
        parse_uuid(ident, "trunk_id"),
    )
    if row is None:
        raise ApiError(404, "no such trunk", field="trunk_id")
    return row


@routes.post("/v1/trunks")
async def create(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    values = _validated(await read_json_object(request), partial=False)
    if values.get("password") and not values.get("username"):
        raise ApiError(422, "a password needs a username", field="username")
    trunk_id = new_id()
    try:
        await request.app[POOL].execute(
            f"""INSERT INTO trunks (id, tenant_id, {", ".join(values)})
                VALUES ($1, $2, {", ".join(f"${i + 3}" for i in range(len(values)))})""",
            trunk_id,
            tenant,
            *values.values(),
        )
    except asyncpg.UniqueViolationError:
        raise ApiError(409, "a trunk with this name exists", field="name") from None
    return json_response(trunk_json(await _load(request.app[POOL], tenant, str(trunk_id))), 201)


@routes.get("/v1/trunks")
async def list_trunks(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    rows = await request.app[POOL].fetch(
        f"SELECT {_COLUMNS} FROM trunks WHERE tenant_id = $1 ORDER BY name LIMIT 500", tenant
    )
    return json_response({"items": [trunk_json(r) for r in rows]})


@routes.get("/v1/trunks/{trunk_id}")
async def get_trunk(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    return json_response(
        trunk_json(await _load(request.app[POOL], tenant, request.match_info["trunk_id"]))
    )


@routes.patch("/v1/trunks/{trunk_id}")
async def update(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    values = _validated(await read_json_object(request), partial=True)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _load(conn, tenant, request.match_info["trunk_id"])
        if values.get("name", row["name"]) != row["name"]:
            await _refuse_if_in_use(conn, tenant, row["name"])
        if values:
            sets = ", ".join(f"{k} = ${i + 3}" for i, k in enumerate(values))
            try:
                await conn.execute(
                    f"""UPDATE trunks SET {sets}, updated_at = now()
                        WHERE tenant_id = $1 AND id = $2""",
                    tenant,
                    row["id"],
                    *values.values(),
                )
            except asyncpg.UniqueViolationError:
                raise ApiError(409, "a trunk with this name exists", field="name") from None
        row = await _load(conn, tenant, str(row["id"]))
    return json_response(trunk_json(row))


async def _refuse_if_in_use(conn: asyncpg.Connection, tenant: uuid.UUID, name: str) -> None:
    """A trunk a workflow still dials through keeps its name: 409 naming the workflow."""
    user = await conn.fetchval(
        """SELECT w.workflow_key FROM workflows w
           JOIN workflow_versions v ON v.workflow_id = w.id AND v.version = w.current_version
           WHERE w.tenant_id = $1 AND w.deleted_at IS NULL AND w.status <> 'stopped'
             AND v.settings->>'trunk' = $2
           ORDER BY w.created_at LIMIT 1""",
        tenant,
        name,
    )
    if user is not None:
        raise ApiError(
            409,
            f"workflow {user} dials through this trunk: point it at another trunk or stop it first",
            field="name",
            code="trunk_in_use",
        )


@routes.delete("/v1/trunks/{trunk_id}")
async def delete(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _load(conn, tenant, request.match_info["trunk_id"])
        await _refuse_if_in_use(conn, tenant, row["name"])
        await conn.execute("DELETE FROM trunks WHERE id = $1", row["id"])
    return web.Response(status=204)

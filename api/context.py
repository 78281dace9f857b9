"""What every handler needs: typed app keys, the JSON body, the caller's tenant."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from aiohttp import web

from api.errors import ApiError
from dialer import jsonutil
from dialer.settings import Settings
from dialer.tenants import resolve_api_key

__all__ = [
    "POOL",
    "SETTINGS",
    "bearer_tenant",
    "body_tenant",
    "check_query",
    "int_query",
    "parse_uuid",
    "read_json_object",
    "uuid_query",
]

POOL = web.AppKey("pool", asyncpg.Pool)
SETTINGS = web.AppKey("settings", Settings)
_BODY = web.RequestKey("json_body", dict)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    if _BODY in request:
        return request[_BODY]
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object", field="body")
    try:
        body = jsonutil.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", field="body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", field="body")
    request[_BODY] = body
    return body


async def bearer_tenant(request: web.Request) -> uuid.UUID:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(
            401, "send your API key as 'Authorization: Bearer KEY'", field="Authorization"
        )
    tenant = await resolve_api_key(request.app[POOL], key.strip())
    if tenant is None:
        raise ApiError(401, "the API key is wrong or revoked", field="Authorization")
    return tenant


async def body_tenant(request: web.Request, body: dict[str, Any]) -> uuid.UUID:
    """The reference API's authentication: ``api_key`` inside the JSON body."""
    key = body.get("api_key")
    if key is None:
        raise ApiError(401, "api_key is required", field="api_key")
    if not isinstance(key, str):
        raise ApiError(422, "api_key must be a string", field="api_key")
    tenant = await resolve_api_key(request.app[POOL], key)
    if tenant is None:
        raise ApiError(401, "the API key is wrong or revoked", field="api_key")
    return tenant


def parse_uuid(value: str, field: str = "id") -> uuid.UUID:
    """A path id; anything that is not a UUID cannot name a row, so 404."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(404, f"no such {field.removesuffix('_id') or 'item'}", field=field) from None


def check_query(request: web.Request, allowed: frozenset[str]) -> None:
    """Refuse unknown query parameters: a misspelt filter must not match everything."""
    for name in request.query:
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ApiError(422, f"unknown query parameter (known: {known})", field=name)


def uuid_query(request: web.Request, name: str) -> uuid.UUID | None:
    """An optional UUID query parameter; a malformed one is the caller's mistake: 422."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be a UUID", field=name) from None


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be an integer", field=name) from None
    if not low <= value <= high:
        raise ApiError(422, f"{name} must be between {low} and {high}", field=name)
    return value

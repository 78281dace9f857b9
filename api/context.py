"""What every handler needs: typed app keys, the JSON body, the caller's tenant.

PostgreSQL cannot store NUL (U+0000) in text or jsonb, and a query that
binds one fails; so every query parameter, path parameter and JSON body is
checked for NUL here, once, before any handler reads it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from api.errors import ApiError
from api.validation import FieldError, normalise_phone
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
    "nul_middleware",
    "parse_uuid",
    "phone_query",
    "read_json_object",
    "uuid_query",
]

POOL = web.AppKey("pool", asyncpg.Pool)
SETTINGS = web.AppKey("settings", Settings)
_BODY = web.RequestKey("json_body", dict)
_NUL = "\x00"
# How a NUL must appear in JSON text: a raw 0x00 byte is not valid JSON.
_NUL_ESCAPE = b"\\u0000"


def _nul_field(body: Any) -> tuple[str, str] | None:
    """The path of the first key or string in ``body`` that holds a NUL, and which it is."""
    # Iterative: a deeply nested body must not exhaust the interpreter's stack.
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _NUL in value:
                return path or "body", "must not contain NUL characters"
        elif isinstance(value, dict):
            children = []
            for key, item in value.items():
                child = f"{path}.{key}" if path else key
                if _NUL in key:
                    shown = child.replace(_NUL, "\\u0000")
                    return shown, "is a key with a NUL character, which cannot be stored"
                children.append((child, item))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def nul_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Refuse a NUL in any query or path parameter before a handler binds it in SQL."""
    for kind, params in (("query", request.query), ("path", request.match_info)):
        for name, value in params.items():
            if _NUL in name or _NUL in value:
                shown = name.replace(_NUL, "\\u0000")
                raise ApiError(
                    422,
                    f"{kind} parameter {shown} must not contain NUL characters",
                    field=shown,
                )
    return await handler(request)


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
    # The escape scan is cheap and almost always negative; only then walk the body.
    if _NUL_ESCAPE in raw and (found := _nul_field(body)) is not None:
        field, why = found
        raise ApiError(422, f"{field} {why}", field=field)
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


def phone_query(request: web.Request, name: str = "phone") -> str:
    """A phone number from the query string, in E.164; a 422 that says why not."""
    raw = request.query[name]
    try:
        return normalise_phone(raw.strip(), allow_e164=True, field=name)
    except FieldError as exc:
        message = exc.message
        if raw[:1] == " " and raw[1:2].isdigit():
            # A '+' sent as is: a query string reads it as a space.
            message += "; a '+' in a query string must be sent as %2B"
        raise ApiError(422, message, field=name) from None


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

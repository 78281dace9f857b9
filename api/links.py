"""Recordings: signed expiring links, authenticated download, retention and deletion.

A link is ``/v1/recordings/{id}/download?expires=UNIX&sig=MAC`` where MAC is
an HMAC-SHA256 over the recording id and the expiry, under a key derived from
the webhook secret (``DIALER_WEBHOOK_SECRET``), so a link names one recording
until one instant and changing either breaks it. Without a webhook secret no
link can be made: payloads then carry ``recording_url: null`` and the tenant
downloads with its API key.

Files live under the recording directory; a row's ``path`` is relative to it
(or absolute inside it). Deleting a recording removes the file and stamps
``deleted_at``; the row stays so that look-ups can say it was deleted.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from api.context import (
    POOL,
    SETTINGS,
    bearer_tenant,
    check_query,
    parse_uuid,
    read_json_object,
)
from api.errors import ApiError, json_response
from dialer.settings import Settings

__all__ = [
    "DEFAULT_LINK_TTL_S",
    "link_key",
    "link_signature",
    "purge_expired_recordings",
    "recording_file",
    "recording_json",
    "recording_link",
    "routes",
    "verify_link",
]

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

DEFAULT_LINK_TTL_S = 7 * 86400
# A link may not be made to live longer than this: a leaked link must die.
MAX_LINK_TTL_S = 30 * 86400
_KEY_LABEL = b"dialer recording links v1"


def link_key(webhook_secret: str) -> bytes | None:
    """A key for links only, derived from the webhook secret; None when there is none.

    A dedicated key means a recording link can never be replayed as some other
    MAC made with the webhook secret, nor the other way round.
    """
    if not webhook_secret:
        return None
    return hmac.new(webhook_secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def link_signature(key: bytes, recording_id: uuid.UUID, expires: int) -> str:
    """URL-safe base64 of HMAC-SHA256(key, "<recording id>.<expires>"), unpadded."""
    mac = hmac.new(key, f"{recording_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify_link(key: bytes, recording_id: uuid.UUID, expires: str, sig: str, now: float) -> bool:
    """True when ``sig`` was made for this recording and ``expires`` has not passed."""
    if not expires.isascii() or not expires.isdigit() or len(expires) > 12:
        return False
    expected = link_signature(key, recording_id, int(expires))
    # Compare before looking at the clock, and in constant time either way.
    valid = hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace"))
    return valid and int(expires) > now


def recording_link(
    public_url: str, key: bytes, recording_id: uuid.UUID, expires: int
) -> dict[str, Any]:
    """The signed download link and its expiry (ISO 8601)."""
    sig = link_signature(key, recording_id, expires)
    return {
        "url": f"{public_url.rstrip('/')}/v1/recordings/{recording_id}/download"
        f"?expires={expires}&sig={sig}",
        "expires_at": dt.datetime.fromtimestamp(expires, dt.UTC).isoformat(),
    }


def recording_file(recording_dir: Path, stored: str) -> Path | None:
    """The file a row names, or None when it would lie outside the recording directory."""
    root = recording_dir.resolve()
    path = Path(stored)
    full = (path if path.is_absolute() else root / path).resolve()
    return full if full.is_relative_to(root) else None


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def recording_json(row: asyncpg.Record, settings: Settings, now: float) -> dict[str, Any]:
    """A recording as the API shows it, with a fresh link when links can be signed."""
    key = link_key(settings.webhook_secret.value)
    link = None
    if key is not None and row["deleted_at"] is None:
        link = recording_link(settings.public_url, key, row["id"], int(now) + DEFAULT_LINK_TTL_S)
    return {
        "id": str(row["id"]),
        "call_id": str(row["call_id"]),
        "content_type": row["content_type"],
        "bytes": row["bytes"],
        "duration_s": row["duration_s"],
        "sha256": row["sha256"],
        "created_at": _iso(row["created_at"]),
        "expires_at": _iso(row["expires_at"]),
        "deleted_at": _iso(row["deleted_at"]),
        "download_url": link["url"] if link else None,
        "download_expires_at": link["expires_at"] if link else None,
    }


_SELECT = """SELECT id, tenant_id, call_id, path, content_type, bytes, duration_s, sha256,
    created_at, expires_at, deleted_at FROM recordings"""


async def _tenant_recording(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: uuid.UUID, ident: str
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"{_SELECT} WHERE tenant_id = $1 AND id = $2", tenant, parse_uuid(ident, "recording_id")
    )
    if row is None:
        raise ApiError(404, "no such recording", field="recording_id")
    return row


def _clock() -> float:
    return dt.datetime.now(dt.UTC).timestamp()


@routes.get("/v1/recordings/{recording_id}")
async def get_recording(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    check_query(request, frozenset())
    row = await _tenant_recording(request.app[POOL], tenant, request.match_info["recording_id"])
    return json_response(recording_json(row, request.app[SETTINGS], _clock()))


@routes.get("/v1/recordings/{recording_id}/download")
async def download(request: web.Request) -> web.StreamResponse:
    """The audio: with a signed link (no API key) or with the tenant's API key.

    aiohttp's FileResponse answers Range requests (206, 416) and conditional
    requests itself.
    """
    check_query(request, frozenset({"expires", "sig"}))
    settings = request.app[SETTINGS]
    pool = request.app[POOL]
    query = request.query
    if "sig" in query or "expires" in query:
        key = link_key(settings.webhook_secret.value)
        try:
            recording_id = uuid.UUID(request.match_info["recording_id"])
        except ValueError:
            raise ApiError(403, "the link is not valid", field="sig", code="forbidden") from None
        if key is None or not verify_link(
            key, recording_id, query.get("expires", ""), query.get("sig", ""), _clock()
        ):
            raise ApiError(
                403,
                "the link is expired, altered or for another recording",
                field="sig",
                code="forbidden",
            )
        row = await pool.fetchrow(f"{_SELECT} WHERE id = $1", recording_id)
        if row is None:
            raise ApiError(404, "no such recording", field="recording_id")
    else:
        tenant = await bearer_tenant(request)
        row = await _tenant_recording(pool, tenant, request.match_info["recording_id"])
    if row["deleted_at"] is not None:
        raise ApiError(410, "the recording was deleted", field="recording_id", code="gone")
    path = recording_file(settings.recording_dir, row["path"])
    if path is None or not path.is_file():
        if path is None:
            log.warning("recording %s names a file outside the recording directory", row["id"])
        raise ApiError(404, "the recording's file is missing", field="recording_id")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": row["content_type"],
            "Content-Disposition": f'inline; filename="{row["id"]}{path.suffix}"',
            "Cache-Control": "private, max-age=300",
        },
    )


def _remove(path: Path | None) -> None:
    if path is None:
        return
    # Already gone is fine: deleting is idempotent.
    path.unlink(missing_ok=True)


@routes.delete("/v1/recordings/{recording_id}")
async def delete_recording(request: web.Request) -> web.Response:
    """Remove the file and mark the row deleted; a second delete answers 204 too."""
    tenant = await bearer_tenant(request)
    check_query(request, frozenset())
    settings = request.app[SETTINGS]
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _tenant_recording(conn, tenant, request.match_info["recording_id"])
        if row["deleted_at"] is None:
            await conn.execute("UPDATE recordings SET deleted_at = now() WHERE id = $1", row["id"])
            _remove(recording_file(settings.recording_dir, row["path"]))
    return web.Response(status=204)


def _expiry(body: dict[str, Any]) -> dt.datetime | None:
    value = body.get("expires_at")
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError
        stamp = dt.datetime.fromisoformat(value)
        if stamp.tzinfo is None:
            raise ValueError
    except ValueError:
        raise ApiError(
            422,
            "expires_at must be an ISO 8601 time with an offset, or null",
            field="expires_at",
        ) from None
    try:
        # The driver sends UTC: a time at the very edge of the calendar
        # (0001-01-01T00:00+01:00) has no UTC form Python can hold.
        return stamp.astimezone(dt.UTC)
    except OverflowError:
        raise ApiError(
            422, "expires_at must be between the years 1 and 9999 in UTC", field="expires_at"
        ) from None


@routes.patch("/v1/recordings/{recording_id}")
async def set_recording_expiry(request: web.Request) -> web.Response:
    """Set (or clear, with null) when this recording is deleted."""
    tenant = await bearer_tenant(request)
    check_query(request, frozenset())
    body = await read_json_object(request)
    for key in body:
        if key != "expires_at":
            raise ApiError(422, f"{key} cannot be changed (expires_at)", field=key)
    if "expires_at" not in body:
        raise ApiError(422, "expires_at is required", field="expires_at")
    expires_at = _expiry(body)
    pool = request.app[POOL]
    row = await _tenant_recording(pool, tenant, request.match_info["recording_id"])
    await pool.execute("UPDATE recordings SET expires_at = $2 WHERE id = $1", row["id"], expires_at)
    row = await _tenant_recording(pool, tenant, str(row["id"]))
    return json_response(recording_json(row, request.app[SETTINGS], _clock()))


@routes.get("/v1/recording-retention")
async def get_retention(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    check_query(request, frozenset())
    days = await request.app[POOL].fetchval(
        "SELECT days FROM recording_retention WHERE tenant_id = $1", tenant
    )
    return json_response({"days": days})


@routes.put("/v1/recording-retention")
async def put_retention(request: web.Request) -> web.Response:
    """Keep recordings ``days`` days (1-3650) after they were made; null keeps them."""
    tenant = await bearer_tenant(request)
    check_query(request, frozenset())
    body = await read_json_object(request)
    for key in body:
        if key != "days":
            raise ApiError(422, f"{key} is not a retention setting (days)", field=key)
    if "days" not in body:
        raise ApiError(422, "days is required (null to keep recordings)", field="days")
    days = body["days"]
    pool = request.app[POOL]
    if days is None:
        await pool.execute("DELETE FROM recording_retention WHERE tenant_id = $1", tenant)
    elif isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        raise ApiError(422, "days must be an integer 1-3650, or null", field="days")
    else:
        await pool.execute(
            """INSERT INTO recording_retention (tenant_id, days) VALUES ($1, $2)
               ON CONFLICT (tenant_id) DO UPDATE SET days = $2, updated_at = now()""",
            tenant,
            days,
        )
    return json_response({"days": days})


async def purge_expired_recordings(
    pool: asyncpg.Pool, recording_dir: Path, *, limit: int = 1000
) -> int:
    """Delete recordings past their own expiry or their tenant's retention; return how many.

    The row is marked first and the file removed after the commit: a crash in
    between leaves a file without a live row (found by a later sweep of the
    directory), never a live row without its file.
    """
    rows = await pool.fetch(
        """UPDATE recordings r SET deleted_at = now()
           WHERE r.id IN (
               SELECT r2.id FROM recordings r2
               LEFT JOIN recording_retention t ON t.tenant_id = r2.tenant_id
               WHERE r2.deleted_at IS NULL
                 AND (r2.expires_at <= now()
                      OR (r2.expires_at IS NULL
                          AND r2.created_at <= now() - make_interval(days => t.days)))
               LIMIT $1 FOR UPDATE OF r2 SKIP LOCKED)
           RETURNING r.id, r.path""",
        limit,
    )
    for row in rows:
        _remove(recording_file(recording_dir, row["path"]))
    return len(rows)

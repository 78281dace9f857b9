"""The operators' live view: ``GET /v1/live`` streams the tenant's events (SSE).

Two sources. The outbox, which every process writes in the same transaction
as the change it reports, so one stream shows the work of all workers and
schedulers, and a reconnecting client resumes where it left off
(``Last-Event-ID``, or ``?after=``): call.completed, record.completed,
list.completed, workflow.status_changed, recording.available. And call
progress (call.dialing, call.ringing, call.answered, call.amd), heard as
PostgreSQL notifications (``dialer.progress``) through one listening
connection per API process: moment-to-moment, without an id, not replayed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
from aiohttp import web

from api import links
from api.context import POOL, SETTINGS, bearer_tenant, check_query
from api.errors import ApiError
from api.notifier import RECORDING_OF_EVENT_SQL, event_body, event_recording
from api.outbox_cursor import OutboxCursor
from dialer import jsonutil
from dialer.pg_listen import ChannelListener
from dialer.progress import CHANNEL, parse_progress

__all__ = ["PROGRESS_HUB", "STOPPING", "ProgressHub", "routes"]

# Progress a slow viewer has not read yet is dropped past this, not buffered forever.
VIEWER_BACKLOG = 1000


class ProgressHub:
    """One LISTEN connection per process, fanned out to each viewer's queue by tenant."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._viewers: dict[str, set[asyncio.Queue[tuple[str, dict[str, Any]]]]] = {}
        self._listener = ChannelListener(pool, CHANNEL, self._heard)
        self._lock = asyncio.Lock()

    async def _ensure_listening(self) -> None:
        async with self._lock:
            if not self._listener.listening:
                await self._listener.start()

    def _heard(self, payload: str) -> None:
        message = parse_progress(payload)
        if message is None:
            return
        tenant, kind, data = message
        for queue in self._viewers.get(tenant, ()):
            if queue.qsize() < VIEWER_BACKLOG:
                queue.put_nowait((kind, data))

    async def subscribe(self, tenant: uuid.UUID) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
        await self._ensure_listening()
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._viewers.setdefault(str(tenant), set()).add(queue)
        return queue

    def unsubscribe(self, tenant: uuid.UUID, queue: asyncio.Queue[Any]) -> None:
        viewers = self._viewers.get(str(tenant))
        if viewers is not None:
            viewers.discard(queue)
            if not viewers:
                del self._viewers[str(tenant)]

    async def close(self) -> None:
        await self._listener.close()


PROGRESS_HUB = web.AppKey("progress_hub", ProgressHub)
STOPPING = web.AppKey("live_stopping", asyncio.Event)

routes = web.RouteTableDef()

POLL_S = 0.5
# Outbox ids are PostgreSQL bigints.
MAX_EVENT_NUMBER = 2**63 - 1
HEARTBEAT_S = 15.0
BATCH = 200
# A recording link in the stream lives as long as a webhook's (7 days).
LINK_TTL_S = 7 * 86400
# Every tenant's ids (another tenant's event is not a hole), this tenant's
# events with what their webhook bodies need, and the snapshot they were read in.
_EVENTS_SQL = f"""
SELECT o.id, o.event_type, o.payload, o.created_at, rec.id AS recording_id,
       pg_snapshot_xmin(s.snap)::text AS xmin,
       pg_snapshot_xmax(s.snap)::text AS xmax
FROM (SELECT pg_current_snapshot() AS snap) AS s
LEFT JOIN LATERAL (
    SELECT id, tenant_id, created_at,
           CASE WHEN tenant_id = $1 THEN event_type END AS event_type,
           CASE WHEN tenant_id = $1 THEN payload END AS payload
    FROM outbox WHERE id > $2 ORDER BY id LIMIT $3) AS o ON true
LEFT JOIN LATERAL ({RECORDING_OF_EVENT_SQL}) rec ON true
"""


def _cursor(request: web.Request) -> int | None:
    header = request.headers.get("Last-Event-ID")
    name, raw = ("Last-Event-ID", header) if header else ("after", request.query.get("after"))
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be an event number", field=name) from None
    if not 0 <= value <= MAX_EVENT_NUMBER:
        raise ApiError(
            422, f"{name} must be an event number from 0 to {MAX_EVENT_NUMBER}", field=name
        )
    return value


@routes.get("/v1/live")
async def live(request: web.Request) -> web.StreamResponse:
    tenant = await bearer_tenant(request)
    check_query(request, frozenset({"after"}))
    pool = request.app[POOL]
    settings = request.app[SETTINGS]
    link_key = links.link_key(settings.webhook_secret.value)
    last = _cursor(request)
    if last is None:  # new viewers start now, not at the beginning of history
        last = await pool.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    await response.write(b": live\n\n")
    hub = request.app.get(PROGRESS_HUB)
    progress = await hub.subscribe(tenant) if hub is not None else None
    quiet = 0.0
    cursor = OutboxCursor(last)
    stopping = request.app.get(STOPPING) or asyncio.Event()
    try:
        # The server shutting down ends the stream within a poll: the viewer
        # reconnects with Last-Event-ID and misses nothing.
        while not stopping.is_set():
            rows = await pool.fetch(_EVENTS_SQL, tenant, cursor.last, BATCH)
            found = [row for row in rows if row["id"] is not None]
            before = cursor.last
            now = asyncio.get_running_loop().time()
            cursor.advance(
                [row["id"] for row in found], int(rows[0]["xmin"]), int(rows[0]["xmax"]), now
            )
            wrote = False
            for row in found:
                if row["id"] > cursor.last:
                    break
                if row["event_type"] is None:
                    continue  # another tenant's
                # The webhook's own body: its timestamp, and a fresh recording link.
                recording = event_recording(
                    settings.public_url,
                    link_key,
                    row["recording_id"],
                    int(time.time()) + LINK_TTL_S,
                )
                event_json = event_body(row["payload"], row["created_at"], recording)
                await response.write(
                    f"id: {row['id']}\nevent: {row['event_type']}\ndata: ".encode()
                    + event_json
                    + b"\n\n"
                )
                wrote = True
            if wrote:
                quiet = 0.0
            else:
                quiet += POLL_S
                if quiet >= HEARTBEAT_S:
                    await response.write(b": heartbeat\n\n")
                    quiet = 0.0
            if len(found) == BATCH and cursor.last > before:
                continue
            if progress is None:
                await asyncio.sleep(POLL_S)
                continue
            # Wait for progress until the next outbox poll, writing it as it comes.
            deadline = asyncio.get_running_loop().time() + POLL_S
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        kind, data = await progress.get()
                except TimeoutError:
                    break
                body = jsonutil.dumps({"type": kind, "data": data})
                await response.write(f"event: {kind}\ndata: {body}\n\n".encode())
                quiet = 0.0
    except ConnectionResetError:  # the viewer went away
        pass
    finally:
        if hub is not None and progress is not None:
            hub.unsubscribe(tenant, progress)
    return response

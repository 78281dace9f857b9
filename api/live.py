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
import uuid
from typing import Any

import asyncpg
from aiohttp import web

from api.context import POOL, bearer_tenant, check_query
from api.errors import ApiError
from dialer import jsonutil
from dialer.pg_listen import ChannelListener
from dialer.progress import CHANNEL, parse_progress

__all__ = ["PROGRESS_HUB", "ProgressHub", "routes"]

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

routes = web.RouteTableDef()

POLL_S = 0.5
HEARTBEAT_S = 15.0
BATCH = 200


def _cursor(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("after")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            422, "after (or Last-Event-ID) must be an event number", field="after"
        ) from None
    if value < 0:
        raise ApiError(422, "after must not be negative", field="after")
    return value


@routes.get("/v1/live")
async def live(request: web.Request) -> web.StreamResponse:
    tenant = await bearer_tenant(request)
    check_query(request, frozenset({"after"}))
    pool = request.app[POOL]
    last = _cursor(request)
    if last is None:  # new viewers start now, not at the beginning of history
        last = await pool.fetchval(
            "SELECT coalesce(max(id), 0) FROM outbox WHERE tenant_id = $1", tenant
        )
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    await response.write(b": live\n\n")
    hub = request.app.get(PROGRESS_HUB)
    progress = await hub.subscribe(tenant) if hub is not None else None
    quiet = 0.0
    try:
        while True:
            rows = await pool.fetch(
                """SELECT id, event_type, payload FROM outbox
                   WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3""",
                tenant,
                last,
                BATCH,
            )
            for row in rows:
                data = jsonutil.dumps(row["payload"])
                await response.write(
                    f"id: {row['id']}\nevent: {row['event_type']}\ndata: {data}\n\n".encode()
                )
                last = row["id"]
            if rows:
                quiet = 0.0
                if len(rows) == BATCH:
                    continue
            else:
                quiet += POLL_S
                if quiet >= HEARTBEAT_S:
                    await response.write(b": heartbeat\n\n")
                    quiet = 0.0
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

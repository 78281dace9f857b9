"""The operators' live view: ``GET /v1/live`` streams the tenant's events (SSE).

Fed from the outbox, which every process writes in the same transaction as
the change it reports, so one stream shows the work of all workers and
schedulers, and a reconnecting client resumes where it left off
(``Last-Event-ID``, or ``?after=``). Events: call.completed,
record.completed, list.completed, workflow.status_changed,
recording.available.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from api.context import POOL, bearer_tenant, check_query
from api.errors import ApiError
from dialer import jsonutil

__all__ = ["routes"]

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
            await asyncio.sleep(POLL_S)
    except ConnectionResetError:  # the viewer went away
        pass
    return response

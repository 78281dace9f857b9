"""The aiohttp application: routes, middleware, and its lifetime."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web

from api import (
    dnc,
    ingest,
    links,
    lists,
    live,
    lookups,
    metrics,
    records,
    trunks,
    webhooks,
    workflows,
)
from api.context import POOL, SETTINGS, nul_middleware
from api.errors import error_middleware, json_response
from api.notifier import AddressGuard
from api.openapi import build_openapi
from api.urlsafety import AllowList
from dialer.settings import Settings

__all__ = ["create_app"]

_OPENAPI = web.AppKey("openapi", dict)


async def _health(request: web.Request) -> web.Response:
    await request.app[POOL].fetchval("SELECT 1")
    return json_response({"status": "ok"})


async def _openapi(request: web.Request) -> web.Response:
    return json_response(request.app[_OPENAPI])


def create_app(settings: Settings, pool: asyncpg.Pool) -> web.Application:
    """The API over an open pool; the caller owns the pool and closes it."""
    app = web.Application(
        # error_middleware is outermost: it turns the NUL guard's refusals into JSON too.
        middlewares=[error_middleware, nul_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[POOL] = pool
    app[_OPENAPI] = build_openapi(settings.public_url)
    # Webhook URLs are checked at registration against the same rules as at delivery.
    app[webhooks.URL_GUARD] = AddressGuard(AllowList.parse(settings.webhook_allow_hosts))
    app.router.add_get("/healthz", _health)
    app.router.add_get("/openapi.json", _openapi)
    for module in (
        workflows,
        lists,
        records,
        ingest,
        webhooks,
        links,
        lookups,
        dnc,
        trunks,
        metrics,
        live,
    ):
        app.router.add_routes(module.routes)
    app[live.PROGRESS_HUB] = hub = live.ProgressHub(pool)

    async def _close_hub(_app: web.Application) -> None:
        await hub.close()

    app.on_cleanup.append(_close_hub)
    # Open live streams end as the server shuts down, rather than hold up its
    # stop (and the workers' drain after it) until the handlers' timeout.
    app[live.STOPPING] = stopping = asyncio.Event()

    async def _end_streams(_app: web.Application) -> None:
        stopping.set()

    app.on_shutdown.append(_end_streams)
    return app

"""The demo's local receivers: a webhook endpoint that verifies every signature, and an SMS gateway.

Both stand in for the customer's systems on loopback. The webhook sink
checks each delivery's Standard Webhooks signature with the endpoint's
secret (a bad one is answered 401 and counted) and keeps one entry per
``webhook-id``, since a retried delivery carries the same id. The SMS sink
accepts any JSON body and keeps it: what a gateway would send on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ["Sinks", "start_sinks"]


@dataclass
class Sinks:
    """What the receivers got; ``url`` is where they listen."""

    url: str = ""
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # by webhook-id
    event_types: Counter[str] = field(default_factory=Counter)
    bad_signatures: int = 0
    sms: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    verifier: Webhook | None = None

    @property
    def hooks_url(self) -> str:
        return f"{self.url}/hooks"

    @property
    def sms_url(self) -> str:
        return f"{self.url}/sms"

    def set_secret(self, secret: str) -> None:
        self.verifier = Webhook(secret)

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.verifier is None:
            return web.Response(status=503, text="no secret yet")
        try:
            event = self.verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        webhook_id = request.headers.get("webhook-id", "")
        if webhook_id not in self.events:
            self.events[webhook_id] = event
            self.event_types[str(event.get("type", "?"))] += 1
        return web.Response(status=204)

    async def _sms(self, request: web.Request) -> web.Response:
        try:
            message = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        self.sms.append(message if isinstance(message, dict) else {"body": message})
        return web.json_response({"status": "queued", "id": len(self.sms)}, status=201)

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def start_sinks(host: str = "127.0.0.1") -> Sinks:
    """Serve both receivers on one free loopback port."""
    sinks = Sinks()
    app = web.Application()
    app.router.add_post("/hooks", sinks._hook)
    app.router.add_post("/sms", sinks._sms)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    sinks.runner = runner
    sinks.url = f"http://{host}:{port}"
    return sinks

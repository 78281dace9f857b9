"""`dialer up` with no trunk configured dials its built-in sandbox carrier.

The whole path in one command: records in over HTTP, SIP calls out to the
sandbox, and signed webhooks back to a receiver that verifies every one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.integration.peers import free_port

pytestmark = pytest.mark.integration

# Last digit picks the sandbox's behaviour: 0-4 person, 5-6 voicemail, 7 busy, 8 no answer,
# 9 unreachable.
NUMBERS = {
    "+442071838750": "answered",
    "+442071838755": "answered",
    "+442071838757": "busy",
    "+442071838758": "no_answer",
    "+442071838759": "not_found",
}


async def test_up_places_calls_through_the_sandbox(database_url: str, tmp_path: Path) -> None:
    api_port = free_port(socket.SOCK_STREAM, both=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env |= {
        "DIALER_DATABASE_URL": database_url,
        "DIALER_API_LISTEN": f"127.0.0.1:{api_port}",
        "DIALER_SIP_LISTEN": f"127.0.0.1:{free_port()}",
        "DIALER_DATA_DIR": str(tmp_path),
        "DIALER_WEBHOOK_ALLOW_HOSTS": "127.0.0.0/8",
        "DIALER_WEBHOOK_SECRET": "link-signing-secret",
    }
    received: list[dict] = []
    secret: dict[str, str] = {}

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        # Raises on a bad signature: the receiver then answers 500 and the test fails.
        received.append(Webhook(secret["value"]).verify(body, dict(request.headers)))
        return web.Response(status=204)

    hook_app = web.Application()
    hook_app.router.add_post("/hooks", receive)
    hook_runner = web.AppRunner(hook_app)
    await hook_runner.setup()
    hook_port = free_port(socket.SOCK_STREAM, both=False)
    await web.TCPSite(hook_runner, "127.0.0.1", hook_port).start()
    created = subprocess.run(
        [sys.executable, "-m", "dialer.cli", "apikey", "create", "--tenant", f"up-{api_port}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = created.stdout.strip()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dialer.cli", "up"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{api_port}"
    auth = {"Authorization": f"Bearer {key}"}
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with http.get(f"{base}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            async with http.post(
                f"{base}/v1/webhook-endpoints",
                json={"url": f"http://127.0.0.1:{hook_port}/hooks"},
                headers=auth,
            ) as resp:
                assert resp.status == 201, await resp.text()
                secret["value"] = (await resp.json())["secret"]
            definition = {
                "start": "call",
                "nodes": [
                    {
                        "id": "call",
                        "type": "call",
                        "ring_timeout_s": 6,
                        "handler": {"type": "prompt", "text": "Hello {{record.first_name}}"},
                    },
                    {"id": "done", "type": "end"},
                ],
                "edges": [{"from": "call", "on": "default", "to": "done"}],
            }
            async with http.post(
                f"{base}/v1/workflows",
                json={
                    "name": "up",
                    "definition": definition,
                    "status": "active",
                    "settings": {"retry": {}, "recording": True},
                },
                headers=auth,
            ) as resp:
                assert resp.status == 201, await resp.text()
                workflow = await resp.json()
            async with http.post(
                f"{base}/v1/records/bulk",
                json={
                    "workflow_key": workflow["workflow_key"],
                    "records": [
                        {"record_phone_number": n, "record_first_name": "Ada"} for n in NUMBERS
                    ],
                },
                headers=auth,
            ) as resp:
                assert (await resp.json())["accepted"] == len(NUMBERS)
        pool = await asyncpg.connect(database_url)
        try:
            deadline = time.monotonic() + 60
            while True:
                done = await pool.fetchval(
                    """SELECT count(*) FROM records
                       WHERE workflow_id = $1::uuid AND status = 'completed'""",
                    workflow["id"],
                )
                if done == len(NUMBERS):
                    break
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, f"{done} of {len(NUMBERS)} completed"
                await asyncio.sleep(0.3)
            rows = await pool.fetch(
                "SELECT phone_e164, disposition, talk_s FROM calls WHERE workflow_id = $1::uuid",
                workflow["id"],
            )
            recordings = await pool.fetchval(
                """SELECT count(*) FROM recordings r JOIN calls c ON c.id = r.call_id
                   WHERE c.workflow_id = $1::uuid AND r.duration_s > 0.5""",
                workflow["id"],
            )
            deadline = time.monotonic() + 30
            completed_hooks = 0
            while completed_hooks < len(NUMBERS):
                completed_hooks = sum(e["type"] == "call.completed" for e in received)
                assert time.monotonic() < deadline, f"{completed_hooks} call.completed webhooks"
                await asyncio.sleep(0.2)
            hooks = {
                e["data"]["phone"]: e["data"] for e in received if e["type"] == "call.completed"
            }
            answered = hooks["+442071838750"]
            async with (
                aiohttp.ClientSession() as http,
                http.get(answered["recording_url"]) as resp,
            ):
                assert resp.status == 200
                assert resp.content_type == "audio/wav"
                assert len(await resp.read()) > 8000
        finally:
            await pool.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        await hook_runner.cleanup()
    assert {r["phone_e164"]: r["disposition"] for r in rows} == NUMBERS
    assert recordings == 2  # the two answered calls
    assert {phone: data["disposition"] for phone, data in hooks.items()} == NUMBERS
    assert answered["sip_status"] == 200 and answered["hangup_by"]
    kinds = {e["type"] for e in received}
    assert {"call.completed", "record.completed", "recording.available"} <= kinds

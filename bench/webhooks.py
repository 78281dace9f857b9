"""Webhook delivery throughput and lag: the notifier against a plain client, same run.

    python bench/webhooks.py [--deliveries 20000] [--runs 3] [--lag-seconds 4] [--lag-rate 500]

Creates a fresh database on the local PostgreSQL (``DIALER_BENCH_DATABASE_URL``,
default the test server) and starts a receiver in its own process (aiohttp on
loopback; it checks every ``webhook-signature`` with HMAC-SHA256 and counts
distinct ``webhook-id`` values). Then, for 1, 10 and 100 endpoints:

* notifier: ``--deliveries`` deliveries queued in the outbox (four events per
  record, so per-record ordering is in play), drained by one notifier; the
  figure is signed deliveries per second, start to last answer;
* peer: a plain aiohttp client posting the same signed bodies with the same
  concurrency, without the database; the ratio is notifier / peer.

Then the lag from state change to delivery: outbox rows inserted at
``--lag-rate`` per second for ``--lag-seconds`` with the notifier idle and
listening; the receiver measures its arrival time minus the row's
``created_at`` (median, p99). Last, a restart: the notifier is cancelled
half-way through a backlog and a new one started; every event must arrive.
Medians of ``--runs`` runs are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from standardwebhooks.webhooks import Webhook

from api.notifier import Notifier, NotifierConfig, event_body, webhook_headers
from api.webhooks import new_secret
from dialer.db import apply_migrations, connect_pool
from dialer.ids import new_ids
from dialer.settings import Secret, Settings
from dialer.tenants import create_tenant

ADMIN_URL = os.environ.get("DIALER_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
CONCURRENCY = 256


def _url_for(name: str) -> str:
    base, _, query = ADMIN_URL.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- receiver


def receiver_main(port: int, secret: str) -> None:
    """The receiving side, in its own process: verify, count, time."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    state: dict[str, object] = {"ids": set(), "count": 0, "bad": 0, "lags": []}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        headers = request.headers
        msg_id = headers["webhook-id"]
        signed = f"{msg_id}.{headers['webhook-timestamp']}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        offered = [s.partition(",")[2] for s in headers["webhook-signature"].split(" ")]
        if not any(hmac.compare_digest(expected, s) for s in offered):
            state["bad"] += 1  # type: ignore[operator]
        state["count"] += 1  # type: ignore[operator]
        state["ids"].add((request.path, msg_id))  # type: ignore[attr-defined]
        stamp = orjson.loads(body)["timestamp"]
        created = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        state["lags"].append(now - created)  # type: ignore[attr-defined]
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "count": state["count"],
                "unique": len(state["ids"]),  # type: ignore[arg-type]
                "bad": state["bad"],
                "lags": state["lags"] if "lags" in request.query else [],
            }
        )

    async def reset(request: web.Request) -> web.Response:
        state.update(ids=set(), count=0, bad=0, lags=[])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    app.router.add_post("/{tail:.*}", hook)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class Receiver:
    def __init__(self, port: int, secret: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--receiver", str(port), "--secret", secret]
        )
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with self.http.get(f"{self.base}/stats") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise RuntimeError("the receiver did not start")

    async def stats(self, lags: bool = False) -> dict:
        assert self.http is not None
        async with self.http.get(f"{self.base}/stats" + ("?lags" if lags else "")) as resp:
            return await resp.json()

    async def reset(self) -> None:
        assert self.http is not None
        async with self.http.post(f"{self.base}/reset"):
            pass

    async def wait_unique(self, expected: int, timeout: float = 300.0) -> float:
        deadline = time.perf_counter() + timeout
        while (await self.stats())["unique"] < expected:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"only {(await self.stats())['unique']} of {expected} arrived")
            await asyncio.sleep(0.005)
        return time.perf_counter()

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        self.proc.terminate()
        self.proc.wait(10)


# ----------------------------------------------------------------------------- scenarios


async def _setup_endpoints(
    pool: asyncpg.Pool, tenant_id: object, receiver: Receiver, count: int, secret: str
) -> None:
    await pool.execute("UPDATE webhook_endpoints SET enabled = false")
    await pool.executemany(
        """INSERT INTO webhook_endpoints (id, tenant_id, url, secret)
           VALUES (gen_random_uuid(), $1, $2, $3)""",
        [(tenant_id, f"{receiver.base}/hook/{i}", secret) for i in range(count)],
    )


async def _queue_events(pool: asyncpg.Pool, tenant_id: object, events: int) -> None:
    """Outbox rows as the scheduler writes them; four events per record."""
    records = new_ids(max(events // 4, 1))
    ids = new_ids(events)
    rows = []
    for i, event_id in enumerate(ids):
        record = records[i % len(records)]
        payload = {
            "type": "record.completed",
            "id": str(event_id),
            "data": {"record_id": str(record), "meta": {"crm_id": f"crm-{i}"}, "step": i},
        }
        rows.append((tenant_id, event_id, "record.completed", record, payload))
    await pool.executemany(
        """INSERT INTO outbox (tenant_id, event_id, event_type, record_id, payload)
           VALUES ($1, $2, $3, $4, $5)""",
        rows,
    )


def _config(**changes: float) -> NotifierConfig:
    return NotifierConfig(concurrency=CONCURRENCY, batch_size=500, **changes)  # type: ignore[arg-type]


async def notifier_run(
    pool: asyncpg.Pool,
    settings: Settings,
    receiver: Receiver,
    tenant_id: object,
    endpoints: int,
    deliveries: int,
    secret: str,
) -> float:
    await _setup_endpoints(pool, tenant_id, receiver, endpoints, secret)
    await receiver.reset()
    events = max(deliveries // endpoints, 1)
    await _queue_events(pool, tenant_id, events)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(Notifier(pool, settings, _config()).run(stop))
    finished = await receiver.wait_unique(events * endpoints)
    stop.set()
    await task
    stats = await receiver.stats()
    assert stats["bad"] == 0, "a signature did not verify"
    return events * endpoints / (finished - started)


async def peer_run(receiver: Receiver, endpoints: int, deliveries: int, secret: str) -> float:
    """The same signed bodies, posted by a plain client with the same concurrency, no database."""
    await receiver.reset()
    events = max(deliveries // endpoints, 1)
    signer = [Webhook(secret)]
    created = dt.datetime.now(dt.UTC)
    jobs = []
    for i, event_id in enumerate(new_ids(events)):
        payload = {
            "type": "record.completed",
            "id": str(event_id),
            "data": {"record_id": str(event_id), "meta": {"crm_id": f"crm-{i}"}, "step": i},
        }
        for e in range(endpoints):
            jobs.append((f"{receiver.base}/hook/{e}", str(event_id), payload))
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            url, msg_id, payload = queue.get_nowait()
            body = event_body(payload, created, None)
            headers = webhook_headers(signer, msg_id, int(time.time()), body)
            async with http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()

    connector = aiohttp.TCPConnector(limit=CONCURRENCY, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    return len(jobs) / elapsed


async def lag_run(
    pool: asyncpg.Pool,
    settings: Settings,
    receiver: Receiver,
    tenant_id: object,
    secret: str,
    seconds: float,
    rate: int,
) -> tuple[float, float]:
    await _setup_endpoints(pool, tenant_id, receiver, 1, secret)
    await receiver.reset()
    stop = asyncio.Event()
    task = asyncio.create_task(Notifier(pool, settings, _config()).run(stop))
    await asyncio.sleep(0.3)
    sent = 0
    tick = 0.02
    per_tick = max(int(rate * tick), 1)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        # One transaction per state change, as the scheduler writes them.
        async with pool.acquire() as conn:
            for _ in range(per_tick):
                await _queue_events(conn, tenant_id, 1)  # type: ignore[arg-type]
                sent += 1
        await asyncio.sleep(max(0.0, start + (sent / rate) - time.perf_counter()))
    await receiver.wait_unique(sent)
    stop.set()
    await task
    lags = sorted((await receiver.stats(lags=True))["lags"])
    return statistics.median(lags) * 1000, lags[int(len(lags) * 0.99) - 1] * 1000


async def restart_run(
    pool: asyncpg.Pool,
    settings: Settings,
    receiver: Receiver,
    tenant_id: object,
    secret: str,
    deliveries: int,
) -> tuple[int, int, float]:
    """Cancel the notifier half-way (a kill: no drain), start another; count what arrived."""
    await _setup_endpoints(pool, tenant_id, receiver, 10, secret)
    await receiver.reset()
    events = deliveries // 10
    await _queue_events(pool, tenant_id, events)
    config = _config(total_timeout_s=2.0, lease_margin_s=0.5)
    task = asyncio.create_task(Notifier(pool, settings, config, name="first").run(asyncio.Event()))
    while (await receiver.stats())["unique"] < deliveries // 2:
        await asyncio.sleep(0.005)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        async with asyncio.timeout(10):  # a notifier that ignores its kill is a bug
            await task
    started = time.perf_counter()
    stop = asyncio.Event()
    second = asyncio.create_task(Notifier(pool, settings, config, name="second").run(stop))
    await receiver.wait_unique(deliveries)
    recovered = time.perf_counter() - started
    stop.set()
    await second
    stats = await receiver.stats()
    return stats["unique"], stats["count"] - stats["unique"], recovered


async def main(args: argparse.Namespace) -> None:
    name = f"dialer_bench_hooks_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _url_for(name)
    secret = new_secret()
    receiver = Receiver(_free_port(), secret)
    pool = await connect_pool(url, min_size=4, max_size=8)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            tenant_id = await create_tenant(conn, "bench")
        await receiver.start()
        settings = Settings(
            database_url=url, webhook_secret=Secret("bench"), webhook_allow_hosts=("127.0.0.0/8",)
        )
        print(f"{'endpoints':>9} {'notifier/s':>11} {'peer/s':>9} {'ratio':>6}")
        for endpoints in (1, 10, 100):
            ours, theirs = [], []
            for _ in range(args.runs):
                ours.append(
                    await notifier_run(
                        pool, settings, receiver, tenant_id, endpoints, args.deliveries, secret
                    )
                )
                theirs.append(await peer_run(receiver, endpoints, args.deliveries, secret))
            a, b = statistics.median(ours), statistics.median(theirs)
            print(f"{endpoints:>9} {a:>11,.0f} {b:>9,.0f} {a / b:>6.2f}", flush=True)
        medians, p99s = [], []
        for _ in range(args.runs):
            median, p99 = await lag_run(
                pool, settings, receiver, tenant_id, secret, args.lag_seconds, args.lag_rate
            )
            medians.append(median)
            p99s.append(p99)
        print(
            f"lag outbox insert -> delivered at {args.lag_rate}/s: median "
            f"{statistics.median(medians):.1f} ms, p99 {statistics.median(p99s):.1f} ms"
        )
        unique, duplicates, recovered = await restart_run(
            pool, settings, receiver, tenant_id, secret, args.deliveries // 2
        )
        print(
            f"restart half-way: {unique:,} of {args.deliveries // 2:,} events delivered "
            f"(none lost: {unique == args.deliveries // 2}), {duplicates} redelivered after "
            f"the lease ran out, second notifier finished in {recovered:.1f} s"
        )
    finally:
        await pool.close()
        await receiver.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lag-seconds", type=float, default=4.0)
    parser.add_argument("--lag-rate", type=int, default=500)
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver_main(args.receiver, args.secret)
        return
    try:
        import uvloop

        uvloop.run(main(args))
    except ImportError:
        asyncio.run(main(args))


if __name__ == "__main__":
    _cli()

"""Ingestion throughput: POST /api/bulk-call/ against raw asyncpg COPY, same rows, same run.

    python bench/ingest.py [--records 50000] [--clients 4] [--runs 3] [--single-seconds 5]

Starts ``dialer api`` in its own process on a fresh database of the local
PostgreSQL (``DIALER_BENCH_DATABASE_URL``, default the test server), posts
``--records`` records in batches of 1,000 from ``--clients`` concurrent
clients, then loads the same rows with ``copy_records_to_table`` over the same
number of connections. Prints the median of ``--runs`` runs of each, their
ratio, and single ``POST /api/call/`` requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.ingest import RECORD_COPY_COLUMNS
from dialer.db import apply_migrations, connect_pool
from dialer.ids import new_id
from dialer.tenants import create_api_key, create_tenant

ADMIN_URL = os.environ.get("DIALER_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
BATCH = 1000


def _url_for(name: str) -> str:
    base, _, query = ADMIN_URL.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


def _record(i: int) -> dict:
    return {
        "record_phone_number": f"{212 + i % 700}555{i % 10000:04d}",
        "record_first_name": f"First{i}",
        "record_last_name": "Bench",
        "record_zip_code": "10001",
        "placeholders": {"appointment": "Tuesday 3pm", "n": i},
        "meta": {"crm_id": f"crm-{i}", "tags": ["bench", "ingest"]},
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _wait_healthy(base: str, proc: subprocess.Popen) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError("dialer api exited")
            try:
                async with http.get(f"{base}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("dialer api did not start")


async def _bulk_run(base: str, payloads: list[bytes], clients: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for payload in payloads:
        queue.put_nowait(payload)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def client() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with http.post(
                    f"{base}/api/bulk-call/",
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    result = await resp.json()
                    if resp.status != 200 or result["accepted"] != BATCH:
                        raise RuntimeError(f"bulk failed: {resp.status} {str(result)[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - started


async def _copy_run(pool: asyncpg.Pool, batches: list[list[tuple]], clients: int) -> float:
    queue: asyncio.Queue[list[tuple]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait([(new_id(), *row[1:]) for row in batch])

    async def loader() -> None:
        async with pool.acquire() as conn:
            while not queue.empty():
                rows = queue.get_nowait()
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "records", records=rows, columns=RECORD_COPY_COLUMNS
                    )

    started = time.perf_counter()
    await asyncio.gather(*(loader() for _ in range(clients)))
    return time.perf_counter() - started


async def _single_run(base: str, payload: bytes, seconds: float, clients: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with http.post(
                    f"{base}/api/call/", data=payload, headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"single failed: {resp.status}")
                    done += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return done / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--single-seconds", type=float, default=5.0)
    parser.add_argument("--single-clients", type=int, default=16)
    args = parser.parse_args()
    n_batches = max(1, args.records // BATCH)

    name = f"dialer_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    proc: subprocess.Popen | None = None
    pool: asyncpg.Pool | None = None
    try:
        url = _url_for(name)
        pool = await connect_pool(url, max_size=args.clients + 1)
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            tenant_id = await create_tenant(conn, "bench")
            key = (await create_api_key(conn, tenant_id)).key
            workflow_id = new_id()
            await conn.execute(
                """INSERT INTO workflows (id, tenant_id, workflow_key, name, status)
                   VALUES ($1, $2, 'BENCH1', 'bench', 'active')""",
                workflow_id,
                tenant_id,
            )
            await conn.execute(
                """INSERT INTO workflow_versions (workflow_id, version, definition)
                   VALUES ($1, 1, '{"start": "x", "nodes": []}')""",
                workflow_id,
            )
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
        env |= {"DIALER_DATABASE_URL": url, "DIALER_API_LISTEN": f"127.0.0.1:{port}"}
        env["DIALER_LOG_LEVEL"] = "WARNING"
        proc = subprocess.Popen([sys.executable, "-m", "dialer.cli", "api"], env=env)
        base = f"http://127.0.0.1:{port}"
        await _wait_healthy(base, proc)

        records = [_record(i) for i in range(n_batches * BATCH)]
        payloads = [
            orjson.dumps(
                {
                    "api_key": key,
                    "workflow_key": "BENCH1",
                    "records": records[b * BATCH : (b + 1) * BATCH],
                }
            )
            for b in range(n_batches)
        ]
        copy_rows = [
            [
                (
                    None,
                    tenant_id,
                    workflow_id,
                    1,
                    None,
                    None,
                    "+1" + r["record_phone_number"],
                    r["record_first_name"],
                    r["record_last_name"],
                    r["record_zip_code"],
                    r["placeholders"],
                    r["meta"],
                )
                for r in records[b * BATCH : (b + 1) * BATCH]
            ]
            for b in range(n_batches)
        ]
        total = n_batches * BATCH
        api_rates, copy_rates = [], []
        for run in range(args.runs):
            api_rates.append(total / await _bulk_run(base, payloads, args.clients))
            copy_rates.append(total / await _copy_run(pool, copy_rows, args.clients))
            print(
                f"run {run + 1}: bulk endpoint {api_rates[-1]:,.0f} records/s, "
                f"raw COPY {copy_rates[-1]:,.0f} rows/s",
                flush=True,
            )
        single_payload = orjson.dumps({"api_key": key, "workflow_key": "BENCH1", **records[0]})
        single_rates = [
            await _single_run(base, single_payload, args.single_seconds, args.single_clients)
            for _ in range(args.runs)
        ]
        api_median = statistics.median(api_rates)
        copy_median = statistics.median(copy_rates)
        print(
            f"records={total} clients={args.clients} runs={args.runs} (medians)\n"
            f"bulk_endpoint_records_per_s={api_median:,.0f}\n"
            f"raw_copy_rows_per_s={copy_median:,.0f}\n"
            f"ratio_endpoint_to_copy={api_median / copy_median:.2f} (target >= 0.50)\n"
            f"single_post_requests_per_s={statistics.median(single_rates):,.0f}"
        )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        if pool is not None:
            await pool.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())

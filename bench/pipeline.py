"""Call attempts per second carried end to end through the whole pipeline.

Each run ingests ``--records`` records (the bulk path: COPY), and the real
parts carry every one of them: the scheduler (this process) turns them into
dial jobs, RabbitMQ carries the jobs, ``dialer worker`` processes (one, then
two) place the SIP calls to a SIPp callee (SIPp's built-in ``uas``: answers
at once; the node has no handler, so we hang up as soon as it answers), the
workers publish the calls' events, and the event consumer (this process)
closes each call, finishes its record and writes the ``call.completed`` and
``record.completed`` webhooks to the outbox. The clock runs from the first
record ingested to the last record finished; prints the median of ``--runs``
runs per worker count, and SIPp's own UAC against the same callee in the same
session as the peer::

    workers=1 runs=[212.3, 220.1, 218.7] median=218.7 attempts/s (failed 0)
    workers=2 runs=[...] median=... attempts/s
    peer: sipp uac -> the same uas: 3,950 calls/s
    ratio (2 workers / peer): 0.08

Needs PostgreSQL (``DIALER_BENCH_DATABASE_URL``, default the local server's
``test`` database, in which a scratch database is created and dropped),
RabbitMQ (``DIALER_BENCH_AMQP_URL``; a scratch virtual host is added with
``rabbitmqctl`` when it may be, so ``dialer worker``'s fixed queue names meet
no one else's) and SIPp.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from api.ingest import insert_records
from api.validation import validate_record
from dialer.bus import AmqpBroker
from dialer.db import apply_migrations, connect_pool
from dialer.ids import new_id
from dialer.tenants import create_tenant
from scheduler.consumer import EventConsumer
from scheduler.engine import Scheduler

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("DIALER_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("DIALER_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DEFINITION = {
    "start": "call",
    "nodes": [
        # No handler: the call is hung up as soon as it is answered.
        {"id": "call", "type": "call", "handler": {}, "ring_timeout_s": 10, "record": False},
        {"id": "done", "type": "end"},
    ],
    "edges": [{"from": "call", "on": "default", "to": "done"}],
}


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _servers_cpu_s() -> dict[str, float]:
    """CPU seconds so far of every PostgreSQL and RabbitMQ process on the machine."""
    totals = {"postgres": 0.0, "rabbitmq": 0.0}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            side = {"postgres": "postgres", "beam.smp": "rabbitmq"}.get(name)
            if side:
                totals[side] += _cpu_s(int(stat.parent.name))
    return totals


async def _backends_cpu_s(pool: asyncpg.Pool) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving this run's database.

    Unlike :func:`_servers_cpu_s`, other work on the machine's server is not
    counted (nor are the server's background processes: WAL writer, checkpointer).
    """
    pids = await pool.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
    cpu = {}
    for row in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            cpu[row["pid"]] = _cpu_s(row["pid"])
    return cpu


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    name = f"dialer_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_database(ADMIN_URL, name)
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    try:
        yield url
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.contextmanager
def scratch_vhost() -> Iterator[str]:
    """A virtual host of our own when rabbitmqctl lets us; else the URL as given."""
    vhost = f"bench-{secrets.token_hex(3)}"

    def ctl(*args: str) -> bool:
        try:
            subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return False
        return True

    if not ctl("add_vhost", vhost):
        print("(rabbitmqctl unavailable: using the URL's own virtual host)", file=sys.stderr)
        yield AMQP_URL
        return
    try:
        ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield AMQP_URL.rstrip("/") + "/" + vhost
    finally:
        ctl("delete_vhost", vhost)


class SippUas:
    """SIPp's built-in UAS: 180, 200 at once, waits for our BYE."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.process = subprocess.Popen(
            [
                "sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(self.port),
                "-nostdin", "-nd", "-buff_size", str(4 * 1024 * 1024),
                "-max_recv_loops", "10000",
            ],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def start_worker(
    index: int, database_url: str, amqp_url: str, uas_port: int, capacity: int, workdir: Path
) -> subprocess.Popen[bytes]:
    rtp_min = 20000 + index * 4 * capacity
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env.update(
        {
            "DIALER_DATABASE_URL": database_url,
            "DIALER_AMQP_URL": amqp_url,
            "DIALER_TRUNK_URI": f"sip:127.0.0.1:{uas_port}",
            "DIALER_SIP_LISTEN": f"127.0.0.1:{_free_port()}",
            "DIALER_RTP_PORT_MIN": str(rtp_min),
            "DIALER_RTP_PORT_MAX": str(rtp_min + 4 * capacity - 1),
            "DIALER_DATA_DIR": str(workdir / f"worker{index}"),
            "DIALER_LOG_LEVEL": "ERROR",
            # Ours first; the caller's after it (a profiler's sitecustomize, say).
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "dialer.cli", "worker", "--capacity", str(capacity)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / f"worker{index}.log").open("ab"),
    )


async def _workflow(pool: asyncpg.Pool, seats: int) -> tuple[uuid.UUID, asyncpg.Record]:
    async with pool.acquire() as conn:
        tenant = await create_tenant(conn, f"bench-{secrets.token_hex(4)}")
        workflow_id = new_id()
        await conn.execute(
            """INSERT INTO workflows (id, tenant_id, workflow_key, name, status)
               VALUES ($1, $2, $3, 'bench', 'active')""",
            workflow_id,
            tenant,
            secrets.token_hex(3),
        )
        settings = {
            "pacing": {"mode": "progressive", "seats": seats},
            "retry": {},
            "recording": False,
        }
        await conn.execute(
            """INSERT INTO workflow_versions (workflow_id, version, definition, settings)
               VALUES ($1, 1, $2, $3)""",
            workflow_id,
            DEFINITION,
            settings,
        )
        workflow = await conn.fetchrow(
            "SELECT id, current_version, workflow_key FROM workflows WHERE id = $1", workflow_id
        )
    return tenant, workflow


@dataclass
class RunResult:
    rate: float  # records finished per second, first ingested to last finished
    failed: int  # calls that did not end answered
    worker_cpu_ms: float  # CPU per call in the worker processes
    central_cpu_ms: float  # CPU per call here: ingestion, scheduler, event consumer
    # CPU per call of the machine's PostgreSQL and RabbitMQ: upper bounds, as other
    # work on the machine may use the same servers meanwhile.
    servers_cpu_ms: dict[str, float]
    backends_cpu_ms: float  # CPU per call of the backends serving the run's database
    commits: float  # transactions committed per call in the run's database (statements
    # outside a transaction, pool resets included, count one each)


async def one_run(
    database_url: str, amqp_url: str, uas: SippUas, workers: int, args: argparse.Namespace
) -> RunResult:
    """One run: attempts per second, failures, and the CPU each side spent per call."""
    workdir = Path(tempfile.mkdtemp(prefix="dialer-bench-pipeline-"))
    pool = await connect_pool(database_url, min_size=2, max_size=20)
    broker = AmqpBroker(amqp_url)
    await broker.start()
    processes = [
        start_worker(i, database_url, amqp_url, uas.port, args.capacity, workdir)
        for i in range(workers)
    ]
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    stop = asyncio.Event()
    try:
        tenant, workflow = await _workflow(pool, args.seats)
        # Workers up (registered) before the clock starts; one that never comes up
        # (its broker or database unreachable) fails the run instead of hanging it.
        up_by = time.perf_counter() + 60
        while (
            await pool.fetchval("SELECT count(*) FROM workers WHERE stopped_at IS NULL") < workers
        ):
            if time.perf_counter() > up_by:
                logs = "".join(log.read_text()[-2000:] for log in workdir.glob("worker*.log"))
                raise RuntimeError(f"workers not up after 60 s; their logs:\n{logs}")
            await asyncio.sleep(0.1)
        scheduler = Scheduler(pool, broker, tick_s=0.1, batch_size=500, tenant_ids=[tenant])
        records = [
            validate_record(
                {"record_phone_number": f"+4420718{i:05d}", "record_first_name": "Ada"},
                allow_e164=True,
                allow_case_id=False,
            )
            for i in range(args.records)
        ]
        started = time.perf_counter()
        cpu_started = time.process_time()
        workers_cpu = sum(_cpu_s(p.pid) for p in processes)
        servers_cpu = _servers_cpu_s()
        backends_cpu = await _backends_cpu_s(pool)
        commits_sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        commits = await pool.fetchval(commits_sql)
        async with pool.acquire() as conn:
            for offset in range(0, len(records), 1000):
                async with conn.transaction():
                    await insert_records(conn, tenant, workflow, records[offset : offset + 1000])
        loop_task = asyncio.create_task(scheduler.run(stop))
        deadline = started + args.timeout
        while True:
            done = await pool.fetchval(
                """SELECT count(*) FROM records WHERE workflow_id = $1
                   AND status IN ('completed', 'failed')""",
                workflow["id"],
            )
            if done >= args.records:
                break
            if time.perf_counter() > deadline:
                print(f"  timed out with {done}/{args.records} finished", file=sys.stderr)
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        central_cpu = time.process_time() - cpu_started
        workers_cpu = sum(_cpu_s(p.pid) for p in processes) - workers_cpu
        servers_cpu = {k: v - servers_cpu[k] for k, v in _servers_cpu_s().items()}
        # A backend started during the run counts from zero.
        backends_cpu = sum(
            v - backends_cpu.get(pid, 0.0) for pid, v in (await _backends_cpu_s(pool)).items()
        )
        await asyncio.sleep(0.6)  # statistics reach pg_stat_database within 500 ms
        commits = await pool.fetchval(commits_sql) - commits
        stop.set()
        await loop_task
        bad = await pool.fetchval(
            """SELECT count(*) FROM calls WHERE workflow_id = $1
               AND disposition IS DISTINCT FROM 'answered'""",
            workflow["id"],
        )
        webhooks = await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE workflow_id = $1 AND event_type = 'call.completed'",
            workflow["id"],
        )
        phases = await pool.fetchrow(
            """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY
                        extract(epoch FROM c.dialing_at - c.created_at)) AS queued,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY
                        extract(epoch FROM c.answered_at - c.dialing_at)) AS ringing,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY
                        extract(epoch FROM c.ended_at - c.answered_at)) AS talking,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY
                        extract(epoch FROM r.updated_at - c.ended_at)) AS closing
               FROM calls c JOIN records r ON r.id = c.record_id WHERE c.workflow_id = $1""",
            workflow["id"],
        )
        if args.verbose:
            batches = consumer._batcher
            # Media a call that ends at once still costs: the frames sent while it was up.
            packets = await pool.fetchval(
                """SELECT avg((media_stats->>'packets_sent')::int) FROM calls
                   WHERE workflow_id = $1""",
                workflow["id"],
            )
            print(
                "  median s: "
                + " ".join(f"{k}={(v or 0):.3f}" for k, v in phases.items())
                + f"; events per consumer batch: {batches.items / max(batches.batches, 1):.1f}"
                # Above 1: progress events of calls that outlasted the worker's hold.
                + f", events per call: {batches.items / max(done, 1):.2f}"
                + f", RTP packets sent per call: {float(packets or 0):.2f}",
                file=sys.stderr,
            )
        if webhooks != done:
            print(f"  {done} records finished, {webhooks} call.completed rows", file=sys.stderr)
        per_call = 1000 / max(done, 1)
        return RunResult(
            done / elapsed,
            bad,
            workers_cpu * per_call,
            central_cpu * per_call,
            {k: v * per_call for k, v in servers_cpu.items()},
            backends_cpu * per_call,
            commits * per_call / 1000,
        )
    finally:
        stop.set()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        await consumer.close()
        await broker.delete_all()
        await broker.close()
        await pool.close()
        shutil.rmtree(workdir, ignore_errors=True)


def sipp_peer(uas_port: int, calls: int, workdir: Path) -> float:
    """SIPp's own UAC against the same UAS, as fast as it goes: calls per second."""
    stats = workdir / "peer.csv"
    command = [
        "sipp", "-sn", "uac", f"127.0.0.1:{uas_port}", "-i", "127.0.0.1",
        "-p", str(_free_port()), "-r", "20000", "-l", "1000", "-m", str(calls), "-d", "0",
        "-nostdin", "-nd", "-buff_size", str(4 * 1024 * 1024), "-max_recv_loops", "10000",
        "-timeout", "120s", "-trace_stat", "-stf", str(stats), "-fd", "1",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(
        command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    elapsed = time.perf_counter() - started
    with stats.open(newline="") as handle:
        rows = list(csv.reader(handle, delimiter=";"))
    values = dict(zip(rows[0], rows[-1], strict=False))
    return int(values["SuccessfulCall(C)"]) / elapsed


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="dialer-bench-sipp-"))
    uas = SippUas(workdir)
    medians: dict[int, float] = {}
    try:
        with scratch_vhost() as amqp_url:
            for workers in args.workers:
                results = []
                for _ in range(args.runs):
                    async with scratch_database() as database_url:
                        results.append(await one_run(database_url, amqp_url, uas, workers, args))
                medians[workers] = statistics.median(r.rate for r in results)
                print(
                    f"workers={workers} runs={[round(r.rate, 1) for r in results]} "
                    f"median={medians[workers]:.1f} attempts/s "
                    f"(failed {sum(r.failed for r in results)}); CPU per call: workers "
                    f"{statistics.median(r.worker_cpu_ms for r in results):.2f} ms, "
                    f"scheduler+consumer "
                    f"{statistics.median(r.central_cpu_ms for r in results):.2f} ms, "
                    + ", ".join(
                        f"{k} {statistics.median(r.servers_cpu_ms[k] for r in results):.2f} ms"
                        for k in ("postgres", "rabbitmq")
                    )
                    + " (servers: upper bounds; postgres backends of this database "
                    f"{statistics.median(r.backends_cpu_ms for r in results):.2f} ms); "
                    f"{statistics.median(r.commits for r in results):.2f} "
                    "database transactions per call",
                    flush=True,
                )
        if not args.no_peer:
            peer = statistics.median(sipp_peer(uas.port, args.records, workdir) for _ in range(3))
            print(f"peer: sipp uac -> the same uas: {peer:,.0f} calls/s")
            best = max(medians, key=lambda w: medians[w])
            print(f"ratio ({best} worker(s) / peer): {medians[best] / peer:.3f}")
    finally:
        uas.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000, help="records per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--workers", default="1,2", help="comma-separated worker counts (default 1,2)"
    )
    parser.add_argument(
        "--capacity", type=int, default=100, help="calls at once per worker (as dialer worker)"
    )
    parser.add_argument("--seats", type=int, default=5000, help="the workflow's seats")
    parser.add_argument("--verbose", action="store_true", help="median time of each phase")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run at most")
    parser.add_argument("--no-peer", action="store_true", help="skip SIPp's own UAC run")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    if shutil.which("sipp") is None:
        print("sipp is not installed (Debian package sip-tester)", file=sys.stderr)
        return 2
    try:
        import uvloop

        return uvloop.run(main_async(args))
    except ImportError:
        return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())

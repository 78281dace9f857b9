"""Faults mid-run: a worker killed, RabbitMQ stopped and started, PostgreSQL restarted.

Each test runs the pipeline (scheduler and event consumer in this process,
workers here or as ``dialer worker`` processes) over RabbitMQ against a SIPp
callee, breaks one part while calls are up, and then checks the three
promises: every record ends in a final state, no record is lost, and nobody
is dialled twice (SIPp's own message trace counts the INVITEs per number;
each call row is dialled at most once, and a record has a second call only
where its workflow's retry policy asks for one).

The broken parts are private: a RabbitMQ node and a PostgreSQL cluster of
this test's own, on free ports in temporary directories, so the machine's
shared servers (and other tests using them) are never disturbed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from dialer.bus import AmqpBroker
from dialer.db import apply_migrations, connect_pool
from dialer.settings import Settings
from dialer.stack import default_trunk, start_worker
from dialer.tenants import create_tenant
from scheduler.consumer import EventConsumer
from scheduler.engine import Scheduler
from tests.integration.peers import Sipp, free_port, require, start_sipp
from tests.workflow_setup import insert_uk_records, insert_workflow, worker_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Not US numbers: those are called only 08:00-21:00 in New York, and tests run at any hour.
PHONE_BASE = 442071830000
# How long the scheduler waits for a silent worker before closing its calls.
WORKER_TIMEOUT_S = 8.0


# -- private peers -------------------------------------------------------------


def _as_user(user: str, command: list[str]) -> list[str]:
    """Run as the service's user when we are root (both servers refuse to run as root)."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", user, "--", *command]


def _private_dir(user: str, prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, user, user)
    return path


@dataclass
class RabbitNode:
    """A RabbitMQ node of our own: its own name, ports, data and logs."""

    name: str
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def ctl(self, *args: str, timeout: float = 60) -> None:
        command = ["rabbitmqctl", "-n", self.name, *args]
        env = {**os.environ, "HOME": "/var/lib/rabbitmq"}
        subprocess.run(
            _as_user("rabbitmq", ["env", f"HOME={env['HOME']}", *command]),
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    async def actl(self, *args: str) -> None:
        await asyncio.to_thread(self.ctl, *args)


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitNode]:
    require("rabbitmq-server")
    if os.geteuid() != 0:
        pytest.skip("a private RabbitMQ node needs to run as the rabbitmq user")
    workdir = _private_dir("rabbitmq", "dialer-faults-rmq-")
    plugins = workdir / "plugins"
    plugins.write_text("[].\n")
    shutil.chown(plugins, "rabbitmq", "rabbitmq")
    port = free_port(both=False)
    node = RabbitNode(f"faults{port}@localhost", port, workdir)
    env = {
        "HOME": "/var/lib/rabbitmq",
        "RABBITMQ_NODENAME": node.name,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(free_port(both=False)),
        "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(workdir / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
        "RABBITMQ_CONFIG_FILE": str(workdir / "none"),
        "RABBITMQ_PID_FILE": str(workdir / "pid"),
    }
    subprocess.run(
        _as_user(
            "rabbitmq",
            ["env", *(f"{k}={v}" for k, v in env.items()), "rabbitmq-server", "-detached"],
        ),
        check=True,
        timeout=30,
    )
    try:
        node.ctl("wait", str(workdir / "pid"), "--timeout", "60", timeout=90)
        yield node
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            node.ctl("stop", str(workdir / "pid"))
        shutil.rmtree(workdir, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]),
    )
    if not found:
        pytest.skip(f"no PostgreSQL server binaries ({name}) under /usr/lib/postgresql")
    return found[-1]


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of our own in a temporary directory, trust auth on loopback."""

    datadir: Path
    port: int
    log: Path
    options: str

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        subprocess.run(
            _as_user(
                "postgres",
                # The server's output goes to the log: a pipe of ours would be held
                # open by the server and never reach its end.
                [_pg_bin("pg_ctl"), "-D", str(self.datadir), "-l", str(self.log), "-w", *args],
            ),
            check=True,
            capture_output=True,
            timeout=90,
        )

    async def actl(self, *args: str) -> None:
        await asyncio.to_thread(self.ctl, *args)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    workdir = _private_dir("postgres", "dialer-faults-pg-")
    datadir = workdir / "data"
    subprocess.run(
        _as_user(
            "postgres",
            [_pg_bin("initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust", "-N"],
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port(socket.SOCK_STREAM, both=False)
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg = PrivatePostgres(datadir, port, workdir / "log", options)
    pg.ctl("-o", options, "start")
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            pg.ctl("-m", "immediate", "stop")
        shutil.rmtree(workdir, ignore_errors=True)


# -- the pipeline under test ---------------------------------------------------


def _definition(prompt: str) -> dict[str, object]:
    return {
        "start": "call",
        "nodes": [
            {
                "id": "call",
                "type": "call",
                "handler": {"type": "prompt", "text": prompt},
                "ring_timeout_s": 10,
            },
            {"id": "done", "type": "end"},
        ],
        "edges": [{"from": "call", "on": "default", "to": "done"}],
    }


@dataclass
class Campaign:
    tenant_id: uuid.UUID
    workflow_id: uuid.UUID
    phones: list[str]


async def _campaign(
    pool: asyncpg.Pool, count: int, settings: dict[str, object], prompt: str
) -> Campaign:
    async with pool.acquire() as conn:
        tenant_id = await create_tenant(conn, f"faults-{uuid.uuid4().hex[:8]}")
    workflow = await insert_workflow(pool, tenant_id, _definition(prompt), settings, "faults")
    workflow_id = workflow["id"]
    offset = int(uuid.uuid4().int % 9000)
    phones = [f"+{PHONE_BASE + offset + i}" for i in range(count)]
    await insert_uk_records(pool, tenant_id, workflow, phones)
    return Campaign(tenant_id, workflow_id, phones)


def _settings(database_url: str, trunk_uri: str, workdir: Path) -> Settings:
    return worker_settings(database_url, workdir, trunk_uri, rtp_ports=100)


@contextlib.asynccontextmanager
async def _scheduler(
    pool: asyncpg.Pool, broker: AmqpBroker, campaign: Campaign
) -> AsyncIterator[None]:
    """The scheduler and event consumer, judging lost workers and stale jobs quickly."""
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    stop = asyncio.Event()
    scheduler = Scheduler(
        pool,
        broker,
        tick_s=0.2,
        republish_after_s=4.0,
        worker_timeout_s=WORKER_TIMEOUT_S,
        tenant_ids=[campaign.tenant_id],
    )
    task = asyncio.create_task(scheduler.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task
        await consumer.close()


async def _until(pool: asyncpg.Pool, sql: str, *args: object, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if await pool.fetchval(sql, *args):
                return
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for: {sql}"
        await asyncio.sleep(0.1)


async def _all_final(pool: asyncpg.Pool, campaign: Campaign, timeout: float) -> None:
    await _until(
        pool,
        """SELECT bool_and(status IN ('completed', 'failed')) AND count(*) = $2
           FROM records WHERE workflow_id = $1""",
        campaign.workflow_id,
        len(campaign.phones),
        timeout=timeout,
    )


_REQUEST = re.compile(r"^INVITE sip:(\+?\d+)@", re.MULTILINE)
_CALL_ID = re.compile(r"^Call-ID:\s*(\S+)", re.MULTILINE | re.IGNORECASE)


def sipp_invites(workdir: Path) -> dict[str, set[str]]:
    """Per number, the SIP Call-IDs of the INVITEs SIPp received (retransmissions are one)."""
    seen: dict[str, set[str]] = collections.defaultdict(set)
    for log in workdir.glob("*_messages.log"):
        for message in re.split(r"^-{10,}.*$", log.read_text(errors="replace"), flags=re.M):
            if "message received" not in message:
                continue
            request = _REQUEST.search(message)
            call_id = _CALL_ID.search(message)
            if request and call_id:
                seen[request[1]].add(call_id[1])
    return seen


async def _check_promises(
    pool: asyncpg.Pool,
    campaign: Campaign,
    sipp: Sipp,
    *,
    retried_outcomes: tuple[str, ...],
    max_calls: int = 1,
) -> dict[str, int]:
    """Final states, nothing lost, nobody dialled twice; returns dispositions counted."""
    records = await pool.fetch(
        "SELECT id, phone_e164, status, attempts FROM records WHERE workflow_id = $1",
        campaign.workflow_id,
    )
    assert sorted(r["phone_e164"] for r in records) == sorted(campaign.phones)  # none lost
    assert {r["status"] for r in records} <= {"completed", "failed"}
    calls = await pool.fetch(
        """SELECT record_id, state, disposition, dialing_at, created_at FROM calls
           WHERE workflow_id = $1 ORDER BY created_at""",
        campaign.workflow_id,
    )
    assert {c["state"] for c in calls} == {"ended"}
    by_record: dict[uuid.UUID, list[asyncpg.Record]] = collections.defaultdict(list)
    for call in calls:
        by_record[call["record_id"]].append(call)
    invites = sipp_invites(sipp.workdir)
    for record in records:
        mine = by_record[record["id"]]
        assert len(mine) == record["attempts"] <= max_calls, record
        # A second call only after an outcome the retry policy retries.
        assert all(c["disposition"] in retried_outcomes for c in mine[:-1]), mine
        # SIPp saw at most one INVITE per call row: no call was dialled twice.
        dialled = len(invites.get(record["phone_e164"], set()))
        assert 1 <= dialled <= len(mine), (record["phone_e164"], dialled, mine)
    assert set(invites) <= set(campaign.phones)
    return collections.Counter(c["disposition"] for c in calls)


async def _start_sipp(workdir: Path, calls: int) -> Sipp:
    """SIPp answering every call and waiting for our BYE, tracing every message."""
    return await start_sipp(
        "uas_answer_wait_bye.xml", workdir, calls=calls, timeout_s=120, extra=("-trace_msg",)
    )


# -- the faults ----------------------------------------------------------------


def _worker_process(settings: Settings, amqp_url: str, capacity: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env.update(
        {
            "DIALER_DATABASE_URL": settings.database_url or "",
            "DIALER_AMQP_URL": amqp_url,
            "DIALER_TRUNK_URI": settings.trunk_uri or "",
            "DIALER_SIP_LISTEN": f"{settings.sip_listen.host}:{settings.sip_listen.port}",
            "DIALER_RTP_PORT_MIN": str(settings.rtp_port_min),
            "DIALER_RTP_PORT_MAX": str(settings.rtp_port_max),
            "DIALER_DATA_DIR": str(settings.data_dir),
            "DIALER_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
    )
    log = (settings.data_dir / "worker.log").open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "dialer.cli", "worker", "--capacity", str(capacity)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


async def test_worker_killed_mid_call(
    database_url: str, pool: asyncpg.Pool, rabbit: RabbitNode, tmp_path: Path
) -> None:
    """SIGKILL a worker with calls up: a second worker and the worker_lost path finish."""
    count = 8
    sipp = await _start_sipp(tmp_path, calls=count * 2)
    retry = {"worker_lost": {"delay_s": 0, "max_attempts": 2}}
    campaign = await _campaign(
        pool,
        count,
        {"pacing": {"mode": "progressive", "seats": 4}, "retry": retry},
        "Hello, this is a short reminder about your appointment. Goodbye.",
    )
    # The node is ours alone: the default namespace, as `dialer worker` uses.
    processes: list[subprocess.Popen[bytes]] = []
    broker = AmqpBroker(rabbit.url)
    await broker.start()
    try:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first = _worker_process(_settings(database_url, sipp.uri, tmp_path / "a"), rabbit.url, 4)
        processes.append(first)
        async with _scheduler(pool, broker, campaign):
            # Kill the first worker once it holds answered calls.
            await _until(
                pool,
                """SELECT count(*) >= 2 FROM calls c JOIN workers w ON w.id = c.worker_id
                   WHERE c.workflow_id = $1 AND c.state = 'answered' AND w.pid = $2""",
                campaign.workflow_id,
                first.pid,
                timeout=30,
            )
            first.send_signal(signal.SIGKILL)
            first.wait()
            second = _worker_process(
                _settings(database_url, sipp.uri, tmp_path / "b"), rabbit.url, 4
            )
            processes.append(second)
            await _all_final(pool, campaign, timeout=45)
        outcomes = await _check_promises(
            pool, campaign, sipp, retried_outcomes=("worker_lost",), max_calls=2
        )
        assert outcomes["worker_lost"] >= 2
        assert outcomes["answered"] == count
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)
            if process.poll() is None:
                process.kill()
                process.wait()
        await broker.delete_all()
        await broker.close()
        sipp.kill()


@contextlib.asynccontextmanager
async def _workers(
    pool: asyncpg.Pool, bus: AmqpBroker, settings: list[Settings], capacity: int
) -> AsyncIterator[None]:
    """Workers in this process, each with its own broker connection and user agent."""
    started = []
    try:
        for one in settings:
            broker = AmqpBroker(bus._url, bus.namespace)
            await broker.start()
            trunk = default_trunk(one)
            assert trunk is not None
            worker, agent = await start_worker(one, pool, broker, trunk, capacity=capacity)
            started.append((broker, worker, agent))
        yield
    finally:
        for broker, worker, agent in started:
            await worker.drain(timeout_s=10)
            await agent.close()
            await broker.close()


async def test_rabbitmq_restarted_mid_run(
    database_url: str, pool: asyncpg.Pool, rabbit: RabbitNode, tmp_path: Path
) -> None:
    """stop_app / start_app with calls up: publishers and consumers come back, nothing
    is lost or dialled twice."""
    count = 16
    sipp = await _start_sipp(tmp_path, calls=count)
    campaign = await _campaign(
        pool, count, {"pacing": {"mode": "progressive", "seats": 6}, "retry": {}}, "Hello there."
    )
    broker = AmqpBroker(rabbit.url, f"mq-{uuid.uuid4().hex[:6]}")
    await broker.start()
    workers = [_settings(database_url, sipp.uri, tmp_path / f"w{i}") for i in range(2)]
    try:
        async with _scheduler(pool, broker, campaign), _workers(pool, broker, workers, 4):
            await _until(
                pool,
                """SELECT count(*) FILTER (WHERE state = 'ended') >= 3
                      AND count(*) FILTER (WHERE state IN ('dialing', 'ringing', 'answered')) >= 2
                   FROM calls WHERE workflow_id = $1""",
                campaign.workflow_id,
                timeout=30,
            )
            await rabbit.actl("stop_app")
            await asyncio.sleep(2.0)
            await rabbit.actl("start_app")
            await _all_final(pool, campaign, timeout=45)
        outcomes = await _check_promises(pool, campaign, sipp, retried_outcomes=())
        assert outcomes == {"answered": count}
    finally:
        with contextlib.suppress(Exception):
            await broker.delete_all()
        await broker.close()
        sipp.kill()


async def test_postgresql_restarted_mid_run(
    private_postgres: PrivatePostgres, rabbit: RabbitNode, tmp_path: Path
) -> None:
    """The database stopped and started with calls up: every part waits for it and carries
    on, and no live worker is taken for lost because its heartbeats could not be written."""
    conn = await asyncpg.connect(private_postgres.url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    pool = await connect_pool(private_postgres.url, min_size=1, max_size=10)
    count = 16
    sipp = await _start_sipp(tmp_path, calls=count)
    broker = AmqpBroker(rabbit.url, f"pg-{uuid.uuid4().hex[:6]}")
    await broker.start()
    try:
        campaign = await _campaign(
            pool, count, {"pacing": {"mode": "progressive", "seats": 6}, "retry": {}}, "Hello."
        )
        workers = [_settings(private_postgres.url, sipp.uri, tmp_path / f"w{i}") for i in range(2)]
        async with _scheduler(pool, broker, campaign), _workers(pool, broker, workers, 4):
            await _until(
                pool,
                """SELECT count(*) FILTER (WHERE state = 'ended') >= 3
                      AND count(*) FILTER (WHERE state IN ('dialing', 'ringing', 'answered')) >= 2
                   FROM calls WHERE workflow_id = $1""",
                campaign.workflow_id,
                timeout=30,
            )
            # Down for longer than the scheduler's worker timeout: live workers'
            # heartbeats are stale when it comes back, and must not be taken for lost.
            await private_postgres.actl("-m", "fast", "stop")
            await asyncio.sleep(WORKER_TIMEOUT_S + 2)
            await private_postgres.actl("-o", private_postgres.options, "start")
            await _all_final(pool, campaign, timeout=45)
        outcomes = await _check_promises(pool, campaign, sipp, retried_outcomes=())
        assert outcomes == {"answered": count}
    finally:
        with contextlib.suppress(Exception):
            await broker.delete_all()
        await broker.close()
        await pool.close()
        sipp.kill()

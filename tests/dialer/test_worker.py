"""The worker: claims before dialling, never dials a job twice, reports, drains."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from dialer.bus import Broker
from dialer.messages import DialJob, decode_events
from dialer.worker import Emit, Worker, storable
from scheduler.consumer import EventConsumer
from scheduler.engine import Scheduler
from tests.conftest import make_tenant
from tests.scheduler.test_engine import NOON, Clock, _records, _settle, _workflow


class ScriptedRunner:
    """Stands in for the SIP user agent: answers every call after a short ring."""

    def __init__(self, hold_s: float = 0.05) -> None:
        self.calls: list[str] = []
        self.hold_s = hold_s
        self.release = asyncio.Event()
        self.release.set()

    async def run(self, job: DialJob, emit: Emit) -> dict[str, Any]:
        self.calls.append(job.call_id)
        await emit("dialing", {})  # as the real runner does once its INVITE is out
        await emit("ringing", {})
        await emit("answered", {})
        await self.release.wait()
        await asyncio.sleep(self.hold_s)
        return {"disposition": "answered", "sip_status": 200, "hangup_by": "caller", "talk_s": 0.05}


@contextlib.asynccontextmanager
async def running(pool: asyncpg.Pool, broker: Broker, worker: Worker) -> AsyncIterator[None]:
    """The event consumer and ``worker`` started, and both closed at the end."""
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    await worker.start()
    try:
        yield
    finally:
        await worker.close()
        await consumer.close()


async def _twenty_seats(pool: asyncpg.Pool) -> tuple[Any, asyncpg.Record]:
    """A tenant and a workflow whose 20 seats let a burst of calls through at once."""
    tenant = await make_tenant(pool, "wrk")
    workflow = await _workflow(pool, tenant)
    await pool.execute(
        """UPDATE workflow_versions SET settings = jsonb_set(settings, '{pacing,seats}', '20')
           WHERE workflow_id = $1""",
        workflow["id"],
    )
    return tenant, workflow


async def test_pipeline_with_worker_and_redelivered_job(pool: asyncpg.Pool, broker: Broker) -> None:
    tenant = await make_tenant(pool, "wrk")
    workflow = await _workflow(pool, tenant)
    ids = await _records(pool, tenant, workflow, [f"21255506{i:02d}" for i in range(3)])
    clock = Clock(NOON)
    runner = ScriptedRunner()
    worker = Worker(pool, broker, runner, capacity=5, clock=lambda: clock.now)
    async with running(pool, broker, worker):
        assert (
            await Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id]).tick()
        ).published == 3
        await _settle(
            pool,
            "SELECT bool_and(status = 'completed') FROM records WHERE id = ANY($1::uuid[])",
            ids,
        )
        # The same job again (a redelivery, or a republish): claimed already, not dialled.
        call_id = runner.calls[0]
        row = await pool.fetchrow(
            "SELECT record_id, workflow_id, tenant_id, phone_e164 FROM calls WHERE id = $1::uuid",
            call_id,
        )
        again = DialJob(
            call_id=call_id,
            record_id=str(row["record_id"]),
            tenant_id=str(row["tenant_id"]),
            workflow_id=str(row["workflow_id"]),
            node_id="call",
            phone_e164=row["phone_e164"],
        )
        await broker.publish_jobs([(call_id, again.to_bytes())])
        await _settle(pool, "SELECT $1::int > 0", 1)
        for _ in range(100):
            if worker.skipped:
                break
            await asyncio.sleep(0.02)
        assert worker.skipped == 1
        assert len(runner.calls) == 3 and worker.dialled == 3
    calls = await pool.fetch("SELECT * FROM calls WHERE record_id = ANY($1::uuid[])", ids)
    assert {c["state"] for c in calls} == {"ended"} and len(calls) == 3
    assert all(c["answered_at"] is not None and c["worker_id"] == worker.worker_id for c in calls)


async def test_drain_finishes_calls_in_progress(pool: asyncpg.Pool, broker: Broker) -> None:
    tenant = await make_tenant(pool, "wrk")
    workflow = await _workflow(pool, tenant)
    ids = await _records(pool, tenant, workflow, ["2125550701"])
    clock = Clock(NOON)
    runner = ScriptedRunner()
    runner.release.clear()
    worker = Worker(pool, broker, runner, capacity=2, clock=lambda: clock.now)
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    await worker.start()
    try:
        await Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id]).tick()
        for _ in range(200):
            if runner.calls:
                break
            await asyncio.sleep(0.02)
        drain = asyncio.create_task(worker.drain(timeout_s=10))
        await asyncio.sleep(0.2)
        assert not drain.done()  # the call is still in progress
        runner.release.set()
        await asyncio.wait_for(drain, 10)
        await _settle(pool, "SELECT status = 'completed' FROM records WHERE id = $1", ids[0])
    finally:
        await consumer.close()
    stopped = await pool.fetchval("SELECT stopped_at FROM workers WHERE id = $1", worker.worker_id)
    assert stopped is not None


async def test_drain_hands_back_a_waiting_job_at_once_not_after_the_call(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    """While the one slot's call goes on, the job waiting for it is handed back,
    unclaimed, as soon as the drain begins: another worker dials it before that
    call ends (it was claimed, then abandoned, and later closed as worker_lost)."""
    tenant = await make_tenant(pool, "wrk")
    workflow = await _workflow(pool, tenant)
    ids = await _records(pool, tenant, workflow, ["2125550715", "2125550716"])
    clock = Clock(NOON)
    runner = ScriptedRunner()
    runner.release.clear()
    worker = Worker(pool, broker, runner, capacity=1, confirm_backlog=1, clock=lambda: clock.now)
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    await worker.start()
    second = Worker(pool, broker, ScriptedRunner(), capacity=1, clock=lambda: clock.now)
    try:
        await Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id]).tick()
        for _ in range(200):
            if runner.calls:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the second job waits for the slot
        drain = asyncio.create_task(worker.drain(timeout_s=10))
        await second.start()
        for _ in range(250):
            if second.dialled:
                break
            await asyncio.sleep(0.02)
        assert second.dialled == 1 and not drain.done()  # the first call still goes on
        runner.release.set()
        await asyncio.wait_for(drain, 10)
        await _settle(
            pool,
            "SELECT bool_and(status = 'completed') FROM records WHERE id = ANY($1::uuid[])",
            ids,
        )
        assert worker.dialled == 1
    finally:
        await second.close()
        await consumer.close()


async def test_number_put_on_the_dnc_list_after_planning_is_not_dialled(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    tenant = await make_tenant(pool, "wrk")
    workflow = await _workflow(pool, tenant)
    ids = await _records(pool, tenant, workflow, ["2125550721"])
    clock = Clock(NOON)
    assert (
        await Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id]).tick()
    ).published == 1
    # The job is in the queue; the person asks not to be called before a worker takes it.
    await pool.execute(
        "INSERT INTO dnc (tenant_id, phone_e164, reason) VALUES ($1, '+12125550721', 'asked')",
        tenant.id,
    )
    runner = ScriptedRunner()
    worker = Worker(pool, broker, runner, capacity=2, clock=lambda: clock.now)
    async with running(pool, broker, worker):
        await _settle(pool, "SELECT status = 'dnc' FROM records WHERE id = $1", ids[0])
    assert runner.calls == [] and worker.dialled == 0
    call = await pool.fetchrow("SELECT state, disposition FROM calls WHERE record_id = $1", ids[0])
    assert (call["state"], call["disposition"]) == ("ended", "dnc")
    assert await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE record_id = $1 AND event_type = 'record.completed' "
        "AND payload->'data'->>'status' = 'dnc'",
        ids[0],
    )


async def test_job_that_outlives_the_calling_window_is_not_dialled(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    """Planned 30 s before the window closes (20:00 New York), taken by a worker a
    minute later: not dialled, and the record waits for its next window."""
    tenant = await make_tenant(pool, "wrk")
    workflow = await _workflow(pool, tenant)
    ids = await _records(pool, tenant, workflow, ["2125550722"])
    closes = datetime(2026, 11, 25, 20, 0, tzinfo=ZoneInfo("America/New_York")).timestamp()
    clock = Clock(closes - 30)
    assert (
        await Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id]).tick()
    ).published == 1
    clock.now = closes + 30
    runner = ScriptedRunner()
    worker = Worker(pool, broker, runner, capacity=2, clock=lambda: clock.now)
    async with running(pool, broker, worker):
        await _settle(
            pool, "SELECT disposition = 'expired' FROM calls WHERE record_id = $1", ids[0]
        )
        await _settle(pool, "SELECT status = 'queued' FROM records WHERE id = $1", ids[0])
    assert runner.calls == [] and worker.dialled == 0
    assert await pool.fetchval("SELECT attempts FROM records WHERE id = $1", ids[0]) == 0


def test_storable_takes_nul_out_of_every_string_and_key() -> None:
    data = {"sip_reason": "O\x00K", "bot_result": {"values": {"a\x00": ["x\x00y", 1]}}, "n": 2}
    assert storable(data) == {
        "sip_reason": "OK",
        "bot_result": {"values": {"a": ["xy", 1]}},
        "n": 2,
    }


class NulBot(ScriptedRunner):
    """A call whose far end put NUL characters in what it sent back."""

    async def run(self, job: DialJob, emit: Emit) -> dict[str, Any]:
        data = await super().run(job, emit)
        return data | {
            "sip_reason": "Normal\x00Clearing",
            "bot_result": {"outcome": "completed", "values": {"answer\x00": "ye\x00s"}},
        }


async def test_an_end_with_nul_characters_is_stored_without_them(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    tenant = await make_tenant(pool, "wrk")
    workflow = await _workflow(pool, tenant)
    (record_id,) = await _records(pool, tenant, workflow, ["2125550751"])
    clock = Clock(NOON)
    worker = Worker(pool, broker, NulBot(), capacity=2, clock=lambda: clock.now)
    async with running(pool, broker, worker):
        await Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id]).tick()
        await _settle(pool, "SELECT status = 'completed' FROM records WHERE id = $1", record_id)
    call = await pool.fetchrow("SELECT * FROM calls WHERE record_id = $1", record_id)
    assert call["sip_reason"] == "NormalClearing"
    assert call["bot_result"]["values"] == {"answer": "yes"}


class BlipPool:
    """The pool, but the next claim statement fails as if PostgreSQL were restarting."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.fail_next_claim = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        if self.fail_next_claim and "SET state = 'dialing'" in sql:
            self.fail_next_claim = False
            raise ConnectionResetError("server closed the connection (restart)")
        return await self._pool.fetch(sql, *args)


async def test_copy_of_a_finished_job_is_not_dialled_after_a_claim_retry(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    """The call is over but its end is not stored yet (the consumer lags), so the row
    is still 'dialing' under this worker; a copy of the job whose first claim
    attempt meets a database blip must not take that row as its own."""
    tenant = await make_tenant(pool, "wrk")
    workflow = await _workflow(pool, tenant)
    (record_id,) = await _records(pool, tenant, workflow, ["2125550731"])
    clock = Clock(NOON)
    runner = ScriptedRunner()
    blips = BlipPool(pool)
    worker = Worker(blips, broker, runner, capacity=5, clock=lambda: clock.now)  # type: ignore[arg-type]
    await worker.start()
    try:
        await Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id]).tick()
        for _ in range(200):
            if runner.calls and not worker.active:
                break
            await asyncio.sleep(0.02)
        call = await pool.fetchrow("SELECT * FROM calls WHERE record_id = $1", record_id)
        assert call["state"] == "dialing" and worker.dialled == 1
        copy = DialJob(
            call_id=str(call["id"]),
            record_id=str(record_id),
            tenant_id=str(tenant.id),
            workflow_id=str(workflow["id"]),
            node_id="call",
            phone_e164=call["phone_e164"],
        )
        blips.fail_next_claim = True
        await broker.publish_jobs([(str(call["id"]), copy.to_bytes())])
        for _ in range(200):
            if worker.skipped:
                break
            await asyncio.sleep(0.02)
        assert worker.skipped == 1
        assert worker.dialled == 1 and len(runner.calls) == 1
    finally:
        await worker.close()


async def test_paused_workflow_jobs_are_not_dialled_until_resumed(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    tenant = await make_tenant(pool, "wrk")
    workflow = await _workflow(pool, tenant)
    ids = await _records(pool, tenant, workflow, ["2125550741", "2125550742"])
    clock = Clock(NOON)
    assert (
        await Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id]).tick()
    ).published == 2
    await pool.execute("UPDATE workflows SET status = 'paused' WHERE id = $1", workflow["id"])
    runner = ScriptedRunner()
    worker = Worker(pool, broker, runner, capacity=5, clock=lambda: clock.now)
    await worker.start()
    try:
        for _ in range(200):
            if worker.skipped == 2:
                break
            await asyncio.sleep(0.02)
        assert worker.skipped == 2 and runner.calls == []
        states = await pool.fetch("SELECT state FROM calls WHERE record_id = ANY($1::uuid[])", ids)
        assert [r["state"] for r in states] == ["queued", "queued"]
    finally:
        await worker.close()


async def test_jobs_arriving_together_claim_in_one_statement_and_a_copy_is_not_dialled(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    """A burst of jobs (with one job published twice) is claimed in one round trip,
    and the call whose job came twice in that burst is dialled once."""
    tenant, workflow = await _twenty_seats(pool)
    ids = await _records(pool, tenant, workflow, [f"21255508{i:02d}" for i in range(8)])
    clock = Clock(NOON)
    runner = ScriptedRunner()
    runner.release.clear()
    worker = Worker(pool, broker, runner, capacity=20, clock=lambda: clock.now, claim_linger_s=0.05)
    captured: list[tuple[str, bytes]] = []
    real_publish = broker.publish_jobs

    async def publish_twice(messages):  # the first job goes out twice in the same burst
        captured.extend(messages)
        await real_publish([*messages, messages[0]])

    broker.publish_jobs = publish_twice  # type: ignore[method-assign]
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    await worker.start()
    try:
        scheduler = Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id])
        assert (await scheduler.tick()).published == 8
        for _ in range(200):
            if len(runner.calls) + worker.skipped == 9:
                break
            await asyncio.sleep(0.02)
        assert sorted(runner.calls) == sorted(call_id for call_id, _ in captured)
        assert worker.skipped == 1
        assert worker._claims.batches <= 2
        runner.release.set()
        await _settle(
            pool,
            "SELECT bool_and(status = 'completed') FROM records WHERE id = ANY($1::uuid[])",
            ids,
        )
    finally:
        broker.publish_jobs = real_publish  # type: ignore[method-assign]
        runner.release.set()
        await worker.close()
        await consumer.close()


async def test_calls_ending_together_report_their_ends_in_fewer_messages(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    """Ended events ready at once share a message: every call's end arrives, in
    fewer persistent messages than calls."""
    tenant, workflow = await _twenty_seats(pool)
    ids = await _records(pool, tenant, workflow, [f"21255509{i:02d}" for i in range(12)])
    clock = Clock(NOON)
    runner = ScriptedRunner(hold_s=0.0)
    runner.release.clear()
    worker = Worker(pool, broker, runner, capacity=20, clock=lambda: clock.now)
    ended_messages: list[int] = []
    real_publish = broker.publish_events

    async def counting(messages):
        for routing_key, _, body in messages:
            if routing_key == "call.ended":
                ended_messages.append(len(decode_events(body)[0]))
        await real_publish(messages)

    broker.publish_events = counting  # type: ignore[method-assign]
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    await worker.start()
    try:
        scheduler = Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id])
        assert (await scheduler.tick()).published == 12
        for _ in range(200):
            if len(runner.calls) == 12:
                break
            await asyncio.sleep(0.02)
        runner.release.set()  # all twelve calls end at once
        await _settle(
            pool,
            "SELECT bool_and(status = 'completed') FROM records WHERE id = ANY($1::uuid[])",
            ids,
        )
    finally:
        broker.publish_events = real_publish  # type: ignore[method-assign]
        await worker.close()
        await consumer.close()
    assert sum(ended_messages) == 12
    assert len(ended_messages) < 12


class RingingRunner(ScriptedRunner):
    """Rings until taken back (or released), as a call the pacer may hang up."""

    def __init__(self) -> None:
        super().__init__()
        self.release.clear()
        self.taken: list[str] = []

    def take_back(self, call_id: str) -> bool:
        self.taken.append(call_id)
        self.release.set()
        return True


async def test_take_back_reaches_the_runner_after_the_listener_lost_its_connection(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    tenant = await make_tenant(pool, "tkb")
    workflow = await _workflow(pool, tenant)
    (record_id,) = await _records(pool, tenant, workflow, ["2125550700"])
    runner = RingingRunner()
    worker = Worker(pool, broker, runner, capacity=2, heartbeat_s=0.1, clock=lambda: NOON)
    await worker.start()
    scheduler = Scheduler(pool, broker, clock=Clock(NOON), tenant_ids=[tenant.id])
    try:
        await scheduler.tick()
        await _settle(pool, "SELECT count(*) = 1 FROM calls WHERE record_id = $1 "
                      "AND state = 'dialing'", record_id)  # fmt: skip
        call_id = await pool.fetchval("SELECT id::text FROM calls WHERE record_id = $1", record_id)
        # The listener's connection is killed, as a database restart would.
        killed = await pool.fetchval(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE query LIKE 'LISTEN%' AND datname = current_database()"""
        )
        assert killed == 1
        for _ in range(100):
            await asyncio.sleep(0.05)
            await pool.execute("SELECT pg_notify('dialer_pacing_cancel', $1)", f'["{call_id}"]')
            if runner.taken:
                break
        # Heard again once the heartbeat listened anew, and only for our call.
        assert runner.taken and set(runner.taken) == {call_id}
        assert worker.taken_back >= 1
        # A call this worker does not hold is not passed on.
        await pool.execute(
            "SELECT pg_notify('dialer_pacing_cancel', $1)", '["not-a-call-of-ours", 3]'
        )
        await asyncio.sleep(0.2)
        assert set(runner.taken) == {call_id}
    finally:
        runner.release.set()
        await worker.drain(timeout_s=5)

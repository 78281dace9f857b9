"""The worker's events: the outcome waits for an absent broker, progress is let go,
and a short call's progress is coalesced into its end."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from dialer.bus import BrokerUnavailable, MemoryBroker
from dialer.messages import CallEvent, DialJob
from dialer.worker import Emit, Worker
from scheduler.consumer import EventConsumer
from scheduler.engine import Scheduler
from tests.conftest import make_tenant
from tests.dialer.test_worker import ScriptedRunner
from tests.scheduler.test_engine import NOON, Clock, _records, _settle, _workflow


class AwayBroker(MemoryBroker):
    """Refuses every progress event, and the first ``refuse_ended`` ended events."""

    def __init__(self, refuse_ended: int) -> None:
        super().__init__("outage-test")
        self.refuse_ended = refuse_ended
        self.refused: list[str] = []

    async def publish_events(self, messages: Sequence[tuple[str, str, bytes]]) -> None:
        for routing_key, _, _ in messages:
            if routing_key != "call.ended" or self.refuse_ended > 0:
                self.refuse_ended -= routing_key == "call.ended"
                self.refused.append(routing_key)
                raise BrokerUnavailable("broker restarting")
        await super().publish_events(messages)


async def test_ended_event_is_published_once_the_broker_is_back(pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pool, "away")
    workflow = await _workflow(pool, tenant)
    (record_id,) = await _records(pool, tenant, workflow, ["2125550901"])
    broker = AwayBroker(refuse_ended=2)
    await broker.start()
    clock = Clock(NOON)
    runner = ScriptedRunner()
    worker = Worker(pool, broker, runner, capacity=2, clock=lambda: clock.now)
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    await worker.start()
    try:
        await Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id]).tick()
        await _settle(pool, "SELECT status = 'completed' FROM records WHERE id = $1", record_id)
    finally:
        await worker.close()
        await consumer.close()
        await broker.close()
    # Progress (dialing, ringing, answered) was let go; the outcome was refused twice, then sent.
    assert broker.refused.count("call.ended") == 2
    assert {"call.dialing", "call.ringing", "call.answered"} <= set(broker.refused)
    call = await pool.fetchrow(
        "SELECT state, disposition FROM calls WHERE record_id = $1", record_id
    )
    assert (call["state"], call["disposition"]) == ("ended", "answered")
    assert len(runner.calls) == 1 and worker.dialled == 1


class RecordingBroker(MemoryBroker):
    def __init__(self) -> None:
        super().__init__("coalesce-test")
        self.events: list[CallEvent] = []

    async def publish_events(self, messages: Sequence[tuple[str, str, bytes]]) -> None:
        self.events.extend(CallEvent.from_bytes(body) for _, _, body in messages)
        await super().publish_events(messages)


class HoldByNumber(ScriptedRunner):
    """Holds each call as long as its number says: 50 ms, or 800 ms for a number ending in 2."""

    async def run(self, job: DialJob, emit: Emit) -> dict[str, Any]:
        self.hold_s = 0.8 if job.phone_e164.endswith("2") else 0.05
        return await super().run(job, emit)


async def test_progress_of_a_short_call_is_coalesced_into_its_end(pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pool, "coal")
    workflow = await _workflow(pool, tenant)
    short, long = await _records(pool, tenant, workflow, ["2125550911", "2125550912"])
    broker = RecordingBroker()
    await broker.start()
    clock = Clock(NOON)
    worker = Worker(
        pool, broker, HoldByNumber(), capacity=2, clock=lambda: clock.now, progress_delay_s=0.3
    )
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    await worker.start()
    try:
        await Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id]).tick()
        await _settle(
            pool,
            "SELECT bool_and(status = 'completed') FROM records WHERE id = ANY($1::uuid[])",
            [short, long],
        )
    finally:
        await worker.close()
        await consumer.close()
        await broker.close()
    by_record: dict[str, list[CallEvent]] = {}
    for event in broker.events:
        by_record.setdefault(event.record_id, []).append(event)
    # The short call's progress was dropped: its end says it all.
    assert [e.kind for e in by_record[str(short)]] == ["ended"]
    # The long one outlived the delay: its progress went out, before its end.
    kinds = [e.kind for e in by_record[str(long)]]
    assert sorted(kinds[:-1]) == ["answered", "dialing", "ringing"] and kinds[-1] == "ended"
    answered = await pool.fetchval("SELECT answered_at FROM calls WHERE record_id = $1", long)
    assert answered is not None


class SlowConfirmBroker(MemoryBroker):
    """Confirms no ended event until ``confirm`` is set (progress goes through)."""

    def __init__(self) -> None:
        super().__init__("confirm-test")
        self.confirm = asyncio.Event()
        self.waiting = 0

    async def publish_events(self, messages: Sequence[tuple[str, str, bytes]]) -> None:
        if any(routing_key == "call.ended" for routing_key, _, _ in messages):
            self.waiting += 1
            await self.confirm.wait()
        await super().publish_events(messages)


async def test_a_call_slot_is_free_while_its_end_awaits_the_confirm(pool: asyncpg.Pool) -> None:
    """One call slot, one job of backlog: the second call is dialled while the first
    one's end is unconfirmed, and no job is acknowledged before its end is confirmed
    (else the broker would hand over the third job)."""
    tenant = await make_tenant(pool, "slot")
    workflow = await _workflow(pool, tenant)
    ids = await _records(pool, tenant, workflow, [f"21255509{i:02d}" for i in range(3)])
    broker = SlowConfirmBroker()
    await broker.start()
    clock = Clock(NOON)
    runner = ScriptedRunner(hold_s=0.01)
    worker = Worker(pool, broker, runner, capacity=1, confirm_backlog=1, clock=lambda: clock.now)
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    await worker.start()
    try:
        await Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id]).tick()
        for _ in range(200):
            if broker.waiting == 2:
                break
            await asyncio.sleep(0.02)
        assert broker.waiting == 2 and len(runner.calls) == 2
        await asyncio.sleep(0.3)
        assert len(runner.calls) == 2  # both jobs still unacknowledged: no third delivery
        assert not await pool.fetchval(
            "SELECT bool_or(status = 'completed') FROM records WHERE id = ANY($1::uuid[])", ids
        )
        broker.confirm.set()
        await _settle(
            pool,
            "SELECT bool_and(status = 'completed') FROM records WHERE id = ANY($1::uuid[])",
            ids,
        )
    finally:
        await worker.close()
        await consumer.close()
        await broker.close()
    assert len(runner.calls) == 3 and worker.dialled == 3

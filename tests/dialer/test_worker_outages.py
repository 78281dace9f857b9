"""The worker while the broker is away: the outcome waits, progress is let go."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from dialer.bus import BrokerUnavailable, MemoryBroker
from dialer.worker import Worker
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

"""After a database outage, no live worker is taken for lost for want of heartbeats."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg

from dialer.bus import MemoryBroker
from scheduler.engine import Scheduler
from tests.conftest import make_tenant
from tests.scheduler.test_engine import NOON, Clock, _records, _workflow


class AwayOnce:
    """A pool whose first fetch fails as a database going away does."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.failed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.pool, name)

    async def fetch(self, *args: object) -> list[asyncpg.Record]:
        if not self.failed:
            self.failed = True
            raise ConnectionRefusedError(111, "Connect call failed")
        return await self.pool.fetch(*args)


async def test_workers_get_time_to_beat_again_after_an_outage(pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pool, "out")
    workflow = await _workflow(pool, tenant)
    (record_id,) = await _records(pool, tenant, workflow, ["2125550951"])
    broker = MemoryBroker("outage")
    clock = Clock(NOON)
    scheduler = Scheduler(
        AwayOnce(pool),  # type: ignore[arg-type]
        broker,
        clock=clock,
        tenant_ids=[tenant.id],
        worker_timeout_s=30,
        tick_s=0.01,
    )
    # The run loop meets the outage once, then ticks on; stop it after a few ticks.
    stop = asyncio.Event()
    runner = asyncio.create_task(scheduler.run(stop))
    while not scheduler.pool.failed:  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    stop.set()
    await runner
    call_id = await pool.fetchval("SELECT last_call_id FROM records WHERE id = $1", record_id)
    # Its worker's last beat is a minute old: it could not write one while the database was away.
    quiet = f"w-quiet-{secrets.token_hex(3)}"
    await pool.execute(
        "INSERT INTO workers (id, last_seen_at) VALUES ($1, now() - interval '1 minute')", quiet
    )
    await pool.execute(
        "UPDATE calls SET state = 'answered', worker_id = $2 WHERE id = $1", call_id, quiet
    )
    clock.now = NOON + 10
    assert (await scheduler.tick()).lost == 0  # still within the grace after the outage
    clock.now = NOON + 60
    assert (await scheduler.tick()).lost == 1  # silent past the grace: lost


async def test_a_scheduler_just_started_gives_workers_time_to_beat(pool: asyncpg.Pool) -> None:
    """Started during or after an outage it never saw (its supervisor restarted it),
    a scheduler judges no worker before worker_timeout_s has passed."""
    tenant = await make_tenant(pool, "out")
    workflow = await _workflow(pool, tenant)
    (record_id,) = await _records(pool, tenant, workflow, ["2125550952"])
    clock = Clock(NOON)
    first = Scheduler(pool, MemoryBroker("fresh"), clock=clock, tenant_ids=[tenant.id])
    assert (await first.tick()).published == 1
    call_id = await pool.fetchval("SELECT last_call_id FROM records WHERE id = $1", record_id)
    quiet = f"w-quiet-{secrets.token_hex(3)}"
    await pool.execute(
        "INSERT INTO workers (id, last_seen_at) VALUES ($1, now() - interval '40 seconds')", quiet
    )
    await pool.execute(
        "UPDATE calls SET state = 'answered', worker_id = $2 WHERE id = $1", call_id, quiet
    )
    fresh = Scheduler(
        pool, MemoryBroker("fresh"), clock=clock, tenant_ids=[tenant.id], worker_timeout_s=30
    )
    assert (await fresh.tick()).lost == 0
    clock.now = NOON + 10
    assert (await fresh.tick()).lost == 0
    clock.now = NOON + 31
    assert (await fresh.tick()).lost == 1  # still silent past the grace: lost

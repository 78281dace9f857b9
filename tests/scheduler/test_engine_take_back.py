"""The scheduler's side of taking back ringing calls, against real PostgreSQL.

Several calls are in flight at once and only some may be taken back: those
that have *rung* (by the stamp the worker reported) at least 15 s and have
not been asked before. The pacer knows its laws from a seeded history
(answers after 2-4 s of ringing, two-minute talks) and the one seat is
taken, so every eligible call would find no seat if it answered now. The
scheduler must mark exactly those calls and notify exactly their ids.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import asyncpg

from dialer.bus import Broker
from dialer.ids import new_id
from dialer.pg_listen import ChannelListener
from dialer.take_back import CHANNEL, call_ids
from scheduler.engine import Scheduler
from tests.conftest import make_tenant
from tests.scheduler.test_engine import NOON, SETTINGS, Clock, _records, _workflow
from tests.workflow_setup import seed_call_history

# (state, seconds since dialled, seconds since ringing, already asked)
IN_FLIGHT = {
    "rang_20_s": ("ringing", 22.0, 20.0, False),
    "rang_16_s": ("ringing", 17.0, 16.0, False),
    "asked_before": ("ringing", 22.0, 20.0, True),
    "dialled_22_s_rang_5_s": ("ringing", 22.0, 5.0, False),
    "no_ring_heard": ("dialing", 30.0, None, False),
    "queued": ("queued", None, None, False),
}


async def test_only_calls_that_rang_long_enough_are_marked_and_notified(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    tenant = await make_tenant(pool, "tb")
    settings = {**SETTINGS, "pacing": {"mode": "predictive", "seats": 1}}
    workflow = await _workflow(pool, tenant, settings)
    (record_id,) = await _records(pool, tenant, workflow, ["2125550100"])
    # The record stands for every call here; the scheduler has nothing to dial.
    await pool.execute("UPDATE records SET status = 'completed' WHERE id = $1", record_id)

    async def call(
        state: str,
        dialing_at: datetime | None,
        ringing_at: datetime | None = None,
        answered_at: datetime | None = None,
        asked_at: datetime | None = None,
    ) -> uuid.UUID:
        call_id = new_id()
        await pool.execute(
            """INSERT INTO calls (id, tenant_id, record_id, workflow_id, node_id, phone_e164,
                                  state, dialing_at, ringing_at, answered_at, pacing_cancel_at)
               VALUES ($1, $2, $3, $4, 'call', '+12125550100', $5, $6, $7, $8, $9)""",
            call_id,
            tenant.id,
            record_id,
            workflow["id"],
            state,
            dialing_at,
            ringing_at,
            answered_at,
            asked_at,
        )
        return call_id

    await seed_call_history(pool, tenant.id, record_id, workflow["id"])
    now = await pool.fetchval("SELECT now()")
    await call("answered", dialing_at=now, answered_at=now)  # the one seat, taken

    def ago(seconds: float | None) -> datetime | None:
        return None if seconds is None else now - timedelta(seconds=seconds)

    ids = {
        name: await call(
            state,
            dialing_at=ago(dialled),
            ringing_at=ago(rang),
            asked_at=now if asked else None,
        )
        for name, (state, dialled, rang, asked) in IN_FLIGHT.items()
    }
    heard: list[str] = []
    listener = ChannelListener(pool, CHANNEL, lambda payload: heard.extend(call_ids(payload)))
    await listener.start()
    try:
        scheduler = Scheduler(pool, broker, clock=Clock(NOON), tenant_ids=[tenant.id])
        await scheduler.tick()
        for _ in range(50):
            if len(heard) >= 2:
                break
            await asyncio.sleep(0.02)
        marked = {
            r["id"]
            for r in await pool.fetch("SELECT id FROM calls WHERE pacing_cancel_at > $1", now)
        }
        expected = {ids["rang_20_s"], ids["rang_16_s"]}
        assert marked == expected
        assert sorted(heard) == sorted(str(i) for i in expected)
        assert scheduler.taken_back == 2
        # Asked once: the next tick asks nobody again.
        await scheduler.tick()
        await asyncio.sleep(0.1)
        assert scheduler.taken_back == 2 and len(heard) == 2
    finally:
        await listener.close()

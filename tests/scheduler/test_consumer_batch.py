"""The event consumer handles a batch of call events in one transaction, set-based.

Against real PostgreSQL: the outcome must be what one-by-one handling gave
(calls ended, node runs closed, records moved on, outbox rows in each
record's order), duplicates change nothing, and one bad event fails alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid

import asyncpg

from dialer.bus import Broker
from dialer.messages import CallEvent, encode_events
from dialer.progress import CHANNEL as PROGRESS_CHANNEL
from scheduler.consumer import EventConsumer
from scheduler.engine import Scheduler
from tests.conftest import make_tenant
from tests.scheduler.test_engine import NOON, Clock, _records, _workflow


async def _placed(pool: asyncpg.Pool, broker: Broker, count: int) -> list[asyncpg.Record]:
    tenant = await make_tenant(pool, "batch")
    workflow = await _workflow(pool, tenant)
    await _records(pool, tenant, workflow, [f"21255507{i:02d}" for i in range(count)])
    scheduler = Scheduler(pool, broker, clock=Clock(NOON), tenant_ids=[tenant.id])
    await pool.execute(
        """UPDATE workflow_versions SET settings = jsonb_set(settings, '{pacing,seats}', '50')
           WHERE workflow_id = $1""",
        workflow["id"],
    )
    assert (await scheduler.tick()).published == count
    return await pool.fetch(
        "SELECT * FROM calls WHERE workflow_id = $1 ORDER BY phone_e164", workflow["id"]
    )


async def _until_ended(pool: asyncpg.Pool, calls: list[asyncpg.Record], deadline: float) -> None:
    while await pool.fetchval(
        "SELECT count(*) FROM calls WHERE id = ANY($1::uuid[]) AND state <> 'ended'",
        [c["id"] for c in calls],
    ):
        assert asyncio.get_running_loop().time() < deadline, "calls not ended in time"
        await asyncio.sleep(0.05)


def _ended(call: asyncpg.Record, disposition: str, **data: object) -> CallEvent:
    return CallEvent(
        call_id=str(call["id"]),
        record_id=str(call["record_id"]),
        tenant_id=str(call["tenant_id"]),
        workflow_id=str(call["workflow_id"]),
        kind="ended",
        at=NOON + 30,
        worker_id="w-batch",
        data={"disposition": disposition, "hangup_by": "callee", **data},
    )


async def test_a_batch_ends_every_call_once_and_keeps_each_records_order(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    calls = await _placed(pool, broker, 6)
    events = [
        _ended(c, "answered", sip_status=200, talk_s=3, media_stats={"rx": [1, 2]}) for c in calls
    ]
    # A redelivered duplicate and a worker_lost verdict racing the real end.
    lost = dataclasses.replace(events[1], data={"disposition": "worker_lost"})
    events += [events[0], lost]
    consumer = EventConsumer(pool, broker)
    await consumer.handle_many(events)
    await consumer.handle_many(events)  # all of it again: nothing changes
    rows = await pool.fetch(
        """SELECT c.state, c.disposition, c.sip_status, c.talk_s, c.media_stats, c.worker_id,
                  n.status AS run_status, n.outcome, r.status AS record_status
           FROM calls c JOIN node_runs n ON n.id = c.node_run_id
           JOIN records r ON r.id = c.record_id
           WHERE c.id = ANY($1::uuid[])""",
        [c["id"] for c in calls],
    )
    assert len(rows) == 6
    for row in rows:
        assert (row["state"], row["disposition"], row["sip_status"]) == ("ended", "answered", 200)
        assert (row["talk_s"], row["media_stats"]) == (3.0, {"rx": [1, 2]})
        assert row["worker_id"] == "w-batch"
        assert (row["run_status"], row["outcome"]) == ("completed", "answered")
        assert row["record_status"] == "completed"
    outbox = await pool.fetch(
        "SELECT record_id, event_type, payload FROM outbox WHERE record_id = ANY($1::uuid[]) "
        "ORDER BY id",
        [c["record_id"] for c in calls],
    )
    by_record: dict[uuid.UUID, list[str]] = {}
    for row in outbox:
        by_record.setdefault(row["record_id"], []).append(row["event_type"])
    assert list(by_record.values()) == [["call.completed", "record.completed"]] * 6
    completed = [r["payload"]["data"] for r in outbox if r["event_type"] == "call.completed"]
    assert {c["disposition"] for c in completed} == {"answered"}
    assert {c["media_stats"]["rx"][1] for c in completed} == {2}


async def test_one_bad_event_fails_alone(pool: asyncpg.Pool, broker: Broker) -> None:
    calls = await _placed(pool, broker, 3)
    good = [_ended(c, "busy", sip_status=486) for c in calls[:2]]
    bad = _ended(calls[2], "answered", sip_status="not a status")
    consumer = EventConsumer(pool, broker)
    results = await consumer._handle_batch([good[0], bad, good[1]])
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], Exception)
    states = {
        r["id"]: r["state"]
        for r in await pool.fetch(
            "SELECT id, state FROM calls WHERE id = ANY($1::uuid[])", [c["id"] for c in calls]
        )
    }
    assert [states[c["id"]] for c in calls] == ["ended", "ended", "queued"]


async def test_events_through_the_broker_are_handled_in_batches(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    calls = await _placed(pool, broker, 20)
    consumer = EventConsumer(pool, broker, linger_s=0.05)
    await consumer.start()
    try:
        events = [_ended(c, "no_answer") for c in calls]
        await broker.publish_events([(e.routing_key, e.call_id, e.to_bytes()) for e in events])
        deadline = asyncio.get_running_loop().time() + 10
        await _until_ended(pool, calls, deadline)
    finally:
        await consumer.close()
    assert 1 <= consumer._batcher.batches < 20
    assert await broker.queue_depth(f"{broker.namespace}.{EventConsumer.QUEUE_SUFFIX}") == 0


async def test_a_message_of_several_ends_is_handled_and_a_bad_element_parks_it(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    """Workers send ended events ready together in one message: every readable
    event is handled; an unreadable element dead-letters the message, whose
    readable events handled again would change nothing."""
    calls = await _placed(pool, broker, 5)
    events = [_ended(c, "busy", sip_status=486) for c in calls]
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    try:
        await broker.publish_events([("call.ended", "m1", encode_events(events[:3]))])
        mixed = encode_events(events[3:])[:-1] + b',{"kind": "ended"}]'
        await broker.publish_events([("call.ended", "m2", mixed)])
        deadline = asyncio.get_running_loop().time() + 10
        await _until_ended(pool, calls, deadline)
        while await broker.queue_depth(broker.dead_queue) != 1:
            assert asyncio.get_running_loop().time() < deadline, "nothing dead-lettered"
            await asyncio.sleep(0.05)
    finally:
        await consumer.close()
    assert await broker.queue_depth(f"{broker.namespace}.{EventConsumer.QUEUE_SUFFIX}") == 0
    outcomes = await pool.fetch(
        "SELECT disposition, sip_status FROM calls WHERE id = ANY($1::uuid[])",
        [c["id"] for c in calls],
    )
    assert [(r["disposition"], r["sip_status"]) for r in outcomes] == [("busy", 486)] * 5


async def test_batches_at_once_sharing_calls_end_each_call_once(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    """Two batches in the database at once, each with every call's end (in opposite
    orders): each waits for the other's locks, none deadlocks, each call ends once."""
    calls = await _placed(pool, broker, 8)
    events = [_ended(c, "answered", sip_status=200) for c in calls]
    consumer = EventConsumer(pool, broker, concurrency=2)
    await asyncio.gather(consumer.handle_many(events), consumer.handle_many(events[::-1]))
    ids = [c["id"] for c in calls]
    assert await pool.fetchval(
        "SELECT count(*) FROM calls WHERE id = ANY($1::uuid[]) AND state = 'ended'", ids
    ) == len(calls)
    completed = await pool.fetch(
        """SELECT payload->'data'->>'call_id' AS call_id FROM outbox
           WHERE event_type = 'call.completed'
             AND payload->'data'->>'call_id' = ANY($1::text[])""",
        [str(i) for i in ids],
    )
    assert sorted(r["call_id"] for r in completed) == sorted(str(i) for i in ids)


async def test_a_batch_of_progress_stamps_each_call_once_and_notifies_in_order(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    first, second = await _placed(pool, broker, 2)

    def progress(call: asyncpg.Record, kind: str, at: float) -> CallEvent:
        return dataclasses.replace(_ended(call, "answered"), kind=kind, at=at, data={})

    heard: list[tuple[str, str]] = []

    def hear(*args: object) -> None:
        note = json.loads(str(args[3]))
        heard.append((note["data"]["call_id"], note["type"]))

    listener = await pool.acquire()
    await listener.add_listener(PROGRESS_CHANNEL, hear)
    try:
        await EventConsumer(pool, broker).handle_many(
            [
                progress(first, "dialing", NOON + 1),
                progress(second, "ringing", NOON + 2),
                progress(first, "ringing", NOON + 3),
                progress(second, "dialing", NOON + 4),  # late: changes and says nothing
                progress(first, "answered", NOON + 5),
                progress(first, "ringing", NOON + 6),  # a duplicate: nothing either
            ]
        )
        for _ in range(100):
            if len(heard) >= 4:
                break
            await asyncio.sleep(0.01)
    finally:
        await listener.remove_listener(PROGRESS_CHANNEL, hear)
        await pool.release(listener)
    a, b = str(first["id"]), str(second["id"])
    assert heard == [
        (a, "call.dialing"), (b, "call.ringing"), (a, "call.ringing"), (a, "call.answered")
    ]  # fmt: skip
    rows = {
        r["id"]: r
        for r in await pool.fetch(
            """SELECT id, state, extract(epoch FROM dialing_at) AS dialing,
                      extract(epoch FROM ringing_at) AS ringing,
                      extract(epoch FROM answered_at) AS answered
               FROM calls WHERE id = ANY($1::uuid[])""",
            [first["id"], second["id"]],
        )
    }
    one, two = rows[first["id"]], rows[second["id"]]
    assert (one["state"], one["dialing"], one["ringing"], one["answered"]) == (
        "answered", NOON + 1, NOON + 3, NOON + 5
    )  # fmt: skip
    assert (two["state"], two["dialing"], two["ringing"]) == ("ringing", None, NOON + 2)


async def test_a_claimed_call_is_dialled_when_its_invite_goes_out(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    # The claim sets no dialing time: a call may wait for a channel of its trunk
    # first. The worker's "dialing" event, sent with the INVITE, stamps it, and
    # counts the call as dialled; ring times are measured from there.
    calls = await _placed(pool, broker, 2)
    await pool.execute(
        "UPDATE calls SET state = 'dialing', worker_id = 'w' WHERE id = ANY($1::uuid[])",
        [c["id"] for c in calls],
    )
    workflow_id = calls[0]["workflow_id"]

    async def dialled() -> int:
        return await pool.fetchval(
            """SELECT coalesce(sum(n), 0) FROM call_counters
               WHERE workflow_id = $1 AND kind = 'dialled'""",
            workflow_id,
        )

    assert await dialled() == 0
    invite = dataclasses.replace(_ended(calls[0], "answered"), kind="dialing", data={}, at=NOON + 7)
    consumer = EventConsumer(pool, broker)
    await consumer.handle_many([invite, invite])
    row = await pool.fetchrow("SELECT state, dialing_at FROM calls WHERE id = $1", calls[0]["id"])
    assert row["state"] == "dialing" and row["dialing_at"].timestamp() == NOON + 7
    assert await dialled() == 1
    # The other never got a channel: it ends expired, never dialled.
    await consumer.handle_many([_ended(calls[1], "expired", hangup_by="system")])
    never = await pool.fetchval("SELECT dialing_at FROM calls WHERE id = $1", calls[1]["id"])
    assert never is None and await dialled() == 1

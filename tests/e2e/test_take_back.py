"""The predictive pacer hangs up a ringing call whose answer would find no seat.

Real parts: PostgreSQL, the in-process broker, the scheduler with predictive
pacing, the event consumer, a worker with our SIP user agent, SIPp ringing
without end. The workflow's history (100 finished calls: answers after 2-4 s
of ringing, two-minute talks) tells the pacer its laws; the one seat is free
when the record is dialled and taken (a talking call written in) while it
rings. Once it has rung ``cancel_ringing_after_s`` (3 s here, 15 s by
default; counted from the ringing the worker reported, not the dial) the call
would, if answered, find no seat: the scheduler marks it and notifies, the
worker CANCELs it, and it ends as ``no_answer`` without counting in the
pacer's answer-rate sample.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from dialer.ids import new_id
from tests.conftest import Tenant
from tests.integration.peers import start_sipp
from tests.workflow_setup import (
    insert_uk_records,
    insert_workflow,
    running_pipeline,
    seed_call_history,
    worker_settings,
)

pytestmark = pytest.mark.integration

DEFINITION = {
    "start": "call",
    "nodes": [
        {
            "id": "call",
            "type": "call",
            "handler": {"type": "prompt", "text": "Hello."},
            "ring_timeout_s": 40,
        },
        {"id": "done", "type": "end"},
    ],
    "edges": [{"from": "call", "on": "default", "to": "done"}],
}
SETTINGS = {
    "pacing": {"mode": "predictive", "seats": 1, "cancel_ringing_after_s": 3},
    "retry": {},
}


async def test_ringing_call_without_a_seat_in_sight_is_hung_up(
    pool: asyncpg.Pool, tenant: Tenant, tmp_path: Path, database_url: str
) -> None:
    sipp = await start_sipp("uas_ring_no_answer.xml", tmp_path, calls=1, timeout_s=60)
    workflow = await insert_workflow(pool, tenant.id, DEFINITION, SETTINGS, "take back")
    workflow_id = workflow["id"]
    dialled, past = await insert_uk_records(
        pool, tenant.id, workflow, ["+442071838811", "+442071838812"]
    )
    # The second record stands for the calls of the past: it is not dialled.
    await pool.execute("UPDATE records SET status = 'completed' WHERE id = $1", past)
    await seed_call_history(pool, tenant.id, past, workflow_id)
    settings = worker_settings(database_url, tmp_path, sipp.uri)
    loop = asyncio.get_running_loop()
    talking = new_id()
    try:
        async with running_pipeline(pool, settings, tenant.id, "take-back-test") as (
            scheduler,
            worker,
        ):
            deadline = loop.time() + 20
            while not await pool.fetchval(
                """SELECT count(*) FROM calls
                   WHERE record_id = $1 AND state IN ('dialing', 'ringing')""",
                dialled,
            ):
                assert loop.time() < deadline, "the record was not dialled"
                await asyncio.sleep(0.05)
            # Ringing now, and not taken back while the seat is free.
            await asyncio.sleep(3.5)
            assert scheduler.taken_back == 0
            # Someone else's answer takes the seat, for minutes by the history.
            await pool.execute(
                """INSERT INTO calls (id, tenant_id, record_id, workflow_id, node_id,
                                      phone_e164, state, worker_id, dialing_at, answered_at)
                   VALUES ($1, $2, $3, $4, 'call', '+442071838800', 'answered', $5,
                           now() - interval '5 seconds', now())""",
                talking,
                tenant.id,
                past,
                workflow_id,
                worker.worker_id,
            )
            deadline = loop.time() + 20
            while await pool.fetchval(
                "SELECT status <> 'completed' FROM records WHERE id = $1", dialled
            ):
                assert loop.time() < deadline, "the ringing call was not hung up"
                await asyncio.sleep(0.1)
            # SIPp saw our CANCEL (its scenario fails without one).
            assert await sipp.finish() == 0, sipp.errors()
            await pool.execute(
                "UPDATE calls SET state = 'ended', ended_at = now() WHERE id = $1", talking
            )
    finally:
        sipp.kill()

    call = await pool.fetchrow("SELECT * FROM calls WHERE record_id = $1", dialled)
    assert (call["disposition"], call["end_reason"]) == ("no_answer", "pacing")
    assert call["pacing_cancel_at"] is not None and call["ringing_at"] is not None
    assert (call["pacing_cancel_at"] - call["ringing_at"]).total_seconds() >= 3.0
    rang = (call["ended_at"] - call["dialing_at"]).total_seconds()
    assert 3.5 < rang < 15.0, rang  # long before the 40 s ring timeout
    assert scheduler.taken_back == 1 and worker.taken_back == 1
    payload = await pool.fetchval(
        "SELECT payload FROM outbox WHERE workflow_id = $1 AND event_type = 'call.completed'",
        workflow_id,
    )
    assert payload["data"]["disposition"] == "no_answer"
    assert payload["data"]["pacing_cancelled"] is True
    assert payload["data"]["end_reason"] == "pacing"

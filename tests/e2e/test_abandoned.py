"""One seat, two live answers at once: one call is served, the other is abandoned.

Real parts: PostgreSQL, the in-process broker, the scheduler (fixed-ratio
pacing dials two calls for the one seat), the event consumer, a worker with
our SIP user agent and RTP, SIPp answering both calls at once. The abandoned
call waits for the seat for ``max_wait_s``, hears the identification message
(checked in its recording: silence on our side while it waits, speech after),
is hung up by us, and counts as ``abandoned``. One that presses the message's
opt-out key is hung up at once and its number goes on the do-not-call list.
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from dialer.runner import OPT_OUT_GRACE_S
from tests.conftest import Tenant
from tests.integration.peers import require, start_sipp
from tests.workflow_setup import (
    insert_uk_records,
    insert_workflow,
    running_pipeline,
    worker_settings,
)

pytestmark = pytest.mark.integration

TALK = (
    "Hello, this is a reminder about your appointment on Tuesday at three in the "
    "afternoon. Please bring your card and arrive ten minutes early. Goodbye."
)
DEFINITION = {
    "start": "call",
    "nodes": [
        {
            "id": "call",
            "type": "call",
            "handler": {"type": "prompt", "text": TALK},
            "record": True,
            "ring_timeout_s": 10,
        },
        {"id": "done", "type": "end"},
    ],
    "edges": [{"from": "call", "on": "default", "to": "done"}],
}
SETTINGS = {
    "pacing": {"mode": "ratio", "ratio": 2, "seats": 1, "max_wait_s": 2.0},
    "company_name": "Acme",
    "retry": {},
}


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0


async def two_answers_for_one_seat(
    pool: asyncpg.Pool, tenant: Tenant, tmp_path: Path, database_url: str, scenario: str
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """Run two records of a one-seat workflow against SIPp answering both at once;
    the workflow and its calls (earliest answer first) once both records are final."""
    require("espeak-ng")
    sipp = await start_sipp(scenario, tmp_path, calls=2, timeout_s=60)
    workflow = await insert_workflow(pool, tenant.id, DEFINITION, SETTINGS, "seats")
    await insert_uk_records(pool, tenant.id, workflow, ["+442071838811", "+442071838812"])
    settings = worker_settings(database_url, tmp_path, sipp.uri)
    try:
        async with running_pipeline(pool, settings, tenant.id, "seats-test"):
            deadline = asyncio.get_running_loop().time() + 45
            while await pool.fetchval(
                "SELECT count(*) FILTER (WHERE status IN ('completed', 'dnc')) < 2 FROM records "
                "WHERE workflow_id = $1",
                workflow["id"],
            ):
                assert asyncio.get_running_loop().time() < deadline, "records did not complete"
                await asyncio.sleep(0.1)
            assert await sipp.finish() == 0, sipp.errors()
    finally:
        sipp.kill()
    calls = await pool.fetch(
        """SELECT c.*, r.path FROM calls c LEFT JOIN recordings r ON r.call_id = c.id
           WHERE c.workflow_id = $1 ORDER BY c.answered_at""",
        workflow["id"],
    )
    return workflow, calls


async def test_second_live_answer_without_a_seat_is_abandoned(
    pool: asyncpg.Pool, tenant: Tenant, tmp_path: Path, database_url: str
) -> None:
    workflow, calls = await two_answers_for_one_seat(
        pool, tenant, tmp_path, database_url, "uas_answer_wait_bye.xml"
    )
    workflow_id = workflow["id"]
    assert len(calls) == 2
    by_outcome = {c["disposition"]: c for c in calls}
    assert set(by_outcome) == {"answered", "abandoned"}, [c["disposition"] for c in calls]
    served, abandoned = by_outcome["answered"], by_outcome["abandoned"]
    # Both were answered together: the abandoned one was live, and it waited.
    assert abs((served["answered_at"] - abandoned["answered_at"]).total_seconds()) < 1.0
    assert abandoned["hangup_by"] == "us" and served["hangup_by"] == "us"
    assert abandoned["media_stats"]["packets_sent"] > 100
    # The wait, the message (about 9 s) and the moment its opt-out key is still heard.
    assert 2.0 + 5.0 < abandoned["talk_s"] < 2.0 + 12.0 + OPT_OUT_GRACE_S
    # Our leg (right channel) of the abandoned call: silence while it waited, then speech.
    with wave.open(str(tmp_path / "recordings" / abandoned["path"])) as wav:
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    ours = frames[:, 1]
    assert _rms(ours[: int(1.8 * 8000)]) < 50
    assert _rms(ours[int(2.3 * 8000) :]) > 300
    # No seat is left claimed once the calls are over.
    assert not await pool.fetchval("SELECT count(*) FROM seats WHERE workflow_id = $1", workflow_id)
    outbox = await pool.fetch(
        "SELECT payload FROM outbox WHERE workflow_id = $1 AND event_type = 'call.completed'",
        workflow_id,
    )
    assert sorted(e["payload"]["data"]["disposition"] for e in outbox) == [
        "abandoned",
        "answered",
    ]


async def test_opt_out_key_in_the_message_puts_the_number_on_the_dnc_list(
    pool: asyncpg.Pool, tenant: Tenant, tmp_path: Path, database_url: str
) -> None:
    # Both callees press 9 3.5 s after answering: the served one is in its
    # prompt (the key means nothing there), the abandoned one in the message.
    workflow, calls = await two_answers_for_one_seat(
        pool, tenant, tmp_path, database_url, "uas_answer_press_9.xml"
    )
    by_outcome = {c["disposition"]: c for c in calls}
    assert set(by_outcome) == {"answered", "abandoned"}, [c["disposition"] for c in calls]
    served, abandoned = by_outcome["answered"], by_outcome["abandoned"]
    assert abandoned["end_reason"] == "opt_out" and served["end_reason"] != "opt_out"
    # Hung up at the key, well before the message (about 8 s) would have ended.
    assert abandoned["hangup_by"] == "us"
    assert 3.0 < abandoned["talk_s"] < 5.5
    assert served["talk_s"] > 8.0
    dnc = await pool.fetch("SELECT phone_e164, reason FROM dnc WHERE tenant_id = $1", tenant.id)
    assert [(r["phone_e164"], r["reason"]) for r in dnc] == [
        (abandoned["phone_e164"], f"opt-out key on call {abandoned['id']}")
    ]
    statuses = {
        r["phone_e164"]: (r["status"], r["outcome"])
        for r in await pool.fetch(
            "SELECT phone_e164, status, outcome FROM records WHERE workflow_id = $1",
            workflow["id"],
        )
    }
    assert statuses[abandoned["phone_e164"]] == ("dnc", "dnc")
    assert statuses[served["phone_e164"]][0] == "completed"
    events = await pool.fetch(
        """SELECT event_type, payload FROM outbox WHERE workflow_id = $1
           AND event_type IN ('call.completed', 'record.completed')""",
        workflow["id"],
    )
    reasons = {
        e["payload"]["data"]["end_reason"]
        for e in events
        if e["event_type"] == "call.completed"
        and e["payload"]["data"]["disposition"] == "abandoned"
    }
    assert reasons == {"opt_out"}
    assert "dnc" in {
        e["payload"]["data"]["status"] for e in events if e["event_type"] == "record.completed"
    }

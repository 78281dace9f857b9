"""The runner's side of taking back a ringing call, against SIPp callees.

A call that rings is taken back by CANCEL and ends ``no_answer`` with
``end_reason`` ``pacing``; a callee whose answer crosses our CANCEL hears the
identification message before our BYE, and the call counts as ``abandoned``;
its opt-out key ends it at once, as ``opt_out``.
A call that has heard nothing yet, or that the runner does not hold, is not
touched.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from dialer.trunk import TrunkConfig
from dialer.user_agent import UserAgent
from tests.integration.peers import free_port, require, start_sipp
from tests.integration.test_sipp import FAST, options
from tests.integration.test_transfer import loopback_job, loopback_runner

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _sipp_installed() -> None:
    require("sipp")


async def take_back_while_ringing(tmp_path: Path, scenario: str) -> tuple[dict[str, Any], bool]:
    media = ("-mi", "127.0.0.1", "-mp", str(free_port()))
    callee = await start_sipp(scenario, tmp_path, extra=media)
    rang = asyncio.Event()

    async def emit(kind: str, data: dict[str, Any]) -> None:
        if kind == "ringing":
            rang.set()

    try:
        async with UserAgent(options(FAST), [TrunkConfig.from_uri(callee.uri, name="c")]) as agent:
            runner = loopback_runner(agent, tmp_path, "c", 45000)
            job = loopback_job(handler={"type": "prompt", "text": "Hello."}, ring_timeout_s=30)
            async with asyncio.timeout(20):
                call = asyncio.create_task(runner.run(job, emit))
                await rang.wait()
                assert not runner.take_back(str(uuid.uuid4()))  # not ours
                taken = runner.take_back(job.call_id)
                assert not runner.take_back(job.call_id)  # already cancelling
                data = await call
                assert await agent.drain(5.0), "a call was not over on both sides"
            assert not runner._unanswered and not runner._taken_back
        assert await callee.finish() == 0, callee.errors()
    finally:
        callee.kill()
    return data, taken


async def test_ringing_call_taken_back_ends_no_answer(tmp_path: Path) -> None:
    data, taken = await take_back_while_ringing(tmp_path, "uas_ring_no_answer.xml")
    assert taken
    assert (data["disposition"], data["end_reason"]) == ("no_answer", "pacing")
    assert data["sip_status"] == 487
    assert data["times"]["answered"] is None


async def test_answer_crossing_the_cancel_counts_as_abandoned(tmp_path: Path) -> None:
    data, taken = await take_back_while_ringing(tmp_path, "uas_200_after_cancel.xml")
    assert taken
    assert (data["disposition"], data["end_reason"]) == ("abandoned", "pacing")
    assert data["times"]["answered"] is not None
    assert data["hangup_by"] == "us"
    # The identification message (several seconds of speech) went out before the BYE.
    assert data["talk_s"] > 2.0
    assert data["media_stats"]["packets_sent"] > 100


async def test_crossed_answer_that_presses_the_opt_out_key(tmp_path: Path) -> None:
    data, taken = await take_back_while_ringing(tmp_path, "uas_200_after_cancel_press_9.xml")
    assert taken
    assert (data["disposition"], data["end_reason"]) == ("abandoned", "opt_out")
    assert [d["digit"] for d in data["dtmf"]] == ["9"]
    # Hung up at the key, about 1 s into the message, not at its end.
    assert 0.5 < data["talk_s"] < 3.0

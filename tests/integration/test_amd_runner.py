"""The runner's answering-machine detection against a SIPp callee that says a word.

The verdict is published as soon as it is reached, while the call goes on
(operators watch it live), not when the call is over.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from dialer.trunk import TrunkConfig
from dialer.user_agent import UserAgent
from media.g711 import ulaw_encode
from tests.integration.peers import free_port, require, start_sipp
from tests.integration.test_sipp import FAST, options
from tests.integration.test_transfer import loopback_job, loopback_runner
from tests.media.test_amd import join, pcm, silence, words
from tests.media.test_sipp_rtp import write_rtp_pcap

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _sipp_installed() -> None:
    require("sipp")


async def test_the_verdict_is_published_while_the_call_goes_on(tmp_path: Path) -> None:
    # "Hello?" (two syllables), then silence: a person waiting for an answer.
    greeting = ulaw_encode(pcm(join(silence(0.5), words(2), silence(4)))).tobytes()
    write_rtp_pcap(tmp_path / "callee.pcap", greeting, payload_type=0, ptime_ms=20)
    callee = await start_sipp(
        "uas_bot_play_pcap.xml", tmp_path, extra=("-mi", "127.0.0.1", "-mp", str(free_port()))
    )
    events: list[tuple[str, dict[str, Any], float]] = []

    async def emit(kind: str, data: dict[str, Any]) -> None:
        events.append((kind, data, time.monotonic()))

    try:
        async with UserAgent(options(FAST), [TrunkConfig.from_uri(callee.uri, name="c")]) as agent:
            runner = loopback_runner(agent, tmp_path, "c", 46000)
            job = loopback_job(
                # A prompt of several seconds after the verdict.
                handler={
                    "type": "prompt",
                    "text": "Thank you for taking our call. This message is about your order, "
                    "which has been shipped and will reach you on Tuesday.",
                },
                amd={"enabled": True, "on_machine": "hangup"},
                ring_timeout_s=30,
            )
            async with asyncio.timeout(30):
                data = await runner.run(job, emit)
            ended = time.monotonic()
        assert await callee.finish() == 0, callee.errors()
    finally:
        callee.kill()
    kinds = [kind for kind, _, _ in events]
    assert kinds.count("amd") == 1, kinds
    (verdict, at) = next((d, t) for k, d, t in events if k == "amd")
    assert verdict["verdict"] == "human"
    assert data["amd_verdict"] == "human" and data["disposition"] == "human"
    # The prompt plays for seconds after the verdict: the event came before it.
    assert ended - at > 2.0, ended - at

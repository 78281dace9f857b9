"""A bot's transfer through the real call runner, against SIPp callees and a SIPp target.

The runner dials a SIPp callee through the "carrier" trunk and hands the
answered call to a tiny WebSocket bot that asks for a transfer as soon as
the stream starts. Then:

- the callee accepts the REFER and reports it by NOTIFY (sipfrag 100, 200):
  we BYE and the call ends ``transferred``; or it accepts and BYEs itself;
- the callee refuses the REFER (405): the runner calls the target, a second
  SIPp on the "agents" trunk running with ``-rtp_echo``, and bridges. The
  callee plays recorded speech; it crosses our bridge to the target, which
  echoes it back across the bridge to the callee, so our recording's "ours"
  channel (what we sent the callee) carries the callee's own speech.

SIPp's exit status checks our side of the signalling (the REFER's Refer-To
and Referred-By, the NOTIFY answers, the BYEs).
"""

from __future__ import annotations

import asyncio
import uuid
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType, web

from dialer.messages import DialJob
from dialer.runner import SipCallRunner
from dialer.transfer import TransferConfig
from dialer.trunk import TrunkConfig
from dialer.user_agent import UserAgent
from media.playback import SpeechRenderer
from media.ports import PortAllocator
from media.session import SessionConfig
from media.streams import BotTransfer, CallStart, CallStop, StreamError, parse_call_event
from tests.integration.peers import SCENARIOS, Sipp, free_port, require, start_sipp
from tests.integration.test_sipp import FAST, options

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _sipp_installed() -> None:
    require("sipp")


class TransferBot:
    """A bot that asks for a transfer to ``target`` once the stream starts."""

    def __init__(self, targets: list[str]) -> None:
        self.targets = targets
        self.seen: list[str] = []
        self.stopped = asyncio.Event()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                break
            try:
                event = parse_call_event(message.data)
            except StreamError:
                continue
            self.seen.append(type(event).__name__)
            if isinstance(event, CallStart):
                for target in self.targets:
                    await ws.send_str(BotTransfer(target).serialize(event.stream_sid).decode())
            elif isinstance(event, CallStop):
                self.stopped.set()
        return ws


@pytest.fixture
async def bot_server() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def serve(bot: TransferBot) -> str:
        app = web.Application()
        app.router.add_get("/stream", bot.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"ws://127.0.0.1:{port}/stream"

    yield serve
    for runner in runners:
        await runner.cleanup()


def media_args(*more: str) -> tuple[str, ...]:
    # Each SIPp its own media port (the default 6000 would be shared).
    return ("-mi", "127.0.0.1", "-mp", str(free_port()), *more)


def loopback_runner(
    agent: UserAgent, tmp_path: Path, trunk: str, rtp_base: int, **options: Any
) -> SipCallRunner:
    """A call runner on 127.0.0.1 with 1,000 RTP ports from ``rtp_base``, files under
    ``tmp_path``, and no media timeout."""
    return SipCallRunner(
        agent,
        rtp_host="127.0.0.1",
        ports=PortAllocator(rtp_base, rtp_base + 999),
        speech=SpeechRenderer(tmp_path / "tts"),
        recording_dir=tmp_path / "recordings",
        session_config=SessionConfig(media_timeout_s=None),
        default_trunk=trunk,
        **options,
    )


def loopback_job(**fields: Any) -> DialJob:
    """A dial job of fresh ids to number 1000, for a runner on loopback."""
    return DialJob(
        call_id=str(uuid.uuid4()),
        record_id=str(uuid.uuid4()),
        tenant_id=str(uuid.uuid4()),
        workflow_id=str(uuid.uuid4()),
        node_id="call",
        phone_e164="1000",
        **fields,
    )


async def run_job(
    tmp_path: Path, callee: Sipp, target: Sipp | None, bot_url: str, *, transfer: TransferConfig
) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    trunks = [TrunkConfig.from_uri(callee.uri, name="carrier")]
    if target is not None:
        trunks.append(TrunkConfig.from_uri(target.uri, name="agents"))
    events: list[tuple[str, dict[str, Any]]] = []

    async def emit(kind: str, data: dict[str, Any]) -> None:
        events.append((kind, data))

    async with UserAgent(options(FAST), trunks) as agent:
        runner = loopback_runner(agent, tmp_path, "carrier", 44000, transfer=transfer)
        job = loopback_job(handler={"type": "voicebot", "url": bot_url}, record=True)
        async with asyncio.timeout(20):
            data = await runner.run(job, emit)
            assert await agent.drain(5.0), "a call was not over on both sides"
    return data, events


@pytest.mark.parametrize(
    ("scenario", "hangup_by", "refer_status"),
    [("uas_refer_accept.xml", "us", 200), ("uas_refer_accept_callee_bye.xml", "callee", None)],
)
async def test_refer_accepted(
    tmp_path: Path, bot_server, scenario: str, hangup_by: str, refer_status: int | None
) -> None:
    callee = await start_sipp(scenario, tmp_path, extra=media_args())
    try:
        target = f"sip:agent@127.0.0.1:{free_port()}"
        # The first target is no SIP URI: the stream logs and ignores it.
        bot = TransferBot(["tel:+15550000000", target])
        url = await bot_server(bot)
        data, _ = await run_job(tmp_path, callee, None, url, transfer=TransferConfig())
        assert await callee.finish() == 0, callee.errors()
    finally:
        callee.kill()
    assert data["disposition"] == "transferred"
    assert data["hangup_by"] == hangup_by
    assert data["end_reason"] == ("transferred" if hangup_by == "us" else "remote_bye")
    transfer = data["transfer"]
    assert (transfer["outcome"], transfer["target"]) == ("referred", target)
    assert transfer["refer_status"] == refer_status and transfer["bridge_call_id"] is None
    assert data["bot_result"]["outcome"] == "transferred"
    assert data["bot_result"]["transfer_target"] == target
    assert bot.stopped.is_set() and bot.seen[:2] == ["CallConnected", "CallStart"]


async def test_refer_refused_then_bridged(tmp_path: Path, bot_server) -> None:
    from tests.media.test_sipp_rtp import recut_pcap

    require("sipp")
    pcap = tmp_path / "speech.pcap"
    spoken = recut_pcap(pcap, 0, 150, 20)  # 3 s of speech, A-law
    scenario = tmp_path / "uas_refer_reject.xml"
    scenario.write_text(
        (SCENARIOS / "uas_refer_reject.xml").read_text().replace("[pcap]", str(pcap))
    )
    callee_dir, target_dir = tmp_path / "callee", tmp_path / "target"
    callee_dir.mkdir()
    target_dir.mkdir()
    callee = await start_sipp(str(scenario), callee_dir, extra=media_args())
    target = await start_sipp("uas_transfer_target.xml", target_dir, extra=media_args("-rtp_echo"))
    try:
        target_uri = f"sip:agent@127.0.0.1:{target.port}"
        bot = TransferBot([target_uri])
        url = await bot_server(bot)
        data, _ = await run_job(
            tmp_path,
            callee,
            target,
            url,
            transfer=TransferConfig(trunk="agents", ring_timeout_s=5.0),
        )
        assert await target.finish() == 0, target.errors()
        assert await callee.finish() == 0, callee.errors()
    finally:
        callee.kill()
        target.kill()
    assert data["disposition"] == "transferred"
    transfer = data["transfer"]
    assert transfer["outcome"] == "bridged" and transfer["target"] == target_uri
    assert (transfer["refer_status"], transfer["refer_failure"]) == (405, "refer_rejected")
    assert transfer["bridge_status"] == 200 and transfer["bridge_hangup_by"] == "target"
    assert 1.5 < transfer["bridged_s"] < 6.0
    # The callee's speech went to the target (and its echo came back): frames
    # cross both ways at ~50 a second while bridged.
    assert transfer["frames_to_target"] > 50, transfer
    assert transfer["frames_to_callee"] > 50, transfer
    # The recording went on through the bridge: the "ours" channel (what we
    # sent the callee) is the target's echo of the callee's speech.
    with wave.open(str(tmp_path / "recordings" / data["recording"]["path"])) as wav:
        assert wav.getnchannels() == 2
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    callee_rms = float(np.sqrt(np.mean(samples[:, 0].astype(np.float64) ** 2)))
    ours_rms = float(np.sqrt(np.mean(samples[:, 1].astype(np.float64) ** 2)))
    # Silence would be zeros: the echo comes back at about the level it left.
    assert callee_rms > 300 and ours_rms > 0.3 * callee_rms, (callee_rms, ours_rms, len(spoken))
    assert bot.stopped.is_set()

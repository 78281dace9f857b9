"""Calls from our user agent to SIPp playing the callee, one scenario file per behaviour.

Each test starts SIPp on a free loopback port with a scenario from
``scenarios/``, places one call and checks both sides: our ``CallResult``
and SIPp's exit status (0 only when every message it expected arrived, in
order, including the checks a scenario makes on our messages).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from dialer.sip.call import CallResult, CallStateError, Held, MediaUpdated
from dialer.sip.dialog import LocalMedia
from dialer.sip.timers import TimerConfig
from dialer.transport import TransportConfig
from dialer.trunk import TrunkConfig
from dialer.user_agent import LOOPBACK, CallHandle, RequestPolicy, UserAgent, UserAgentOptions
from tests.integration.peers import Sipp, require, start_sipp

pytestmark = pytest.mark.integration

MEDIA = LocalMedia("127.0.0.1", 40000)
# Short timers keep the timeout cases fast; loopback loses nothing.
FAST = TimerConfig(t1_s=0.05, t2_s=0.4, t4_s=0.4, timer_d_s=0.5)


def options(timers: TimerConfig = FAST) -> UserAgentOptions:
    return UserAgentOptions(
        transport=TransportConfig("127.0.0.1", 0),
        policy=RequestPolicy(trusted=LOOPBACK),
        timers=timers,
    )


@pytest.fixture(autouse=True)
def _sipp_installed() -> None:
    require("sipp")


async def call(
    sipp: Sipp,
    *,
    transport: str = "udp",
    username: str | None = None,
    password: str | None = None,
    ring_timeout_s: float | None = None,
    hangup_after_answer: bool = True,
    until_held: bool = False,
) -> tuple[CallResult, list[str], CallHandle]:
    """Place one call to SIPp; hang up once answered (unless SIPp is to)."""
    uri = sipp.uri + (";transport=tcp" if transport == "tcp" else "")
    trunk = TrunkConfig.from_uri(uri, username=username, password=password)
    async with UserAgent(options(), [trunk]) as agent:
        handle = await agent.place_call("1000", media=MEDIA, ring_timeout_s=ring_timeout_s)
        events: list[str] = []
        async with asyncio.timeout(15):
            async for event in handle:
                events.append(type(event).__name__)
                if type(event).__name__ == "Answered" and hangup_after_answer and not until_held:
                    handle.hangup()
                if isinstance(event, Held):
                    handle.hangup()
            assert await agent.drain(5.0), "the call was not over on both sides"
        result = await handle.ended()
        assert agent.stats.stray_responses == 0
    return result, events, handle


@pytest.fixture
async def workdir(tmp_path: Path) -> AsyncIterator[Path]:
    yield tmp_path


async def run_scenario(scenario: str, workdir: Path, transport: str = "u1", **kwargs: object):
    sipp = await start_sipp(scenario, workdir, transport=transport)
    try:
        outcome = await call(sipp, transport="tcp" if transport == "t1" else "udp", **kwargs)  # type: ignore[arg-type]
        status = await sipp.finish()
        assert status == 0, sipp.errors()
        return outcome
    finally:
        sipp.kill()


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_answer_then_we_hang_up(workdir: Path, transport: str) -> None:
    result, events, _ = await run_scenario("uas_answer_wait_bye.xml", workdir, transport)
    assert events == ["Ringing", "Answered", "Ended"]
    assert (result.disposition, result.sip_status, result.hangup_by) == ("answered", 200, "caller")
    assert result.invite_sent_at <= result.ringing_at <= result.answered_at <= result.ended_at  # type: ignore[operator]


async def test_answer_then_callee_hangs_up(workdir: Path) -> None:
    result, events, _ = await run_scenario(
        "uas_answer_callee_bye.xml", workdir, hangup_after_answer=False
    )
    assert events == ["Ringing", "Answered", "Ended"]
    assert (result.disposition, result.hangup_by, result.end_reason) == (
        "answered",
        "callee",
        "remote_bye",
    )
    assert result.talk_time_s > 0.2  # the callee waited 300 ms before its BYE


@pytest.mark.parametrize(
    ("scenario", "disposition", "status"),
    [
        ("uas_busy.xml", "busy", 486),
        ("uas_503.xml", "congestion", 503),  # 503 with Retry-After: back off
    ],
)
async def test_rejections(workdir: Path, scenario: str, disposition: str, status: int) -> None:
    result, events, _ = await run_scenario(scenario, workdir)
    assert events == ["Ended"]
    assert (result.disposition, result.sip_status, result.answered_at) == (
        disposition,
        status,
        None,
    )


async def test_ring_timeout_cancels(workdir: Path) -> None:
    result, events, _ = await run_scenario("uas_ring_no_answer.xml", workdir, ring_timeout_s=0.3)
    assert events == ["Ringing", "Ended"]
    assert (result.disposition, result.sip_status) == ("no_answer", 487)
    assert result.ended_at - result.invite_sent_at >= 0.3  # type: ignore[operator]


async def test_early_media_then_answer(workdir: Path) -> None:
    result, events, handle = await run_scenario("uas_183_then_200.xml", workdir)
    assert events == ["EarlyMedia", "Answered", "Ended"]
    assert result.early_media_at is not None and result.answered_at is not None
    assert handle.early_media is not None and handle.early_media.codec.name == "PCMU"


@pytest.mark.parametrize("scenario", ["uas_auth_401.xml", "uas_auth_407.xml"])
async def test_digest_challenge_then_answer(workdir: Path, scenario: str) -> None:
    # SIPp checks our digest (verifyauth) and answers 403 if it is wrong.
    result, events, _ = await run_scenario(
        scenario, workdir, username="alice", password="wonderland"
    )
    assert events == ["Answered", "Ended"]
    assert (result.disposition, result.sip_status) == ("answered", 200)


async def test_digest_challenge_without_credentials(workdir: Path) -> None:
    sipp = await start_sipp("uas_auth_401.xml", workdir)
    try:
        result, _, _ = await call(sipp)
        assert (result.disposition, result.sip_status) == ("auth_failed", 401)
    finally:
        sipp.kill()


async def test_hold_by_reinvite(workdir: Path) -> None:
    # SIPp checks that our 200 answers its a=sendonly with a=recvonly.
    result, events, handle = await run_scenario("uas_reinvite_hold.xml", workdir, until_held=True)
    assert events == ["Answered", "Held", "Ended"]
    assert handle.media is not None and handle.media.on_hold
    assert result.disposition == "answered"


async def test_answer_crossing_our_cancel(workdir: Path) -> None:
    # SIPp answers 200 when our CANCEL arrives: we must ACK it and send BYE.
    result, events, _ = await run_scenario("uas_200_after_cancel.xml", workdir, ring_timeout_s=0.2)
    assert events == ["Ringing", "Ended"]
    assert (result.disposition, result.end_reason) == ("no_answer", "cancelled_after_answer")


async def test_callee_never_answers_timer_b(workdir: Path) -> None:
    sipp = await start_sipp("uas_silent.xml", workdir)
    try:
        result, events, _ = await call(sipp)
        assert events == ["Ended"]
        # 64 * T1 with T1 = 50 ms: 3.2 s, as for a 408 (RFC 3261 §8.1.3.1).
        assert (result.sip_status, result.end_reason) == (408, "timer_b")
        assert result.disposition == "no_answer"
        assert 3.1 < result.ended_at - result.invite_sent_at < 4.0  # type: ignore[operator]
        await sipp.finish()
    finally:
        sipp.kill()


async def test_cli_narrates_a_call(workdir: Path) -> None:
    sipp = await start_sipp("uas_answer_wait_bye.xml", workdir)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dialer.call_cli",
            "1000",
            "--trunk",
            sipp.uri,
            "--listen",
            "127.0.0.1:0",
            "--duration",
            "0.2",
            "--no-media",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0, stderr.decode()
        lines = [orjson.loads(line) for line in stdout.splitlines()]
        assert [line["event"] for line in lines] == [
            "invite_sent",
            "ringing",
            "answered",
            "hangup_sent",
            "ended",
        ]
        ended = lines[-1]
        assert (ended["disposition"], ended["sip_status"], ended["hangup_by"]) == (
            "answered",
            200,
            "caller",
        )
        assert all(b["t"] <= a["t"] + 1e-3 for b, a in itertools.pairwise(lines))
        assert await sipp.finish() == 0, sipp.errors()
    finally:
        sipp.kill()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["1000", "--ring-timeout", "0"], "must be above 0"),
        (["1000", "--listen", "nowhere"], "expected HOST:PORT"),
        (["1000", "--trunk", "http://x"], "sip: or sips:"),
        (["1000", "--play", "/nonexistent.wav"], "no such file"),
    ],
)
async def test_cli_bad_options(argv: list[str], message: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dialer.call_cli",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2 and message in stderr.decode()


async def test_cli_with_its_sip_port_taken_says_how_to_pick_another() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dialer.call_cli",
            "1000",
            "--trunk",
            "sip:127.0.0.1:5999",
            "--listen",
            f"127.0.0.1:{port}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert "--listen 127.0.0.1:0" in stderr.decode()


async def test_cli_without_a_trunk() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dialer.call_cli",
        "1000",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2 and "no trunk" in stderr.decode()


async def test_register_with_digest_and_refresh_time(workdir: Path) -> None:
    sipp = await start_sipp("uas_register.xml", workdir)
    try:
        trunk = TrunkConfig.from_uri(
            sipp.uri, username="alice", password="wonderland", register_expires_s=3600
        )
        async with UserAgent(options(), [trunk]) as agent:
            registration = agent.trunks["default"].registration
            assert registration is not None
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(10):
                while not registration.registered(loop.time()):
                    await asyncio.sleep(0.01)
            # Granted 60 s (the Contact's expires): refreshed after half of it.
            assert 29.0 < registration.next_at - loop.time() <= 30.0
        assert await sipp.finish() == 0, sipp.errors()
    finally:
        sipp.kill()


async def test_in_dialog_info_options_and_hold_from_our_side(workdir: Path) -> None:
    """SIPp checks our INFO carries the digit and our re-INVITE offers a=sendonly."""
    sipp = await start_sipp("uas_in_dialog_requests.xml", workdir)
    try:
        trunk = TrunkConfig.from_uri(sipp.uri)
        async with UserAgent(options(), [trunk]) as agent:
            handle = await agent.place_call("1000", media=MEDIA)
            assert await handle.answered() is not None
            handle.send_info(b"Signal=5\r\nDuration=160\r\n")
            handle.send_options()
            await asyncio.sleep(0.2)
            handle.hold()
            events: list[str] = []
            async with asyncio.timeout(10):
                async for event in handle:
                    events.append(type(event).__name__)
                    if isinstance(event, MediaUpdated):
                        # We hold: the callee answers recvonly; we send, it does not.
                        assert event.media.direction == "recvonly"
                        assert event.media.send and not event.media.receive
                        handle.hangup()
            result = await handle.ended()
            assert agent.stats.stray_responses == 0
            with pytest.raises(CallStateError):
                handle.hold(False)  # the call is over
        assert await sipp.finish() == 0, sipp.errors()
    finally:
        sipp.kill()
    assert "MediaUpdated" in events
    assert (result.disposition, result.hangup_by) == ("answered", "caller")

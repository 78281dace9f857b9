"""The sandbox carrier against SIPp playing the caller, and against our own user agent.

SIPp (``-sf scenarios/sandbox_*.xml``) checks the SIP side: each behaviour
answers with the right responses in the right order, a failure's ACK and a
CANCEL find their transactions, the person's key arrives in an INFO when
the caller takes no RFC 4733 events. The SDP of SIPp's INVITE points at a
UDP socket this test owns (``-set rtp_port``), so the sandbox's RTP lands
here: the test decodes the mu-law, checks the speech, the 1 kHz beep, the
ringback and the RFC 4733 events, and talks back to the person.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pytest

from dialer.sandbox import (
    BEHAVIOUR_TABLE,
    Behaviour,
    NetworkConditions,
    SandboxCarrier,
    SandboxConfig,
    behaviour_for_number,
    parse_ratios,
    person_digit_for_number,
    tone,
)
from dialer.sip.dialog import LocalMedia
from dialer.sip.timers import TimerConfig
from dialer.sip.uri import SipUri, parse_uri
from dialer.transport import TransportConfig
from dialer.trunk import TrunkConfig
from dialer.user_agent import LOOPBACK, RequestPolicy, UserAgent, UserAgentOptions
from media.g711 import ulaw_decode, ulaw_encode
from media.playback import espeak_available
from tests.integration.peers import SCENARIOS, free_port, require

pytestmark = pytest.mark.integration

_RTP = struct.Struct("!BBHII")

# Short everything: the behaviours keep their shape, the tests stay fast.
FAST = SandboxConfig(
    port=0,
    rtp_port_min=33000,
    rtp_port_max=33999,
    tcp=False,
    ring_s=(0.1, 0.1),
    reject_delay_s=0.05,
    person_reply_after_s=0.5,
    person_quiet_s=0.4,
    person_max_s=2.8,
    voicemail_greeting_s=(1.0, 1.0),
    beep_ms=400,
    voicemail_max_s=0.6,
)


# --- pure rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "behaviour", "digit"),
    [
        ("+15551230000", Behaviour.PERSON, "1"),
        ("5551230002", Behaviour.PERSON, "1"),
        ("5551230003", Behaviour.PERSON, "2"),
        ("5551230004", Behaviour.PERSON, "2"),
        ("5551230005", Behaviour.VOICEMAIL, "2"),
        ("5551230006", Behaviour.VOICEMAIL, "2"),
        ("5551230007", Behaviour.BUSY, "2"),
        ("5551230008", Behaviour.NO_ANSWER, "2"),
        ("5551230009", Behaviour.UNREACHABLE, "2"),
        ("555-123-0009;ext=x", Behaviour.UNREACHABLE, "2"),
        ("alice", Behaviour.PERSON, "1"),
    ],
)
def test_behaviour_by_last_digit(number: str, behaviour: Behaviour, digit: str) -> None:
    assert behaviour_for_number(number) is behaviour
    assert person_digit_for_number(number) == digit


def test_every_digit_has_a_behaviour() -> None:
    assert sorted(BEHAVIOUR_TABLE) == list("0123456789")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("person=0.6,voicemail=0.2,busy=0.1,no_answer=0.1", {"person": 0.6, "no_answer": 0.1}),
        (" silent=1 , unreachable = 2 ", {"silent": 1.0, "unreachable": 2.0}),
    ],
)
def test_parse_ratios(text: str, expected: dict[str, float]) -> None:
    parsed = parse_ratios(text)
    for name, share in expected.items():
        assert parsed[Behaviour(name)] == share


@pytest.mark.parametrize(
    "text",
    ["", "person", "person=-1", "person=x", "robot=1", "busy=0", "busy=1,busy=2", "busy=nan"],
)
def test_parse_ratios_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ratios(text)


def test_ratios_draw_repeatably_with_a_seed() -> None:
    shares = tuple(parse_ratios("person=0.5,busy=0.3,no_answer=0.2").items())
    config = dataclasses.replace(FAST, ratios=shares, seed=7)
    draws = []
    for _ in range(2):
        carrier = SandboxCarrier(config)
        draws.append([carrier.behaviour_for(f"c{i}", "5550000007") for i in range(2000)])
    assert draws[0] == draws[1]
    counts = {b: draws[0].count(b) for b in Behaviour}
    assert counts[Behaviour.PERSON] == pytest.approx(1000, abs=90)
    assert counts[Behaviour.BUSY] == pytest.approx(600, abs=80)
    assert counts[Behaviour.NO_ANSWER] == pytest.approx(400, abs=70)
    assert counts[Behaviour.VOICEMAIL] == 0


# --- peers ---------------------------------------------------------------------------------------


@dataclass
class Packet:
    t: float
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    payload: bytes


@dataclass
class RtpSink(asyncio.DatagramProtocol):
    """The caller's RTP port: keeps what arrives, can talk back."""

    packets: list[Packet] = field(default_factory=list)
    source: tuple[str, int] | None = None
    transport: asyncio.DatagramTransport | None = None
    port: int = 0
    first: asyncio.Event = field(default_factory=asyncio.Event)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        if len(data) < 12:
            return
        first, second, seq, timestamp, _ = _RTP.unpack_from(data)
        if first >> 6 != 2:
            return
        self.source = (addr[0], addr[1])
        loop = asyncio.get_running_loop()
        self.packets.append(
            Packet(loop.time(), second & 0x7F, bool(second & 0x80), seq, timestamp, data[12:])
        )
        self.first.set()

    def audio(self) -> np.ndarray:
        """The PCMU audio in sequence order (a lost packet is simply missing)."""
        frames = sorted((p.seq, p.payload) for p in self.packets if p.payload_type == 0)
        if not frames:
            return np.zeros(0)
        return ulaw_decode(np.frombuffer(b"".join(f for _, f in frames), dtype=np.uint8)).astype(
            np.float64
        )

    def events(self) -> list[Packet]:
        return [p for p in self.packets if p.payload_type == 101]


@pytest.fixture
async def sink() -> AsyncIterator[RtpSink]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(RtpSink, local_addr=("127.0.0.1", 0))
    yield protocol
    transport.close()


@pytest.fixture(scope="session")
def speech_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tts")


@pytest.fixture
def sipp_binary() -> str:
    return require("sipp")


async def run_caller(
    scenario: str,
    carrier: SandboxCarrier | tuple[str, int],
    number: str,
    rtp_port: int | None,
    workdir: Path,
) -> tuple[int, str]:
    """Run one SIPp caller scenario against the carrier; its exit status and error log."""
    host, port = carrier if isinstance(carrier, tuple) else carrier.address
    command = [
        require("sipp"),
        "-sf",
        str(SCENARIOS / scenario),
        "-s",
        number,
        f"{host}:{port}",
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port(both=False)),
        "-t",
        "u1",
        "-m",
        "1",
        "-nostdin",
        "-nd",
        "-trace_err",
        "-timeout",
        "15s",
        "-timeout_error",
    ]
    if rtp_port is not None:
        command += ["-set", "rtp_port", str(rtp_port)]  # the scenario's SDP points here
    log = (workdir / "sipp.err").open("wb")
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    try:
        status = await asyncio.wait_for(asyncio.to_thread(process.wait), 20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logs = [*sorted(workdir.glob("*errors.log")), workdir / "sipp.err"]
    errors = "\n".join(p.read_text(errors="replace")[-3000:] for p in logs if p.exists())
    return status, errors


@pytest.fixture
async def carrier(speech_cache: Path) -> AsyncIterator[SandboxCarrier]:
    async with SandboxCarrier(dataclasses.replace(FAST, speech_cache_dir=speech_cache)) as sandbox:
        yield sandbox


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


def peak_hz(samples: np.ndarray) -> float:
    window = samples * np.hanning(samples.size)
    spectrum = np.abs(np.fft.rfft(window))
    return float(np.fft.rfftfreq(samples.size, 1 / 8000)[int(np.argmax(spectrum))])


def voiced_spans(samples: np.ndarray, threshold: float = 300.0) -> list[tuple[int, int]]:
    """(first, last) 20 ms frame index of each run of loud frames."""
    frames = samples[: samples.size // 160 * 160].reshape(-1, 160)
    loud = np.sqrt(np.mean(frames**2, axis=1)) > threshold
    spans: list[tuple[int, int]] = []
    start = None
    for index, flag in enumerate(loud):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            spans.append((start, index - 1))
            start = None
    if start is not None:
        spans.append((start, len(loud) - 1))
    return spans


# --- SIP behaviours --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "number", "behaviour", "end_reason"),
    [
        ("sandbox_busy.xml", "5551230007", "busy", "rejected"),
        ("sandbox_unreachable.xml", "5551230009", "unreachable", "rejected"),
        ("sandbox_no_answer.xml", "5551230008", "no_answer", "cancelled"),
    ],
)
async def test_failures_answer_as_a_carrier_would(
    carrier: SandboxCarrier,
    sink: RtpSink,
    tmp_path: Path,
    sipp_binary: str,
    scenario: str,
    number: str,
    behaviour: str,
    end_reason: str,
) -> None:
    status, errors = await run_caller(scenario, carrier, number, sink.port, tmp_path)
    assert status == 0, errors
    assert carrier.stats.calls == {behaviour: 1}
    assert carrier.stats.ended == {behaviour: {end_reason: 1}}
    assert carrier.stats.answered == {}
    assert sink.packets == []  # no media before an answer (early media is off)
    assert carrier.active_calls == 0


async def test_options_is_answered(
    carrier: SandboxCarrier, tmp_path: Path, sipp_binary: str
) -> None:
    status, errors = await run_caller("sandbox_options.xml", carrier, "ping", None, tmp_path)
    assert status == 0, errors
    assert carrier.stats.options == 1 and carrier.stats.calls == {}


async def test_person_says_hello_then_presses_1(
    carrier: SandboxCarrier, sink: RtpSink, tmp_path: Path, sipp_binary: str
) -> None:
    if not espeak_available():
        pytest.skip("espeak-ng is not installed: the person speaks with the synthetic voice")
    status, errors = await run_caller(
        "sandbox_answer.xml", carrier, "5551230000", sink.port, tmp_path
    )
    assert status == 0, errors  # 100, 180, 200, our ACK, then the person's BYE
    assert carrier.stats.ended == {"person": {"local_bye": 1}}
    assert carrier.stats.digits_sent == {"1": 1} and carrier.stats.speech_fallbacks == 0
    audio = sink.audio()
    spans = voiced_spans(audio)
    assert spans, "no speech arrived"
    hello = audio[spans[0][0] * 160 : (spans[-1][1] + 1) * 160]
    assert 0.5 < hello.size / 8000 < 3.0 and rms(hello) > 1000
    # RFC 4733: one event, digit 1, marker on the first packet, end bit on the last ones.
    events = sink.events()
    assert events, "no RFC 4733 event arrived"
    assert {p.payload[0] for p in events} == {1}
    assert events[0].marker and events[-1].payload[1] & 0x80
    assert len({p.timestamp for p in events}) == 1
    # The key comes after the hello, once the wait for the caller's prompt is over.
    first_audio = min(p.t for p in sink.packets if p.payload_type == 0)
    hello_end = first_audio + (spans[-1][1] + 1) * 0.020
    # Less a frame: the end is reckoned from the first packet's arrival, which can lag.
    assert hello_end - 0.020 < events[0].t < hello_end + 0.3 + FAST.person_reply_after_s + 0.5


async def test_person_presses_once_the_callers_prompt_is_over(
    speech_cache: Path, sink: RtpSink, tmp_path: Path, sipp_binary: str
) -> None:
    config = dataclasses.replace(
        FAST, speech_cache_dir=speech_cache, person_reply_after_s=6.0, person_max_s=3.0
    )
    loop = asyncio.get_running_loop()
    async with SandboxCarrier(config) as sandbox:
        caller = asyncio.ensure_future(
            run_caller("sandbox_answer.xml", sandbox, "5551230003", sink.port, tmp_path)
        )
        await asyncio.wait_for(sink.first.wait(), 5)
        # The caller's prompt: 0.6 s of a loud tone, then quiet, sent to where
        # the person's RTP comes from (symmetric RTP).
        prompt = ulaw_encode(tone((440.0,), 600, 9000.0).samples).tobytes()
        assert sink.transport is not None and sink.source is not None
        sent = loop.create_future()
        origin = loop.time()

        def send(index: int) -> None:
            header = _RTP.pack(0x80, 0, index, index * 160, 0x1234)
            sink.transport.sendto(header + prompt[index * 160 : (index + 1) * 160], sink.source)  # type: ignore[union-attr]
            if index == 29:
                sent.set_result(loop.time())

        for index in range(30):  # paced as a phone sends: one frame per 20 ms
            loop.call_at(origin + index * 0.020, send, index)
        prompt_over = await sent
        status, errors = await caller
    assert status == 0, errors
    events = sink.events()
    assert events and {p.payload[0] for p in events} == {2}  # ends in 3: "no"
    # Well before the 6 s the person would wait in silence.
    assert events[0].t - prompt_over < 2.5
    assert sandbox.stats.digits_sent == {"2": 1}


async def test_person_without_rtp_events_uses_info(
    carrier: SandboxCarrier, sink: RtpSink, tmp_path: Path, sipp_binary: str
) -> None:
    status, errors = await run_caller(
        "sandbox_answer_info.xml", carrier, "5551230001", sink.port, tmp_path
    )
    assert status == 0, errors  # SIPp checked the INFO's Signal= line
    assert carrier.stats.digits_by_info == 1 and sink.events() == []


async def test_voicemail_greeting_ends_in_a_1khz_beep(
    carrier: SandboxCarrier, sink: RtpSink, tmp_path: Path, sipp_binary: str
) -> None:
    status, errors = await run_caller(
        "sandbox_answer.xml", carrier, "5551230005", sink.port, tmp_path
    )
    assert status == 0, errors
    assert carrier.stats.ended == {"voicemail": {"local_bye": 1}} and carrier.stats.beeps == 1
    audio = sink.audio()
    spans = voiced_spans(audio)
    assert len(spans) >= 2, spans
    beep_first, beep_last = spans[-1]
    beep = audio[beep_first * 160 : (beep_last + 1) * 160]
    assert (beep_last - beep_first + 1) * 0.020 == pytest.approx(FAST.beep_ms / 1000, abs=0.06)
    assert peak_hz(beep) == pytest.approx(1000, abs=20)
    greeting = audio[spans[0][0] * 160 : beep_first * 160]
    assert greeting.size / 8000 == pytest.approx(1.0, abs=0.35)
    assert abs(peak_hz(greeting) - 1000) > 50  # speech, not the tone
    # Then silence until the hang-up.
    after = audio[(beep_last + 1) * 160 :]
    assert after.size / 8000 > 0.3 and rms(after) < 50


async def test_early_media_is_ringback_until_cancel(
    speech_cache: Path, sink: RtpSink, tmp_path: Path, sipp_binary: str
) -> None:
    config = dataclasses.replace(FAST, speech_cache_dir=speech_cache, early_media=True)
    async with SandboxCarrier(config) as sandbox:
        status, errors = await run_caller(
            "sandbox_early_media.xml", sandbox, "5551230008", sink.port, tmp_path
        )
        assert status == 0, errors
        assert sandbox.stats.ended == {"no_answer": {"cancelled": 1}}
    audio = sink.audio()
    assert audio.size / 8000 > 0.4
    spectrum = np.abs(np.fft.rfft(audio[:3200] * np.hanning(min(3200, audio.size))))
    freqs = np.fft.rfftfreq(min(3200, audio.size), 1 / 8000)
    top = sorted(float(freqs[i]) for i in np.argsort(spectrum)[-2:])
    assert top[0] == pytest.approx(440, abs=10) and top[1] == pytest.approx(480, abs=10)


async def test_slow_network_delays_reorders_and_loses(
    speech_cache: Path, sink: RtpSink, tmp_path: Path, sipp_binary: str
) -> None:
    network = NetworkConditions(delay_ms=30.0, jitter_ms=60.0, loss=0.2)
    config = dataclasses.replace(
        FAST, speech_cache_dir=speech_cache, network=network, seed=11, person_max_s=2.5
    )
    async with SandboxCarrier(config) as sandbox:
        status, errors = await run_caller(
            "sandbox_answer.xml", sandbox, "5551230002", sink.port, tmp_path
        )
        assert status == 0, errors
        dropped = sandbox.stats.relay_dropped
    audio = [p for p in sink.packets if p.payload_type == 0]
    seqs = [p.seq for p in audio]
    span = max(seqs) - min(seqs) + 1
    assert 0.08 < 1 - len(seqs) / span < 0.35  # about a fifth lost
    # The relay's own drops explain the gaps; on a loaded machine a packet or two
    # may also miss the sink's read before the call ends, so allow that slack.
    assert dropped >= span - len(seqs) - 2
    assert any(b < a for a, b in itertools.pairwise(seqs))  # jitter reorders


# --- our own user agent against the sandbox ------------------------------------------------------


async def test_silent_number_leaves_the_dialer_to_timer_b(speech_cache: Path) -> None:
    config = dataclasses.replace(FAST, ratios=((Behaviour.SILENT, 1.0),))
    timers = TimerConfig(t1_s=0.05, t2_s=0.4, t4_s=0.4, timer_d_s=0.5)
    options = UserAgentOptions(
        transport=TransportConfig("127.0.0.1", 0, tcp=False),
        policy=RequestPolicy(trusted=LOOPBACK),
        timers=timers,
    )
    async with SandboxCarrier(config) as sandbox:
        async with UserAgent(options, [TrunkConfig.from_uri(sandbox.uri)]) as agent:
            handle = await agent.place_call("5551230000", media=LocalMedia("127.0.0.1", 40002))
            result = await asyncio.wait_for(handle.ended(), 10)
        assert (result.disposition, result.end_reason) == ("no_answer", "timer_b")
        assert sandbox.stats.calls == {"silent": 1}
        assert sandbox.stats.dropped_silent >= 5  # the INVITE and its retransmissions


@pytest.mark.parametrize(
    ("number", "disposition", "talk"),
    [
        ("5551230004", "answered", True),
        ("5551230006", "answered", True),
        ("5551230007", "busy", False),
        ("5551230009", "not_found", False),
        ("5551230008", "no_answer", False),
    ],
)
async def test_the_dialer_sees_each_behaviour(
    carrier: SandboxCarrier, number: str, disposition: str, talk: bool
) -> None:
    options = UserAgentOptions(
        transport=TransportConfig("127.0.0.1", 0, tcp=False),
        policy=RequestPolicy(trusted=LOOPBACK),
    )
    async with UserAgent(options, [TrunkConfig.from_uri(carrier.uri)]) as agent:
        handle = await agent.place_call(
            number, media=LocalMedia("127.0.0.1", 40004), ring_timeout_s=0.8
        )
        async with asyncio.timeout(10):
            async for event in handle:
                if type(event).__name__ == "Answered":
                    handle.hangup()
            assert await agent.drain(5.0), "the call was not over on both sides"
        result = await handle.ended()
    assert str(result.disposition) == disposition
    assert (result.answered_at is not None) is talk
    assert carrier.active_calls == 0


def test_random_module_is_not_used_unseeded() -> None:
    # The carrier's draws come from its own generator: two carriers with the
    # same seed agree even when the global generator moves in between.
    config = dataclasses.replace(FAST, ratios=((Behaviour.PERSON, 1), (Behaviour.BUSY, 1)), seed=3)
    first = SandboxCarrier(config)
    a = [first.behaviour_for(f"x{i}", "1") for i in range(50)]
    random.random()
    second = SandboxCarrier(config)
    assert [second.behaviour_for(f"x{i}", "1") for i in range(50)] == a


# --- the command ---------------------------------------------------------------------------------


async def test_cli_narrates_a_call_and_prints_stats(tmp_path: Path, sipp_binary: str) -> None:
    command = [
        sys.executable,
        "-m",
        "dialer.sandbox_cli",
        "--listen",
        "127.0.0.1:0",
        "--no-speech",
        "--rtp-ports",
        "34000-34099",
        "--duration",
        "2.5",
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        first = orjson.loads(await asyncio.wait_for(process.stdout.readline(), 10))
        assert first["event"] == "listening" and first["behaviours"] == "by last digit"
        uri = parse_uri(first["uri"])
        assert isinstance(uri, SipUri) and uri.port
        address = (uri.host, uri.port)
        status, errors = await run_caller("sandbox_busy.xml", address, "5550007", 4000, tmp_path)
        assert status == 0, errors
        out, _ = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [line["event"] for line in lines] == ["call", "ended", "stats"]
    assert lines[0]["behaviour"] == "busy" and lines[1]["status"] == 486
    assert lines[-1]["calls"] == {"busy": 1}


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--ratios=robot=1", "unknown behaviour 'robot'"),
        ("--rtp-ports=9-3", "expected LOW-HIGH"),
        ("--loss=1.5", "loss is a fraction below 1"),
        ("--listen=nowhere", "expected HOST:PORT"),
    ],
)
def test_cli_refuses_bad_options(argument: str, message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dialer.sandbox_cli", argument],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and message in done.stderr

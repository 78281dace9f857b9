"""A call streamed to a voicebot end to end: ``dialer call --bot``, SIPp as the callee.

The dialer runs as its own process (``dialer call NUMBER --bot URL``), SIPp
answers, and a probe bot on loopback speaks the Twilio Media Streams format.
What the callee hears is taken at the RTP level: SIPp's answer points the
dialer's audio at an RTP receiver of the test's (``uas_bot_rtp_receiver.xml``)
that keeps each packet with the kernel's arrival time. What the callee says
or keys is played by SIPp from a pcap (``uas_bot_play_pcap.xml``). When
SIPp saw the BYE comes from its own message trace.

Each test checks a promise of the stream:

- the bot's audio reaches the callee: a 1 kHz tone of 1 s arrives as 50
  consecutive 20 ms packets, found by FFT;
- the callee's audio reaches the bot: a 600 Hz tone SIPp plays is in the
  ``media`` the bot receives, for its length;
- G.711 goes straight through on a PCMU call: the payloads SIPp sends are
  the bot's ``media`` byte for byte, and the bot's bytes are the payloads
  the callee receives (codes covering all 256, mu-law's negative zero in
  every frame: a decode and re-encode would change it);
- each RFC 4733 key SIPp sends reaches the bot once, as ``dtmf``;
- ``clear`` stops playback within 20 ms: after the moment the bot sent it,
  at most one packet of its audio still arrives, within 20 ms, and only
  silence follows;
- the bot closing its socket (a close frame, or the connection cut) makes
  the dialer send BYE within 100 ms of it.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from media.bots import serve_bot
from media.streams import BotClear, BotHangup, BotMark, BotMedia
from tests.integration.botcall import (
    FRAME_SAMPLES,
    PCMU_SILENCE,
    CallOutput,
    Heard,
    ProbeBot,
    RtpReceiver,
    Script,
    dialer_call,
    longest_run,
    sipp_received_at,
    start_callee,
    tone_frames,
    tone_pcap,
    tone_ulaw,
    until,
)
from tests.integration.peers import require
from tests.media.test_sipp_rtp import PCAP_DIR, dtmf_pcap, udp_frame, write_pcap

pytestmark = pytest.mark.integration

BOT_TONE_HZ = 1000.0
CALLEE_TONE_HZ = 600.0


@pytest.fixture(autouse=True)
def _sipp_installed() -> None:
    require("sipp")


@pytest.fixture
async def receiver() -> AsyncIterator[RtpReceiver]:
    rtp = RtpReceiver()
    yield rtp
    rtp.close()


async def call_bot(
    script: Script, scenario: str, workdir: Path, *keys: tuple[str, str]
) -> tuple[CallOutput, Heard]:
    """One call from ``dialer call --bot`` to SIPp: the dialer's output, what the bot heard."""
    bot = ProbeBot(script)
    server = await serve_bot(bot.handle)
    sipp = await start_callee(scenario, workdir, *keys)
    try:
        output = await dialer_call(
            "1000", "--trunk", sipp.uri, "--listen", "127.0.0.1:0", "--bot", server.url
        )
        status = await sipp.finish()
        assert bot.done.is_set()
    finally:
        sipp.kill()
        await server.close()
    assert output.returncode == 0, output.stderr + "\n" + sipp.errors()
    assert status == 0, sipp.errors()
    return output, bot.heard


async def hang_up(ws: web.WebSocketResponse, heard: Heard) -> None:
    await ws.send_str(BotHangup("test done").serialize(heard.session.stream_sid).decode())


async def test_bot_audio_reaches_the_callee(tmp_path: Path, receiver: RtpReceiver) -> None:
    async def script(ws: web.WebSocketResponse, heard: Heard) -> None:
        sid = heard.session.stream_sid
        audio = tone_ulaw(BOT_TONE_HZ, 1000)
        for k in range(4):  # in four pieces at once, as a TTS engine returns them
            await ws.send_str(BotMedia(audio[2000 * k : 2000 * (k + 1)]).serialize(sid).decode())
        await ws.send_str(BotMark("spoken").serialize(sid).decode())
        await until(lambda: "spoken" in heard.session.marks)
        await asyncio.sleep(0.1)
        await hang_up(ws, heard)

    output, heard = await call_bot(
        script, "uas_bot_rtp_receiver.xml", tmp_path, ("rtp_receiver", str(receiver.port))
    )
    packets = receiver.snapshot()
    pcmu = [p for p in packets if p.payload_type == 0]
    assert len(pcmu) >= 55, f"only {len(pcmu)} packets reached the callee"
    sequence = np.array([p.sequence for p in pcmu])
    assert np.all(np.diff(sequence) % 65536 == 1), "packets lost or reordered on loopback"
    audio = np.concatenate([p.samples for p in pcmu])
    assert audio.shape[0] == FRAME_SAMPLES * len(pcmu)
    frames = tone_frames(audio, BOT_TONE_HZ)
    # The whole second, one run without a gap, and nothing else loud.
    assert longest_run(frames) == 50 == int(frames.sum())
    assert heard.session.marks == ["spoken"]
    assert output.first("bot_ended")["outcome"] == "bot_hangup"
    assert output.first("bot_ended")["bot_audio_ms"] == 1000.0


async def test_callee_audio_reaches_the_bot(tmp_path: Path) -> None:
    tone_pcap(tmp_path / "callee.pcap", CALLEE_TONE_HZ, 1000)

    async def script(ws: web.WebSocketResponse, heard: Heard) -> None:
        def heard_the_tone_end() -> bool:
            frames = tone_frames(heard.audio(), CALLEE_TONE_HZ)
            return bool(frames.any()) and not frames[-10:].any()

        await until(heard_the_tone_end, timeout=8.0)
        await hang_up(ws, heard)

    output, heard = await call_bot(script, "uas_bot_play_pcap.xml", tmp_path)
    # At full level (the jitter buffer's concealment after the last packet
    # repeats it at half level and less): the 50 packets of tone, one run.
    frames = tone_frames(heard.audio(), CALLEE_TONE_HZ, min_rms=4000.0)
    assert longest_run(frames) == 50 == int(frames.sum())
    # And byte for byte: the mu-law SIPp sent is what the bot got.
    received = b"".join(heard.media)
    assert tone_ulaw(CALLEE_TONE_HZ, 1000) in received
    assert heard.session.chunk_gaps == 0 and heard.session.sequence_errors == 0
    assert output.first("bot_ended")["frames_dropped"] == 0


def coded_frames(count: int, seed: int) -> list[bytes]:
    """Distinct 20 ms frames of random codes, all 256 among them, each starting with 0x7F."""
    rng = np.random.default_rng(seed)
    frames = [b"\x7f" + rng.integers(0, 256, 159, dtype=np.uint8).tobytes() for _ in range(count)]
    assert len(set(b"".join(frames))) == 256 and len(set(frames)) == count
    return frames


def frames_pcap(target: Path, frames: list[bytes]) -> None:
    """PCMU packets of the given payloads, 20 ms apart, for SIPp's ``play_pcap_audio``."""
    packets = []
    for k, payload in enumerate(frames):
        rtp = struct.pack("!BBHII", 0x80, 0, 3000 + k, FRAME_SAMPLES * k, 0x7171)
        packets.append((0.020 * k, udp_frame(rtp + payload)))
    write_pcap(target, packets)


async def test_callee_bytes_reach_the_bot_byte_for_byte(tmp_path: Path) -> None:
    frames = coded_frames(50, seed=5)
    frames_pcap(tmp_path / "callee.pcap", frames)

    async def script(ws: web.WebSocketResponse, heard: Heard) -> None:
        await until(lambda: frames[-1] in heard.media, timeout=8.0)
        await hang_up(ws, heard)

    output, heard = await call_bot(script, "uas_bot_play_pcap.xml", tmp_path)
    # Each packet is one media message, as SIPp sent it, in order and unbroken.
    assert b"".join(frames) in b"".join(heard.media)
    assert output.first("bot_ended")["frames_dropped"] == 0


async def test_bot_bytes_reach_the_callee_byte_for_byte(
    tmp_path: Path, receiver: RtpReceiver
) -> None:
    said = b"".join(coded_frames(50, seed=6))

    async def script(ws: web.WebSocketResponse, heard: Heard) -> None:
        sid = heard.session.stream_sid
        await ws.send_str(BotMedia(said).serialize(sid).decode())
        await ws.send_str(BotMark("said").serialize(sid).decode())
        await until(lambda: "said" in heard.session.marks)
        await asyncio.sleep(0.1)
        await hang_up(ws, heard)

    await call_bot(
        script, "uas_bot_rtp_receiver.xml", tmp_path, ("rtp_receiver", str(receiver.port))
    )
    pcmu = [p for p in receiver.snapshot() if p.payload_type == 0]
    sequence = np.array([p.sequence for p in pcmu])
    assert np.all(np.diff(sequence) % 65536 == 1), "packets lost or reordered on loopback"
    # The bot's mu-law is the payload of 50 consecutive packets, byte for byte.
    assert said in b"".join(p.payload for p in pcmu)


async def test_each_key_reaches_the_bot_once(tmp_path: Path) -> None:
    if not (PCAP_DIR / "dtmf_2833_1.pcap").is_file():
        pytest.skip("sip-tester's RFC 4733 pcaps are not installed")
    # In the order of their captures' RTP timestamps: SIPp replays the headers
    # as captured, and "0" comes from another capture whose timestamps run
    # behind the rest (a receiver rightly takes it for an old event).
    keys = ["1", "5", "9", "star", "pound"]
    dtmf_pcap(tmp_path / "callee.pcap", keys)

    async def script(ws: web.WebSocketResponse, heard: Heard) -> None:
        await until(lambda: len(heard.session.digits) >= len(keys), timeout=8.0)
        await asyncio.sleep(0.3)  # any second report of a key would come now
        await hang_up(ws, heard)

    output, heard = await call_bot(script, "uas_bot_play_pcap.xml", tmp_path)
    assert heard.session.digits == ["1", "5", "9", "*", "#"]
    assert [line["digit"] for line in output.all("dtmf")] == ["1", "5", "9", "*", "#"]
    assert output.first("bot_ended")["dtmf_to_bot"] == len(keys)


# The clear sent early in a frame period, and just before the next frame is
# due: there it races the frame, and one more packet of audio may leave.
@pytest.mark.parametrize("offset_ms", [5.0, 18.0])
async def test_clear_stops_playback_within_20_ms(
    tmp_path: Path, receiver: RtpReceiver, offset_ms: float
) -> None:
    cleared_at: list[float] = []

    async def script(ws: web.WebSocketResponse, heard: Heard) -> None:
        sid = heard.session.stream_sid
        await ws.send_str(BotMedia(tone_ulaw(BOT_TONE_HZ, 3000)).serialize(sid).decode())
        await ws.send_str(BotMark("spoken").serialize(sid).decode())
        await until(lambda: len(receiver.loud(BOT_TONE_HZ)) >= 10)
        at = receiver.loud(BOT_TONE_HZ)[-1].at + offset_ms / 1000
        await asyncio.sleep(max(0.0, at - time.time()))
        cleared_at.append(time.time())
        await ws.send_str(BotClear().serialize(sid).decode())  # the callee barged in
        await until(lambda: "spoken" in heard.session.marks)
        await asyncio.sleep(0.2)
        await hang_up(ws, heard)

    output, heard = await call_bot(
        script, "uas_bot_rtp_receiver.xml", tmp_path, ("rtp_receiver", str(receiver.port))
    )
    clear = cleared_at[0]
    loud = receiver.loud(BOT_TONE_HZ)
    late = [p for p in loud if p.at > clear]
    after = [p for p in receiver.snapshot() if p.at > clear + 0.020 and p.payload_type == 0]
    last_loud_ms = (loud[-1].at - clear) * 1000
    silent = [p for p in receiver.snapshot() if p.at > clear and set(p.payload) == {PCMU_SILENCE}]
    first_silent_ms = (silent[0].at - clear) * 1000
    print(
        f"clear ({offset_ms:g} ms into a frame): last bot audio packet {last_loud_ms:.2f} ms, "
        f"first silent packet {first_silent_ms:.2f} ms after the bot sent clear"
    )
    # One frame may be on its way while the clear crosses the socket; no more.
    assert len(late) <= 1, [round((p.at - clear) * 1000, 2) for p in late]
    assert last_loud_ms <= 20.0
    # Silence at the next frame deadline: one 20 ms period, plus the socket
    # and timer slack of a loaded machine.
    assert first_silent_ms <= 40.0
    # The stream goes on, in silence: 0.2 s of it at least.
    assert len(after) >= 8
    assert all(set(p.payload) == {PCMU_SILENCE} for p in after)
    assert len(loud) < 30  # far from the 150 frames the bot had queued
    assert heard.session.marks == ["spoken"]  # the cleared mark came back
    assert output.first("bot_ended")["clears"] == 1


@pytest.mark.parametrize("how", ["close_frame", "connection_cut"])
async def test_bot_closing_its_socket_sends_bye_within_100_ms(
    tmp_path: Path, receiver: RtpReceiver, how: str
) -> None:
    closed_at: list[float] = []

    async def script(ws: web.WebSocketResponse, heard: Heard) -> None:
        await until(lambda: len(receiver.snapshot()) >= 10)  # the call is well under way
        closed_at.append(time.time())
        if how == "close_frame":
            await ws.close()
        else:
            heard.transport.abort()

    output, _ = await call_bot(
        script, "uas_bot_rtp_receiver.xml", tmp_path, ("rtp_receiver", str(receiver.port))
    )
    byes = sipp_received_at(tmp_path, "BYE")
    assert len(byes) == 1, "SIPp's trace shows no BYE"
    bye_ms = (byes[0] - closed_at[0]) * 1000
    print(f"BYE ({how}): SIPp received it {bye_ms:.2f} ms after the bot closed its socket")
    assert -1.0 < bye_ms < 100.0
    assert output.first("hangup_sent")["by"] == "bot"
    ended = output.first("ended")
    assert (ended["disposition"], ended["hangup_by"]) == ("answered", "caller")
    assert ended["bot_result"]["outcome"] == "bot_disconnected"

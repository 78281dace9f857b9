"""The voicebot stream between two RTP sessions on loopback and a WebSocket bot.

``ours`` is the dialer's session, streamed to the bot; ``callee`` is the
person's phone, another ``RtpSession``. Real sockets, the real clock: tests
wait on what callbacks report (with a timeout) or on the session's own
frame deadlines, never on a sleep.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from media.bots import BotServer, BotSession, EchoBot, serve_bot, tone
from media.dtmf import DtmfDigit
from media.g711 import (
    ALAW_ENCODE_TABLE,
    PCMA,
    PCMU,
    ULAW_ENCODE_TABLE,
    G711Codec,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)
from media.playback import PlaybackQueue
from media.ports import PortAllocator, bind_pair
from media.session import MediaParams, RtpSession
from media.streams import (
    BotClear,
    BotHangup,
    BotMark,
    BotMedia,
    BotResult,
    BotTransfer,
    CallMark,
    CallMedia,
    CallStop,
    StreamError,
    parse_call_event,
)
from media.voicebot import (
    CALLS_ROUTE,
    CallControl,
    VoicebotCall,
    VoicebotConfig,
    VoicebotOutcome,
    VoicebotResult,
    VoicebotStream,
    calls_handler,
    new_sid,
    run_voicebot,
)

HOST = "127.0.0.1"
WAIT_S = 5.0
LOUD_RMS = 1000.0
CALL = VoicebotCall(
    call_sid="CA" + "1" * 32,
    account_sid="AC" + "2" * 32,
    stream_sid="MZ" + "3" * 32,
    custom_parameters={"first_name": "Ada", "script": "Hello Ada"},
)


class Watch:
    """Conditions re-checked whenever a callback reports something."""

    def __init__(self) -> None:
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def poke(self, *_: object) -> None:
        for condition, future in self._waiters:
            if not future.done() and condition():
                future.set_result(None)

    async def until(self, condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
        if condition():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((condition, future))
        await asyncio.wait_for(future, timeout)


def rms(frame: np.ndarray) -> float:
    return float(np.sqrt(np.mean(frame.astype(np.float64) ** 2)))


def peak_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.shape[0])))
    return float(np.argmax(spectrum)) * 8000 / samples.shape[0]


class Call:
    """Our session and the callee's, started toward each other on loopback."""

    def __init__(self, ours: RtpSession, callee: RtpSession, watch: Watch) -> None:
        self.ours = ours
        self.callee = callee
        self.watch = watch
        self.playback: PlaybackQueue = ours.source  # type: ignore[assignment]
        self.callee_playback: PlaybackQueue = callee.source  # type: ignore[assignment]
        self.heard: list[np.ndarray] = []  # what the callee's phone played out
        self.hangup_at: float | None = None

    def on_heard(self, frame: np.ndarray) -> None:
        self.heard.append(frame.copy())
        self.watch.poke()

    def loud_frames(self) -> list[int]:
        return [i for i, frame in enumerate(self.heard) if rms(frame) > LOUD_RMS]

    async def frames_later(self, count: int) -> None:
        """Wait for our session's own clock to move ``count`` frames on."""
        pacer = self.ours._pacer
        assert pacer is not None
        loop = asyncio.get_running_loop()
        reached: asyncio.Future[None] = loop.create_future()
        loop.call_at(pacer.deadline(pacer.next_index + count) + 0.001, reached.set_result, None)
        await reached

    def stream(self, url: str, call: VoicebotCall = CALL, **config: Any) -> VoicebotStream:
        def on_hangup(outcome: VoicebotOutcome) -> None:
            self.hangup_at = asyncio.get_running_loop().time()
            self.watch.poke()

        stream = VoicebotStream(
            VoicebotConfig(url, **config), call, self.playback, on_hangup=on_hangup
        )
        stream.attach(self.ours)
        return stream


@pytest.fixture
def allocator() -> PortAllocator:
    return PortAllocator(43000, 43999)


@pytest.fixture
async def call(allocator: PortAllocator):
    watch = Watch()
    ours = await RtpSession.create(bind_pair(allocator, HOST), source=PlaybackQueue())
    callee = await RtpSession.create(bind_pair(allocator, HOST), source=PlaybackQueue())
    harness = Call(ours, callee, watch)
    callee.on_audio = harness.on_heard
    ours.start(MediaParams((HOST, callee.local_rtp_port)))
    callee.start(MediaParams((HOST, ours.local_rtp_port)))
    try:
        yield harness
    finally:
        ours.close()
        callee.close()


@pytest.fixture
async def bots():
    servers: list[BotServer] = []

    async def start(handler: Any) -> BotServer:
        server = await serve_bot(handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


BotScript = Callable[[web.WebSocketResponse, BotSession], Awaitable[None]]


def scripted(script: BotScript, watch: Watch) -> Callable[[web.Request], Awaitable[Any]]:
    """A bot made of a coroutine: it runs once ``start`` has arrived, reading on beside it."""

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session = BotSession(listener=watch.poke)
        started = asyncio.Event()

        async def read() -> None:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    session.observe(message.data)
                    if session.start is not None:
                        started.set()
            session.closed.set()

        reader = asyncio.ensure_future(read())
        handle.sessions.append(session)  # type: ignore[attr-defined]
        await started.wait()
        await script(ws, session)
        await reader
        return ws

    handle.sessions = []  # type: ignore[attr-defined]
    return handle


def assert_timed_to_bot(result: VoicebotResult) -> None:
    """Every frame sent was timed, but those handed over while connecting (they
    waited for the bot, not for us; at most a queue's worth)."""
    queue = VoicebotConfig("").send_queue_frames
    assert result.frames_sent - queue <= result.latency_to_bot.count <= result.frames_sent


def ulaw(samples: np.ndarray) -> bytes:
    return ulaw_encode(samples).tobytes()


def media_message(samples: np.ndarray, sid: str = CALL.stream_sid) -> bytes:
    return BotMedia(ulaw(samples)).serialize(sid)


# -- echo: the call's audio goes to the bot and comes back -------------------------------------


async def test_echo_bot_round_trip_is_paced_and_counted(call: Call, bots) -> None:
    bot = EchoBot(listener=call.watch.poke)
    server = await bots(bot)
    stream = call.stream(server.url)
    task = asyncio.ensure_future(stream.run())
    call.callee_playback.enqueue(tone(700, 600).samples)
    await call.watch.until(lambda: len(call.loud_frames()) >= 28)
    await call.frames_later(10)
    stream.stop()
    result = await task

    assert result.outcome is VoicebotOutcome.COMPLETED
    assert result.frames_dropped == 0 and result.invalid_frames == 0
    seen = bot.sessions[0]
    assert seen.start is not None
    assert seen.start.call_sid == CALL.call_sid and seen.start.account_sid == CALL.account_sid
    assert seen.start.custom_parameters == {"first_name": "Ada", "script": "Hello Ada"}
    assert seen.start.media_format.encoding == "audio/x-mulaw"
    assert seen.start.media_format.sample_rate == 8000
    assert seen.chunk_gaps == 0 and seen.sequence_errors == 0 and seen.invalid == 0
    assert seen.media_messages == result.frames_sent == seen.last_chunk
    assert seen.last_timestamp_ms == (seen.media_messages - 1) * 20
    assert seen.stopped

    # The tone came back whole: one run of loud frames at its pitch. (A
    # frame either session had to skip, when this machine stalled the loop
    # for over 60 ms, is the only excuse for a hole.)
    stats, callee_stats = call.ours.stats(), call.callee.stats()
    skipped = stats.frames_skipped + callee_stats.frames_skipped
    loud = call.loud_frames()
    holes = loud[-1] - loud[0] + 1 - len(loud)
    assert holes <= skipped
    assert 30 - skipped <= len(loud) <= 31
    heard = np.concatenate([call.heard[i] for i in loud])
    assert abs(peak_frequency(heard) - 700) < 10
    assert_timed_to_bot(result)
    assert result.latency_from_bot.median_ms <= 21  # about one 20 ms frame of phase
    assert result.latency_from_bot.p99_ms < 40


async def test_frames_written_in_threes_arrive_whole_and_in_order(call: Call, bots) -> None:
    bot = EchoBot(listener=call.watch.poke)
    server = await bots(bot)
    stream = call.stream(server.url, frames_per_write=3)
    task = asyncio.ensure_future(stream.run())
    call.callee_playback.enqueue(tone(700, 600).samples)
    await call.watch.until(lambda: len(call.loud_frames()) >= 28)
    # A mark is written at once, taking the frames held before it along.
    await call.watch.until(lambda: stream.frames_sent % 3 == 1)
    stream._on_mark("m", True)
    await call.watch.until(lambda: bot.sessions[0].marks == ["m"])
    assert bot.sessions[0].media_messages == stream.frames_sent
    stream.stop()
    result = await task

    seen = bot.sessions[0]
    assert seen.chunk_gaps == 0 and seen.sequence_errors == 0 and seen.invalid == 0
    # Every frame handed over reached the bot, the last ones with stop.
    assert seen.media_messages == result.frames_sent == seen.last_chunk
    assert seen.stopped
    # Held for company: the first of each three waited two frames (40 ms).
    assert_timed_to_bot(result)
    assert 35 <= result.latency_to_bot.max_ms < 80


def self_signed_context(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a throwaway certificate for 127.0.0.1 (openssl makes it)."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    command = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
    command += " -addext subjectAltName=IP:127.0.0.1"
    subprocess.run(
        [*command.split(), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


async def test_echo_over_tls_with_the_connection_taken_over(call: Call, tmp_path: Path) -> None:
    server_context, cert = self_signed_context(tmp_path)
    bot = EchoBot(listener=call.watch.poke)
    server = await serve_bot(bot, ssl_context=server_context)
    client_context = ssl.create_default_context(cafile=str(cert))
    try:
        stream = call.stream(server.url, ssl=client_context)
        task = asyncio.ensure_future(stream.run())
        call.callee_playback.enqueue(tone(700, 400).samples)
        await call.watch.until(lambda: len(call.loud_frames()) >= 15)
        stream.stop()
        result = await task
    finally:
        await server.close()
    assert server.url.startswith("wss://")
    assert result.outcome is VoicebotOutcome.COMPLETED and result.invalid_frames == 0
    seen = bot.sessions[0]
    assert seen.chunk_gaps == 0 and seen.sequence_errors == 0 and seen.invalid == 0
    assert seen.media_messages == result.frames_sent and seen.stopped
    assert result.bot_media_messages > 0


async def test_dtmf_reaches_the_bot_once_per_key(call: Call, bots) -> None:
    bot = EchoBot(listener=call.watch.poke)
    server = await bots(bot)
    stream = call.stream(server.url)
    task = asyncio.ensure_future(stream.run())
    await call.watch.until(lambda: bool(bot.sessions) and bot.sessions[0].media_messages > 0)
    call.callee.send_dtmf("159#")
    await call.watch.until(lambda: len(bot.sessions[0].digits) >= 4)
    await call.frames_later(20)  # room for a duplicate to show up
    stream.stop()
    result = await task
    assert bot.sessions[0].digits == ["1", "5", "9", "#"]
    assert result.dtmf_sent == 4


# -- G.711 straight through ---------------------------------------------------------------------


def coded_frames(count: int, seed: int) -> list[bytes]:
    """Distinct frames of random codes, all 256 of them among the frames, each frame
    starting with 0x7F: mu-law's negative zero, which a decode and re-encode turns to 0xFF."""
    rng = np.random.default_rng(seed)
    frames = [b"\x7f" + rng.integers(0, 256, 159, dtype=np.uint8).tobytes() for _ in range(count)]
    assert len(set(b"".join(frames))) == 256 and len(set(frames)) == count
    return frames


class FramesSource:
    """An audio source that hands the session fixed payloads, untouched."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = list(frames)

    def read_payload(self, encode_table: np.ndarray) -> bytes | None:
        return self.frames.pop(0) if self.frames else None

    def read_frame(self) -> np.ndarray | None:
        raise AssertionError("the session asked for samples")


@pytest.mark.parametrize("codec", [PCMU, PCMA], ids=["PCMU", "PCMA"])
async def test_g711_passes_through_byte_for_byte(
    allocator: PortAllocator, bots, codec: G711Codec
) -> None:
    """The callee's payloads reach the bot as mu-law with no decode; the bot's mu-law
    reaches the callee as the payloads sent: the same bytes on PCMU, one table on PCMA."""
    watch = Watch()
    frames = coded_frames(25, seed=1)
    from_callee = FramesSource(frames)
    ours = await RtpSession.create(bind_pair(allocator, HOST), source=PlaybackQueue())
    callee = await RtpSession.create(bind_pair(allocator, HOST), source=from_callee)
    heard: list[bytes] = []  # what the callee's phone got, payload by payload

    def on_heard(payload: bytes) -> None:
        heard.append(payload)
        watch.poke()

    callee.on_payload = on_heard
    bot_heard: list[bytes] = []
    bot_sends = b"".join(coded_frames(25, seed=2))

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session = BotSession(listener=watch.poke)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                event = session.observe(message.data)
                if type(event) is CallMedia:
                    bot_heard.append(event.payload)
                    if len(bot_heard) == 1:
                        sid = session.stream_sid
                        await ws.send_str(BotMedia(bot_sends).serialize(sid).decode())
                        await ws.send_str(BotMark("said").serialize(sid).decode())
        return ws

    server = await bots(handle)
    stream = VoicebotStream(VoicebotConfig(server.url), CALL, ours.source)  # type: ignore[arg-type]
    marks: list[str] = []
    stream._audio.on_mark = lambda name, played: (marks.append(name), watch.poke())
    stream.attach(ours)
    assert ours.on_audio is None  # nothing decoded on the session's side for the stream
    task = asyncio.ensure_future(stream.run())
    # The calls start once the bot is there, so no frame waits (or is dropped) meanwhile.
    await watch.until(lambda: stream._direct)
    ours.start(MediaParams((HOST, callee.local_rtp_port), codec=codec))
    callee.start(MediaParams((HOST, ours.local_rtp_port), codec=codec))
    try:
        await watch.until(lambda: marks == ["said"] and from_callee.frames == [])
        # Ten more frames each way: the last ones through both jitter buffers.
        bot_count, callee_count = len(bot_heard), len(heard)
        await watch.until(lambda: len(bot_heard) >= bot_count + 10)
        await watch.until(lambda: len(heard) >= callee_count + 10)
        stream.stop()
        result = await task
    finally:
        stream.detach()
        ours.close()
        callee.close()
    skipped = ours.stats().frames_skipped + callee.stats().frames_skipped
    assert result.outcome is VoicebotOutcome.COMPLETED and result.invalid_frames == 0

    def to_ulaw(payload: bytes) -> bytes:
        if codec is PCMU:
            return payload
        return ULAW_ENCODE_TABLE.take(alaw_decode(payload).view(np.uint16)).tobytes()

    def from_ulaw(payload: bytes) -> bytes:
        if codec is PCMU:
            return payload
        return ALAW_ENCODE_TABLE.take(ulaw_decode(payload).view(np.uint16)).tobytes()

    def arrived_in_order(expected: list[bytes], received: list[bytes]) -> None:
        # Each frame whole and in order (the jitter buffer may put a made-up
        # frame between two; a frame a loaded machine made a session skip is
        # the only excuse for one missing).
        where = {frame: n for n, frame in enumerate(received)}
        found = [where[frame] for frame in expected if frame in where]
        missing = [k for k, frame in enumerate(expected) if frame not in where]
        assert len(missing) <= skipped, (
            missing,
            result.frames_dropped,
            ours.stats(),
            callee.stats(),
        )
        assert found == sorted(found)

    # Callee -> bot: each frame the callee sent is one media message, in mu-law.
    arrived_in_order([to_ulaw(frame) for frame in frames], bot_heard)
    # Bot -> callee: the bot's bytes, frame by frame, in the call's codec.
    sent = [from_ulaw(bot_sends[i : i + 160]) for i in range(0, len(bot_sends), 160)]
    arrived_in_order(sent, heard)


def test_bot_audio_queue_frames_marks_and_clear() -> None:
    from media.voicebot import _BotAudio

    marks: list[tuple[str, bool]] = []
    audio = _BotAudio(lambda name, played: marks.append((name, played)))
    data = bytes(range(256)) * 2  # 512 bytes in pieces of odd lengths
    audio.mark("before")
    audio.enqueue(data[:100])
    audio.enqueue(data[100:333])
    audio.mark("middle")
    audio.enqueue(data[333:])
    audio.mark("end")
    assert audio.queued_samples == 512
    out = [audio.read() for _ in range(3)]
    assert marks == [("before", True), ("middle", True)]
    assert b"".join(out) == data[:480]  # type: ignore[arg-type]
    assert audio.queued_samples == 32
    last = audio.read()
    assert last == data[480:] + b"\xff" * 128  # padded with mu-law silence
    assert marks[-1] == ("end", True)
    assert audio.read() is None and audio.idle

    audio.enqueue(data)
    audio.mark("cut")
    assert audio.read() == data[:160]
    assert audio.clear() == ["cut"]
    assert marks[-1] == ("cut", False)
    assert audio.read() is None and audio.queued_samples == 0


def test_timed_source_hands_payloads_in_the_sessions_codec() -> None:
    from media.clock import LatenessHistogram
    from media.voicebot import _BotAudio, _TimedSource

    loop = FakeLoop()
    source = _TimedSource(_BotAudio(), LatenessHistogram(), hold_s=0.0)
    source._loop = loop  # type: ignore[assignment]
    frames = coded_frames(30, seed=3)[:3]
    source.enqueue(b"".join(frames), loop.now)
    loop.now += 0.001
    assert source.read_payload(ULAW_ENCODE_TABLE) == frames[0]  # the bot's bytes as they are
    alaw = source.read_payload(ALAW_ENCODE_TABLE)
    assert alaw == alaw_encode(ulaw_decode(frames[1])).tobytes()
    samples = source.read_frame()
    assert samples is not None and np.array_equal(samples, ulaw_decode(frames[2]))
    assert source.read_payload(ULAW_ENCODE_TABLE) is None


async def test_what_the_bot_said_plays_on_after_detach(call: Call) -> None:
    stream = call.stream("ws://127.0.0.1:1/")
    loop = asyncio.get_running_loop()
    stream._play(ulaw(tone(500, 100).samples), loop)
    stream._audio.mark("done")
    assert call.ours.source is stream.source
    stream.detach()
    # The session has the call's queue back, with the bot's audio and mark in it.
    assert call.ours.source is call.playback and call.ours.on_payload is None
    assert call.playback.queued_samples == 800
    assert stream._audio.idle


# -- marks and clear ---------------------------------------------------------------------------


async def test_mark_comes_back_after_its_audio_has_played(call: Call, bots) -> None:
    loop = asyncio.get_running_loop()
    sent_at: list[float] = []

    async def script(ws: web.WebSocketResponse, session: BotSession) -> None:
        sent_at.append(loop.time())
        await ws.send_bytes(b"")  # a binary frame: counted as invalid, ignored
        await ws.send_str(media_message(tone(500, 200).samples).decode())
        await ws.send_str(BotMark("after-200ms").serialize(session.stream_sid).decode())
        await call.watch.until(lambda: session.marks == ["after-200ms"])
        sent_at.append(loop.time())
        await ws.send_str(BotHangup().serialize(session.stream_sid).decode())

    bot = scripted(script, call.watch)
    server = await bots(bot)
    result = await call.stream(server.url).run()
    assert result.outcome is VoicebotOutcome.BOT_HANGUP
    assert result.marks_echoed == 1 and result.invalid_frames == 1
    # Ten frames were queued: the echo cannot come before nine more ticks.
    assert sent_at[1] - sent_at[0] >= 0.180
    assert bot.sessions[0].stopped  # stop follows the bot's hangup


class TimedReads:
    """The stream's source as the session sees it, remembering when each frame was read."""

    def __init__(self, source: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.source = source
        self.loop = loop
        self.reads: list[tuple[float, bool]] = []

    def read_payload(self, encode_table: np.ndarray) -> bytes | None:
        payload = self.source.read_payload(encode_table)
        self.reads.append((self.loop.time(), payload is not None))
        return payload

    def read_frame(self) -> np.ndarray | None:
        frame = self.source.read_frame()
        self.reads.append((self.loop.time(), frame is not None))
        return frame


async def test_clear_stops_playback_within_one_frame(call: Call, bots) -> None:
    loop = asyncio.get_running_loop()

    async def script(ws: web.WebSocketResponse, session: BotSession) -> None:
        sid = session.stream_sid
        # Three seconds at once, as a TTS engine returns them, then a mark.
        await ws.send_str(media_message(tone(600, 3000).samples).decode())
        await ws.send_str(BotMark("end-of-speech").serialize(sid).decode())
        await call.watch.until(lambda: len(call.loud_frames()) >= 10)
        await ws.send_str(BotClear().serialize(sid).decode())  # the callee barged in
        await call.watch.until(lambda: "end-of-speech" in session.marks)
        await ws.send_str(BotHangup().serialize(sid).decode())

    server = await bots(scripted(script, call.watch))
    stream = call.stream(server.url)
    playback = TimedReads(stream.source, loop)
    call.ours.source = playback
    cleared_at: list[float] = []
    on_mark = stream._audio.on_mark
    assert on_mark is not None

    def marked(name: str, played: bool) -> None:
        if not played:  # dropped by the clear, in the callback that cleared
            cleared_at.append(loop.time())
        on_mark(name, played)

    stream._audio.on_mark = marked
    result = await stream.run()
    await call.frames_later(2)
    assert result.clears == 1 and result.marks_echoed == 1
    assert len(cleared_at) == 1
    after = [(at, audio) for at, audio in playback.reads if at > cleared_at[0]]
    # The very next frame taken after the clear is silence, and it is taken
    # on the next tick: at most 20 ms later, plus however late the session's
    # timer ran on this machine (the timer's 1 ms grain at best).
    assert after and after[0][1] is False
    late_s = max(0.001, call.ours.lateness.maximum_s)
    assert after[0][0] - cleared_at[0] <= 0.020 + late_s
    assert not any(audio for _, audio in after)
    assert len(call.loud_frames()) < 100  # far from the 150 frames queued


# -- the bot ends the call ---------------------------------------------------------------------


async def test_bot_closing_its_socket_signals_hangup_within_100_ms(call: Call, bots) -> None:
    loop = asyncio.get_running_loop()
    closed_at: list[float] = []

    async def script(ws: web.WebSocketResponse, session: BotSession) -> None:
        await call.watch.until(lambda: session.media_messages >= 5)
        closed_at.append(loop.time())
        await ws.close()

    server = await bots(scripted(script, call.watch))
    stream = call.stream(server.url)
    task = asyncio.ensure_future(stream.run())
    await call.watch.until(lambda: call.hangup_at is not None)
    assert stream.hangup.is_set()
    assert call.hangup_at is not None and call.hangup_at - closed_at[0] < 0.100
    result = await task
    assert result.outcome is VoicebotOutcome.BOT_DISCONNECTED
    assert "closed" in (result.reason or "")


async def test_a_bot_ping_is_answered_and_a_broken_frame_ends_the_stream(call: Call, bots) -> None:
    pongs: list[bytes] = []

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        session = BotSession(listener=call.watch.poke)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                session.observe(message.data)
                if session.media_messages == 3:
                    await ws.ping(b"still there?")
            elif message.type is WSMsgType.PONG:
                pongs.append(message.data)
                # Opcode 0x3 is reserved: a client must fail the connection.
                request.transport.write(b"\x83\x00")  # type: ignore[union-attr]
        return ws

    server = await bots(handle)
    stream = call.stream(server.url)
    result = await asyncio.wait_for(stream.run(), WAIT_S)
    assert pongs == [b"still there?"]
    assert result.outcome is VoicebotOutcome.BOT_DISCONNECTED
    assert "opcode 0x3" in (result.reason or "")
    assert stream.hangup.is_set()


async def test_heartbeat_takes_a_bot_that_stops_answering_for_gone(call: Call, bots) -> None:
    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT and '"start"' in message.data:
                # Reads nothing more, so it answers no ping: a hung bot.
                request.transport.pause_reading()  # type: ignore[union-attr]
                await asyncio.sleep(WAIT_S)
        return ws

    loop = asyncio.get_running_loop()
    server = await bots(handle)
    stream = call.stream(server.url, heartbeat_s=0.1)
    began = loop.time()
    result = await asyncio.wait_for(stream.run(), WAIT_S)
    assert result.outcome is VoicebotOutcome.BOT_DISCONNECTED
    assert "ping" in (result.reason or "")
    # The first ping goes out after 0.1 s; a second period without a word ends it.
    assert 0.15 <= loop.time() - began < 1.0


async def test_result_and_transfer_are_reported_and_transfer_ends_the_stream(
    call: Call, bots
) -> None:
    transfers: list[str] = []

    async def script(ws: web.WebSocketResponse, session: BotSession) -> None:
        sid = session.stream_sid
        for event in (
            BotResult({"intent": "buy", "score": 1}, ("hot",)),
            BotResult({"score": 3}, ("hot", "vip")),
            BotTransfer("tel:+15551234567"),  # not a SIP URI: logged and ignored
            BotTransfer("sip:closer@pbx.example.com"),
        ):
            await ws.send_str(event.serialize(sid).decode())

    bot = scripted(script, call.watch)
    server = await bots(bot)
    stream = call.stream(server.url)
    stream.on_transfer = transfers.append
    result = await stream.run()
    assert result.outcome is VoicebotOutcome.TRANSFERRED
    assert result.reason == "transfer to sip:closer@pbx.example.com"
    assert dict(result.values) == {"intent": "buy", "score": 3}
    assert result.tags == ("hot", "vip")
    assert result.transfer_target == "sip:closer@pbx.example.com"
    assert result.invalid_frames == 1
    assert transfers == ["sip:closer@pbx.example.com"]
    assert stream.transfer.is_set() and not stream.hangup.is_set()
    assert call.hangup_at is None  # a transfer is not a hang-up
    assert bot.sessions[0].stopped


async def test_bad_frames_are_counted_and_the_call_goes_on(call: Call, bots) -> None:
    async def script(ws: web.WebSocketResponse, session: BotSession) -> None:
        sid = session.stream_sid
        await ws.send_str("{not json")
        await ws.send_str('{"event": "media", "media": {"payload": "***"}}')
        await ws.send_str(media_message(np.zeros(160, np.int16), sid="MZsomeoneelse").decode())
        await ws.send_str('{"event": "dance"}')
        # Odd lengths are fine; the second one overflows max_playback_s.
        await ws.send_str(media_message(tone(300, 1000).samples[:333]).decode())
        await ws.send_str(media_message(tone(300, 1000).samples[:800]).decode())
        await ws.send_str(BotHangup().serialize(sid).decode())

    server = await bots(scripted(script, call.watch))
    result = await call.stream(server.url, max_playback_s=0.1).run()
    assert result.outcome is VoicebotOutcome.BOT_HANGUP
    assert (result.invalid_frames, result.unknown_events) == (3, 1)
    assert result.bot_media_messages == 2
    assert result.bot_audio_ms == pytest.approx((333 + 800) / 8)
    assert result.bot_audio_dropped_ms == pytest.approx(100.0)


# -- the bot cannot be had ---------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


async def silent_server() -> tuple[asyncio.Server, str]:
    """A TCP server that accepts and never answers the HTTP upgrade."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://{HOST}:{port}/"


async def refusing_handler(request: web.Request) -> web.Response:
    return web.Response(status=403, text="no")


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("closed port", "cannot reach the bot"),
        ("silent server", "no answer from the bot within 0.2 s"),
        ("refusing server", "HTTP 403"),
    ],
)
async def test_unreachable_bot_fails_fast_and_gives_the_call_back(
    call: Call, bots, where: str, reason: str
) -> None:
    loop = asyncio.get_running_loop()
    silent = None
    if where == "closed port":
        url = f"ws://{HOST}:{closed_port()}/"
    elif where == "silent server":
        silent, url = await silent_server()
    else:
        url = (await bots(refusing_handler)).url
    original = call.ours.source
    began = loop.time()
    try:
        result = await run_voicebot(
            call.ours, call.playback, VoicebotConfig(url, connect_timeout_s=0.2), CALL
        )
    finally:
        if silent is not None:
            silent.close()
    assert loop.time() - began < 0.5
    assert result.outcome is VoicebotOutcome.BOT_FAILED
    assert reason in (result.reason or "")
    # The session is ours again: the node's fallback prompt can play.
    assert call.ours.source is original
    assert call.playback.on_mark is None


async def test_stop_while_connecting_ends_at_once(call: Call) -> None:
    server, url = await silent_server()
    try:
        stream = call.stream(url, connect_timeout_s=5.0)
        task = asyncio.ensure_future(stream.run())
        await call.frames_later(2)
        stream.stop()
        result = await asyncio.wait_for(task, 0.5)
    finally:
        server.close()
    assert result.outcome is VoicebotOutcome.COMPLETED
    assert result.reason == "stopped before the bot answered"
    assert not stream.hangup.is_set()


async def test_a_bot_that_stops_reading_does_not_stall_the_rtp_clock(call: Call, bots) -> None:
    stalled = asyncio.Event()

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sock = request.transport.get_extra_info("socket")  # type: ignore[union-attr]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request.transport.pause_reading()  # type: ignore[union-attr]
        await stalled.wait()
        request.transport.resume_reading()  # type: ignore[union-attr]
        async for _ in ws:
            pass
        return ws

    server = await bots(handle)
    stream = call.stream(server.url, send_queue_frames=10, close_timeout_s=0.2)
    task = asyncio.ensure_future(stream.run())
    await call.watch.until(lambda: call.ours.frame_index > 0 and stream.connect_ms is not None)
    await call.watch.until(lambda: stream.frames_sent > 0)  # frames go straight to the socket
    # Our side's kernel buffer made small too, so the socket backs up after
    # a few hundred frames, not megabytes.
    ours = stream._ws.get_extra_info("socket")  # type: ignore[union-attr]
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    # Far more audio than one call makes, so the socket backs up in a second,
    # handed in between turns of the loop as the session's callback would.
    frame = tone(400, 20).samples
    for _ in range(2000):
        for _ in range(25):
            stream.on_audio(frame)
        await asyncio.sleep(0)  # one turn of the loop: the sender may write
        if stream.frames_dropped:
            break
    assert stream.frames_dropped > 0
    heard = len(call.heard)
    call.callee_playback.enqueue(tone(700, 500).samples)
    await call.frames_later(25)
    # The session kept its clock while the bot's socket was stuck.
    assert call.ours.stats().send_lateness_p99_ms < 20
    assert len(call.heard) - heard >= 20
    # Ending the call does not wait on the bot either: its socket is cut
    # once the close timeout has passed.
    stream.stop()
    result = await asyncio.wait_for(task, 0.5)
    stalled.set()
    assert result.outcome is VoicebotOutcome.COMPLETED
    assert result.frames_dropped >= stream.frames_dropped > 0


async def test_frames_are_written_from_the_callback_and_queue_while_the_socket_is_full(
    call: Call, bots
) -> None:
    paused = asyncio.Event()
    resume = asyncio.Event()

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sock = request.transport.get_extra_info("socket")  # type: ignore[union-attr]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        session = BotSession(listener=call.watch.poke)
        handle.sessions.append(session)  # type: ignore[attr-defined]
        async for message in ws:
            session.observe(message.data)
            if session.media_messages == 5:
                request.transport.pause_reading()  # type: ignore[union-attr]
                paused.set()
                await resume.wait()
                request.transport.resume_reading()  # type: ignore[union-attr]
        session.closed.set()
        return ws

    handle.sessions = []  # type: ignore[attr-defined]
    server = await bots(handle)
    stream = call.stream(server.url, send_queue_frames=10)
    task = asyncio.ensure_future(stream.run())
    await call.watch.until(lambda: stream.frames_sent >= 3)
    # Idle and streaming: a frame handed over is on the socket when the
    # callback returns, with no task woken to write it.
    frame = tone(400, 20).samples
    sent = stream.frames_sent
    stream.on_audio(frame)
    assert stream.frames_sent == sent + 1
    await asyncio.wait_for(paused.wait(), WAIT_S)
    stream._ws.get_extra_info("socket").setsockopt(  # type: ignore[union-attr]
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
    )
    for _ in range(2000):
        for _ in range(25):
            stream.on_audio(frame)
        await asyncio.sleep(0)
        if stream.frames_dropped:
            break
    assert stream.frames_dropped > 0
    # The bot reads again: what was queued follows what was written, in
    # order, and frames go straight out again once the queue is empty.
    resume.set()
    await call.watch.until(lambda: handle.sessions[0].media_messages >= stream.frames_sent)
    await call.frames_later(5)
    sent = stream.frames_sent
    stream.on_audio(frame)
    assert stream.frames_sent == sent + 1
    stream.stop()
    result = await task
    seen = handle.sessions[0]
    await asyncio.wait_for(seen.closed.wait(), WAIT_S)
    assert seen.sequence_errors == 0 and seen.invalid == 0 and seen.stopped
    assert seen.media_messages == result.frames_sent == seen.last_chunk
    assert_timed_to_bot(result)


class FakeLoop:
    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("arrive_before_tick_ms", "chunk_frames", "silent_ticks"),
    [
        (19.0, 1, 0),  # arrived 19 ms before the tick: cushion enough, plays at once
        (10.0, 1, 0),  # exactly the hold
        (0.5, 1, 1),  # just before the tick: held one frame for cushion
        (0.5, 2, 0),  # two frames queued: nothing to wait for
        (0.5, 50, 0),  # a burst from a TTS engine
    ],
)
def test_playout_hold_starts_a_talk_spurt_with_cushion(
    arrive_before_tick_ms: float, chunk_frames: int, silent_ticks: int
) -> None:
    from media.clock import LatenessHistogram
    from media.voicebot import _BotAudio, _TimedSource

    histogram = LatenessHistogram()
    loop = FakeLoop()
    source = _TimedSource(_BotAudio(), histogram, hold_s=0.010)
    source._loop = loop  # type: ignore[assignment]
    tick = loop.now + arrive_before_tick_ms / 1000
    source.enqueue(ulaw(tone(500, 20 * chunk_frames).samples), loop.now)
    reads = []
    for n in range(silent_ticks + chunk_frames + 1):
        loop.now = tick + n * 0.020
        reads.append(source.read_frame() is not None)
    assert reads == [False] * silent_ticks + [True] * chunk_frames + [False]
    # The wait counted from arrival to the first frame's send.
    expected_ms = arrive_before_tick_ms + 20 * silent_ticks
    assert histogram.maximum_s * 1000 == pytest.approx(expected_ms)
    assert histogram.total == 1


def test_a_fed_stream_is_held_once_and_late_audio_raises_the_hold() -> None:
    from media.clock import LatenessHistogram
    from media.voicebot import _BotAudio, _TimedSource

    loop = FakeLoop()
    source = _TimedSource(_BotAudio(), LatenessHistogram(), hold_s=0.010, max_hold_s=0.040)
    source._loop = loop  # type: ignore[assignment]
    frame = ulaw(tone(500, 20).samples)
    # Frame k lands 2 ms before deadline k, until the bot stalls for 32 ms
    # before frame 12: longer than the one frame of cushion the start's hold gave.
    arrivals = [(k * 0.020 - 0.002 + (0.032 if k >= 12 else 0.0), "audio") for k in range(20)]
    deadlines = [(n * 0.020, "read") for n in range(22)]
    reads = []
    for at, what in sorted(arrivals + deadlines):
        loop.now = 100.0 + at
        if what == "audio":
            source.enqueue(frame, loop.now)
        else:
            reads.append(source.read_frame() is not None)
    # Held once at the start (2 ms of cushion is under the 10 ms hold), then
    # fed and never held, until the stall left deadline 13 empty; the late
    # audio then starts a talk-spurt with a hold one step longer.
    assert reads == [False] + [True] * 12 + [False, False] + [True] * 7
    assert source.hold_s == pytest.approx(0.020)
    assert source.underruns == 2


def test_playout_hold_rearms_after_a_clear() -> None:
    from media.clock import LatenessHistogram
    from media.voicebot import _BotAudio, _TimedSource

    loop = FakeLoop()
    playback = _BotAudio()
    source = _TimedSource(playback, LatenessHistogram(), hold_s=0.010)
    source._loop = loop  # type: ignore[assignment]
    source.enqueue(ulaw(tone(500, 200).samples), loop.now)
    loop.now += 0.015
    assert source.read_frame() is not None
    playback.clear()
    source.cleared()
    source.enqueue(ulaw(tone(500, 20).samples), loop.now)
    assert source.read_frame() is None  # a new talk-spurt: held
    loop.now += 0.010
    assert source.read_frame() is not None


# -- the Twilio-compatible hang-up endpoint ---------------------------------------------------


def test_new_sid_is_prefix_and_32_hex_digits() -> None:
    assert new_sid("MZ", lambda bits: 0xABC) == "MZ" + "0" * 29 + "abc"


@pytest.mark.parametrize(
    ("account", "call_sid", "form", "status", "hung_up"),
    [
        ("AC1", "CA1", {"Status": "completed"}, 200, True),
        ("AC1", "CA1", {"Status": "canceled"}, 200, True),
        ("AC1", "CA1", {"Status": "in-progress"}, 400, False),
        ("AC1", "CA1", {"Url": "https://x/twiml"}, 400, False),
        ("AC1", "CA9", {"Status": "completed"}, 404, False),
        ("AC2", "CA1", {"Status": "completed"}, 404, False),
    ],
)
def test_call_control_update(account, call_sid, form, status, hung_up) -> None:
    control = CallControl()
    calls: list[str] = []
    control.register("CA1", "AC1", lambda: calls.append("CA1"))
    answer = control.update(account, call_sid, form)
    assert answer.status == status
    assert calls == (["CA1"] if hung_up else [])
    assert len(control) == (0 if hung_up else 1)
    if status == 404:
        assert answer.body["code"] == 20404
    if status == 200:
        assert answer.body == {"sid": "CA1", "account_sid": "AC1", "status": "completed"}
        assert control.update(account, call_sid, form).status == 404  # only once


@pytest.mark.parametrize(
    ("auth", "status"),
    [(("AC1", "token"), 200), (("AC1", "wrong"), 401), (None, 401)],
)
async def test_calls_handler_hangs_up_through_http(call: Call, bots, auth, status) -> None:
    import aiohttp

    control = CallControl()
    app = web.Application()
    handler = calls_handler(control, check_auth=lambda account, login, pw: pw == "token")
    app.router.add_post("/api" + CALLS_ROUTE, handler)

    server = await bots(EchoBot(listener=call.watch.poke))
    stream = call.stream(server.url)
    control.register(CALL.call_sid, "AC1", stream.request_hangup)
    task = asyncio.ensure_future(stream.run())
    async with TestClient(TestServer(app)) as client:
        await call.watch.until(lambda: stream.connect_ms is not None)
        response = await client.post(
            f"/api/2010-04-01/Accounts/AC1/Calls/{CALL.call_sid}.json",
            data={"Status": "completed"},
            headers={"Authorization": aiohttp.encode_basic_auth(*auth)} if auth else None,
        )
        assert response.status == status
        if status == 401:
            assert (await response.json())["code"] == 20003
            stream.stop()
    result = await task
    expected = VoicebotOutcome.BOT_HANGUP if status == 200 else VoicebotOutcome.COMPLETED
    assert result.outcome is expected
    assert stream.hangup.is_set() is (status == 200)


def test_bot_session_reads_our_frames() -> None:
    # The reference bots' bookkeeping, fed a stream built by our writer.
    from media.streams import StreamWriter

    writer = StreamWriter("MZ1", "CA1", "AC1")
    session = BotSession()
    frames = [writer.connected(), writer.start(), writer.media(b"\xff" * 160, 0)]
    frames += [writer.dtmf("7"), writer.mark("m"), writer.media(b"\xff" * 160, 40)]
    frames.append(writer.stop())
    events = [session.observe(data) for data in frames]
    assert isinstance(events[-1], CallStop) and isinstance(events[4], CallMark)
    assert session.digits == ["7"] and session.marks == ["m"]
    assert (session.media_messages, session.chunk_gaps, session.sequence_errors) == (2, 0, 0)
    assert session.observe(b"junk") is None and session.invalid == 1
    with pytest.raises(StreamError):
        parse_call_event(b"junk")


async def test_on_dtmf_ignores_non_keys(call: Call, bots) -> None:
    stream = call.stream("ws://unused/")
    stream.on_dtmf(DtmfDigit(digit=None, event=16, duration_ms=100, timestamp=0))
    stream.on_dtmf(DtmfDigit(digit="4", event=4, duration_ms=100, timestamp=0))
    assert list(stream._control) == [("dtmf", "4")]
    stream.detach()


def test_the_streams_hold_may_grow_to_the_configured_maximum() -> None:
    """VoicebotConfig's playout hold and its maximum reach the stream's source."""
    config = VoicebotConfig("ws://127.0.0.1:9/", playout_hold_ms=10.0, max_playout_hold_ms=60.0)
    stream = VoicebotStream(config, CALL, PlaybackQueue())  # type: ignore[arg-type]
    assert stream.source.base_hold_s == pytest.approx(0.010)
    assert stream.source.max_hold_s == pytest.approx(0.060)

"""The voicebot stream of one call: call audio to the customer's bot and back, over WebSocket.

Rules of this file:

- ``media.streams`` builds and parses the messages; this file is the edge:
  the aiohttp WebSocket, a sender task, and callbacks from the call's
  ``RtpSession`` that never await.
- The RTP clock is never the bot's to hold. The callee's frames are
  written to the socket from the session's callback itself (mu-law, a
  message from a template, the WebSocket frame: no task woken, no future
  made, no timer per frame: the session's clock is the only one). A write
  that would have to wait for the socket to drain hands that wait to a
  sender task, and until the task has caught up the frames go into a
  bounded queue. When the bot reads too slowly and the socket backs up,
  the oldest queued frames are dropped, and counted, rather than waiting:
  the session, and every other call on the loop, goes on at 20 ms. Marks
  and DTMF take the same way; frames from before ``start`` queue too.
- The bot's audio goes into the call's ``PlaybackQueue``, which the session
  pulls one 20 ms frame per period from: never faster, and never a gap
  while audio is queued. A talk-spurt starts only once it has waited
  ``playout_hold_ms`` (or two frames are queued), so a bot streaming in
  real time with its frames landing just around our deadlines does not
  underrun on every bit of jitter. ``clear`` empties the queue on the
  spot, so the next frame (at most 20 ms later) is silence. Marks are echoed once the audio
  before them has been sent, or when ``clear`` drops them (as Twilio does).
- Everything sent is a text frame built by ``media.streams``; a frame from
  the bot that cannot be used is counted and ignored, never fatal.
- The bot ends the call with a ``hangup`` message, or by closing the
  socket. Either sets ``VoicebotStream.hangup`` and calls ``on_hangup`` at
  once, from the receive loop, so the caller can send its BYE in the same
  turn of the event loop.
- A ``transfer`` message hands the call on: the stream ends at once
  (``stop``, outcome ``transferred``, ``transfer_target`` set) and
  ``on_transfer(target)`` is called; carrying it out is the caller's
  (``dialer.transfer``). Audio the bot sent before it stays queued and
  plays out ("transferring you now"). A transfer without a sip:/sips:
  target is logged and ignored, and the stream goes on.
- Nothing here retries: a bot that cannot be reached within
  ``connect_timeout_s`` ends the stream as ``bot_failed``, and the caller
  plays the node's fallback prompt.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import logging
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
from aiohttp import WSMsgType, web
from numpy.typing import NDArray

from media.clock import LatenessHistogram
from media.dtmf import DtmfDigit
from media.g711 import ULAW_DECODE_TABLE, ULAW_ENCODE_TABLE
from media.playback import FRAME_SAMPLES, SAMPLE_RATE, PlaybackQueue
from media.streams import (
    BotClear,
    BotHangup,
    BotMark,
    BotMedia,
    BotResult,
    BotTransfer,
    InvalidTransfer,
    ResultValue,
    StreamError,
    StreamWriter,
    UnknownEvent,
    bot_media_payload,
    parse_bot_event,
)

if TYPE_CHECKING:
    from media.session import RtpSession

__all__ = [
    "CALLS_ROUTE",
    "CallControl",
    "CallUpdate",
    "LatencySummary",
    "VoicebotCall",
    "VoicebotConfig",
    "VoicebotOutcome",
    "VoicebotResult",
    "VoicebotStream",
    "calls_handler",
    "new_sid",
    "run_voicebot",
]

_TEXT = WSMsgType.TEXT

log = logging.getLogger(__name__)


class VoicebotOutcome(enum.StrEnum):
    """How a voicebot stream ended."""

    COMPLETED = "completed"  # we ended it (the callee hung up, or the caller stopped it)
    BOT_HANGUP = "bot_hangup"  # the bot sent ``hangup`` (or hung up through the REST API)
    BOT_DISCONNECTED = "bot_disconnected"  # the bot's socket closed mid-call
    BOT_FAILED = "bot_failed"  # the bot could not be reached, or refused the stream
    TRANSFERRED = "transferred"  # the bot sent ``transfer``: the call goes on without it


@dataclass(frozen=True, slots=True)
class VoicebotConfig:
    """Where the bot is and how to talk to it (one per call node)."""

    url: str  # ws:// or wss://
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. Authorization
    # The whole opening handshake (DNS, TCP, TLS, HTTP upgrade) must finish
    # within this, or the stream ends as bot_failed.
    connect_timeout_s: float = 3.0
    # How long to wait for the bot's close frame after ours.
    close_timeout_s: float = 1.0
    # Callee frames waiting for the socket; past this the oldest are dropped.
    send_queue_frames: int = 25
    # A talk-spurt from the bot waits at least this long before its first
    # frame plays (unless two frames are queued): cushion against jitter.
    playout_hold_ms: float = 10.0
    # The hold grows by 10 ms steps up to this while the bot's audio keeps
    # arriving late, and shrinks back after 10 s without.
    max_playout_hold_ms: float = 40.0
    # Bot audio queued for playback beyond this is dropped (a runaway bot).
    max_playback_s: float = 300.0
    heartbeat_s: float | None = None  # WebSocket pings, to notice a dead peer
    max_message_bytes: int = 4 * 1024 * 1024
    ssl: ssl.SSLContext | bool = True  # False: do not verify the bot's certificate


@dataclass(frozen=True, slots=True)
class VoicebotCall:
    """The identity and data of the call, as the ``start`` message carries them."""

    call_sid: str
    account_sid: str
    stream_sid: str
    # The record's fields, placeholders, meta and the rendered script: any
    # JSON values (Twilio's own are strings; a strict bot may want them so).
    custom_parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency we added in one direction, from a histogram of 0.1 ms buckets."""

    count: int
    median_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, histogram: LatenessHistogram) -> LatencySummary:
        """Summarise a histogram."""
        return cls(
            count=histogram.total,
            median_ms=histogram.percentile(0.5) * 1000,
            p99_ms=histogram.percentile(0.99) * 1000,
            max_ms=histogram.maximum_s * 1000,
        )


@dataclass(frozen=True, slots=True)
class VoicebotResult:
    """What happened on a stream: its outcome, the bot's result, and counters."""

    outcome: VoicebotOutcome
    reason: str | None = None  # why it failed or ended, for people and logs
    values: Mapping[str, ResultValue] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    transfer_target: str | None = None  # the last SIP URI the bot asked to transfer to
    connect_ms: float | None = None
    frames_sent: int = 0  # callee frames sent to the bot
    frames_dropped: int = 0  # callee frames dropped because the bot did not keep up
    bot_media_messages: int = 0
    bot_audio_ms: float = 0.0  # audio received from the bot
    bot_audio_dropped_ms: float = 0.0  # over max_playback_s
    # Frames sent to the callee with no bot audio to play, after the bot's
    # first audio: its pauses, and any gap (its audio arriving late).
    underrun_frames: int = 0
    marks_echoed: int = 0
    clears: int = 0
    dtmf_sent: int = 0
    invalid_frames: int = 0
    unknown_events: int = 0
    # Callee to bot: from the frame leaving the jitter buffer to its message
    # written to the socket. Bot to callee: from a message's arrival to its
    # first frame sent, beyond the time the audio queued ahead of it takes.
    latency_to_bot: LatencySummary = LatencySummary(0, 0.0, 0.0, 0.0)
    latency_from_bot: LatencySummary = LatencySummary(0, 0.0, 0.0, 0.0)


def _abort(ws: aiohttp.ClientWebSocketResponse) -> None:
    # Cut the connection without waiting on the peer: shutting the socket
    # down makes the transport's pending write fail at once, which ends
    # both the blocked sender and the receive loop.
    sock = ws.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def new_sid(prefix: str, randbits: Callable[[int], int]) -> str:
    """A Twilio-shaped identifier: ``prefix`` and 32 hex digits (``random.getrandbits``)."""
    return f"{prefix}{randbits(128):032x}"


class _Finish:
    """Awaiting this finishes a coroutine that ``_run_now`` began and that suspended."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waiting = self._coro, self._waiting
        while True:
            try:
                sent = yield waiting
            except BaseException as error:  # thrown in by the task (a cancel): passed on
                try:
                    waiting = coro.throw(error)
                except StopIteration:
                    return
            else:
                try:
                    waiting = coro.send(sent)
                except StopIteration:
                    return


def _run_now(coro: Coroutine[Any, Any, None]) -> _Finish | None:
    """Run ``coro`` up to its first wait, here and now; ``None`` if it finished.

    What Python 3.12's eager tasks do, without a task: aiohttp's
    ``send_frame`` writes the frame to the transport at once and waits only
    when the socket is backed up, so a frame from a callback is usually
    written with no task woken and no future made. When it does wait, the
    frame is written already; the ``_Finish`` returned is awaited (by the
    sender task) to see the wait out. Errors raise here, as ``await`` would.
    """
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return _Finish(coro, waiting)


_LATE_S = 0.060
_STEP_S = 0.010
_CALM_FRAMES = 500  # 10 s


class _TimedSource:
    """The session's audio source: the playback queue, with a playout hold and timing.

    A talk-spurt (audio arriving while nothing is queued) starts playing at
    the first frame deadline at least ``hold_s`` after it arrived, or at
    once when two frames are already queued. Without the hold, a bot that
    streams in real time with its frames arriving just around our frame
    deadlines would underrun on every small jitter: the hold keeps
    ``hold_s`` of cushion, at a cost of at most one frame of delay.

    A stream that keeps its queue fed is never held again: only a frame
    deadline that finds nothing to play ends a talk-spurt. The hold adapts,
    as a jitter buffer's delay does: audio arriving within ``_LATE_S`` of
    such an empty deadline was late, not a pause, and raises the hold by
    ``_STEP_S`` (up to ``max_hold_s``); ``_CALM_FRAMES`` frames played
    without that lower it again.
    """

    __slots__ = (
        "_arrivals",
        "_calm",
        "_dry_at",
        "_enqueued",
        "_histogram",
        "_hold_until",
        "_holding",
        "_loop",
        "base_hold_s",
        "hold_s",
        "max_hold_s",
        "playback",
        "underruns",
    )

    def __init__(
        self,
        playback: PlaybackQueue,
        histogram: LatenessHistogram,
        hold_s: float,
        max_hold_s: float | None = None,
    ) -> None:
        self.playback = playback
        self.base_hold_s = self.hold_s = hold_s
        self.max_hold_s = hold_s if max_hold_s is None else max(hold_s, max_hold_s)
        self._dry_at = float("-inf")  # when the queue last ran dry after playing
        self._calm = 0  # frames played since the hold was last raised or lowered
        self._histogram = histogram
        # (position of the chunk's first sample, the time it is due to play)
        self._arrivals: deque[tuple[int, float]] = deque()
        self._enqueued = 0
        self._holding = True
        self._hold_until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        # Frames sent with nothing of the bot's to play, once its audio began:
        # the bot's pauses, or its audio arriving late (a gap).
        self.underruns = 0

    def enqueue(self, samples: NDArray[np.int16], now: float) -> None:
        playback = self.playback
        queued = playback.queued_samples
        if self._holding and not queued:
            if now - self._dry_at < _LATE_S and self.hold_s < self.max_hold_s:
                self.hold_s = min(self.max_hold_s, self.hold_s + _STEP_S)
                self._calm = 0
            self._hold_until = now + self.hold_s
        # Audio already queued ahead plays first: that wait is the bot's
        # doing, not ours, so it is taken out of the latency.
        self._arrivals.append((self._enqueued, now + queued / SAMPLE_RATE))
        self._enqueued += samples.shape[0]
        playback.enqueue(samples)

    def cleared(self) -> None:
        self._arrivals.clear()
        self._enqueued = 0
        self._holding = True

    def read_frame(self) -> NDArray[np.int16] | None:
        playback = self.playback
        loop = self._loop
        queued = playback.queued_samples
        if self._holding and queued:
            if queued < 2 * FRAME_SAMPLES and loop is not None and loop.time() < self._hold_until:
                # A talk-spurt's start, held for cushion (a gap if one played before).
                self.underruns += self._enqueued > queued
                return None
            self._holding = False
        frame = playback.read_frame()
        if frame is None:
            if self._enqueued:
                self.underruns += 1
            if not self._holding:
                # Nothing at this deadline after playing: the next audio
                # starts a new talk-spurt, and if it comes soon it was late.
                self._holding = True
                if loop is not None:
                    self._dry_at = loop.time()
        elif self.hold_s > self.base_hold_s:
            self._calm += 1
            if self._calm >= _CALM_FRAMES:
                self.hold_s = max(self.base_hold_s, self.hold_s - _STEP_S)
                self._calm = 0
        arrivals = self._arrivals
        if arrivals and loop is not None:
            played = self._enqueued - playback.queued_samples
            now = loop.time()
            while arrivals and arrivals[0][0] < played:
                self._histogram.record(now - arrivals.popleft()[1])
        return frame


class VoicebotStream:
    """One call's stream to its bot.

    ``attach(session)`` (or the callbacks ``on_audio``, ``on_dtmf`` and
    ``source`` wired by hand) connects it to the call's ``RtpSession``;
    ``await run()`` opens the socket and streams until the bot or
    ``stop()`` ends it, and returns a ``VoicebotResult``. The playback queue
    belongs to the stream while it runs: its ``on_mark`` is taken over.
    """

    def __init__(
        self,
        config: VoicebotConfig,
        call: VoicebotCall,
        playback: PlaybackQueue,
        *,
        http: aiohttp.ClientSession | None = None,
        on_hangup: Callable[[VoicebotOutcome], None] | None = None,
        on_transfer: Callable[[str], None] | None = None,
    ) -> None:
        if config.send_queue_frames < 1:
            raise ValueError("send_queue_frames must be at least 1")
        self.config = config
        self.call = call
        self.playback = playback
        self.on_hangup = on_hangup
        self.on_transfer = on_transfer
        self.hangup = asyncio.Event()  # the bot ended the call: send BYE now
        self.transfer = asyncio.Event()  # the bot asked for a transfer
        self._http = http
        self._writer = StreamWriter(call.stream_sid, call.call_sid, call.account_sid)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connect: asyncio.Future[aiohttp.ClientWebSocketResponse] | None = None
        self._media: deque[tuple[bytes, int, float]] = deque()
        self._control: deque[tuple[str, str]] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        # Frames go straight to the socket from the session's callbacks while
        # this is set: the stream has started, nothing is queued, the sender
        # task is idle and the socket is not backed up.
        self._direct = False
        self._finish: _Finish | None = None  # a write waiting for the socket to drain
        self._accepting = True
        self._started_at = float("inf")
        self._stopping = False
        self._ended = False
        self._frame_number = 0
        self._max_playback_samples = int(config.max_playback_s * SAMPLE_RATE)
        self._latency_to_bot = LatenessHistogram()
        self._latency_from_bot = LatenessHistogram()
        self._source = _TimedSource(playback, self._latency_from_bot, config.playout_hold_ms / 1000)
        self._saved_on_mark = playback.on_mark
        playback.on_mark = self._on_mark
        self._attached: RtpSession | None = None
        self._saved_session: tuple[Any, Any, Any] | None = None

        self.outcome: VoicebotOutcome | None = None
        self.reason: str | None = None
        self.values: dict[str, ResultValue] = {}
        self.tags: list[str] = []
        self.transfer_target: str | None = None
        self.connect_ms: float | None = None
        self.frames_sent = 0
        self.frames_dropped = 0
        self.bot_media_messages = 0
        self.bot_audio_samples = 0
        self.bot_audio_dropped_samples = 0
        self.marks_echoed = 0
        self.clears = 0
        self.dtmf_sent = 0
        self.invalid_frames = 0
        self.unknown_events = 0

    # -- wiring to the call's RtpSession ---------------------------------------------------

    @property
    def source(self) -> _TimedSource:
        """The ``AudioSource`` to give the session: the playback queue, timed."""
        return self._source

    def attach(self, session: RtpSession) -> None:
        """Take over a session's ``source``, ``on_audio`` and ``on_dtmf`` (see ``detach``)."""
        self._saved_session = (session.source, session.on_audio, session.on_dtmf)
        self._attached = session
        session.source = self._source
        session.on_audio = self.on_audio
        session.on_dtmf = self.on_dtmf

    def detach(self) -> None:
        """Give the session back what ``attach`` took, and the playback queue its ``on_mark``."""
        session, saved = self._attached, self._saved_session
        if session is not None and saved is not None:
            session.source, session.on_audio, session.on_dtmf = saved
        self._attached = self._saved_session = None
        self.playback.on_mark = self._saved_on_mark
        self._accepting = False

    def on_audio(self, samples: NDArray[np.int16]) -> None:
        """The session's callback for each 20 ms frame of the callee (never awaits)."""
        if not self._accepting:
            return
        # Encoded now: the array is only valid during this call.
        payload = ULAW_ENCODE_TABLE.take(samples.view(np.uint16)).tobytes()
        timestamp_ms = self._frame_number * 20
        self._frame_number += 1
        if self._direct and self._write(self._writer.media(payload, timestamp_ms)):
            self.frames_sent += 1
            # Written in the callback that handed it over: no latency of
            # ours to measure (the loop's clock would not move either).
            histogram = self._latency_to_bot
            histogram.counts[0] += 1
            histogram.total += 1
            return
        media = self._media
        if len(media) >= self.config.send_queue_frames:
            media.popleft()
            self.frames_dropped += 1
        loop = self._loop
        media.append((payload, timestamp_ms, loop.time() if loop else 0.0))
        self._poke()

    def on_dtmf(self, digit: DtmfDigit) -> None:
        """The session's callback for each key the callee pressed (never awaits)."""
        if self._accepting and digit.digit is not None:
            self._send_control("dtmf", digit.digit)

    def _on_mark(self, name: str, played: bool) -> None:
        # Played or cleared, the bot hears the same: its mark came back.
        if self._accepting:
            self._send_control("mark", name)

    def _send_control(self, kind: str, value: str) -> None:
        if self._direct:
            if kind == "mark":
                sent = self._write(self._writer.mark(value))
                self.marks_echoed += sent
            else:
                sent = self._write(self._writer.dtmf(value))
                self.dtmf_sent += sent
            if sent:
                return
        self._control.append((kind, value))
        self._poke()

    def _write(self, data: bytes) -> bool:
        """Write a frame now, from a callback; False (and queue from now on) if the socket is gone.

        A write that has to wait for the socket to drain hands the wait to
        the sender task, and later frames queue behind it: the queue's
        bound then drops the oldest, and the callback never waits.
        """
        try:
            finish = _run_now(self._ws.send_frame(data, _TEXT))  # type: ignore[union-attr]
        except (ConnectionError, aiohttp.ClientError):
            # The socket went away: the receive loop reports the disconnect.
            self._direct = False
            return False
        if finish is not None:
            self._direct = False
            self._finish = finish
            self._poke()
        return True

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    # -- control from the caller ----------------------------------------------------------

    def stop(self) -> None:
        """End the stream from our side (the callee hung up): ``stop``, then close."""
        if self._stopping:
            return
        self._stopping = True
        self._direct = False  # what comes now queues behind the sender's last frames
        if self.outcome is None:
            self.outcome = VoicebotOutcome.COMPLETED
        connect = self._connect
        if connect is not None and not connect.done():
            connect.cancel()
        stopped = self._stopped
        if stopped is not None and not stopped.done():
            stopped.set_result(None)
        self._poke()

    def request_hangup(self, reason: str | None = None) -> None:
        """The bot hangs up out of band (Twilio's REST ``Status=completed``): as ``hangup``."""
        self._bot_ended(VoicebotOutcome.BOT_HANGUP, reason)
        self.stop()

    def _bot_ended(self, outcome: VoicebotOutcome, reason: str | None) -> None:
        if self._ended or self._stopping:
            return
        self._ended = True
        self.outcome = outcome
        self.reason = reason
        self.hangup.set()
        if self.on_hangup is not None:
            self.on_hangup(outcome)

    # -- the stream ---------------------------------------------------------------------------

    async def run(self) -> VoicebotResult:
        """Connect, stream until the bot or ``stop()`` ends it, and report."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._source._loop = loop
        http = self._http
        owned = http is None
        if http is None:
            http = aiohttp.ClientSession()
        try:
            ws = await self._open(http, loop)
            if ws is None:
                return self.result()
            self._ws = ws
            try:
                await self._stream(ws, loop)
            finally:
                if not ws.closed:
                    _abort(ws)
        finally:
            self._accepting = False
            if owned:
                await http.close()
        return self.result()

    async def _open(
        self, http: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop
    ) -> aiohttp.ClientWebSocketResponse | None:
        config = self.config
        began = loop.time()
        if self._stopping:
            return None
        self._connect = asyncio.ensure_future(
            http.ws_connect(
                config.url,
                headers=dict(config.headers),
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=config.close_timeout_s),
                heartbeat=config.heartbeat_s,
                max_msg_size=config.max_message_bytes,
                compress=0,
                ssl=config.ssl,
                decode_text=False,  # orjson reads bytes: no UTF-8 decode of our own
            )
        )
        try:
            async with asyncio.timeout(config.connect_timeout_s):
                ws = await self._connect
        except TimeoutError:
            return self._failed(f"no answer from the bot within {config.connect_timeout_s} s")
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._stopping and (current is None or not current.cancelling()):
                self.reason = "stopped before the bot answered"
                return None
            raise
        except aiohttp.WSServerHandshakeError as error:
            return self._failed(f"the bot refused the WebSocket: HTTP {error.status}")
        except (aiohttp.ClientError, OSError, ValueError) as error:
            return self._failed(f"cannot reach the bot: {error!r}")
        finally:
            self._connect = None
        self.connect_ms = (loop.time() - began) * 1000
        return ws

    def _failed(self, reason: str) -> None:
        self.outcome = VoicebotOutcome.BOT_FAILED
        self.reason = reason
        return None

    async def _stream(
        self, ws: aiohttp.ClientWebSocketResponse, loop: asyncio.AbstractEventLoop
    ) -> None:
        writer = self._writer
        await ws.send_frame(writer.connected(), _TEXT)
        await ws.send_frame(writer.start(self.call.custom_parameters), _TEXT)
        self._started_at = loop.time()
        stopped = self._stopped = loop.create_future()
        if self._stopping:
            stopped.set_result(None)
        sender = asyncio.ensure_future(self._send_loop(ws, loop))
        receiver = asyncio.ensure_future(self._receive_loop(ws, loop))
        try:
            await asyncio.wait((receiver, stopped), return_when=asyncio.FIRST_COMPLETED)
            if ws.closed:
                return
            # Ending from our side (stop, or the bot's hangup): the sender
            # says stop and closes. A bot that no longer reads would hold
            # that forever: it has close_timeout_s, then the socket is cut.
            self._stopping = True
            self._poke()
            await asyncio.wait((sender,), timeout=self.config.close_timeout_s)
            if not sender.done():
                _abort(ws)
        finally:
            for task in (sender, receiver):
                task.cancel()
            outcomes = await asyncio.gather(sender, receiver, return_exceptions=True)
        for outcome in outcomes:
            # Socket errors are expected at the end; anything else is a bug
            # (or a caller's callback that raised) and must not be hidden.
            if isinstance(outcome, Exception) and not isinstance(
                outcome, ConnectionError | aiohttp.ClientError
            ):
                raise outcome

    async def _send_loop(
        self, ws: aiohttp.ClientWebSocketResponse, loop: asyncio.AbstractEventLoop
    ) -> None:
        writer = self._writer
        media = self._media
        control = self._control
        histogram = self._latency_to_bot
        started_at = self._started_at
        try:
            while True:
                finish = self._finish
                if finish is not None:
                    self._finish = None
                    await finish
                while control or media:
                    if control:
                        kind, value = control.popleft()
                        if kind == "mark":
                            data = writer.mark(value)
                            self.marks_echoed += 1
                        else:
                            data = writer.dtmf(value)
                            self.dtmf_sent += 1
                        await ws.send_frame(data, _TEXT)
                        continue
                    payload, timestamp_ms, handed_at = media.popleft()
                    await ws.send_frame(writer.media(payload, timestamp_ms), _TEXT)
                    self.frames_sent += 1
                    if handed_at >= started_at:
                        # Frames queued while connecting waited for the bot, not us.
                        histogram.record(loop.time() - handed_at)
                if self._stopping:
                    await ws.send_frame(writer.stop(), _TEXT)
                    await ws.close()
                    return
                if self._finish is not None:
                    continue
                # Idle: the callbacks write their frames themselves until
                # one has to wait, or until stop (both wake this task).
                self._direct = True
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
        except (ConnectionError, aiohttp.ClientError):
            # The socket went away under us: the receive loop sees it too and
            # reports the disconnect; there is nothing left to send to.
            return
        finally:
            self._direct = False

    async def _receive_loop(
        self, ws: aiohttp.ClientWebSocketResponse, loop: asyncio.AbstractEventLoop
    ) -> None:
        while True:
            message = await ws.receive()
            kind = message.type
            if kind is _TEXT:
                if self._handle(message.data, loop):
                    return
            elif kind is WSMsgType.BINARY:
                self.invalid_frames += 1
            else:
                # CLOSE, CLOSING, CLOSED or ERROR: the socket is gone.
                if not self._stopping:
                    reason = "the bot closed the WebSocket"
                    if kind is WSMsgType.ERROR:
                        reason = f"the bot's WebSocket failed: {message.data!r}"
                    elif ws.close_code is not None:
                        reason = f"the bot closed the WebSocket (code {ws.close_code})"
                    self._bot_ended(VoicebotOutcome.BOT_DISCONNECTED, reason)
                return

    def _handle(self, data: bytes, loop: asyncio.AbstractEventLoop) -> bool:
        """Act on one frame from the bot; True when the stream is to end."""
        try:
            # The bot's audio, 50 frames a second, takes the short way.
            payload = bot_media_payload(data, self.call.stream_sid)
            if payload is not None:
                self._play(payload, loop)
                return False
            event = parse_bot_event(data, self.call.stream_sid)
        except UnknownEvent:
            self.unknown_events += 1
            return False
        except InvalidTransfer as error:
            # Worth a line in the log, unlike a garbled media frame: the bot
            # meant to hand the call on, and the callee stays with it.
            self.invalid_frames += 1
            log.warning("stream %s: transfer ignored: %s", self.call.stream_sid, error)
            return False
        except StreamError:
            self.invalid_frames += 1
            return False
        kind = type(event)
        if kind is BotMedia:
            self._play(event.payload, loop)  # type: ignore[union-attr]  # not reached
        elif kind is BotClear:
            self.clears += 1
            self._source.cleared()
            self.playback.clear()  # echoes the dropped marks through _on_mark
        elif kind is BotMark:
            self.playback.mark(event.name)  # type: ignore[union-attr]
        elif kind is BotResult:
            self.values.update(event.values)  # type: ignore[union-attr]
            for tag in event.tags:  # type: ignore[union-attr]
                if tag not in self.tags:
                    self.tags.append(tag)
        elif kind is BotTransfer:
            if self._ended or self._stopping:
                return False
            target = event.target  # type: ignore[union-attr]
            self._ended = True
            self.outcome = VoicebotOutcome.TRANSFERRED
            self.reason = f"transfer to {target}"
            self.transfer_target = target
            self.transfer.set()
            if self.on_transfer is not None:
                self.on_transfer(target)
            self.stop()
            return True
        elif kind is BotHangup:
            self._bot_ended(VoicebotOutcome.BOT_HANGUP, event.reason)  # type: ignore[union-attr]
            self.stop()
            return True
        return False

    def _play(self, payload: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.bot_media_messages += 1
        size = len(payload)
        if not size or self._stopping:
            return
        self.bot_audio_samples += size
        if self.playback.queued_samples + size > self._max_playback_samples:
            self.bot_audio_dropped_samples += size
            return
        samples = ULAW_DECODE_TABLE.take(np.frombuffer(payload, dtype=np.uint8))
        self._source.enqueue(samples, loop.time())

    def result(self) -> VoicebotResult:
        """A snapshot of what happened so far (final once ``run`` has returned)."""
        return VoicebotResult(
            outcome=self.outcome or VoicebotOutcome.COMPLETED,
            reason=self.reason,
            values=dict(self.values),
            tags=tuple(self.tags),
            transfer_target=self.transfer_target,
            connect_ms=self.connect_ms,
            frames_sent=self.frames_sent,
            frames_dropped=self.frames_dropped,
            bot_media_messages=self.bot_media_messages,
            bot_audio_ms=self.bot_audio_samples * 1000 / SAMPLE_RATE,
            bot_audio_dropped_ms=self.bot_audio_dropped_samples * 1000 / SAMPLE_RATE,
            underrun_frames=self._source.underruns,
            marks_echoed=self.marks_echoed,
            clears=self.clears,
            dtmf_sent=self.dtmf_sent,
            invalid_frames=self.invalid_frames,
            unknown_events=self.unknown_events,
            latency_to_bot=LatencySummary.of(self._latency_to_bot),
            latency_from_bot=LatencySummary.of(self._latency_from_bot),
        )

    @property
    def latency_histograms(self) -> tuple[LatenessHistogram, LatenessHistogram]:
        """The raw histograms (to bot, from bot), to merge across calls."""
        return self._latency_to_bot, self._latency_from_bot


async def run_voicebot(
    session: RtpSession,
    playback: PlaybackQueue,
    config: VoicebotConfig,
    call: VoicebotCall,
    *,
    http: aiohttp.ClientSession | None = None,
    on_hangup: Callable[[VoicebotOutcome], None] | None = None,
    on_transfer: Callable[[str], None] | None = None,
    started: Callable[[VoicebotStream], None] | None = None,
) -> VoicebotResult:
    """Stream a call's ``RtpSession`` to a bot until either side ends it.

    ``started(stream)`` is called before connecting, so the caller can keep
    the stream to ``stop()`` it when the callee hangs up. On ``bot_failed``
    it returns at once with the session given back; play the fallback then.
    """
    stream = VoicebotStream(
        config, call, playback, http=http, on_hangup=on_hangup, on_transfer=on_transfer
    )
    stream.attach(session)
    if started is not None:
        started(stream)
    try:
        return await stream.run()
    finally:
        stream.detach()


# -- the Twilio-compatible hang-up endpoint -------------------------------------------------

CALLS_ROUTE = "/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json"
_ENDING_STATUSES = frozenset({"completed", "canceled"})


@dataclass(frozen=True, slots=True)
class CallUpdate:
    """The answer to ``POST .../Calls/{CallSid}.json``: HTTP status and JSON body."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Registered:
    account_sid: str
    hangup: Callable[[], None]


def _twilio_error(status: int, code: int | None, message: str) -> CallUpdate:
    return CallUpdate(status, {"code": code, "message": message, "status": status})


class CallControl:
    """Live calls by CallSid, so a bot can hang up through Twilio's REST shape.

    Pure bookkeeping: ``register`` when the stream starts, ``unregister`` when
    the call ends; ``update`` decides the answer and calls the hang-up.
    """

    def __init__(self) -> None:
        self._calls: dict[str, _Registered] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def register(self, call_sid: str, account_sid: str, hangup: Callable[[], None]) -> None:
        """Make ``call_sid`` answerable; ``hangup()`` must not await."""
        self._calls[call_sid] = _Registered(account_sid, hangup)

    def unregister(self, call_sid: str) -> None:
        """Forget a call (idempotent)."""
        self._calls.pop(call_sid, None)

    def update(self, account_sid: str, call_sid: str, form: Mapping[str, str]) -> CallUpdate:
        """Apply a call update: ``Status=completed`` (or ``canceled``) hangs up."""
        entry = self._calls.get(call_sid)
        if entry is None or entry.account_sid != account_sid:
            # Twilio's code for a resource that does not exist (any more).
            return _twilio_error(
                404, 20404, f"The requested resource /Calls/{call_sid}.json was not found"
            )
        status = form.get("Status")
        if status is None or status.lower() not in _ENDING_STATUSES:
            return _twilio_error(
                400, None, "only Status=completed (or canceled) is supported on this call"
            )
        del self._calls[call_sid]
        entry.hangup()
        return CallUpdate(200, {"sid": call_sid, "account_sid": account_sid, "status": "completed"})


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        login, sep, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (login, password) if sep else None


def calls_handler(
    control: CallControl,
    *,
    check_auth: Callable[[str, str, str], bool | Awaitable[bool]] | None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler for ``POST`` on ``CALLS_ROUTE`` (mount it under any prefix).

    ``check_auth(account_sid, login, password)`` judges the HTTP Basic
    credentials (Twilio's: AccountSid or API key, and a token); pass ``None``
    only where the network already is the boundary.
    """

    async def handle(request: web.Request) -> web.Response:
        account_sid = request.match_info["account_sid"]
        call_sid = request.match_info["call_sid"]
        if check_auth is not None:
            credentials = _basic_auth(request.headers.get("Authorization"))
            allowed = False
            if credentials is not None:
                verdict = check_auth(account_sid, *credentials)
                allowed = bool(await verdict if isinstance(verdict, Awaitable) else verdict)
            if not allowed:
                answer = _twilio_error(401, 20003, "Authenticate")
                return web.json_response(
                    answer.body,
                    status=answer.status,
                    headers={"WWW-Authenticate": 'Basic realm="dialer"'},
                )
        form = await request.post()
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        answer = control.update(account_sid, call_sid, fields)
        return web.json_response(answer.body, status=answer.status)

    return handle

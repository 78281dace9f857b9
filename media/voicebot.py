"""The voicebot stream of one call: call audio to the customer's bot and back, over WebSocket.

Rules of this file:

- ``media.streams`` builds and parses the messages and ``media.websocket``
  frames them; this file is the edge: the connection, and callbacks from
  the call's ``RtpSession`` that never await.
- aiohttp opens the connection and checks the opening handshake; then the
  stream takes the transport over with a protocol of its own, so each
  frame from the bot is handled in the callback that read it (no task
  woken, no future made, no ``receive()`` per message) and each frame to
  it is one ``transport.write``.
- The RTP clock is never the bot's to hold. The callee's frames are
  written to the socket from the session's callback itself (mu-law, a
  message from a template, the WebSocket frame: no task, no future, no
  timer per frame: the session's clock is the only one). While the
  transport is above its high-water mark (``pause_writing``), and until it
  has drained, frames go into a bounded queue instead; when the bot reads
  too slowly the oldest queued frames are dropped, and counted, rather
  than waiting: the session, and every other call on the loop, goes on at
  20 ms. Marks and DTMF take the same way; frames from before ``start``
  queue too.
- The call's audio stays G.711 on its way through: the session hands each
  played frame over as it came off the wire (``on_payload``), and a PCMU
  call's bytes go into the ``media`` message as they are (a PCMA call's are
  turned into mu-law by a 256-entry table). The bot's mu-law is decoded from
  base64 only, kept as bytes in the stream's own queue (``_BotAudio``), and
  handed to the session as the payload it sends (``read_payload``): as they
  are on a PCMU call, through a table on PCMA. Nothing is decoded to linear
  audio for the stream; whoever still wants samples (``read_frame``, a
  recorder without ``frame_payload``, in-band DTMF) gets them decoded.
- The bot's audio goes into that queue, which the session
  pulls one 20 ms frame per period from: never faster, and never a gap
  while audio is queued. A talk-spurt starts only once it has waited
  ``playout_hold_ms`` (or two frames are queued), so a bot streaming in
  real time with its frames landing just around our deadlines does not
  underrun on every bit of jitter. ``clear`` empties the queue on the
  spot, so the next frame (at most 20 ms later) is silence. Marks are echoed once the audio
  before them has been sent, or when ``clear`` drops them (as Twilio does).
- Everything sent is a text frame built by ``media.streams``; a message
  from the bot that cannot be used is counted and ignored, never fatal. A
  frame that breaks RFC 6455 itself fails the connection, as it must
  (``bot_disconnected``); with ``heartbeat_s`` set we ping the bot, and a
  bot silent for a whole period is taken for gone.
- The bot ends the call with a ``hangup`` message, or by closing the
  socket. Either sets ``VoicebotStream.hangup`` and calls ``on_hangup`` at
  once, from the callback that read it, so the caller can send its BYE in the same
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
import contextlib
import enum
import logging
import random
import ssl
import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
from aiohttp import WSMsgType
from numpy.typing import NDArray

# The REST hang-up lives in its own module, which is not compiled: the API
# subclasses CallControl (dialer.call_relay). Re-exported here, where it began.
from media.call_control import CALLS_ROUTE, CallControl, CallUpdate, calls_handler
from media.clock import LatenessHistogram
from media.dtmf import DtmfDigit
from media.g711 import (
    ALAW_DECODE_TABLE,
    ALAW_ENCODE_TABLE,
    PCMU,
    ULAW_DECODE_TABLE,
    ULAW_ENCODE_TABLE,
    ULAW_SILENCE,
)
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
from media.websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    WebSocketProtocolError,
    close_payload,
    encode_frame,
    parse_close,
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
    # Callee frames written to the socket together: each is still its own
    # ``media`` message, but n of them share one write (one system call, one
    # wake-up of the bot) at the cost of up to (n - 1) x 20 ms more latency
    # to the bot. 1: every frame is written as it comes.
    frames_per_write: int = 1
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


def new_sid(prefix: str, randbits: Callable[[int], int]) -> str:
    """A Twilio-shaped identifier: ``prefix`` and 32 hex digits (``random.getrandbits``)."""
    return f"{prefix}{randbits(128):032x}"


_KEY = struct.Struct("!I")


class _BotProtocol(asyncio.Protocol):
    """The bot's connection once the stream has taken it over from aiohttp."""

    def __init__(self, stream: VoicebotStream) -> None:
        self._stream = stream
        # An instance attribute: the transport calls the stream's method directly.
        self.data_received = stream._data_received  # type: ignore[method-assign]

    def pause_writing(self) -> None:
        self._stream._pause_writing()

    def resume_writing(self) -> None:
        self._stream._resume_writing()

    def eof_received(self) -> bool:
        return False  # the bot is done sending: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stream._connection_lost(exc)


def _take_over(
    ws: aiohttp.ClientWebSocketResponse, protocol: asyncio.Protocol
) -> tuple[asyncio.Transport, list[tuple[int, bytes]]]:
    """Hand the connection under ``ws`` to ``protocol``; the messages aiohttp had read.

    aiohttp made the connection and checked the opening handshake; from here
    on frames are read and written by ``media.websocket`` in the transport's
    callbacks. This leans on two attributes aiohttp does not document (the
    writer's transport and the reader's queue), checked here so that an
    aiohttp that renames them fails the stream's tests, not a call.
    """
    transport: asyncio.Transport = ws._writer.transport  # type: ignore[attr-defined]
    queue = ws._reader._buffer  # type: ignore[attr-defined]
    early: list[tuple[int, bytes]] = []
    while queue:
        message, _size = queue.popleft()
        kind, data = message.type, message.data
        if kind is _TEXT:
            early.append((OP_TEXT, data if isinstance(data, bytes) else data.encode()))
        elif kind is WSMsgType.BINARY:
            early.append((OP_BINARY, data))
        elif kind is WSMsgType.CLOSE:
            early.append((OP_CLOSE, close_payload(data, message.extra or "")))
        elif kind is WSMsgType.PING:
            early.append((OP_PING, data))
    transport.set_protocol(protocol)
    if not transport.is_reading():
        transport.resume_reading()
    return transport, early


# A-law <-> mu-law, one entry per code (for ``bytes.translate``): a code
# decoded with one law's table and encoded with the other's, as G.711 does.
_ALAW_TO_ULAW = ULAW_ENCODE_TABLE.take(ALAW_DECODE_TABLE.view(np.uint16)).tobytes()
_ULAW_TO_ALAW = ALAW_ENCODE_TABLE.take(ULAW_DECODE_TABLE.view(np.uint16)).tobytes()
_FRAME_SILENCE = bytes([ULAW_SILENCE]) * FRAME_SAMPLES


class _BotAudio:
    """The bot's audio as mu-law bytes, and its marks, in order: a playback queue of bytes.

    As ``media.playback.PlaybackQueue`` does with samples: one 20 ms frame
    per read; a frame made of the ends of several pieces is joined, and
    padded with silence when the queue runs dry; ``on_mark(name, played)``
    is called with ``played=True`` once the audio queued before the mark has
    been read, and with ``played=False`` for the marks ``clear`` dropped.
    A frame is a slice of what the bot sent: nothing is decoded.
    """

    __slots__ = ("_items", "_position", "on_mark", "queued_samples")

    def __init__(self, on_mark: Callable[[str, bool], None] | None = None) -> None:
        self.on_mark = on_mark
        # bytes: audio; str: a mark's name.
        self._items: deque[bytes | str] = deque()
        self._position = 0  # into the audio at the head
        self.queued_samples = 0

    @property
    def idle(self) -> bool:
        """True when neither audio nor marks are waiting."""
        return not self._items

    def enqueue(self, ulaw: bytes) -> None:
        """Queue mu-law bytes of any length (kept, not copied)."""
        if ulaw:
            self._items.append(ulaw)
            self.queued_samples += len(ulaw)

    def mark(self, name: str) -> None:
        """Queue a mark: reported once the audio queued before it has been read."""
        self._items.append(name)

    def clear(self) -> list[str]:
        """Drop everything queued (barge-in); report and return the marks dropped."""
        dropped = [item for item in self._items if type(item) is str]
        self._items.clear()
        self._position = 0
        self.queued_samples = 0
        if self.on_mark is not None:
            for name in dropped:
                self.on_mark(name, False)
        return dropped

    def drain(self) -> list[bytes | str]:
        """Take out everything queued, in order (audio and mark names), untold."""
        items = list(self._items)
        if items and self._position:
            items[0] = items[0][self._position :]
        self._items.clear()
        self._position = 0
        self.queued_samples = 0
        return items

    def _fire_marks(self) -> None:
        items = self._items
        on_mark = self.on_mark
        while items and type(items[0]) is str:
            name = items.popleft()
            if on_mark is not None:
                on_mark(name, True)  # type: ignore[arg-type]

    def read(self) -> bytes | None:
        """The next frame as 160 bytes of mu-law, or ``None`` when nothing is queued."""
        items = self._items
        if items and type(items[0]) is str:
            self._fire_marks()
        if not items:
            return None
        head: bytes = items[0]  # type: ignore[assignment]
        start = self._position
        end = start + FRAME_SAMPLES
        size = len(head)
        if size < end:
            return self._gather()
        # The common case: a whole frame inside one piece.
        self.queued_samples -= FRAME_SAMPLES
        if size == end:
            items.popleft()
            self._position = 0
            if items and type(items[0]) is str:
                self._fire_marks()
            return head if start == 0 else head[start:]
        self._position = end
        return head[start:end]

    def _gather(self) -> bytes:
        parts: list[bytes] = []
        wanted = FRAME_SAMPLES
        items = self._items
        while wanted and items:
            head = items[0]
            if type(head) is str:
                self._fire_marks()
                continue
            start = self._position
            piece = head[start : start + wanted]
            parts.append(piece)  # type: ignore[arg-type]
            wanted -= len(piece)
            self.queued_samples -= len(piece)
            if start + len(piece) == len(head):
                items.popleft()
                self._position = 0
            else:
                self._position = start + len(piece)
        if wanted:
            parts.append(_FRAME_SILENCE[:wanted])
        if items and type(items[0]) is str:
            self._fire_marks()
        return b"".join(parts)


_LATE_S = 0.060
_STEP_S = 0.010
_CALM_FRAMES = 500  # 10 s


class _TimedSource:
    """The session's audio source: the bot's audio queue, with a playout hold and timing.

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

    The session takes frames as payloads (``read_payload``): the bot's
    mu-law as it is on a PCMU call, through a 256-entry table on PCMA.
    ``read_frame`` decodes, for whoever wants samples.
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
        playback: _BotAudio,
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

    def enqueue(self, ulaw: bytes, now: float) -> None:
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
        self._enqueued += len(ulaw)
        playback.enqueue(ulaw)

    def cleared(self) -> None:
        self._arrivals.clear()
        self._enqueued = 0
        self._holding = True

    def read_frame(self) -> NDArray[np.int16] | None:
        ulaw = self.read_payload(ULAW_ENCODE_TABLE)
        if ulaw is None:
            return None
        return ULAW_DECODE_TABLE.take(np.frombuffer(ulaw, dtype=np.uint8))

    def read_payload(self, encode_table: NDArray[np.uint8]) -> bytes | None:
        """The next frame encoded with ``encode_table`` (the session's codec), or ``None``."""
        playback = self.playback
        loop = self._loop
        queued = playback.queued_samples
        if self._holding and queued:
            if queued < 2 * FRAME_SAMPLES and loop is not None and loop.time() < self._hold_until:
                # A talk-spurt's start, held for cushion (a gap if one played before).
                self.underruns += self._enqueued > queued
                return None
            self._holding = False
        frame = playback.read()
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
        if frame is None or encode_table is ULAW_ENCODE_TABLE:
            return frame
        if encode_table is ALAW_ENCODE_TABLE:
            return frame.translate(_ULAW_TO_ALAW)
        # Any other table: through linear samples.
        samples = ULAW_DECODE_TABLE.take(np.frombuffer(frame, dtype=np.uint8))
        return encode_table.take(samples.view(np.uint16)).tobytes()


class VoicebotStream:
    """One call's stream to its bot.

    ``attach(session)`` (or the callbacks ``on_payload`` or ``on_audio``,
    ``on_dtmf`` and ``source`` wired by hand) connects it to the call's
    ``RtpSession``; ``await run()`` opens the socket and streams until the
    bot or ``stop()`` ends it, and returns a ``VoicebotResult``. The bot's
    audio plays from the stream's own queue; what is left of it when the
    stream is detached (audio and marks) goes on into ``playback``, the
    call's queue, so that "transferring you now" still plays out.
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
        if config.frames_per_write < 1:
            raise ValueError("frames_per_write must be at least 1")
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
        self._transport: asyncio.Transport | None = None
        self._frames = FrameReader(config.max_message_bytes)
        # Masking keys (RFC 6455 §5.3): a generator of the stream's own, seeded
        # from the system's entropy, so no system call is made per frame.
        self._randbits = random.Random().getrandbits
        self._media: deque[tuple[bytes, int, float]] = deque()
        # Frames framed and waiting for company (frames_per_write), and when
        # each was handed over; any other write takes them along first.
        self._held: list[bytes] = []
        self._held_at: list[float] = []
        self._control: deque[tuple[str, str]] = deque()
        self._done: asyncio.Future[None] | None = None  # the stream is to end
        self._lost: asyncio.Future[None] | None = None  # the connection has closed
        self._writable: asyncio.Future[None] | None = None
        # Frames go straight to the socket from the session's callbacks while
        # this is set: the stream has started, nothing is queued, and the
        # transport is taking writes (not paused above its high-water mark).
        self._direct = False
        self._paused = False
        self._flush_soon = False
        self._reading = True  # the bot's messages are acted on (not after hangup/transfer)
        self._heard = False  # anything from the bot since the last heartbeat
        self._heartbeat: asyncio.TimerHandle | None = None
        self._close_sent = False
        self._peer_closed = False
        self._finished = False
        self._accepting = True
        self._started_at = float("inf")
        self._stopping = False
        self._ended = False
        self._frame_number = 0
        self._max_playback_samples = int(config.max_playback_s * SAMPLE_RATE)
        self._latency_to_bot = LatenessHistogram()
        self._latency_from_bot = LatenessHistogram()
        self._audio = _BotAudio(self._on_mark)
        hold_s = config.playout_hold_ms / 1000
        self._source = _TimedSource(
            self._audio, self._latency_from_bot, hold_s, config.max_playout_hold_ms / 1000
        )
        self._attached: RtpSession | None = None
        self._saved_session: tuple[Any, Any, Any, Any] | None = None

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
        """Take over a session's ``source``, ``on_payload`` and ``on_dtmf`` (see ``detach``).

        Its ``on_audio`` is turned off meanwhile: the stream takes the
        callee's frames as G.711 payloads, and with no ``on_audio`` the
        session decodes nothing for it.
        """
        saved = (session.source, session.on_audio, session.on_payload, session.on_dtmf)
        self._saved_session = saved
        self._attached = session
        session.source = self._source
        session.on_audio = None
        session.on_payload = self._on_session_payload
        session.on_dtmf = self.on_dtmf

    def detach(self) -> None:
        """Give the session back what ``attach`` took; the bot's audio left goes to ``playback``."""
        session, saved = self._attached, self._saved_session
        if session is not None and saved is not None:
            session.source, session.on_audio, session.on_payload, session.on_dtmf = saved
        self._attached = self._saved_session = None
        self._accepting = False
        playback = self.playback
        for item in self._audio.drain():
            if isinstance(item, str):
                playback.mark(item)
            else:
                playback.enqueue(ULAW_DECODE_TABLE.take(np.frombuffer(item, dtype=np.uint8)))
        self._source.cleared()

    def _on_session_payload(self, payload: bytes) -> None:
        # The attached session's frame in its codec: mu-law is what the bot takes.
        session = self._attached
        if session is not None and session.codec is not PCMU:
            payload = payload.translate(_ALAW_TO_ULAW)
        self.on_payload(payload)

    def on_audio(self, samples: NDArray[np.int16]) -> None:
        """A 20 ms frame of the callee as samples: encoded, then as ``on_payload``."""
        if self._accepting:
            self.on_payload(ULAW_ENCODE_TABLE.take(samples.view(np.uint16)).tobytes())

    def on_payload(self, payload: bytes) -> None:
        """The callee's next 20 ms frame as 160 bytes of mu-law (never awaits).

        The bytes go into the ``media`` message as they are; they are kept
        (not copied) while the frame waits in the queue.
        """
        if not self._accepting:
            return
        timestamp_ms = self._frame_number * 20
        self._frame_number += 1
        if self._direct:
            if self.config.frames_per_write > 1:
                if self._hold(self._writer.media(payload, timestamp_ms)):
                    return
            elif self._send(self._writer.media(payload, timestamp_ms)):
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

    def on_dtmf(self, digit: DtmfDigit) -> None:
        """The session's callback for each key the callee pressed (never awaits)."""
        if self._accepting and digit.digit is not None:
            self._send_control("dtmf", digit.digit)

    def _on_mark(self, name: str, played: bool) -> None:
        # Played or cleared, the bot hears the same: its mark came back.
        if self._accepting:
            self._send_control("mark", name)

    def _send_control(self, kind: str, value: str) -> None:
        if not (self._direct and self._send_control_now(kind, value)):
            self._control.append((kind, value))

    def _send_control_now(self, kind: str, value: str) -> bool:
        if kind == "mark":
            sent = self._send(self._writer.mark(value))
            self.marks_echoed += sent
        else:
            sent = self._send(self._writer.dtmf(value))
            self.dtmf_sent += sent
        return sent

    def _send(self, data: bytes, opcode: int = OP_TEXT) -> bool:
        """Write one message now; False if the connection is going (nothing written).

        The transport takes every write: past its high-water mark it keeps
        the bytes and calls ``pause_writing``, which turns the direct way
        off, so the next frames wait in the bounded queue instead. Frames
        held for ``frames_per_write`` go first, in the same write.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            self._direct = False
            return False
        frame = encode_frame(opcode, data, _KEY.pack(self._randbits(32)))
        if self._held:
            frame = self._release_held() + frame
        transport.write(frame)
        return True

    def _hold(self, data: bytes) -> bool:
        """Frame a callee message and write it once ``frames_per_write`` of them wait."""
        transport = self._transport
        if transport is None or transport.is_closing():
            self._direct = False
            return False
        held = self._held
        held.append(encode_frame(OP_TEXT, data, _KEY.pack(self._randbits(32))))
        self._held_at.append(self._loop.time())  # type: ignore[union-attr]
        self.frames_sent += 1
        if len(held) >= self.config.frames_per_write:
            transport.write(self._release_held())
        return True

    def _release_held(self) -> bytes:
        held, held_at = self._held, self._held_at
        data = b"".join(held)
        now = self._loop.time()  # type: ignore[union-attr]
        record = self._latency_to_bot.record
        for at in held_at:
            record(now - at)
        held.clear()
        held_at.clear()
        return data

    def _flush(self) -> None:
        """Write what queued while the socket was backed up (or before ``start``), in order."""
        self._flush_soon = False
        if self._finished:
            return
        control = self._control
        media = self._media
        writer = self._writer
        histogram = self._latency_to_bot
        started_at = self._started_at
        loop = self._loop
        while (control or media) and not self._paused:
            if control:
                kind, value = control[0]
                if not self._send_control_now(kind, value):
                    return
                control.popleft()
                continue
            payload, timestamp_ms, handed_at = media[0]
            if not self._send(writer.media(payload, timestamp_ms)):
                return
            media.popleft()
            self.frames_sent += 1
            if handed_at >= started_at and loop is not None:
                # Frames queued while connecting waited for the bot, not us.
                histogram.record(loop.time() - handed_at)
        self._direct = not (self._paused or self._stopping or control or media)

    # -- the transport's callbacks --------------------------------------------------------

    def _pause_writing(self) -> None:
        self._paused = True
        self._direct = False

    def _resume_writing(self) -> None:
        self._paused = False
        writable = self._writable
        if writable is not None and not writable.done():
            writable.set_result(None)
        if not self._stopping and not self._flush_soon and self._loop is not None:
            # Not from inside the transport's own write-ready handling.
            self._flush_soon = True
            self._loop.call_soon(self._flush)

    def _data_received(self, data: bytes) -> None:
        self._heard = True
        try:
            messages = self._frames.feed(data)
        except WebSocketProtocolError as error:
            self._fail(f"the bot's WebSocket failed: {error}", error.close_code)
            return
        for opcode, payload in messages:
            self._message(opcode, payload)

    def _message(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT:
            if self._reading and self._handle(payload, self._loop):  # type: ignore[arg-type]
                self._reading = False
        elif opcode == OP_BINARY:
            if self._reading:
                self.invalid_frames += 1
        elif opcode == OP_PING:
            if not self._close_sent:  # nothing follows our close frame (§5.5.1)
                self._send(payload, OP_PONG)
        elif opcode == OP_CLOSE:
            self._close_received(payload)

    def _close_received(self, payload: bytes) -> None:
        if self._peer_closed:
            return
        self._peer_closed = True
        self._reading = False
        try:
            code, _ = parse_close(payload)
        except WebSocketProtocolError:
            code = None
        if code is None:
            self._bot_ended(VoicebotOutcome.BOT_DISCONNECTED, "the bot closed the WebSocket")
        else:
            self._bot_ended(
                VoicebotOutcome.BOT_DISCONNECTED, f"the bot closed the WebSocket (code {code})"
            )
        if not self._close_sent:
            # The closing handshake's answer (RFC 6455 §5.5.1): then the
            # connection is done, with nothing more to say on it.
            self._close_sent = True
            self._send(close_payload(code), OP_CLOSE)
        self._direct = False
        if self._transport is not None:
            self._transport.close()
        self._end()

    def _connection_lost(self, exc: Exception | None) -> None:
        self._direct = False
        if not self._finished and not self._peer_closed:
            if exc is None:
                self._bot_ended(VoicebotOutcome.BOT_DISCONNECTED, "the bot closed the WebSocket")
            else:
                self._bot_ended(
                    VoicebotOutcome.BOT_DISCONNECTED, f"the bot's WebSocket failed: {exc!r}"
                )
        for future in (self._lost, self._writable):
            if future is not None and not future.done():
                future.set_result(None)
        self._end()

    def _fail(self, reason: str, code: int = CLOSE_PROTOCOL_ERROR) -> None:
        """Fail the connection (RFC 6455 §7.1.7): a close frame if we can, then cut it."""
        self._reading = False
        self._bot_ended(VoicebotOutcome.BOT_DISCONNECTED, reason)
        if not self._close_sent:
            self._close_sent = True
            self._send(close_payload(code), OP_CLOSE)
        self._direct = False
        if self._transport is not None:
            self._transport.abort()
        self._end()

    def _beat(self) -> None:
        """Ping the bot every ``heartbeat_s``; a bot silent over a whole period is gone."""
        self._heartbeat = None
        if self._finished or self._transport is None or self._transport.is_closing():
            return
        if not self._heard:
            self._fail("no answer from the bot to a ping", CLOSE_GOING_AWAY)
            return
        self._heard = False
        self._send(b"", OP_PING)
        assert self._loop is not None and self.config.heartbeat_s is not None
        self._heartbeat = self._loop.call_later(self.config.heartbeat_s, self._beat)

    def _end(self) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    # -- control from the caller ----------------------------------------------------------

    def stop(self) -> None:
        """End the stream from our side (the callee hung up): ``stop``, then close."""
        if self._stopping:
            return
        self._stopping = True
        self._direct = False  # what comes now queues behind the last frames
        if self.outcome is None:
            self.outcome = VoicebotOutcome.COMPLETED
        connect = self._connect
        if connect is not None and not connect.done():
            connect.cancel()
        self._end()

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
                self._finished = True
                self._direct = False
                transport = self._transport
                if transport is not None and not (self._lost and self._lost.done()):
                    transport.abort()
                if self._heartbeat is not None:
                    self._heartbeat.cancel()
                # The connection is closed: aiohttp only lets go of it (no
                # frame is written to a closing transport).
                with contextlib.suppress(Exception):
                    await ws.close()
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
            http.ws_connect(  # type: ignore[arg-type]  # decode_text=False: bytes
                config.url,
                headers=dict(config.headers),
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=config.close_timeout_s),
                heartbeat=None,  # our own pings, on the connection taken over
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
            self._failed(f"no answer from the bot within {config.connect_timeout_s} s")
            return None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._stopping and (current is None or not current.cancelling()):
                self.reason = "stopped before the bot answered"
                return None
            raise
        except aiohttp.WSServerHandshakeError as error:
            self._failed(f"the bot refused the WebSocket: HTTP {error.status}")
            return None
        except (aiohttp.ClientError, OSError, ValueError) as error:
            self._failed(f"cannot reach the bot: {error!r}")
            return None
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
        self._done = loop.create_future()
        self._lost = loop.create_future()
        if self._stopping:
            self._done.set_result(None)
        transport, early = _take_over(ws, _BotProtocol(self))
        self._transport = transport
        self._send(writer.connected())
        self._send(writer.start(self.call.custom_parameters))
        self._started_at = loop.time()
        for opcode, payload in early:
            self._message(opcode, payload)
        self._flush()  # frames from before start; then the callbacks write their own
        if self.config.heartbeat_s:
            self._heard = True
            self._heartbeat = loop.call_later(self.config.heartbeat_s, self._beat)
        await self._done
        if transport.is_closing():
            return  # the bot closed, or the connection failed
        # Ending from our side (stop, or the bot's hangup or transfer): what
        # is queued, then stop and our close frame. A bot that no longer
        # reads would hold that forever: it has close_timeout_s, then the
        # socket is cut (by run()).
        deadline = loop.time() + self.config.close_timeout_s
        while not transport.is_closing():
            if not self._paused:
                self._flush()
            if not self._paused:
                self._send(writer.stop())
                self._close_sent = True
                self._send(close_payload(CLOSE_NORMAL), OP_CLOSE)
                remaining = deadline - loop.time()
                if remaining > 0:
                    await asyncio.wait((self._lost,), timeout=remaining)
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._writable = loop.create_future()
            await asyncio.wait((self._writable, self._lost), timeout=remaining)
            self._writable = None

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
            self._audio.clear()  # echoes the dropped marks through _on_mark
        elif kind is BotMark:
            self._audio.mark(event.name)  # type: ignore[union-attr]
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
        if self._audio.queued_samples + size > self._max_playback_samples:
            self.bot_audio_dropped_samples += size
            return
        # Kept as the bot sent it: mu-law, one byte per sample.
        self._source.enqueue(payload, loop.time())

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

"""The voicebot stream's messages: the Twilio Media Streams format and our extensions.

Rules of this file:

- Pure: JSON text in, dataclasses out, and back. No sockets, no clock: the
  pacer is handed ``now``. The edge (``media.voicebot``) sends what this
  file builds and feeds it what arrives.
- What we send a bot is exactly what Twilio sends one: ``connected``,
  ``start``, ``media``, ``dtmf``, ``mark``, ``stop``. ``sequenceNumber``
  counts every message after ``connected`` from 1 (``start`` is 1);
  ``chunk`` counts the ``media`` messages from 1; ``timestamp`` is the
  milliseconds of call audio since the stream started. All three are
  strings, as Twilio writes them. Audio is 8 kHz mu-law, base64.
- Everything we send is produced by ``orjson`` from plain values: a frame is
  always one well-formed JSON text, because a single bad frame can end a
  bot's receive loop. The one exception is ``media``, sent 50 times a
  second per call: a template made at import, with the stream's id
  encoded by ``orjson`` once, decimal counters and base64 (whose alphabet
  needs no escaping) put in: the same bytes ``orjson`` would write, for a
  third of its cost.
- What a bot sends is parsed defensively: a frame that is not a JSON object,
  lacks a field, has a field of the wrong type or base64 that does not
  decode raises ``InvalidFrame``; an event we do not know raises
  ``UnknownEvent``; a ``streamSid`` that is not this stream's raises
  ``WrongStream``. ``bot_media_payload`` is the hot path for the bot's
  audio: the same checks as ``parse_bot_event`` for ``media``, no event
  object made. All three are ``StreamError`` (blame: remote): the edge
  counts the frame and carries on, it never ends the call over one.
- Our extensions (``hangup``, ``transfer``, ``result``) are bot-to-us events
  a Twilio bot never sends, so a bot written for Twilio is unaffected. A
  ``transfer`` whose target is not a ``sip:``/``sips:`` URI raises
  ``InvalidTransfer`` (an ``InvalidFrame``), so the edge can log it apart.
- The bot's audio may come in any length; ``AudioPacer`` cuts it into 20 ms
  frames and releases them on deadlines counted from an origin (frame ``n``
  at ``origin + n * 20 ms``), never faster than real time.
"""

from __future__ import annotations

import binascii
import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

__all__ = [
    "ENCODING",
    "FRAME_BYTES",
    "FRAME_MS",
    "SAMPLE_RATE",
    "TRACK_INBOUND",
    "AudioPacer",
    "BotClear",
    "BotEvent",
    "BotHangup",
    "BotMark",
    "BotMedia",
    "BotResult",
    "BotTransfer",
    "CallConnected",
    "CallDtmf",
    "CallEvent",
    "CallMark",
    "CallMedia",
    "CallStart",
    "CallStop",
    "InvalidFrame",
    "InvalidTransfer",
    "MediaFormat",
    "StreamEncodeError",
    "StreamError",
    "StreamWriter",
    "UnknownEvent",
    "WrongStream",
    "bot_media_payload",
    "parse_bot_event",
    "parse_call_event",
]

ENCODING = "audio/x-mulaw"
SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000  # one mu-law octet per sample
FRAME_S = FRAME_MS / 1000
TRACK_INBOUND = "inbound"
# Twilio names the DTMF track differently from the audio track.
_DTMF_TRACK = "inbound_track"
_PROTOCOL = "Call"
_VERSION = "1.0.0"
_DTMF_DIGITS = frozenset("0123456789*#ABCD")
_URI_SCHEMES = ("sip:", "sips:")

# Limits on what a bot may put in its extension messages: they land in our
# database and webhooks, so they are bounded here, at the door.
MAX_NAME_CHARS = 256
MAX_RESULT_KEYS = 64
MAX_RESULT_KEY_CHARS = 64
MAX_RESULT_VALUE_CHARS = 4096
MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_URI_CHARS = 512


class StreamError(ValueError):
    """A frame from the other side that cannot be used (blame: remote)."""

    # ClassVar: a class attribute even when compiled (setup.py), where a plain
    # one is an instance default that a subclass's own __init__ never sets.
    blame: ClassVar[str] = "remote"


class InvalidFrame(StreamError):
    """Not a JSON object, or a field missing or of the wrong type."""


class InvalidTransfer(InvalidFrame):
    """A ``transfer`` without a usable target (not a sip: or sips: URI)."""


class UnknownEvent(StreamError):
    """A well-formed message whose ``event`` we do not know."""

    def __init__(self, event: str) -> None:
        super().__init__(f"unknown event {event!r}")
        self.event = event


class WrongStream(StreamError):
    """A message naming another stream's ``streamSid``."""


class StreamEncodeError(ValueError):
    """A value we were asked to send that JSON cannot carry (blame: local)."""

    blame: ClassVar[str] = "local"


# -- messages to the bot (what a Twilio call sends) ---------------------------------------


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """The audio format announced in ``start``: always 8 kHz mono mu-law here."""

    encoding: str = ENCODING
    sample_rate: int = SAMPLE_RATE
    channels: int = 1


@dataclass(frozen=True, slots=True)
class CallConnected:
    """The first message: the protocol and its version."""

    protocol: str = _PROTOCOL
    version: str = _VERSION


@dataclass(frozen=True, slots=True)
class CallStart:
    """The stream's metadata, sent once after ``connected``."""

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...] = (TRACK_INBOUND,)
    custom_parameters: Mapping[str, Any] = field(default_factory=dict)
    media_format: MediaFormat = MediaFormat()
    sequence_number: int = 1


@dataclass(frozen=True, slots=True)
class CallMedia:
    """20 ms of the callee's audio."""

    stream_sid: str
    payload: bytes
    chunk: int
    timestamp_ms: int
    sequence_number: int
    track: str = TRACK_INBOUND


@dataclass(frozen=True, slots=True)
class CallDtmf:
    """A key the callee pressed (reported once per key press)."""

    stream_sid: str
    digit: str
    sequence_number: int
    track: str = _DTMF_TRACK


@dataclass(frozen=True, slots=True)
class CallMark:
    """A bot's mark, echoed once its audio has played (or ``clear`` dropped it)."""

    stream_sid: str
    name: str
    sequence_number: int


@dataclass(frozen=True, slots=True)
class CallStop:
    """The stream has ended."""

    stream_sid: str
    call_sid: str
    account_sid: str
    sequence_number: int


CallEvent = CallConnected | CallStart | CallMedia | CallDtmf | CallMark | CallStop


def _dumps(value: object) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        pass
    # What orjson refuses but JSON allows (a CRM's integers wider than 64 bits in
    # the custom parameters) takes the stdlib's exact path.
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode()
    except (TypeError, ValueError, RecursionError) as error:
        raise StreamEncodeError(f"cannot encode as JSON: {error}") from error


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


# ``orjson.dumps`` of a media message's dict, as a template: the keys in the
# same order, every inserted value a JSON string's content that needs no
# escaping (decimal digits, base64) except the stream id, which is given
# already encoded (quotes included).
_MEDIA_TEMPLATE = (
    b'{"event":"media","sequenceNumber":"%d","media":{"track":"'
    + TRACK_INBOUND.encode()
    + b'","chunk":"%d","timestamp":"%d","payload":"%s"},"streamSid":%s}'
)
_b2a_base64 = binascii.b2a_base64


class StreamWriter:
    """Builds the messages of one stream to a bot, counting as Twilio does.

    Each method returns one frame: UTF-8 JSON text, to be sent as a
    WebSocket *text* frame. The counters move only when a frame is built, so
    build a frame only to send it.
    """

    __slots__ = (
        "_stream_sid_json",
        "account_sid",
        "call_sid",
        "chunk",
        "sequence_number",
        "stream_sid",
    )

    def __init__(self, stream_sid: str, call_sid: str, account_sid: str) -> None:
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.account_sid = account_sid
        try:
            self._stream_sid_json: bytes | None = _dumps(stream_sid)
        except StreamEncodeError:
            self._stream_sid_json = None  # media() refuses, as start() does
        self.sequence_number = 0  # of the last message built
        self.chunk = 0  # of the last media message built

    def connected(self) -> bytes:
        """The ``connected`` message (it carries no sequence number)."""
        return _dumps({"event": "connected", "protocol": _PROTOCOL, "version": _VERSION})

    def start(
        self,
        custom_parameters: Mapping[str, Any] | None = None,
        tracks: tuple[str, ...] = (TRACK_INBOUND,),
    ) -> bytes:
        """The ``start`` message; ``StreamEncodeError`` if a parameter is not JSON."""
        self.sequence_number += 1
        return _dumps(
            {
                "event": "start",
                "sequenceNumber": str(self.sequence_number),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": list(tracks),
                    "customParameters": dict(custom_parameters or {}),
                    "mediaFormat": {
                        "encoding": ENCODING,
                        "sampleRate": SAMPLE_RATE,
                        "channels": 1,
                    },
                },
                "streamSid": self.stream_sid,
            }
        )

    def media(self, payload: bytes, timestamp_ms: int) -> bytes:
        """A ``media`` message carrying mu-law ``payload`` taken at ``timestamp_ms``."""
        if self._stream_sid_json is None:
            raise StreamEncodeError(f"cannot encode the stream id {self.stream_sid!r} as JSON")
        self.sequence_number += 1
        self.chunk += 1
        # int() keeps %d from writing anything but digits (a bool, an enum).
        return _MEDIA_TEMPLATE % (
            self.sequence_number,
            self.chunk,
            int(timestamp_ms),
            _b2a_base64(payload, newline=False),
            self._stream_sid_json,
        )

    def dtmf(self, digit: str) -> bytes:
        """A ``dtmf`` message for one key."""
        if digit not in _DTMF_DIGITS:
            raise StreamEncodeError(f"not a DTMF digit: {digit!r}")
        self.sequence_number += 1
        return _dumps(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": str(self.sequence_number),
                "dtmf": {"track": _DTMF_TRACK, "digit": digit},
            }
        )

    def mark(self, name: str) -> bytes:
        """A ``mark`` message: the bot's audio up to its mark ``name`` is done."""
        self.sequence_number += 1
        return _dumps(
            {
                "event": "mark",
                "sequenceNumber": str(self.sequence_number),
                "streamSid": self.stream_sid,
                "mark": {"name": name},
            }
        )

    def stop(self) -> bytes:
        """The ``stop`` message, the last of the stream."""
        self.sequence_number += 1
        return _dumps(
            {
                "event": "stop",
                "sequenceNumber": str(self.sequence_number),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            }
        )


# -- messages from the bot ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BotMedia:
    """Audio to play to the callee: mu-law octets, any length."""

    payload: bytes

    def serialize(self, stream_sid: str) -> bytes:
        """The message a bot sends for this audio."""
        return orjson.dumps(
            {"event": "media", "streamSid": stream_sid, "media": {"payload": _b64(self.payload)}}
        )


@dataclass(frozen=True, slots=True)
class BotMark:
    """A mark after the audio sent so far: echoed when that audio has played."""

    name: str

    def serialize(self, stream_sid: str) -> bytes:
        """The message a bot sends for this mark."""
        return _dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": self.name}})


@dataclass(frozen=True, slots=True)
class BotClear:
    """Drop the audio queued and not yet played (barge-in)."""

    def serialize(self, stream_sid: str) -> bytes:
        """The message a bot sends to clear."""
        return _dumps({"event": "clear", "streamSid": stream_sid})


@dataclass(frozen=True, slots=True)
class BotHangup:
    """Extension: end the call now."""

    reason: str | None = None

    def serialize(self, stream_sid: str) -> bytes:
        """The message a bot sends to hang up."""
        body: dict[str, Any] = {"event": "hangup", "streamSid": stream_sid}
        if self.reason is not None:
            body["hangup"] = {"reason": self.reason}
        return _dumps(body)


@dataclass(frozen=True, slots=True)
class BotTransfer:
    """Extension: transfer the call to a SIP URI."""

    target: str

    def serialize(self, stream_sid: str) -> bytes:
        """The message a bot sends to transfer the call."""
        return _dumps(
            {"event": "transfer", "streamSid": stream_sid, "transfer": {"target": self.target}}
        )


ResultValue = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class BotResult:
    """Extension: what the bot learned, as key/values and tags, for the call's record.

    Several ``result`` messages merge: later values win, tags accumulate.
    """

    values: Mapping[str, ResultValue] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    def serialize(self, stream_sid: str) -> bytes:
        """The message a bot sends to report a result."""
        return _dumps(
            {
                "event": "result",
                "streamSid": stream_sid,
                "result": {"values": dict(self.values), "tags": list(self.tags)},
            }
        )


BotEvent = BotMedia | BotMark | BotClear | BotHangup | BotTransfer | BotResult


def _load_object(data: str | bytes | bytearray | memoryview) -> dict[str, Any]:
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise InvalidFrame(f"not JSON: {error}") from error
    if type(message) is not dict:
        raise InvalidFrame("a message must be a JSON object")
    return message


def _member(message: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = message.get(name)
    if type(value) is not dict:
        raise InvalidFrame(f"{name!r} must be an object")
    return value


def _text(container: Mapping[str, Any], name: str, limit: int = MAX_NAME_CHARS) -> str:
    value = container.get(name)
    if type(value) is not str or not value:
        raise InvalidFrame(f"{name!r} must be a non-empty string")
    if len(value) > limit:
        raise InvalidFrame(f"{name!r} is longer than {limit} characters")
    return value


def _optional_text(container: Mapping[str, Any], name: str) -> str | None:
    if container.get(name) is None:
        return None
    return _text(container, name)


def _decode_payload(value: Any) -> bytes:
    if type(value) is not str:
        raise InvalidFrame("'payload' must be a base64 string")
    try:
        # strict_mode refuses characters outside the alphabet and bad padding
        # instead of skipping them, so garbage is not played as noise.
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidFrame(f"'payload' is not base64: {error}") from error


def _check_stream(message: Mapping[str, Any], stream_sid: str | None) -> None:
    if stream_sid is None:
        return
    sid = message.get("streamSid")
    # Twilio bots always name the stream; a bot that leaves it out is accepted.
    if sid is not None and sid != stream_sid:
        raise WrongStream(f"message for stream {sid!r}, this stream is {stream_sid!r}")


def _parse_result(message: Mapping[str, Any]) -> BotResult:
    body = _member(message, "result")
    raw_values = body.get("values", {})
    raw_tags = body.get("tags", [])
    if type(raw_values) is not dict:
        raise InvalidFrame("'values' must be an object")
    if type(raw_tags) is not list:
        raise InvalidFrame("'tags' must be a list")
    if len(raw_values) > MAX_RESULT_KEYS or len(raw_tags) > MAX_TAGS:
        raise InvalidFrame(f"at most {MAX_RESULT_KEYS} values and {MAX_TAGS} tags")
    values: dict[str, ResultValue] = {}
    for key, value in raw_values.items():
        if not key or len(key) > MAX_RESULT_KEY_CHARS:
            raise InvalidFrame(f"a result key must have 1 to {MAX_RESULT_KEY_CHARS} characters")
        # Scalars only: results feed branch conditions and webhook fields.
        if value is not None and type(value) not in (str, int, float, bool):
            raise InvalidFrame(f"result value {key!r} must be a string, number, boolean or null")
        if type(value) is str and len(value) > MAX_RESULT_VALUE_CHARS:
            raise InvalidFrame(f"result value {key!r} is too long")
        values[key] = value
    tags = []
    for tag in raw_tags:
        if type(tag) is not str or not tag or len(tag) > MAX_TAG_CHARS:
            raise InvalidFrame(f"a tag must be a string of 1 to {MAX_TAG_CHARS} characters")
        tags.append(tag)
    return BotResult(values, tuple(tags))


def _parse_transfer(message: Mapping[str, Any]) -> BotTransfer:
    try:
        target = _text(_member(message, "transfer"), "target", MAX_URI_CHARS)
    except InvalidFrame as error:
        raise InvalidTransfer(str(error)) from error
    scheme, colon, rest = target.partition(":")
    if (
        not colon
        or f"{scheme.lower()}:" not in _URI_SCHEMES
        or not rest
        or any(c.isspace() or ord(c) < 0x20 or c in '<>"' for c in target)
    ):
        raise InvalidTransfer(f"transfer target must be a sip: or sips: URI, got {target[:80]!r}")
    return BotTransfer(target)


def _parse_hangup(message: Mapping[str, Any]) -> BotHangup:
    body = message.get("hangup")
    if body is None:
        return BotHangup()
    if type(body) is not dict:
        raise InvalidFrame("'hangup' must be an object")
    return BotHangup(_optional_text(body, "reason"))


def bot_media_payload(
    data: str | bytes | bytearray | memoryview, stream_sid: str | None = None
) -> bytes | None:
    """The audio of a bot's ``media`` frame; ``None`` when the frame is another event.

    Raises as ``parse_bot_event`` does for a bad ``media`` frame (or one that
    is not JSON); hand a ``None`` frame to ``parse_bot_event``.
    """
    message = _load_object(data)
    if message.get("event") != "media":
        return None
    if stream_sid is not None:
        sid = message.get("streamSid")
        if sid is not None and sid != stream_sid:
            raise WrongStream(f"message for stream {sid!r}, this stream is {stream_sid!r}")
    body = message.get("media")
    if type(body) is not dict:
        raise InvalidFrame("'media' must be an object")
    return _decode_payload(body.get("payload"))


def parse_bot_event(
    data: str | bytes | bytearray | memoryview, stream_sid: str | None = None
) -> BotEvent:
    """Parse one text frame from a bot.

    With ``stream_sid`` given, a message naming another stream raises
    ``WrongStream``. Raises ``InvalidFrame`` or ``UnknownEvent`` otherwise.
    """
    message = _load_object(data)
    event = message.get("event")
    if event == "media":
        _check_stream(message, stream_sid)
        return BotMedia(_decode_payload(_member(message, "media").get("payload")))
    if type(event) is not str:
        raise InvalidFrame("'event' must be a string")
    _check_stream(message, stream_sid)
    if event == "mark":
        return BotMark(_text(_member(message, "mark"), "name"))
    if event == "clear":
        return BotClear()
    if event == "hangup":
        return _parse_hangup(message)
    if event == "transfer":
        return _parse_transfer(message)
    if event == "result":
        return _parse_result(message)
    raise UnknownEvent(event)


def _number(container: Mapping[str, Any], name: str) -> int:
    # Twilio writes counters as decimal strings; integers are accepted too.
    value = container.get(name)
    if type(value) is int:
        return value
    if type(value) is str and value.isdecimal() and value.isascii():
        return int(value)
    raise InvalidFrame(f"{name!r} must be a decimal number")


def parse_call_event(data: str | bytes | bytearray | memoryview) -> CallEvent:
    """Parse one text frame sent to a bot (what a bot, or a test, reads)."""
    message = _load_object(data)
    event = message.get("event")
    if type(event) is not str:
        raise InvalidFrame("'event' must be a string")
    if event == "connected":
        return CallConnected(protocol=_text(message, "protocol"), version=_text(message, "version"))
    sid = _text(message, "streamSid")
    sequence_number = _number(message, "sequenceNumber")
    if event == "media":
        body = _member(message, "media")
        return CallMedia(
            stream_sid=sid,
            payload=_decode_payload(body.get("payload")),
            chunk=_number(body, "chunk"),
            timestamp_ms=_number(body, "timestamp"),
            sequence_number=sequence_number,
            track=_text(body, "track"),
        )
    if event == "start":
        body = _member(message, "start")
        fmt = _member(body, "mediaFormat")
        tracks = body.get("tracks")
        parameters = body.get("customParameters", {})
        if type(tracks) is not list or not all(type(t) is str for t in tracks):
            raise InvalidFrame("'tracks' must be a list of strings")
        if type(parameters) is not dict:
            raise InvalidFrame("'customParameters' must be an object")
        rate, channels = fmt.get("sampleRate"), fmt.get("channels")
        if type(rate) is not int or type(channels) is not int:
            raise InvalidFrame("'sampleRate' and 'channels' must be integers")
        return CallStart(
            stream_sid=sid,
            call_sid=_text(body, "callSid"),
            account_sid=_text(body, "accountSid"),
            tracks=tuple(tracks),
            custom_parameters=parameters,
            media_format=MediaFormat(_text(fmt, "encoding"), rate, channels),
            sequence_number=sequence_number,
        )
    if event == "dtmf":
        body = _member(message, "dtmf")
        digit = _text(body, "digit")
        if digit not in _DTMF_DIGITS:
            raise InvalidFrame(f"not a DTMF digit: {digit!r}")
        return CallDtmf(sid, digit, sequence_number, _text(body, "track"))
    if event == "mark":
        return CallMark(sid, _text(_member(message, "mark"), "name"), sequence_number)
    if event == "stop":
        body = _member(message, "stop")
        return CallStop(sid, _text(body, "callSid"), _text(body, "accountSid"), sequence_number)
    raise UnknownEvent(event)


# -- pacing the bot's audio ---------------------------------------------------------------


class AudioPacer:
    """Cuts mu-law audio of any length into 20 ms frames and releases them in real time.

    ``push`` appends octets; ``pull(now)`` returns the whole frames due by
    ``now``: frame ``n`` of a run is due at ``origin + n * 20 ms``. When
    the pacer has run dry, the next ``push`` starts a new run at its own
    ``now``, so audio after a pause is not sent in a burst to catch up. A
    tail shorter than a frame waits for more audio, or for ``flush``.
    """

    __slots__ = ("_buffer", "_frames", "_index", "_origin", "frames_released")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._frames: deque[bytes] = deque()
        self._origin: float | None = None
        self._index = 0  # frames released in this run
        self.frames_released = 0

    @property
    def queued_frames(self) -> int:
        """Whole frames waiting (a partial tail not counted)."""
        return len(self._frames)

    @property
    def queued_bytes(self) -> int:
        """Octets waiting, the partial tail included."""
        return len(self._frames) * FRAME_BYTES + len(self._buffer)

    def push(self, data: bytes, now: float) -> None:
        """Queue ``data``; a new run begins at ``now`` if the last one has run dry."""
        if not self._frames and (self._origin is None or now >= self._deadline()):
            # Dry and past the next deadline (or never started): the clock
            # restarts here, so the next frame goes at once and the rest
            # follow at 20 ms steps. Dry but early: the run goes on, so a
            # frame never follows the previous one by less than 20 ms.
            self._origin = now
            self._index = 0
        self._buffer += data
        self._cut()

    def flush(self, pad: int = 0xFF) -> None:
        """Pad the partial tail to a whole frame (mu-law silence by default)."""
        if self._buffer:
            self._buffer += bytes([pad]) * (FRAME_BYTES - len(self._buffer))
            self._cut()

    def _cut(self) -> None:
        buffer = self._buffer
        whole = len(buffer) - len(buffer) % FRAME_BYTES
        for start in range(0, whole, FRAME_BYTES):
            self._frames.append(bytes(buffer[start : start + FRAME_BYTES]))
        del buffer[:whole]

    def _deadline(self) -> float:
        assert self._origin is not None
        return self._origin + self._index * FRAME_S

    def next_deadline(self) -> float | None:
        """When the next queued frame is due; ``None`` when no whole frame waits."""
        if not self._frames or self._origin is None:
            return None
        return self._deadline()

    def pull(self, now: float) -> list[bytes]:
        """The frames due by ``now``, oldest first (empty when none is)."""
        out: list[bytes] = []
        frames = self._frames
        if not frames or self._origin is None:
            return out
        # A tiny epsilon: a wake-up exactly on a deadline counts as on time.
        due = math.floor((now - self._origin) / FRAME_S + 1e-9) + 1
        while frames and self._index < due:
            out.append(frames.popleft())
            self._index += 1
        self.frames_released += len(out)
        return out

    def clear(self) -> int:
        """Drop everything waiting; return the octets dropped."""
        dropped = self.queued_bytes
        self._frames.clear()
        self._buffer.clear()
        return dropped

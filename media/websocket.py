"""WebSocket framing for the client side of a bot stream (RFC 6455 §5), sans-IO.

Rules of this file:

- Pure: bytes in, messages out, and back. No sockets, no clock, no
  randomness of its own: the caller hands ``encode_frame`` its masking key.
  ``media.voicebot`` runs it on the transport it takes over from aiohttp
  once the opening handshake is done, so that a bot's frame is handled in
  the callback that read it (no task woken, no future made per message).
- Client side only: what we read is a server's frames (never masked: a
  masked one is a protocol error, §5.1); what we write is always masked.
- ``FrameReader.feed`` returns whole messages: a fragmented message comes
  out once its last fragment has arrived, and control frames (ping, pong,
  close) come out as they arrive, even between fragments (§5.4). Anything
  the RFC forbids (reserved bits with no extension negotiated, an unknown
  opcode, a control frame longer than 125 octets or fragmented, a
  continuation with nothing to continue) raises ``WebSocketProtocolError``,
  and so does a message over ``max_message_bytes``. After an error the
  reader is not to be fed again: the connection is to be failed.
- The common case is one whole unfragmented frame per read, as a bot
  writes one message per 20 ms: that takes a short path with no copy of
  the buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import ClassVar, Final

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameReader",
    "WebSocketProtocolError",
    "close_payload",
    "encode_frame",
    "mask",
    "parse_close",
]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_TOO_BIG: Final = 1009

_DATA_OPCODES = frozenset({OP_TEXT, OP_BINARY})
_CONTROL_OPCODES = frozenset({OP_CLOSE, OP_PING, OP_PONG})
_LEN16 = struct.Struct("!H")
_LEN64 = struct.Struct("!Q")
_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")
_CODE = struct.Struct("!H")

_mask_in_place: Callable[[bytes, bytearray], None] | None
try:
    # aiohttp's compiled XOR of a bytearray with a 4-octet key, in place.
    from aiohttp._websocket.helpers import websocket_mask as _mask_in_place
except ImportError:  # pragma: no cover - aiohttp always ships it; the pure fallback
    _mask_in_place = None


class WebSocketProtocolError(ValueError):
    """The server broke RFC 6455, or sent a message over the size limit (blame: remote)."""

    blame: ClassVar[str] = "remote"  # a class attribute, compiled or not

    def __init__(self, message: str, close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.close_code = close_code


def mask(key: bytes, payload: bytes) -> bytes | bytearray:
    """``payload`` XORed with the 4-octet ``key`` repeated (§5.3); its own inverse."""
    if _mask_in_place is not None:
        masked = bytearray(payload)
        _mask_in_place(key, masked)
        return masked
    size = len(payload)
    stream = int.from_bytes((key * (size // 4 + 1))[:size], "little")
    return (int.from_bytes(payload, "little") ^ stream).to_bytes(size, "little")


def encode_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """One final, masked frame carrying ``payload`` (a whole message, or a control frame)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        header = _HEAD16.pack(0x80 | opcode, 0x80 | 126, size)
    else:
        header = _HEAD64.pack(0x80 | opcode, 0x80 | 127, size)
    return header + key + mask(key, payload)


def close_payload(code: int | None, reason: str = "") -> bytes:
    """The body of a close frame: empty, or the status code and a UTF-8 reason."""
    if code is None:
        return b""
    return _CODE.pack(code) + reason.encode()[:123]


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """The status code and reason of a close frame (``None`` when it carries none)."""
    if len(payload) < 2:
        if payload:
            raise WebSocketProtocolError("a close frame of one octet")
        return None, ""
    (code,) = _CODE.unpack_from(payload)
    return code, payload[2:].decode("utf-8", "replace")


class FrameReader:
    """Cuts a server's byte stream into messages: ``feed(data)`` -> ``[(opcode, payload)]``."""

    __slots__ = ("_buffer", "_fragment_opcode", "_fragments", "_fragments_size", "max_bytes")

    def __init__(self, max_message_bytes: int = 4 * 1024 * 1024) -> None:
        self.max_bytes = max_message_bytes
        self._buffer = b""  # an incomplete frame from the last reads
        self._fragments: list[bytes] = []
        self._fragment_opcode = -1  # the data opcode of a message in fragments, or -1
        self._fragments_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The messages completed by ``data``, in order (empty while a frame is partial)."""
        if not self._buffer and len(data) >= 4:
            # The short way: one whole, final, unfragmented data frame with a
            # 16-bit length, alone in the read (a bot's 20 ms of audio).
            first = data[0]
            if (first == 0x81 or first == 0x82) and data[1] == 126 and self._fragment_opcode < 0:
                (size,) = _LEN16.unpack_from(data, 2)
                if len(data) == 4 + size and size <= self.max_bytes:
                    return [(first & 0x0F, data[4:])]
        buffer = self._buffer + data if self._buffer else data
        messages: list[tuple[int, bytes]] = []
        position = 0
        end = len(buffer)
        while end - position >= 2:
            first = buffer[position]
            second = buffer[position + 1]
            if second & 0x80:
                raise WebSocketProtocolError("a masked frame from the server")
            size = second & 0x7F
            start = position + 2
            if size == 126:
                if end - start < 2:
                    break
                (size,) = _LEN16.unpack_from(buffer, start)
                start += 2
            elif size == 127:
                if end - start < 8:
                    break
                (size,) = _LEN64.unpack_from(buffer, start)
                start += 8
            if size > self.max_bytes:
                raise WebSocketProtocolError(
                    f"a frame of {size} octets, over {self.max_bytes}", CLOSE_TOO_BIG
                )
            stop = start + size
            if stop > end:
                break
            self._frame(first, buffer[start:stop], messages)
            position = stop
        self._buffer = buffer[position:] if position < end else b""
        return messages

    def _frame(self, first: int, payload: bytes, messages: list[tuple[int, bytes]]) -> None:
        if first & 0x70:
            raise WebSocketProtocolError("reserved bits set with no extension negotiated")
        final = first & 0x80
        opcode = first & 0x0F
        if opcode in _CONTROL_OPCODES:
            if not final or len(payload) > 125:
                raise WebSocketProtocolError("a control frame fragmented or over 125 octets")
            messages.append((opcode, payload))
            return
        if opcode == OP_CONTINUATION:
            if self._fragment_opcode < 0:
                raise WebSocketProtocolError("a continuation frame with nothing to continue")
            self._fragments_size += len(payload)
            if self._fragments_size > self.max_bytes:
                raise WebSocketProtocolError(
                    f"a message over {self.max_bytes} octets", CLOSE_TOO_BIG
                )
            self._fragments.append(payload)
            if final:
                messages.append((self._fragment_opcode, b"".join(self._fragments)))
                self._fragments = []
                self._fragment_opcode = -1
                self._fragments_size = 0
            return
        if opcode not in _DATA_OPCODES:
            raise WebSocketProtocolError(f"unknown opcode {opcode:#x}")
        if self._fragment_opcode >= 0:
            raise WebSocketProtocolError("a new message before the last one's final fragment")
        if final:
            messages.append((opcode, payload))
            return
        self._fragment_opcode = opcode
        self._fragments = [payload]
        self._fragments_size = len(payload)

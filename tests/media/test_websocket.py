"""WebSocket client framing (RFC 6455 §5): what a server sends, cut into messages; what we send."""

from __future__ import annotations

import os
import struct

import pytest

from media.websocket import (
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    WebSocketProtocolError,
    close_payload,
    encode_frame,
    mask,
    parse_close,
)


def server_frame(opcode: int, payload: bytes, *, final: bool = True, rsv: int = 0) -> bytes:
    """A frame as a server writes it: unmasked, the shortest length form."""
    first = (0x80 if final else 0) | rsv | opcode
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


def unmask_client_frame(frame: bytes) -> tuple[int, bytes]:
    """Read one frame we wrote, as a server does: (first octet, unmasked payload)."""
    assert frame[1] & 0x80, "a client frame must be masked"
    size = frame[1] & 0x7F
    position = 2
    if size == 126:
        (size,) = struct.unpack_from("!H", frame, 2)
        position = 4
    elif size == 127:
        (size,) = struct.unpack_from("!Q", frame, 2)
        position = 10
    key = frame[position : position + 4]
    body = frame[position + 4 :]
    assert len(body) == size
    return frame[0], bytes(mask(key, body))


@pytest.mark.parametrize("size", [0, 1, 125, 126, 305, 65535, 65536, 70000])
def test_encoded_frames_are_final_masked_and_carry_the_payload(size: int) -> None:
    payload = os.urandom(size)
    key = b"\x01\x02\x03\x04"
    frame = encode_frame(OP_TEXT, payload, key)
    first, body = unmask_client_frame(frame)
    assert first == 0x80 | OP_TEXT
    assert body == payload
    if size >= 4:
        assert frame[-size:] != payload  # masked on the wire


def test_mask_is_its_own_inverse_for_any_length() -> None:
    key = os.urandom(4)
    for size in range(0, 11):
        data = os.urandom(size)
        assert bytes(mask(key, bytes(mask(key, data)))) == data
        # The key repeats every four octets.
        assert bytes(mask(key, data)) == bytes(b ^ key[i % 4] for i, b in enumerate(data))


@pytest.mark.parametrize("size", [3, 200, 305, 70000])
def test_reader_gives_whole_messages_however_the_bytes_are_cut(size: int) -> None:
    messages = [
        (OP_TEXT, os.urandom(size)),
        (OP_PING, b"are you there"),
        (OP_BINARY, b""),
        (OP_TEXT, b'{"event":"clear"}'),
    ]
    stream = b"".join(server_frame(op, payload) for op, payload in messages)
    # All at once, one octet at a time, and in uneven pieces.
    for piece in (len(stream), 1, 7, 300):
        reader = FrameReader()
        got: list[tuple[int, bytes]] = []
        for start in range(0, len(stream), piece):
            got.extend(reader.feed(stream[start : start + piece]))
        assert got == messages


def test_fragmented_message_is_joined_and_control_frames_come_between() -> None:
    reader = FrameReader()
    data = (
        server_frame(OP_TEXT, b"hel", final=False)
        + server_frame(OP_PING, b"p")
        + server_frame(OP_CONTINUATION, b"lo ", final=False)
        + server_frame(OP_CONTINUATION, b"bot")
    )
    assert reader.feed(data) == [(OP_PING, b"p"), (OP_TEXT, b"hello bot")]
    # And the reader is ready for the next message.
    assert reader.feed(server_frame(OP_PONG, b"")) == [(OP_PONG, b"")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (bytes((0x81, 0x80 | 2)) + b"\0\0\0\0ab", CLOSE_PROTOCOL_ERROR),  # masked by the server
        (server_frame(OP_TEXT, b"x", rsv=0x40), CLOSE_PROTOCOL_ERROR),  # compressed, not agreed
        (server_frame(0x3, b"x"), CLOSE_PROTOCOL_ERROR),  # a reserved opcode
        (server_frame(OP_PING, b"x" * 126), CLOSE_PROTOCOL_ERROR),  # control over 125
        (server_frame(OP_PING, b"x", final=False), CLOSE_PROTOCOL_ERROR),  # control fragmented
        (server_frame(OP_CONTINUATION, b"x"), CLOSE_PROTOCOL_ERROR),  # nothing to continue
        (
            server_frame(OP_TEXT, b"a", final=False) + server_frame(OP_TEXT, b"b"),
            CLOSE_PROTOCOL_ERROR,
        ),  # a new message inside a fragmented one
        (server_frame(OP_TEXT, b"x" * 1025), CLOSE_TOO_BIG),
        (
            server_frame(OP_TEXT, b"x" * 600, final=False)
            + server_frame(OP_CONTINUATION, b"x" * 600),
            CLOSE_TOO_BIG,
        ),
    ],
)
def test_reader_refuses_what_the_rfc_forbids(data: bytes, code: int) -> None:
    reader = FrameReader(max_message_bytes=1024)
    with pytest.raises(WebSocketProtocolError) as raised:
        reader.feed(data)
    assert raised.value.close_code == code


def test_an_oversized_frame_is_refused_from_its_header_alone() -> None:
    reader = FrameReader(max_message_bytes=1024)
    with pytest.raises(WebSocketProtocolError):
        reader.feed(struct.pack("!BBQ", 0x81, 127, 1 << 40))


def test_close_payload_round_trip() -> None:
    assert close_payload(None) == b""
    assert parse_close(b"") == (None, "")
    assert parse_close(close_payload(1001, "going away")) == (1001, "going away")
    assert len(close_payload(1000, "x" * 500)) <= 125  # fits a control frame
    with pytest.raises(WebSocketProtocolError):
        parse_close(b"\x03")
    reader = FrameReader()
    assert reader.feed(server_frame(OP_CLOSE, close_payload(1000))) == [(OP_CLOSE, b"\x03\xe8")]

"""StreamFramer: any chunking, keep-alives, Content-Length rules, limits, garbage."""

from __future__ import annotations

import pytest

from dialer.sip.errors import FramingError, ParseError
from dialer.sip.framing import StreamFramer
from dialer.sip.message import Request, Response
from dialer.sip.parser import ParserLimits, parse_message


def message(method: str = "OPTIONS", body: bytes = b"", *, lf: bool = False) -> bytes:
    data = (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
        "To: <sip:bob@example.com>\r\n"
        "From: <sip:alice@example.com>;tag=1\r\n"
        "Call-ID: c1\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode() + body
    if lf:
        head, _, rest = data.partition(b"\r\n\r\n")
        data = head.replace(b"\r\n", b"\n") + b"\n\n" + rest
    return data


RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    b"To: <sip:bob@example.com>;tag=2\r\n"
    b"From: <sip:alice@example.com>;tag=1\r\n"
    b"Call-ID: c1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"l: 3\r\n"
    b"\r\n"
    b"a\r\n"
)

STREAM = [
    message(),
    message("INVITE", b"v=0\r\n\r\n\r\nbody with a blank line\r\n"),
    RESPONSE,
    message("MESSAGE", b"\x00\r\n\r\x00binary", lf=True),
]


def drain(framer: StreamFramer) -> list[bytes]:
    frames = []
    while (frame := framer.next_frame()) is not None:
        frames.append(frame)
    return frames


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1000, 100000])
def test_any_chunking_gives_the_same_frames(chunk: int) -> None:
    stream = b"".join(STREAM)
    framer = StreamFramer()
    frames: list[bytes] = []
    for i in range(0, len(stream), chunk):
        framer.feed(stream[i : i + chunk])
        frames += drain(framer)
    assert frames == STREAM
    assert framer.buffered == 0
    parsed = [parse_message(frame) for frame in frames]
    assert [type(m) for m in parsed] == [Request, Request, Response, Request]
    assert parsed[3].body == b"\x00\r\n\r\x00binary"


def test_next_message_parses_frames() -> None:
    framer = StreamFramer()
    framer.feed(message("BYE") + RESPONSE)
    first = framer.next_message()
    second = framer.next_message()
    assert isinstance(first, Request) and first.method == "BYE"
    assert isinstance(second, Response) and second.body == b"a\r\n"
    assert framer.next_message() is None


def test_a_malformed_message_does_not_break_the_stream() -> None:
    bad = message().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    framer = StreamFramer()
    framer.feed(bad + message("BYE"))
    with pytest.raises(ParseError) as info:
        framer.next_message()
    assert not isinstance(info.value, FramingError)
    following = framer.next_message()
    assert isinstance(following, Request) and following.method == "BYE"


@pytest.mark.parametrize(
    ("between", "pings"),
    [
        (b"", 0),
        (b"\r\n", 0),  # a pong
        (b"\r\n\r\n", 1),  # a ping (RFC 5626 §4.4.1)
        (b"\r\n\r\n\r\n\r\n", 2),
        (b"\n\n", 0),
    ],
)
def test_keepalives_between_messages(between: bytes, pings: int) -> None:
    stream = message() + between + message("BYE")
    for chunk in (1, len(stream)):
        framer = StreamFramer()
        frames = []
        for i in range(0, len(stream), chunk):
            framer.feed(stream[i : i + chunk])
            frames += drain(framer)
        assert frames == [message(), message("BYE")]
        assert framer.take_pings() == pings
        assert framer.take_pings() == 0


def test_a_lone_ping_is_counted_once_it_is_whole() -> None:
    framer = StreamFramer()
    for byte in b"\r\n\r":
        framer.feed(bytes([byte]))
        assert framer.next_frame() is None
    assert framer.take_pings() == 0 and framer.buffered == 3
    framer.feed(b"\n")
    assert framer.next_frame() is None
    assert framer.take_pings() == 1 and framer.buffered == 0


def test_partial_messages_wait() -> None:
    data = message("INVITE", b"0123456789")
    framer = StreamFramer()
    framer.feed(data[:-1])
    assert framer.next_frame() is None
    assert framer.buffered == len(data) - 1
    framer.feed(data[-1:])
    assert framer.next_frame() == data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (message().replace(b"Content-Length: 0\r\n", b""), "no Content-Length"),
        (message().replace(b"Content-Length: 0", b"Content-Length: -1"), "bad Content-Length"),
        (message().replace(b"Content-Length: 0", b"Content-Length: 0x10"), "bad Content-Length"),
        (message().replace(b"Content-Length: 0", b"Content-Length: 99999999999"), "bad"),
        (message().replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 0"), "more than one"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a SIP start line"),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\n", "not a SIP start line"),
        (b" INVITE sip:a@h SIP/2.0\r\n", "not a SIP start line"),
    ],
)
def test_framing_errors_break_the_stream(data: bytes, reason: str) -> None:
    framer = StreamFramer()
    framer.feed(data)
    with pytest.raises(FramingError, match=reason):
        framer.next_frame()
    framer.feed(message())  # nothing after a broken frame can be trusted
    with pytest.raises(FramingError):
        framer.next_frame()


def test_content_length_header_is_found_in_any_spelling() -> None:
    for spelling in (b"content-length", b"CONTENT-LENGTH", b"l", b"L", b"Content-Length  "):
        data = message(body=b"xyz").replace(b"Content-Length", spelling)
        framer = StreamFramer()
        framer.feed(data + message())
        assert drain(framer) == [data, message()]


def test_limits_stop_garbage_from_holding_memory() -> None:
    limits = ParserLimits(max_message_bytes=1000, max_line_bytes=200)
    framer = StreamFramer(limits)
    framer.feed(b"INVITE sip:a@h SIP/2.0\r\nX: " + b"a" * 2000)
    with pytest.raises(FramingError) as info:
        framer.next_frame()
    assert info.value.status_hint == 513

    framer = StreamFramer(limits)
    framer.feed(b"x" * 201)  # no line end at all
    with pytest.raises(FramingError, match="start line too long"):
        framer.next_frame()

    framer = StreamFramer(limits)
    framer.feed(message(body=b"z" * 1000))
    with pytest.raises(FramingError, match="longer than"):
        framer.next_frame()


def test_one_byte_feeding_is_linear_enough() -> None:
    # A big but legal message, fed a byte at a time, must not rescan the buffer
    # from the start on every byte.
    data = message("INVITE", b"x" * 30000)
    framer = StreamFramer()
    frames: list[bytes] = []
    for i in range(len(data)):
        framer.feed(data[i : i + 1])
        frames += drain(framer)
    assert frames == [data]

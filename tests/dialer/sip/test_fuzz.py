"""Property tests: no input makes the message layer raise anything but a SipError,
and every message we can build survives serialize -> parse unchanged."""

from __future__ import annotations

import contextlib
import os
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialer.sip.errors import SipError
from dialer.sip.framing import StreamFramer
from dialer.sip.headers import CSeq, Via
from dialer.sip.message import Message, Request, Response, make_response
from dialer.sip.parser import error_response, parse_message
from dialer.sip.uri import NameAddr, SipUri, parse_name_addr, parse_uri

# Bounded so the suite stays fast; set DIALER_FUZZ_EXAMPLES for a long hunt.
_SCALE = int(os.environ.get("DIALER_FUZZ_EXAMPLES", "0")) or None
FAST = settings(
    max_examples=_SCALE or 400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
ROUND_TRIP = settings(
    max_examples=_SCALE or 40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

SEEDS = [
    (
        b"INVITE sip:+15551234567@trunk.example.com;transport=udp SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
        b"Via: SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bKx;received=192.0.2.9\r\n"
        b"Max-Forwards: 70\r\n"
        b'To: "Bob \\"B\\"" <sip:bob@example.com>\r\n'
        b"f: Alice <sip:alice@example.com;user=phone>;tag=1928301774\r\n"
        b"i: a84b4c76e66710@pc33.example.com\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"m: <sip:alice@192.0.2.10>;expires=60, <sips:a@b?x=y>\r\n"
        b"Route: <sip:p1.example.com;lr>,\r\n <sip:p2.example.com;lr>\r\n"
        b"Supported: timer, 100rel\r\n"
        b"c: application/sdp\r\n"
        b"l: 10\r\n"
        b"\r\n"
        b"v=0\r\ns=-\r\n"
    ),
    (
        b"SIP/2.0 180 Ringing\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1;rport=5060;received=192.0.2.1\n"
        b"To: <sip:bob@example.com>;tag=8321234356\n"
        b"From: <sip:alice@example.com>;tag=1928301774\n"
        b"Call-ID: a84b4c76e66710\n"
        b"CSeq: 1 INVITE\n"
        b"Record-Route: <sip:p1.example.com;lr>\n"
        b"Content-Length: 0\n"
        b"\n"
    ),
]

_SPECIALS = b'\r\n :;,"<>%@?=/\\\t\x00\xff0123456789[]'


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed with a handful of byte-level edits of the kinds parsers trip on."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.integers(0, 4))
        if action == 0:
            data[pos] = draw(st.sampled_from(_SPECIALS))
        elif action == 1:
            data.insert(pos, draw(st.sampled_from(_SPECIALS)))
        elif action == 2:
            del data[pos : pos + draw(st.integers(1, 20))]
        elif action == 3:
            end = min(len(data), pos + draw(st.integers(1, 40)))
            data[pos:pos] = data[pos:end] * draw(st.integers(1, 50))
        else:
            data[pos] = draw(st.integers(0, 255))
    return bytes(data)


def _touch_everything(message: Message) -> None:
    # Every lazy view must also fail only with a SipError.
    for name in (
        "call_id",
        "cseq",
        "from_addr",
        "to_addr",
        "from_tag",
        "to_tag",
        "top_via",
        "vias",
        "branch",
        "max_forwards",
        "content_type",
        "media_type",
        "expires",
        "contacts",
        "record_routes",
        "routes",
        "require",
        "proxy_require",
        "supported",
        "allow",
    ):
        with contextlib.suppress(SipError):
            getattr(message, name)


def _parse_safely(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipError as exc:
        assert 400 <= exc.status_hint <= 599
        reply = error_response(data, exc, to_tag="x")
        if reply is not None:
            assert reply.status == exc.status_hint
            reply.serialize()
        return
    _touch_everything(message)
    message.serialize()
    if isinstance(message, Request) and message.method != "ACK":
        make_response(message, 200, to_tag="x").serialize()


@FAST
@given(st.binary(max_size=1500))
def test_random_bytes_raise_only_named_errors(data: bytes) -> None:
    _parse_safely(data)


@FAST
@given(mutated())
def test_mutated_messages_raise_only_named_errors(data: bytes) -> None:
    _parse_safely(data)


@FAST
@given(st.text(max_size=200))
def test_random_text_in_uri_and_name_addr_raises_only_named_errors(text: str) -> None:
    for parse in (parse_uri, parse_name_addr, Via.parse, CSeq.parse):
        with contextlib.suppress(SipError):
            parse(text)


@ROUND_TRIP
@given(st.lists(mutated(), min_size=1, max_size=3), st.data())
def test_framer_never_raises_anything_else(messages: list[bytes], data: st.DataObject) -> None:
    stream = b"\r\n\r\n".join(messages)
    framer = StreamFramer()
    pos = 0
    try:
        while pos < len(stream):
            step = data.draw(st.integers(1, 64))
            framer.feed(stream[pos : pos + step])
            pos += step
            while (frame := framer.next_frame()) is not None:
                _parse_safely(frame)
    except SipError:
        pass


# --- round trips of generated messages ---------------------------------------------------

_TOKEN = st.text(string.ascii_letters + string.digits + "-.!%*_+`'~", min_size=1, max_size=12)
_LABEL = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)
_HOST = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=3).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.sampled_from(["[::1]", "[2001:db8::5]", "[fe80::1:2]"]),
)
_USER = st.text(string.ascii_letters + string.digits + "-_.!~*'()&=+$,;?/", min_size=1)
_PARAM_TEXT = st.text(string.ascii_letters + string.digits + "-_.!~*'()[]/:&+$", min_size=1)
_URI_PARAMS = st.lists(st.tuples(_PARAM_TEXT, st.none() | _PARAM_TEXT), max_size=3).map(tuple)
_HEADER_TEXT = st.text(string.ascii_letters + string.digits + "-_.!~*'()[]/?:+$", min_size=1)


def _sip_uris(max_headers: int) -> st.SearchStrategy[SipUri]:
    return st.builds(
        SipUri,
        host=_HOST,
        user=st.none() | _USER.filter(lambda u: len(u) < 20),
        port=st.none() | st.integers(0, 65535),
        params=_URI_PARAMS,
        headers=st.lists(st.tuples(_HEADER_TEXT, _HEADER_TEXT), max_size=max_headers).map(tuple),
        scheme=st.sampled_from(["sip", "sips"]),
    )


sip_uris = _sip_uris(max_headers=2)
request_uris = _sip_uris(max_headers=0)  # §19.1.1: no headers in a Request-URI
_HEADER_PARAMS = st.lists(
    st.tuples(_TOKEN, st.none() | _TOKEN | _TOKEN.map(lambda t: f'"{t} x"')), max_size=3
).map(tuple)
name_addrs = st.builds(
    NameAddr,
    uri=sip_uris,
    display_name=st.none() | st.text(string.printable.strip() + " ", max_size=20),
    params=_HEADER_PARAMS,
)
vias = st.builds(
    Via,
    transport=st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]),
    host=_HOST,
    port=st.none() | st.integers(0, 65535),
    # rport carries a number when it has a value (RFC 3581); other names are free.
    params=st.lists(
        st.tuples(_TOKEN.filter(lambda t: t.lower() != "rport"), st.none() | _TOKEN), max_size=3
    ).map(tuple),
)


@ROUND_TRIP
@given(sip_uris)
def test_sip_uri_round_trip(uri: SipUri) -> None:
    assert parse_uri(uri.serialize()) == uri


@ROUND_TRIP
@given(name_addrs)
def test_name_addr_round_trip(value: NameAddr) -> None:
    text = value.serialize()
    assert parse_name_addr(text) == value
    assert parse_name_addr(text).serialize() == text


@ROUND_TRIP
@given(vias)
def test_via_round_trip(via: Via) -> None:
    assert Via.parse(via.serialize()) == via


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(_TOKEN)
    headers = [
        *(("Via", v.serialize()) for v in draw(st.lists(vias, min_size=1, max_size=3))),
        ("From", draw(name_addrs).serialize()),
        ("To", draw(name_addrs).serialize()),
        ("Call-ID", draw(_TOKEN) + "@" + draw(_LABEL)),
        ("CSeq", CSeq(draw(st.integers(0, 2**31 - 1)), method).serialize()),
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
        *draw(st.lists(st.tuples(_TOKEN.map(lambda t: "X-" + t), _TOKEN), max_size=3)),
    ]
    body = draw(st.binary(max_size=200))
    return Request(method, draw(request_uris), tuple(headers), body)


@ROUND_TRIP
@given(requests())
def test_request_serialize_parse_round_trip(request: Request) -> None:
    wire = request.serialize()
    parsed = parse_message(wire)
    assert isinstance(parsed, Request)
    assert parsed.method == request.method and parsed.uri == request.uri
    assert parsed.body == request.body
    assert [h for h in parsed.headers if h[0] != "Content-Length"] == list(request.headers)
    assert parsed.serialize() == wire
    assert parsed.vias == tuple(Via.parse(v) for _, v in request.headers if _ == "Via")
    assert parsed.from_addr == parse_name_addr(request.get("From") or "")


@ROUND_TRIP
@given(requests().filter(lambda r: r.method != "ACK"), st.integers(100, 699), _TOKEN)
def test_response_round_trip(request: Request, status: int, to_tag: str) -> None:
    response = make_response(request, status, to_tag=to_tag, body=b"x")
    parsed = parse_message(response.serialize())
    assert isinstance(parsed, Response)
    assert (parsed.status, parsed.reason) == (status, response.reason)
    assert parsed.call_id == request.call_id and parsed.cseq == request.cseq
    assert parsed.vias == request.vias
    expected_tag = request.to_tag if request.to_tag is not None else to_tag
    assert parsed.to_tag == expected_tag
    assert parsed.serialize() == response.serialize()

"""Requests and responses: header look-ups, typed views, building, answering."""

from __future__ import annotations

import pytest

from dialer.sip.errors import BadExtension, LocalProtocolError, ParseError
from dialer.sip.headers import CSeq
from dialer.sip.message import (
    Request,
    Response,
    copy_response_headers,
    make_response,
    reason_phrase,
    require_supported,
)
from dialer.sip.parser import parse_message
from dialer.sip.uri import SipUri, parse_uri

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;received=192.0.2.1\r\n"
    b"v: SIP/2.0/UDP bigbox3.site3.atlanta.example.com;branch=z9hG4bK77ef4c2312983.1,\r\n"
    b"  SIP/2.0/UDP proxy.example.com;branch=z9hG4bK2\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>\r\n"
    b"Allow: INVITE, ACK\r\n"
    b"Allow: CANCEL, BYE\r\n"
    b"Require: 100rel\r\n"
    b"Supported: timer\r\n"
    b"Timestamp: 54\r\n"
    b"Expires: 120\r\n"
    b"X-Custom: keep  this ;; verbatim,\r\n"
    b"Content-Type: Application/SDP; charset=utf-8\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


@pytest.fixture
def invite() -> Request:
    message = parse_message(INVITE)
    assert isinstance(message, Request)
    return message


def test_views_of_a_parsed_request(invite: Request) -> None:
    assert invite.method == "INVITE"
    assert invite.uri == SipUri("biloxi.example.com", "bob")
    assert invite.call_id == "a84b4c76e66710"
    assert invite.cseq == CSeq(314159, "INVITE")
    assert invite.from_tag == "1928301774" and invite.to_tag is None
    assert invite.from_addr.display_name == "Alice"
    assert invite.branch == "z9hG4bKnashds8"
    assert invite.top_via.received == "192.0.2.1"
    assert [v.host for v in invite.vias] == [
        "pc33.atlanta.example.com",
        "bigbox3.site3.atlanta.example.com",
        "proxy.example.com",
    ]
    assert invite.max_forwards == 70
    assert invite.content_type == "Application/SDP; charset=utf-8"
    assert invite.media_type == "application/sdp"
    assert invite.expires == 120
    assert [c.uri.serialize() for c in invite.contacts] == ["sip:alice@pc33.atlanta.example.com"]
    assert [r.uri.serialize() for r in invite.record_routes] == [
        "sip:p2.example.com;lr",
        "sip:p1.example.com;lr",
    ]
    assert invite.routes == ()
    assert invite.allow == ("INVITE", "ACK", "CANCEL", "BYE")
    assert invite.require == ("100rel",) and invite.supported == ("timer",)
    assert invite.proxy_require == ()
    assert invite.body == b"v=0\n"


@pytest.mark.parametrize(
    ("name", "first", "count"),
    [
        ("via", "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;received=192.0.2.1", 3),
        ("V", "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;received=192.0.2.1", 3),
        ("i", "a84b4c76e66710", 1),
        ("ALLOW", "INVITE, ACK", 4),
        ("x-custom", "keep  this ;; verbatim,", 1),  # unknown: never split
        ("Route", None, 0),
    ],
)
def test_lookups_are_case_insensitive_and_compact_aware(
    invite: Request, name: str, first: str | None, count: int
) -> None:
    assert invite.get(name) == first
    assert len(invite.get_all(name)) == count
    assert (name in invite) is (count > 0)


def test_header_order_and_names_are_preserved(invite: Request) -> None:
    names = [name for name, _ in invite.headers]
    assert names[:3] == ["Via", "Via", "Max-Forwards"]  # "v" stored as canonical "Via"
    assert names[-3:] == ["X-Custom", "Content-Type", "Content-Length"]


def test_missing_and_duplicated_headers_raise_on_access() -> None:
    bare = Request("OPTIONS", parse_uri("sip:h"), (("Call-ID", "a"), ("Call-ID", "b")))
    with pytest.raises(ParseError, match="more than one Call-ID"):
        _ = bare.call_id
    with pytest.raises(ParseError, match="missing CSeq"):
        _ = bare.cseq
    with pytest.raises(ParseError, match="missing Via"):
        _ = bare.top_via
    assert bare.max_forwards is None
    assert bare.content_type is None and bare.media_type is None


def test_bad_lazy_views_raise_parse_error() -> None:
    message = Request(
        "OPTIONS",
        parse_uri("sip:h"),
        (("Contact", "<sip:a@h"), ("Max-Forwards", "300"), ("Allow", "A B"), ("Expires", "x")),
    )
    for view in ("contacts", "max_forwards", "allow", "expires"):
        with pytest.raises(ParseError):
            getattr(message, view)


def test_serialize_computes_content_length_in_place(invite: Request) -> None:
    changed = Request(invite.method, invite.uri, invite.headers, b"v=0\r\no=x\r\n")
    wire = changed.serialize()
    assert b"\r\nContent-Length: 10\r\n\r\nv=0\r\no=x\r\n" in wire
    assert wire.count(b"Content-Length") == 1
    assert wire.startswith(b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\nVia: ")


def test_serialize_appends_content_length_when_absent() -> None:
    request = Request("OPTIONS", parse_uri("sip:h"), (("Call-ID", "x"), ("l", "99")))
    assert (
        request.serialize() == b"OPTIONS sip:h SIP/2.0\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n"
    )
    response = Response(200, "OK", (("Call-ID", "x"),), b"abc")
    assert response.serialize() == b"SIP/2.0 200 OK\r\nCall-ID: x\r\nContent-Length: 3\r\n\r\nabc"


def test_serialize_keeps_non_ascii_bytes() -> None:
    data = INVITE.replace(b"X-Custom: keep", b"X-Custom: \xd0\xbd\xff keep")
    message = parse_message(data)
    assert message.get("X-Custom") == "\u043d\udcff keep  this ;; verbatim,"
    assert b"\r\nX-Custom: \xd0\xbd\xff keep  this ;; verbatim,\r\n" in message.serialize()


def test_building_new_messages(invite: Request) -> None:
    via = "SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bKnew"
    forwarded = invite.with_header_first("Via", via)
    assert isinstance(forwarded, Request)
    assert forwarded.top_via.branch == "z9hG4bKnew" and invite.branch == "z9hG4bKnashds8"
    assert len(forwarded.vias) == 4
    appended = invite.with_header("Subject", "hi")
    assert appended.headers[-1] == ("Subject", "hi") and appended.get("s") == "hi"
    replaced = invite.replace_header("Max-Forwards", "69")
    assert replaced.max_forwards == 69
    assert [n for n, _ in replaced.headers].count("Max-Forwards") == 1
    assert replaced.headers.index(("Max-Forwards", "69")) == 2
    stripped = invite.without_header("v")
    assert "Via" not in stripped and len(stripped.headers) == len(invite.headers) - 2
    assert invite.replace_header("Route", "<sip:r;lr>").get("Route") == "<sip:r;lr>"


@pytest.mark.parametrize(
    ("name", "value"),
    [("Subject", "a\r\nVia: injected"), ("Subject", "a\nb"), ("Bad Name", "x"), ("", "x")],
)
def test_header_injection_is_refused(invite: Request, name: str, value: str) -> None:
    with pytest.raises(LocalProtocolError):
        invite.with_header(name, value)


def test_messages_are_frozen_and_compare_by_value(invite: Request) -> None:
    with pytest.raises(AttributeError):
        invite.method = "BYE"  # type: ignore[misc]
    again = parse_message(INVITE)
    _ = again.cseq  # a filled view cache does not change equality
    assert again == invite and hash(again) == hash(invite)


# --- answering (§8.2.6) -----------------------------------------------------------------


def test_make_response_copies_the_right_fields(invite: Request) -> None:
    response = make_response(invite, 180, to_tag="a6c85cf")
    assert response.status == 180 and response.reason == "Ringing"
    assert [name for name, _ in response.headers] == [
        "Via",
        "Via",
        "To",
        "From",
        "Call-ID",
        "CSeq",
    ]
    assert response.get_all("Via") == invite.get_all("Via")
    assert response.get("To") == "Bob <sip:bob@biloxi.example.com>;tag=a6c85cf"
    assert response.get("From") == invite.get("From")
    parsed = parse_message(response.serialize())
    assert isinstance(parsed, Response)
    assert parsed.to_tag == "a6c85cf" and parsed.cseq == invite.cseq
    assert parsed.vias == invite.vias


def test_make_response_keeps_an_existing_to_tag() -> None:
    data = INVITE.replace(b"To: Bob <sip:bob@biloxi.example.com>", b"To: <sip:b@h>;tag=orig")
    request = parse_message(data)
    assert isinstance(request, Request)
    response = make_response(request, 200, to_tag="new")
    assert response.get("To") == "<sip:b@h>;tag=orig"


def test_100_trying_copies_timestamp_and_needs_no_tag(invite: Request) -> None:
    trying = make_response(invite, 100)
    assert trying.get("Timestamp") == "54"
    assert trying.get("To") == "Bob <sip:bob@biloxi.example.com>"
    assert make_response(invite, 200, to_tag="x").get("Timestamp") is None


def test_make_response_extra_headers_and_body(invite: Request) -> None:
    response = make_response(
        invite,
        200,
        to_tag="x",
        headers=[("Contact", "<sip:bob@192.0.2.4>"), ("Content-Type", "application/sdp")],
        body=b"v=0\r\n",
    )
    assert response.headers[-2:] == (
        ("Contact", "<sip:bob@192.0.2.4>"),
        ("Content-Type", "application/sdp"),
    )
    assert response.serialize().endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")
    assert make_response(invite, 486, "Busy Now").reason == "Busy Now"


@pytest.mark.parametrize("status", [99, 700, 0])
def test_make_response_refuses_bad_status(invite: Request, status: int) -> None:
    with pytest.raises(LocalProtocolError):
        make_response(invite, status)


def test_ack_is_never_answered() -> None:
    ack = Request("ACK", parse_uri("sip:h"), (("CSeq", "1 ACK"),))
    with pytest.raises(LocalProtocolError):
        make_response(ack, 200)


def test_copy_response_headers_from_raw_fields() -> None:
    headers = [
        ("v", "SIP/2.0/UDP a;branch=z9hG4bK1"),
        ("t", "sip:b@h"),
        ("X-Other", "dropped"),
        ("i", "cid"),
        ("f", "sip:a@h;tag=1"),
        ("CSeq", "1 OPTIONS"),
    ]
    assert copy_response_headers(headers, "tt") == [
        ("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"),
        ("To", "sip:b@h;tag=tt"),
        ("Call-ID", "cid"),
        ("From", "sip:a@h;tag=1"),
        ("CSeq", "1 OPTIONS"),
    ]
    # An unparseable To is copied as it is; a tag already in its text is kept.
    assert copy_response_headers([("To", '"x <sip:b@h>;tag=1')], "tt") == [
        ("To", '"x <sip:b@h>;tag=1')
    ]


@pytest.mark.parametrize(
    ("status", "phrase"),
    [(180, "Ringing"), (487, "Request Terminated"), (299, "OK"), (499, "Client Error"),
     (699, "Global Failure"), (505, "Version Not Supported")],
)  # fmt: skip
def test_reason_phrase(status: int, phrase: str) -> None:
    assert reason_phrase(status) == phrase


def test_require_supported(invite: Request) -> None:
    require_supported(invite, ["100REL", "timer"])
    with pytest.raises(BadExtension) as info:
        require_supported(invite, ["timer"])
    assert info.value.unsupported == ("100rel",) and info.value.status_hint == 420


def test_response_classes() -> None:
    assert Response(183, "Session Progress").is_provisional
    assert Response(200, "OK").is_final and not Response(200, "OK").is_provisional


# --- views known in advance, and forgotten ------------------------------------------------


def test_primed_views_are_returned_and_forgotten_views_come_back(invite: Request) -> None:
    built = Request(invite.method, invite.uri, invite.headers, invite.body)
    cseq, from_addr = CSeq(314159, "INVITE"), invite.from_addr
    assert built.prime(cseq=cseq, from_addr=from_addr) is built
    assert built.cseq is cseq and built.from_addr is from_addr  # not parsed again
    built.forget_views()
    assert built.cseq == cseq and built.cseq is not cseq  # worked out again from the text
    assert built.from_addr == from_addr and built.branch == "z9hG4bKnashds8"
    # A copy with another header starts with no views of its own.
    copy = built.prime(cseq=CSeq(1, "INVITE")).with_header("Subject", "hi")
    assert copy.cseq == cseq

"""URIs (RFC 3261 §19.1, RFC 3966) and name-addr values (§20.10)."""

from __future__ import annotations

import pytest

from dialer.sip.errors import LocalProtocolError, ParseError
from dialer.sip.uri import (
    AbsoluteUri,
    NameAddr,
    SipUri,
    TelUri,
    escape,
    ip_literal_address,
    parse_name_addr,
    parse_uri,
    unescape,
    uris_equivalent,
)

# text -> expected value; every one must also serialise back to the same text.
VALID_URIS = [
    ("sip:alice@example.com", SipUri("example.com", "alice")),
    ("sips:alice@example.com", SipUri("example.com", "alice", scheme="sips")),
    ("sip:example.com", SipUri("example.com")),
    ("sip:192.0.2.1:5060", SipUri("192.0.2.1", port=5060)),
    ("sip:[::1]", SipUri("[::1]")),
    ("sip:bob@[2001:db8::10]:5070", SipUri("[2001:db8::10]", "bob", port=5070)),
    ("sip:alice:secret@h", SipUri("h", "alice", "secret")),
    ("sip:alice:@h", SipUri("h", "alice", "")),
    (
        "sip:+15551234567@trunk.example.com;user=phone;transport=TCP",
        SipUri(
            "trunk.example.com",
            "+15551234567",
            params=(("user", "phone"), ("transport", "TCP")),
        ),
    ),
    (
        "sip:p1.example.com;lr;maddr=[::2]",
        SipUri("p1.example.com", params=(("lr", None), ("maddr", "[::2]"))),
    ),
    (
        "sip:user@example.com?Route=%3Csip:x%3E&Subject=hi",
        SipUri("example.com", "user", headers=(("Route", "%3Csip:x%3E"), ("Subject", "hi"))),
    ),
    # user part may hold ";" "?" "/" (RFC 4475 §3.1.1.9)
    ("sip:user;par=u%40example.net@example.com", SipUri("example.com", "user;par=u%40example.net")),
    ("sip:a%00b@h", SipUri("h", "a%00b")),
    ("sip:h_1.example.com", SipUri("h_1.example.com")),
    ("tel:+1-201-555-0123", TelUri("+1-201-555-0123")),
    (
        "tel:7042;phone-context=example.com",
        TelUri("7042", (("phone-context", "example.com"),)),
    ),
    ("tel:*99#", TelUri("*99#")),
    ("urn:service:sos", AbsoluteUri("urn", "service:sos")),
    ("http://www.example.com/x?y", AbsoluteUri("http", "//www.example.com/x?y")),
]


@pytest.mark.parametrize(("text", "expected"), VALID_URIS)
def test_parse_and_round_trip(text: str, expected: object) -> None:
    uri = parse_uri(text)
    assert uri == expected
    assert uri.serialize() == text
    assert str(uri) == text


def test_scheme_is_case_insensitive_and_lowered() -> None:
    uri = parse_uri("SIP:Alice@Example.COM")
    assert uri == SipUri("Example.COM", "Alice")
    assert uri.serialize() == "sip:Alice@Example.COM"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip:",
        "sip:@example.com",
        "sip:alice@",
        "sip:alice@exa mple.com",
        " sip:alice@example.com",
        "sip:alice@example.com ",
        "sip:alice@example.com:99999",
        "sip:alice@example.com:port",
        "sip:alice@example.com;;lr",
        "sip:alice@example.com;a=",
        "sip:a%zzb@example.com",
        "sip:a%4@example.com",
        "sip:alice@[::1",
        "sip:alice@[zz::1]",
        "sip:alice@example.com?noequals",
        "sip:a<b@example.com",
        "<sip:alice@example.com>",
        "1sip:x",
        "tel:",
        "tel:abc-xyz",
        "tel:+",
        "mailto:",
        "mailto:a b",
    ],
)
def test_invalid_uris_raise_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(text)


def test_parameter_accessors_are_case_insensitive() -> None:
    uri = parse_uri("sip:p.example.com;Transport=TCP;LR;MADDR=192.0.2.1")
    assert isinstance(uri, SipUri)
    assert uri.transport == "tcp"
    assert uri.lr and uri.has_param("lr")
    assert uri.maddr == "192.0.2.1"
    assert uri.param("missing") is None
    assert not uri.secure


def test_with_param_replaces_or_appends() -> None:
    uri = SipUri("h", params=(("transport", "udp"),))
    assert uri.with_param("Transport", "tcp").serialize() == "sip:h;transport=tcp"
    assert uri.with_param("lr", None).serialize() == "sip:h;transport=udp;lr"
    with pytest.raises(LocalProtocolError):
        uri.with_param("bad name", "x")


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("%75se%72", "user"),
        ("sips%3Auser%40example.com", "sips:user@example.com"),
        ("n%61me=v%61lue%25%34%31", "name=value%41"),  # once, not twice (RFC 4475 §3.1.1.3)
        ("null-%00-null", "null-\x00-null"),
        ("I%20have%20spaces", "I have spaces"),
        ("%E2%82%AC", "\u20ac"),
        ("plain", "plain"),
    ],
)
def test_unescape(escaped: str, plain: str) -> None:
    assert unescape(escaped) == plain


def test_escape_keeps_user_unreserved_and_round_trips() -> None:
    assert escape("+1 555;x@y") == "+1%20555;x%40y"
    assert unescape(escape("a\x00b\u20ac:@")) == "a\x00b\u20ac:@"


# RFC 3261 §19.1.4, the examples the RFC gives, plus the rules they illustrate.
EQUIVALENT = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
     "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
    ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
     "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
]  # fmt: skip
NOT_EQUIVALENT = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
    ("sip:alice:pw@atlanta.com", "sip:alice@atlanta.com"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_equivalent_uris(a: str, b: str) -> None:
    assert uris_equivalent(parse_uri(a), parse_uri(b))
    assert uris_equivalent(parse_uri(b), parse_uri(a))


@pytest.mark.parametrize(("a", "b"), NOT_EQUIVALENT)
def test_non_equivalent_uris(a: str, b: str) -> None:
    assert not uris_equivalent(parse_uri(a), parse_uri(b))
    assert not uris_equivalent(parse_uri(b), parse_uri(a))


def test_tel_and_opaque_equivalence() -> None:
    assert uris_equivalent(parse_uri("tel:+1555;ext=1"), parse_uri("tel:+1555;EXT=1"))
    assert not uris_equivalent(parse_uri("tel:+1555"), parse_uri("sip:+1555@h"))
    assert uris_equivalent(parse_uri("urn:x"), parse_uri("URN:x"))


# --- name-addr ---------------------------------------------------------------------

NAME_ADDRS = [
    ("<sip:a@h>", None, "sip:a@h", ()),
    ('"Alice" <sip:a@h>;tag=12', "Alice", "sip:a@h", (("tag", "12"),)),
    ('"" <sip:a@h>', "", "sip:a@h", ()),
    ('"J Rosenberg \\\\\\""  <sip:j@h>', 'J Rosenberg \\"', "sip:j@h", ()),
    ("Alice Smith <sip:a@h>", "Alice Smith", "sip:a@h", ()),
    ("Alice   Smith<sip:a@h>", "Alice Smith", "sip:a@h", ()),
    ("caller<sip:c@example.com>;tag=323", "caller", "sip:c@example.com", (("tag", "323"),)),
    # addr-spec form: parameters belong to the header, not the URI (§20.10)
    ("sip:a@h;tag=x", None, "sip:a@h", (("tag", "x"),)),
    ("sip:+1972@gw1.example.net;unknownparam", None, "sip:+1972@gw1.example.net",
     (("unknownparam", None),)),
    ("<sip:+1972@gw1.example.net;unknownparam>", None, "sip:+1972@gw1.example.net;unknownparam",
     ()),
    ("sip:a@h ;  tag  =  x", None, "sip:a@h", (("tag", "x"),)),
    ('<sip:a@h>;q=0.5;expires=60;p="a;b,c"', None, "sip:a@h",
     (("q", "0.5"), ("expires", "60"), ("p", '"a;b,c"'))),
    ("<tel:+15551234567>", None, "tel:+15551234567", ()),
    ("isbn:2983792873", None, "isbn:2983792873", ()),
    ("<sip:a@h?Route=%3Csip:x%3E>", None, "sip:a@h?Route=%3Csip:x%3E", ()),
]  # fmt: skip


@pytest.mark.parametrize(("text", "display", "uri", "params"), NAME_ADDRS)
def test_parse_name_addr(text: str, display: str | None, uri: str, params: tuple) -> None:
    value = parse_name_addr(text)
    assert value.display_name == display
    assert value.uri.serialize() == uri
    assert value.params == params
    assert parse_name_addr(value.serialize()) == value  # canonical form round-trips


@pytest.mark.parametrize(
    "text",
    [
        '"Mr. J. User <sip:j.user@example.com>',  # unterminated quote (RFC 4475 quotbal)
        "Bell, Alexander <sip:a.g.bell@bell-tel.com>",  # comma in a token display name
        '"Watson, Thomas" < sip:t.watson@example.org >',  # LWS inside <> (badaspec)
        "<sip:a@h",
        "sip:user@example.com?Route=%3Csip:x%3E",  # addr-spec with ? needs <> (regbadct)
        '"Alice" sip:a@h',
        "<sip:a@h>;;tag=1",
        "<sip:a@h>;tag=",
        "<sip:a@h> junk",
        "",
        "<>",
    ],
)
def test_invalid_name_addr(text: str) -> None:
    with pytest.raises(ParseError):
        parse_name_addr(text)


def test_name_addr_serialize_quotes_and_escapes() -> None:
    value = NameAddr(SipUri("h", "a"), 'say "hi" \\ bye', (("tag", "1"),))
    assert value.serialize() == '"say \\"hi\\" \\\\ bye" <sip:a@h>;tag=1'
    assert parse_name_addr(value.serialize()) == value


def test_with_tag_replaces_an_existing_tag() -> None:
    value = parse_name_addr("<sip:a@h>;TAG=old;x=1")
    assert value.tag == "old"
    assert value.with_tag("new").serialize() == "<sip:a@h>;TAG=new;x=1"
    assert NameAddr(SipUri("h")).with_tag("t").tag == "t"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:10.0.0.1", ("10.0.0.1", 5060)),
        ("sips:10.0.0.1", ("10.0.0.1", 5061)),
        ("sip:a@10.0.0.1:5080", ("10.0.0.1", 5080)),
        ("sip:[::1]:5070", ("::1", 5070)),
        ("sip:proxy.example.com;maddr=192.0.2.7", ("192.0.2.7", 5060)),
        ("sip:proxy.example.com", None),
        ("tel:+12125550123", None),
    ],
)
def test_ip_literal_address(text: str, expected: tuple[str, int] | None) -> None:
    assert ip_literal_address(parse_uri(text)) == expected

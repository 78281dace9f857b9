"""Header grammar: names and compact forms, lists, params, quoted strings, Via, CSeq."""

from __future__ import annotations

import pytest

from dialer.sip.errors import LocalProtocolError, ParseError
from dialer.sip.headers import (
    COMPACT_FORMS,
    CSeq,
    Via,
    canonical_name,
    format_params,
    get_param,
    has_param,
    is_token,
    parse_hostport,
    parse_params,
    parse_seq_number,
    quote,
    set_param,
    split_values,
    unquote,
)

NAMES = [
    ("via", "Via"),
    ("VIA", "Via"),
    ("v", "Via"),
    ("V", "Via"),
    ("i", "Call-ID"),
    ("call-id", "Call-ID"),
    ("CALL-ID", "Call-ID"),
    ("m", "Contact"),
    ("e", "Content-Encoding"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("f", "From"),
    ("s", "Subject"),
    ("k", "Supported"),
    ("t", "To"),
    ("o", "Event"),
    ("u", "Allow-Events"),
    ("r", "Refer-To"),
    ("b", "Referred-By"),
    ("x", "Session-Expires"),
    ("y", "Identity"),
    ("cseq", "CSeq"),
    ("MaX-fOrWaRdS", "Max-Forwards"),
    ("www-authenticate", "WWW-Authenticate"),
    ("X-Custom", "X-Custom"),  # unknown: kept as written
    ("C%6Fntact", "C%6Fntact"),  # not Contact (RFC 4475 §3.1.1.5)
    ("z", "z"),
]


@pytest.mark.parametrize(("name", "canonical"), NAMES)
def test_canonical_name(name: str, canonical: str) -> None:
    assert canonical_name(name) == canonical


def test_every_compact_form_maps_to_a_known_long_name() -> None:
    for short, long in COMPACT_FORMS.items():
        assert len(short) == 1 and short.islower()
        assert canonical_name(long.lower()) == long


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("INVITE, ACK,BYE", ["INVITE", "ACK", "BYE"]),
        ("one", ["one"]),
        ('"a, b" <sip:x@h>, <sip:y@h>', ['"a, b" <sip:x@h>', "<sip:y@h>"]),
        ("<sip:a,b@h;x=1>;q=1, <sip:c@h>", ["<sip:a,b@h;x=1>;q=1", "<sip:c@h>"]),
        ('"q\\"uote, still" <sip:x@h>', ['"q\\"uote, still" <sip:x@h>']),
        ('a;p="x,y", b', ['a;p="x,y"', "b"]),
        ("a,,b", ["a", "", "b"]),
        ("", [""]),
    ],
)
def test_split_values(value: str, parts: list[str]) -> None:
    assert split_values(value) == parts


@pytest.mark.parametrize("value", ['"unterminated, x', "<sip:a@h, b"])
def test_split_values_rejects_unbalanced(value: str) -> None:
    with pytest.raises(ParseError):
        split_values(value)


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("", ()),
        (";tag=abc", (("tag", "abc"),)),
        (";lr", (("lr", None),)),
        (" ;  tag  =  x ; lr", (("tag", "x"), ("lr", None))),
        (';p="a;b=c"', (("p", '"a;b=c"'),)),
        (";received=[2001:db8::1];rport", (("received", "[2001:db8::1]"), ("rport", None))),
        (";TAG=X", (("TAG", "X"),)),
    ],
)
def test_parse_params(text: str, params: tuple) -> None:
    assert parse_params(text) == params


@pytest.mark.parametrize("text", [";", ";;a", ";a=", "tag=x", ";a b=c", ';a="x', ";a=x y", ";=x"])
def test_parse_params_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_params(text)


def test_param_helpers() -> None:
    params = parse_params(";Tag=1;lr;x=2")
    assert get_param(params, "tag") == "1" and get_param(params, "TAG") == "1"
    assert get_param(params, "lr") is None and has_param(params, "LR")
    assert not has_param(params, "y")
    # The name keeps the spelling it had; only the value changes.
    assert set_param(params, "TAG", "9") == (("Tag", "9"), ("lr", None), ("x", "2"))
    assert set_param(params, "new", None)[-1] == ("new", None)
    assert format_params(params) == ";Tag=1;lr;x=2"


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ('"plain"', "plain"),
        ('"with \\"quotes\\""', 'with "quotes"'),
        ('"back\\\\slash"', "back\\slash"),
        ('"ctl \\\x07"', "ctl \x07"),
        ("token", "token"),
        ('""', ""),
    ],
)
def test_unquote(raw: str, text: str) -> None:
    assert unquote(raw) == text


@pytest.mark.parametrize("text", ["plain", 'say "hi"', "a\\b", ""])
def test_quote_round_trips(text: str) -> None:
    assert unquote(quote(text)) == text


@pytest.mark.parametrize(
    ("text", "ok"), [("INVITE", True), ("!interesting-Method_*+`.%'~", True), ("a b", False)]
)
def test_is_token(text: str, ok: bool) -> None:
    assert is_token(text) is ok


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", ("example.com", None)),
        ("192.0.2.1:5060", ("192.0.2.1", 5060)),
        ("[::1]", ("[::1]", None)),
        ("[2001:db8::1]:5061", ("[2001:db8::1]", 5061)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int | None]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["", "host:", "host:65536", "[::1", "[::1]x", "a b", "h:-1"])
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_hostport(text)


# --- Via (§20.42) ------------------------------------------------------------------

VIAS = [
    (
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776;rport",
        Via("UDP", "192.0.2.1", 5060, (("branch", "z9hG4bK776"), ("rport", None))),
    ),
    (
        "SIP/2.0/TCP client.example.com;branch=z9hG4bK1;received=192.0.2.9;rport=5070",
        Via(
            "TCP",
            "client.example.com",
            None,
            (("branch", "z9hG4bK1"), ("received", "192.0.2.9"), ("rport", "5070")),
        ),
    ),
    ("SIP/2.0/TLS [2001:db8::9]:5061", Via("TLS", "[2001:db8::9]", 5061)),
    ("SIP/2.0/UNKNOWN t4.example.com", Via("UNKNOWN", "t4.example.com")),
]


@pytest.mark.parametrize(("text", "via"), VIAS)
def test_via_parse_and_serialize(text: str, via: Via) -> None:
    assert Via.parse(text) == via
    assert via.serialize() == text


@pytest.mark.parametrize(
    ("text", "via"),
    [
        (
            "SIP  /   2.0 /UDP    192.0.2.2;branch=390skdjuw",
            Via("UDP", "192.0.2.2", None, (("branch", "390skdjuw"),)),
        ),
        (
            "SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8  ",
            Via("TCP", "spindle.example.com", None, (("branch", "z9hG4bK9ikj8"),)),
        ),
        ("sip/2.0/udp h : 5060", Via("udp", "h", 5060, (), "sip/2.0")),
    ],
)
def test_via_tolerates_lws(text: str, via: Via) -> None:
    assert Via.parse(text) == via


def test_via_accessors() -> None:
    via = Via.parse("SIP/2.0/UDP h;BRANCH=z9hG4bKa;Received=192.0.2.1;rport=5061")
    assert via.branch == "z9hG4bKa"
    assert via.received == "192.0.2.1"
    assert via.rport == 5061 and via.has_rport
    bare = Via.parse("SIP/2.0/UDP h;rport")
    assert bare.rport is None and bare.has_rport
    assert Via.parse("SIP/2.0/UDP h").branch is None
    updated = bare.with_param("received", "198.51.100.7").with_param("rport", "4000")
    assert updated.serialize() == "SIP/2.0/UDP h;rport=4000;received=198.51.100.7"
    with pytest.raises(LocalProtocolError):
        bare.with_param("a b", None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 192.0.2.1",
        "SIP/2.0/UDP 192.0.2.15;;",  # RFC 4475 badinv01
        "SIP/2.0/UDP host;branch=",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host;rport=abc",
        "SIP/2.0/UDP ho st",
        "SIP/2.0/UDP host, SIP/2.0/UDP other",
    ],
)
def test_via_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        Via.parse(text)


# --- CSeq (§20.16) and bounded numbers ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cseq"),
    [
        ("1 INVITE", CSeq(1, "INVITE")),
        ("0009 INVITE", CSeq(9, "INVITE")),
        ("  314159   ACK ", CSeq(314159, "ACK")),
        ("4294967295 NEWMETHOD", CSeq(2**32 - 1, "NEWMETHOD")),
    ],
)
def test_cseq_parse(text: str, cseq: CSeq) -> None:
    assert CSeq.parse(text) == cseq


@pytest.mark.parametrize(
    "text",
    ["", "1", "INVITE", "1 INVITE x", "-1 INVITE", "1.5 INVITE", "4294967296 INVITE",
     "36893488147419103232 REGISTER", "1 INV<ITE", "\u0661 INVITE"],
)  # fmt: skip
def test_cseq_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        CSeq.parse(text)


def test_cseq_serialize() -> None:
    assert CSeq(42, "BYE").serialize() == "42 BYE"


@pytest.mark.parametrize(
    ("text", "limit", "value"),
    [("0", 255, 0), ("0068", 255, 68), ("255", 255, 255), ("0" * 50 + "7", 255, 7)],
)
def test_parse_seq_number(text: str, limit: int, value: int) -> None:
    assert parse_seq_number(text, limit) == value


@pytest.mark.parametrize("text", ["256", "", "1e3", "1" + "0" * 5000, "+1", "\u0664\u0662"])
def test_parse_seq_number_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_seq_number(text, 255)

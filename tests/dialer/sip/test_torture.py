"""RFC 4475 torture messages and the PROTOS c07-sip suite through the parser and framer.

Decisions per RFC 4475 file (``TORTURE`` below holds the same verdicts as data,
and a test checks that it names every file in the corpus):

Parse (valid, §3.1.1): wsinv, intmeth, esc01, escnull, esc02, lwsdisp, longreq,
    semiuri, transports, mpart01, unreason, noreason.
Parse, with a twist:
    dblreq    only the REGISTER: octets past Content-Length in a datagram are
              ignored (RFC 3261 §18.3).
    inv2543   RFC 2543 style, no Content-Length: the body is the rest of the
              datagram.
    regbadct  Contact is parsed on demand; reading ``contacts`` raises 400
              (an addr-spec with "?" needs <>).
Parse, the verdict belongs to the layers above (§3.2, §3.3): badbranch, bext01,
    invut, regaut01, unkscm, novelsc, unksm2, cparam01, cparam02, regescrt,
    sdp01, bcast, zeromf, and baddate (the Date header is never interpreted).
400, answered: badinv01 (empty Via params), clerr (body shorter than
    Content-Length), ncl and mcl01 (FramingError: negative, duplicated
    Content-Length), scalar02 (CSeq past 32 bits), quotbal, badaspec and baddn
    with its empty line restored (name-addr grammar), escruri (headers in the
    Request-URI), multi01 (duplicated single fields), mismatch01 and
    mismatch02 (CSeq method; 501 is preferred for 02, 400 allowed).
400, strict Request-Line ("Method SP URI SP Version", one SP each; the RFC
    allows rejecting): ltgtruri, lwsruri, lwsstart, trws.
505, answered: badvers.
Error, dropped (no answer can or may be built): scalarlg and bigcode (responses
    are never answered), insuf (no From/To/Call-ID to copy, §8.2.6.2), test.dat
    (no SIP-Version, a header line without a colon).
400, answered: baddn as archived (no empty line: a truncated head; the fields
    an answer copies are all there). On a stream the framer waits for more.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from dialer.sip.errors import (
    FramingError,
    ParseError,
    SipError,
    VersionNotSupported,
)
from dialer.sip.framing import StreamFramer
from dialer.sip.message import Request, Response
from dialer.sip.parser import error_response, parse_message
from dialer.sip.uri import AbsoluteUri, SipUri, unescape


def _testdata() -> Path:
    env = os.environ.get("DIALER_TESTDATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / ".." / "shared" / "testdata"


TESTDATA = _testdata()
RFC4475 = TESTDATA / "rfc4475"
PROTOS = TESTDATA / "protos-c07-sip" / "cases"

needs_rfc4475 = pytest.mark.skipif(
    not (RFC4475 / "INDEX.md").is_file(), reason=f"RFC 4475 corpus not found at {RFC4475}"
)
needs_protos = pytest.mark.skipif(
    not PROTOS.is_dir(), reason=f"PROTOS c07-sip cases not found at {PROTOS}"
)

Check = Callable[[Request | Response], None]


@dataclass(frozen=True)
class Case:
    """What one torture file must do: parse (and pass ``check``) or raise ``error``."""

    error: type[SipError] | None = None
    status_hint: int | None = None
    answered: bool | None = None  # for errors: does error_response build a reply?
    check: Check | None = None


def _wsinv(m: Request | Response) -> None:
    assert isinstance(m, Request) and m.method == "INVITE"
    assert m.to_tag == "1918181833n" and m.from_tag == "98asjd8"
    assert m.from_addr.display_name == 'J Rosenberg \\"'
    assert m.max_forwards == 68 and m.cseq.seq == 9 and m.cseq.method == "INVITE"
    assert [v.branch for v in m.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert [v.transport for v in m.vias] == ["UDP", "TCP", "UDP"]
    assert m.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert m.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.get("s") == ""
    (contact,) = m.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.param("newparam") == "newvalue" and contact.param("q") == "0.33"
    assert m.routes[0].uri.lr  # type: ignore[union-attr]
    assert len(m.body) == 150


def _intmeth(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.cseq.seq == 139122385
    assert isinstance(m.uri, SipUri) and m.uri.password is not None
    assert m.to_addr.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_addr.display_name == "token1~` token2'+_ token3*%!.-"
    assert m.from_tag == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    utf8 = bytes.fromhex("efbbbfe5a4a7e5819ce99bbb").decode()
    assert m.get("extensionHeader-!.%*+_`'~") == utf8


def _esc01(m: Request | Response) -> None:
    assert isinstance(m, Request) and isinstance(m.uri, SipUri)
    assert unescape(m.uri.user or "") == "sips:user@example.com"
    assert unescape(m.to_addr.uri.user or "") == "user"  # type: ignore[union-attr]
    (contact,) = m.contacts
    uri = contact.uri
    assert isinstance(uri, SipUri)
    assert [(unescape(k), unescape(v or "")) for k, v in uri.params] == [
        ("lr", ""),
        ("name", "value%41"),
    ]


def _escnull(m: Request | Response) -> None:
    users = [unescape(c.uri.user or "") for c in m.contacts]  # type: ignore[union-attr]
    assert users == ["\x00", "\x00\x00"]
    assert len(m.body) == 0


def _esc02(m: Request | Response) -> None:
    assert isinstance(m, Request) and m.method == "RE%47IST%45R"
    assert [c.uri.user for c in m.contacts] == ["alias1", "alias3"]  # type: ignore[union-attr]
    assert m.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert m.branch == "z9hG4bK209%fzsnel234"
    assert m.to_addr.display_name == "%Z%45"


def _lwsdisp(m: Request | Response) -> None:
    assert m.from_addr.display_name == "caller" and m.from_tag == "323"


def _longreq(m: Request | Response) -> None:
    assert len(m.vias) == 34
    assert len(m.from_tag or "") > 100
    assert m.to_addr.display_name is not None and "extremeextreme" in m.to_addr.display_name


def _dblreq(m: Request | Response) -> None:
    assert isinstance(m, Request) and m.method == "REGISTER" and m.body == b""


def _semiuri(m: Request | Response) -> None:
    assert isinstance(m, Request) and isinstance(m.uri, SipUri)
    assert m.uri.user == "user;par=u%40example.net" and m.uri.host == "example.com"
    assert m.uri.params == ()
    assert len(m.get_all("Accept")) == 6


def _transports(m: Request | Response) -> None:
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def _mpart01(m: Request | Response) -> None:
    assert len(m.body) == 553 and b"\x00" in m.body
    assert m.media_type == "multipart/mixed"


def _unreason(m: Request | Response) -> None:
    assert isinstance(m, Response) and m.status == 200
    assert m.reason.startswith("= 2**3 * 5**2 ") and "\u043d\u043e" in m.reason


def _noreason(m: Request | Response) -> None:
    assert isinstance(m, Response) and m.status == 100 and m.reason == ""


def _badbranch(m: Request | Response) -> None:
    assert m.branch == "z9hG4bK"


def _bext01(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert m.require == ("nothingSupportsThis", "nothingSupportsThisEither")
    assert m.proxy_require == ("noProxiesSupportThis", "norDoAnyProxiesSupportThis")


def _invut(m: Request | Response) -> None:
    assert m.media_type == "application/unknownformat" and len(m.body) == 40


def _regaut01(m: Request | Response) -> None:
    assert m.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"


def _unkscm(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert m.uri == AbsoluteUri("nobodyknowsthisscheme", "totallyopaquecontent")


def _novelsc(m: Request | Response) -> None:
    assert isinstance(m, Request) and m.uri.scheme == "soap.beep"


def _unksm2(m: Request | Response) -> None:
    assert m.to_addr.uri == AbsoluteUri("isbn", "2983792873")
    assert m.from_addr.uri == AbsoluteUri("http", "//www.example.com")
    assert m.contacts[0].uri == AbsoluteUri("name", "John_Smith")


def _cparam01(m: Request | Response) -> None:
    (contact,) = m.contacts
    assert contact.params == (("unknownparam", None),)
    assert isinstance(contact.uri, SipUri) and contact.uri.params == ()


def _cparam02(m: Request | Response) -> None:
    (contact,) = m.contacts
    assert contact.params == ()
    assert isinstance(contact.uri, SipUri) and contact.uri.params == (("unknownparam", None),)


def _regescrt(m: Request | Response) -> None:
    (contact,) = m.contacts
    assert isinstance(contact.uri, SipUri)
    assert contact.uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)


def _regbadct(m: Request | Response) -> None:
    with pytest.raises(ParseError):
        _ = m.contacts


def _bcast(m: Request | Response) -> None:
    assert isinstance(m, Response) and m.vias[1].host == "255.255.255.255"


def _zeromf(m: Request | Response) -> None:
    assert m.max_forwards == 0


def _inv2543(m: Request | Response) -> None:
    assert m.from_tag is None and m.branch is None and m.max_forwards is None
    assert len(m.body) == 105


def _parses(check: Check | None = None) -> Case:
    return Case(check=check)


def _fails(error: type[SipError] = ParseError, hint: int = 400, *, answered: bool = True) -> Case:
    return Case(error=error, status_hint=hint, answered=answered)


TORTURE: dict[str, Case] = {
    # §3.1.1 valid
    "wsinv.dat": _parses(_wsinv),
    "intmeth.dat": _parses(_intmeth),
    "esc01.dat": _parses(_esc01),
    "escnull.dat": _parses(_escnull),
    "esc02.dat": _parses(_esc02),
    "lwsdisp.dat": _parses(_lwsdisp),
    "longreq.dat": _parses(_longreq),
    "dblreq.dat": _parses(_dblreq),
    "semiuri.dat": _parses(_semiuri),
    "transports.dat": _parses(_transports),
    "mpart01.dat": _parses(_mpart01),
    "unreason.dat": _parses(_unreason),
    "noreason.dat": _parses(_noreason),
    # §3.1.2 invalid
    "badinv01.dat": _fails(),
    "clerr.dat": _fails(),
    "ncl.dat": _fails(FramingError),
    "scalar02.dat": _fails(),
    "scalarlg.dat": _fails(answered=False),
    "quotbal.dat": _fails(),
    "ltgtruri.dat": _fails(),
    "lwsruri.dat": _fails(),
    "lwsstart.dat": _fails(),
    "trws.dat": _fails(),
    "escruri.dat": _fails(),
    "baddate.dat": _parses(),
    "regbadct.dat": _parses(_regbadct),
    "badaspec.dat": _fails(),
    "baddn.dat": _fails(),
    "badvers.dat": _fails(VersionNotSupported, 505),
    "mismatch01.dat": _fails(),
    "mismatch02.dat": _fails(),
    "bigcode.dat": _fails(answered=False),
    # §3.2, §3.3: parse, the layers above decide
    "badbranch.dat": _parses(_badbranch),
    "insuf.dat": _fails(answered=False),
    "unkscm.dat": _parses(_unkscm),
    "novelsc.dat": _parses(_novelsc),
    "unksm2.dat": _parses(_unksm2),
    "bext01.dat": _parses(_bext01),
    "invut.dat": _parses(_invut),
    "regaut01.dat": _parses(_regaut01),
    "multi01.dat": _fails(),
    "mcl01.dat": _fails(FramingError),
    "bcast.dat": _parses(_bcast),
    "zeromf.dat": _parses(_zeromf),
    "cparam01.dat": _parses(_cparam01),
    "cparam02.dat": _parses(_cparam02),
    "regescrt.dat": _parses(_regescrt),
    "sdp01.dat": _parses(),
    # §3.4
    "inv2543.dat": _parses(_inv2543),
    # not an RFC case
    "test.dat": _fails(answered=False),
}

# On a stream, what the framer does with the file written one byte at a time:
# the number of frames it cuts, and whether it then declares the stream broken.
STREAM: dict[str, tuple[int, bool]] = {
    "dblreq.dat": (2, True),  # REGISTER, then the INVITE, then SDP lines as garbage
    "inv2543.dat": (0, True),  # no Content-Length on a stream
    "ncl.dat": (0, True),
    "mcl01.dat": (0, True),
    "test.dat": (0, True),  # no SIP-Version in the first line
    "clerr.dat": (0, False),  # waits for 9999 octets (the edge times out)
    "baddn.dat": (0, False),  # waits for the empty line
}


@needs_rfc4475
def test_table_covers_every_file() -> None:
    assert set(TORTURE) == {p.name for p in RFC4475.glob("*.dat")}


def _read(name: str) -> bytes:
    return (RFC4475 / name).read_bytes()


@needs_rfc4475
@pytest.mark.parametrize("name", sorted(TORTURE))
def test_datagram_verdict(name: str) -> None:
    case = TORTURE[name]
    data = _read(name)
    if case.error is None:
        message = parse_message(data)
        if case.check is not None:
            case.check(message)
        return
    with pytest.raises(case.error) as info:
        parse_message(data)
    assert info.value.status_hint == case.status_hint
    reply = error_response(data, info.value, to_tag="t1")
    if case.answered:
        assert reply is not None and reply.status == case.status_hint
        # The reply copies what it could read (malformed values included) and
        # has a To tag, added by us or already there.
        assert "tag=" in (reply.get("To") or "")
        assert reply.get("Call-ID") is not None and reply.get_all("Via")
    else:
        assert reply is None


@needs_rfc4475
def test_baddn_with_its_empty_line_is_a_bad_display_name() -> None:
    data = _read("baddn.dat")
    assert len(data) == 331
    with pytest.raises(ParseError, match="display name"):
        parse_message(data + b"\r\n")


@needs_rfc4475
def test_valid_messages_survive_serialize_and_parse_again() -> None:
    for name, case in TORTURE.items():
        if case.error is not None:
            continue
        first = parse_message(_read(name))
        again = parse_message(first.serialize())

        def without_length(m: Request | Response) -> list[tuple[str, str]]:
            return [h for h in m.headers if h[0] != "Content-Length"]

        assert without_length(again) == without_length(first), name
        assert again.body == first.body, name
        assert again.get("Content-Length") == str(len(first.body)), name


@needs_rfc4475
@pytest.mark.parametrize("name", sorted(TORTURE))
def test_stream_one_byte_at_a_time(name: str) -> None:
    data = _read(name)
    framer = StreamFramer()
    frames: list[bytes] = []
    broken = False
    try:
        for i in range(len(data)):
            framer.feed(data[i : i + 1])
            while (frame := framer.next_frame()) is not None:
                frames.append(frame)
    except FramingError:
        broken = True
    expected_frames, expected_broken = STREAM.get(name, (1, False))
    assert (len(frames), broken) == (expected_frames, expected_broken)
    if (expected_frames, expected_broken) == (1, False):
        # One whole frame: exactly the file, and the same verdict as a datagram.
        assert frames == [data]
        assert framer.buffered == 0
        case = TORTURE[name]
        if case.error is None:
            parse_message(frames[0])
        else:
            with pytest.raises(case.error):
                parse_message(frames[0])


# --- PROTOS c07-sip -------------------------------------------------------------------

_PLACEHOLDERS = {
    b"<To>": b"receiver@192.0.2.2",
    b"<From>": b"sender@192.0.2.1",
    b"<From-Address>": b"192.0.2.1",
    b"<From-IP>": b"192.0.2.1",
    b"<Local-Port>": b"5060",
    b"<Branch-ID>": b"1",
    b"<Call-ID>": b"protos1",
    b"<CSeq>": b"1",
    b"<Teardown-Method>": b"CANCEL",
}


def _protos_messages(raw: bytes) -> list[bytes]:
    """Split a case file into its messages (``<len> <bytes>`` twice) and fill them in."""
    out = []
    pos = 0
    while pos < len(raw):
        space = raw.index(b" ", pos)
        length = int(raw[pos:space])
        message = raw[space + 1 : space + 1 + length]
        pos = space + 1 + length
        for key, value in _PLACEHOLDERS.items():
            message = message.replace(key, value)
        head, sep, body = message.partition(b"\r\n\r\n")
        message = head.replace(b"<Content-Length>", str(len(body)).encode()) + sep + body
        out.append(message)
    return out


@needs_protos
def test_protos_case_0_is_a_valid_invite() -> None:
    invite, cancel = _protos_messages((PROTOS / "0000000").read_bytes())
    message = parse_message(invite)
    assert isinstance(message, Request) and message.method == "INVITE"
    assert message.from_tag == "0" and message.cseq.seq == 1
    assert message.branch == "z9hG4bK000001"
    assert message.media_type == "application/sdp" and message.body.startswith(b"v=0")
    teardown = parse_message(cancel)
    assert isinstance(teardown, Request) and teardown.method == "CANCEL"


@needs_protos
def test_protos_every_case_parses_or_raises_a_named_error() -> None:
    cases = sorted(PROTOS.iterdir())
    assert len(cases) == 4527
    outcomes = {"parsed": 0, "rejected": 0}
    started = time.perf_counter()
    for path in cases:
        for message in _protos_messages(path.read_bytes()):
            try:
                parse_message(message)
            except SipError:
                outcomes["rejected"] += 1
            else:
                outcomes["parsed"] += 1
            # Any other exception escapes and fails the test.
    elapsed = time.perf_counter() - started
    assert outcomes["parsed"] > 4527  # every teardown and most INVITEs
    assert outcomes["rejected"] > 0
    assert elapsed < 10.0, f"{elapsed:.1f} s for the PROTOS suite"

"""Header-field grammar of RFC 3261 §7.3, §20 and §25: names, lists, params, Via, CSeq.

Rules of this file:

1. Header values are kept as text exactly as received (after unfolding, §7.3.1);
   a header is parsed into a typed value only when someone asks for it. An
   unknown header is never parsed at all: its value passes through verbatim.
2. Names compare case-insensitively (§7.3.1) and compact forms (§7.3.3) mean the
   same header as their long names; ``canonical_name`` folds both to the long
   name, and keeps an unknown name exactly as it was written.
3. Parameter names compare case-insensitively; they are stored as written so
   that serialising a parsed value gives back the same text.
4. Everything here raises ``ParseError`` on bad input and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TypeAlias

from dialer.sip.errors import LocalProtocolError, ParseError
from dialer.sip.slot_init import slot_init

__all__ = [
    "CANONICAL_NAMES",
    "COMPACT_FORMS",
    "MULTI_VALUED",
    "SINGLE_VALUED",
    "CSeq",
    "Header",
    "Params",
    "Via",
    "canonical_name",
    "end_of_quoted",
    "format_params",
    "get_param",
    "has_param",
    "is_token",
    "parse_hostport",
    "parse_params",
    "parse_seq_number",
    "quote",
    "set_param",
    "split_values",
    "unquote",
]

#: One header field as carried by a message: (name, value), value unfolded.
Header: TypeAlias = tuple[str, str]

#: Parameters in the order written: (name, value), value None for a bare flag
#: such as ``;lr`` or ``;rport``. Quoted values keep their quotes.
Params: TypeAlias = tuple[tuple[str, str | None], ...]

# --- grammar, compiled once ---------------------------------------------------

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN_RE = re.compile(rf"[{_TOKEN_CHARS}]+")
# A generic-param value: token / host / quoted-string (§25.1). A host is either
# made of token characters already or is an IPv6 reference.
_PARAM_VALUE_RE = re.compile(rf'[{_TOKEN_CHARS}]+|\[[0-9A-Fa-f:.]+\]|"(?:[^"\\]|\\.)*"', re.DOTALL)
# sent-protocol = protocol-name SLASH protocol-version SLASH transport, then
# LWS and sent-by; SLASH and COLON allow LWS on both sides (§25.1).
_VIA_RE = re.compile(
    rf"[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)"
    r"[ \t]+([A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_.])?|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?:[ \t]*:[ \t]*([0-9]{1,5}))?[ \t]*(;.*)?",
    re.DOTALL,
)
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_.])?")
_IPV6_RE = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]")
_DIGITS_RE = re.compile(r"[0-9]+")
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
_NEEDS_ESCAPE_RE = re.compile(r'(["\\])')
_LWS = " \t"

# --- names ----------------------------------------------------------------------

#: Compact forms (RFC 3261 §7.3.3 and the extensions that registered one).
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",  # RFC 3841
    "b": "Referred-By",  # RFC 3892
    "c": "Content-Type",
    "d": "Request-Disposition",  # RFC 3841
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",  # RFC 3841
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",  # RFC 4474
    "o": "Event",  # RFC 6665
    "r": "Refer-To",  # RFC 3515
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",  # RFC 6665
    "v": "Via",
    "x": "Session-Expires",  # RFC 4028
    "y": "Identity",  # RFC 8224
}

_KNOWN_NAMES = (
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Error-Info",
    "Event",
    "Expires",
    "From",
    "Identity",
    "Identity-Info",
    "In-Reply-To",
    "Max-Forwards",
    "Min-Expires",
    "Min-SE",
    "MIME-Version",
    "Organization",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Path",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Reply-To",
    "Request-Disposition",
    "Require",
    "Retry-After",
    "Route",
    "RSeq",
    "Server",
    "Service-Route",
    "Session-Expires",
    "Subject",
    "Subscription-State",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
)

#: Lower-cased name (long or compact) -> canonical long name. Built once.
CANONICAL_NAMES: dict[str, str] = {name.lower(): name for name in _KNOWN_NAMES}
CANONICAL_NAMES.update(COMPACT_FORMS)

#: Headers whose value is a comma-separated list (§7.3.1): several values may
#: share one header line, and repeating the header is the same as joining them.
#: The authentication headers are deliberately absent: their commas separate
#: auth-params, not values.
MULTI_VALUED: frozenset[str] = frozenset(
    {
        "Accept",
        "Accept-Contact",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Call-Info",
        "Contact",
        "Content-Encoding",
        "Content-Language",
        "Error-Info",
        "In-Reply-To",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Path",
        "Privacy",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Reject-Contact",
        "Require",
        "Route",
        "Service-Route",
        "Supported",
        "Unsupported",
        "Via",
        "Warning",
    }
)

#: Headers that may appear at most once (§8.1.1, §20): a second copy makes the
#: message malformed, since "last one wins" and "first one wins" parsers would
#: then disagree about what the message means.
SINGLE_VALUED: frozenset[str] = frozenset(
    {"Call-ID", "Content-Length", "Content-Type", "CSeq", "From", "Max-Forwards", "To"}
)


def canonical_name(name: str) -> str:
    """Fold a header name to its canonical long form; unknown names are kept as given."""
    return CANONICAL_NAMES.get(name.lower(), name)


def is_token(text: str) -> bool:
    """True if ``text`` is a non-empty RFC 3261 token."""
    return _TOKEN_RE.fullmatch(text) is not None


# --- quoted strings ----------------------------------------------------------------


def quote(text: str) -> str:
    """Render ``text`` as a quoted-string, escaping ``"`` and ``\\``."""
    return '"' + _NEEDS_ESCAPE_RE.sub(r"\\\1", text) + '"'


def unquote(text: str) -> str:
    """Strip the quotes of a quoted-string and resolve its quoted-pairs.

    Text that is not quoted is returned unchanged, so callers can unquote a
    parameter value that may be either a token or a quoted-string.
    """
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        return _QUOTED_PAIR_RE.sub(r"\1", inner) if "\\" in inner else inner
    return text


def end_of_quoted(text: str, start: int) -> int:
    """Index just past the quoted-string opening at ``text[start]``; ParseError if unterminated."""
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
        elif ch == '"':
            return i + 1
        else:
            i += 1
    raise ParseError("unterminated quoted string")


# --- lists -----------------------------------------------------------------------


def split_values(value: str) -> list[str]:
    """Split a header value on the commas that separate list elements.

    Commas inside quoted strings and inside ``<...>`` do not count (a URI in
    angle brackets may legally contain one). Elements are stripped of LWS;
    empty elements are kept so that callers can reject them where the grammar
    forbids them.
    """
    if '"' not in value and "<" not in value:
        return [part.strip(_LWS) for part in value.split(",")]
    parts: list[str] = []
    start = 0
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == '"':
            i = end_of_quoted(value, i)
            continue
        if ch == "<":
            close = value.find(">", i)
            if close < 0:
                raise ParseError("unterminated '<' in header value")
            i = close + 1
            continue
        if ch == ",":
            parts.append(value[start:i].strip(_LWS))
            start = i + 1
        i += 1
    parts.append(value[start:].strip(_LWS))
    return parts


def _split_semicolons(text: str) -> list[str]:
    if '"' not in text:
        return text.split(";")
    parts: list[str] = []
    start = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            i = end_of_quoted(text, i)
            continue
        if ch == ";":
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


# --- parameters ------------------------------------------------------------------


def parse_params(text: str) -> Params:
    """Parse ``*( SEMI generic-param )``: text that is empty or starts with ``;``.

    LWS is allowed around ``;`` and ``=`` (§25.1 SEMI and EQUAL). A parameter
    with an empty name (``;;``) or an empty value (``;a=``) is malformed.
    """
    text = text.strip(_LWS)
    if not text:
        return ()
    if text[0] != ";":
        raise ParseError(f"expected ';' before parameters: {text[:40]!r}")
    out: list[tuple[str, str | None]] = []
    for piece in _split_semicolons(text[1:]):
        name, eq, value = piece.partition("=")
        name = name.strip(_LWS)
        if _TOKEN_RE.fullmatch(name) is None:
            raise ParseError(f"bad parameter name: {name[:40]!r}")
        if eq:
            value = value.strip(_LWS)
            if _PARAM_VALUE_RE.fullmatch(value) is None:
                raise ParseError(f"bad value for parameter {name!r}")
            out.append((name, value))
        else:
            out.append((name, None))
    return tuple(out)


def format_params(params: Params) -> str:
    """Serialise params as ``;name=value;flag``."""
    # Runs for every URI, name-addr and Via we write: most have no params, and a
    # list comprehension joins faster than a generator.
    if not params:
        return ""
    return "".join([f";{name}" if value is None else f";{name}={value}" for name, value in params])


def get_param(params: Params, name: str) -> str | None:
    """Value of the first parameter called ``name`` (case-insensitive); None if absent or bare."""
    lname = name.lower()
    for key, value in params:
        if key == lname or key.lower() == lname:
            return value
    return None


def has_param(params: Params, name: str) -> bool:
    """True if a parameter called ``name`` is present, with or without a value."""
    lname = name.lower()
    return any(key == lname or key.lower() == lname for key, _ in params)


def set_param(params: Params, name: str, value: str | None) -> Params:
    """A copy of ``params`` with ``name`` set to ``value`` (replaced in place, else appended)."""
    lname = name.lower()
    out = []
    found = False
    for key, old in params:
        if key.lower() == lname:
            if not found:
                out.append((key, value))
                found = True
            continue
        out.append((key, old))
    if not found:
        out.append((name, value))
    return tuple(out)


# --- hosts and numbers -------------------------------------------------------------


def parse_hostport(text: str) -> tuple[str, int | None]:
    """Parse ``host [":" port]`` where host is a name, IPv4 or ``[IPv6]``."""
    if text.startswith("["):
        close = text.find("]")
        host = text[: close + 1]
        if close < 0 or _IPV6_RE.fullmatch(host) is None:
            raise ParseError(f"bad IPv6 reference: {text[:60]!r}")
        rest = text[close + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise ParseError(f"junk after IPv6 reference: {text[:60]!r}")
        return host, _parse_port(rest[1:])
    host, colon, port_text = text.partition(":")
    if _HOSTNAME_RE.fullmatch(host) is None:
        raise ParseError(f"bad host: {text[:60]!r}")
    return host, (_parse_port(port_text) if colon else None)


def _parse_port(text: str) -> int:
    if len(text) > 5 or _DIGITS_RE.fullmatch(text) is None:
        raise ParseError(f"bad port: {text[:20]!r}")
    port = int(text)
    if port > 65535:
        raise ParseError(f"port out of range: {port}")
    return port


def parse_seq_number(text: str, limit: int = 2**32 - 1) -> int:
    """Parse a bounded decimal (leading zeros allowed, §25.1 ``1*DIGIT``).

    Python ints never overflow, so the range is checked here explicitly: a
    value past ``limit`` is malformed (RFC 4475 §3.1.2.4), not a big number.
    """
    text = text.strip(_LWS)
    if _DIGITS_RE.fullmatch(text) is None:
        raise ParseError(f"not a number: {text[:20]!r}")
    stripped = text.lstrip("0") or "0"
    if len(stripped) > len(str(limit)):
        raise ParseError(f"number out of range: {text[:20]!r}")
    value = int(stripped)
    if value > limit:
        raise ParseError(f"number out of range: {value}")
    return value


# --- typed headers -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CSeq:
    """CSeq (§20.16): a sequence number and the method it numbers."""

    seq: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        """Parse a CSeq value such as ``"0009 INVITE"`` (LWS between the two is free)."""
        parts = text.split()
        if len(parts) != 2:
            raise ParseError(f"bad CSeq: {text[:60]!r}")
        if _TOKEN_RE.fullmatch(parts[1]) is None:
            raise ParseError(f"bad CSeq method: {parts[1][:40]!r}")
        # §8.1.1.5: the number MUST be expressible as a 32-bit unsigned integer.
        return cls(parse_seq_number(parts[0]), parts[1])

    def serialize(self) -> str:
        """The header value, e.g. ``"1 INVITE"``."""
        return f"{self.seq} {self.method}"


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value (§20.42): sent-protocol, sent-by and via-params.

    ``protocol`` is ``"SIP/2.0"`` in every message we accept; ``transport`` is
    kept as written (an unknown transport is not an error, RFC 4475 §3.1.1.10).
    """

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = "SIP/2.0"

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one Via value (not a comma list: see ``split_values``)."""
        m = _VIA_RE.fullmatch(text)
        if m is None:
            raise ParseError(f"bad Via: {text[:60]!r}")
        name, version, transport, host, port_text, params_text = m.groups()
        port = _parse_port(port_text) if port_text is not None else None
        params = parse_params(params_text) if params_text else ()
        rport = get_param(params, "rport")
        if rport is not None and _DIGITS_RE.fullmatch(rport) is None:
            raise ParseError("bad Via rport")
        return cls(transport, host, port, params, f"{name}/{version}")

    def serialize(self) -> str:
        """The Via value, e.g. ``"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1"``."""
        sent_by = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"{self.protocol}/{self.transport} {sent_by}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        """The branch parameter (the transaction id when it starts ``z9hG4bK``)."""
        return get_param(self.params, "branch")

    @property
    def received(self) -> str | None:
        """The received parameter a server added (§18.2.1)."""
        return get_param(self.params, "received")

    @property
    def rport(self) -> int | None:
        """The rport value a server filled in (RFC 3581), else None."""
        value = get_param(self.params, "rport")
        return int(value) if value is not None else None

    @property
    def has_rport(self) -> bool:
        """True if rport is present, with or without a value (RFC 3581 §3)."""
        return has_param(self.params, "rport")

    def with_param(self, name: str, value: str | None) -> Via:
        """A copy with parameter ``name`` set (e.g. ``received`` on arrival)."""
        if _TOKEN_RE.fullmatch(name) is None:
            raise LocalProtocolError(f"bad parameter name: {name!r}")
        return replace(self, params=set_param(self.params, name, value))


# Called, not a decorator: mypyc builds a class under a decorator it does not know
# as a plain Python class (slot_init.py, rule 4).
slot_init(CSeq)
slot_init(Via)

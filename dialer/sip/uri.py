"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966) and name-addr values (§20.10).

Rules of this file:

1. Every text field holds what is on the wire, %-escapes included. Parsing and
   serialising a URI gives back the same text (the scheme is lower-cased);
   ``unescape`` reads a field, ``escape`` prepares arbitrary text for one.
2. Comparison is a separate question from equality of the dataclasses:
   ``uris_equivalent`` implements the §19.1.4 rules (case-insensitive host and
   parameter names, escapes resolved, some parameters compared only when both
   sides carry them). Dataclass ``==`` compares the text as written.
3. A URI of a scheme we do not know is not an error: it parses to an
   ``AbsoluteUri`` that keeps its text opaque (RFC 4475 §3.3.2). Deciding
   whether to answer 416 belongs to whoever routes the request.
4. Everything here raises ``ParseError`` on bad input and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TypeAlias
from urllib.parse import quote_from_bytes, unquote_to_bytes

from dialer.sip.errors import LocalProtocolError, ParseError
from dialer.sip.headers import (
    Params,
    end_of_quoted,
    format_params,
    get_param,
    has_param,
    parse_params,
    quote,
    set_param,
    unquote,
)
from dialer.sip.slot_init import slot_init

__all__ = [
    "AbsoluteUri",
    "NameAddr",
    "SipUri",
    "TelUri",
    "Uri",
    "escape",
    "ip_literal_address",
    "parse_name_addr",
    "parse_uri",
    "unescape",
    "uris_equivalent",
]

# §25.1: unreserved = alphanum / mark; mark = - _ . ! ~ * ' ( )
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED = r"%[0-9A-Fa-f]{2}"
# Character classes include "%"; a separate search then checks that every "%"
# starts a valid escape. Two simple scans are much faster in ``re`` than one
# alternation tried at every character.
_USER_CHARS = rf"[{_UNRESERVED}&=+$,;?/%]"
_PASSWORD_CHARS = rf"[{_UNRESERVED}&=+$,%]"
_PARAM_CHARS = rf"[{_UNRESERVED}\[\]/:&+$%]"
_HEADER_CHARS = rf"[{_UNRESERVED}\[\]/?:+$%]"
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PARAMCHAR_RE = re.compile(rf"{_PARAM_CHARS}+")
# The part of a sip/sips URI after the colon, in one pass. Every repetition is
# delimited by a character its own class excludes ("@", ":", ";", "&"), so the
# pattern cannot backtrack badly on hostile input.
_SIP_REST_RE = re.compile(
    rf"(?:(?P<user>{_USER_CHARS}+)(?::(?P<password>{_PASSWORD_CHARS}*))?@)?"
    r"(?P<host>[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_.])?|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
    rf"(?P<params>(?:;{_PARAM_CHARS}+(?:={_PARAM_CHARS}+)?)*)"
    rf"(?:\?(?P<headers>{_HEADER_CHARS}+={_HEADER_CHARS}*(?:&{_HEADER_CHARS}+={_HEADER_CHARS}*)*))?"
)
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# Opaque text of a URI of another scheme: printable, no LWS, no <>" (which
# would let it escape its angle brackets in a name-addr).
_OPAQUE_RE = re.compile(r"[!#-;=?-~\x80-\U0010ffff]+")
# RFC 3966: global numbers start with "+"; local numbers may use hex digits,
# "*" and "#"; visual separators are "-", "." and parentheses.
_TEL_GLOBAL_RE = re.compile(r"\+[0-9\-.()]+")
_TEL_LOCAL_RE = re.compile(r"[0-9A-Fa-f*#\-.()]+")
_TEL_DIGIT_RE = re.compile(r"[0-9A-Fa-f*#]")
# The usual name-addr: optional quoted or token display name, <URI>, params.
_NAME_ADDR_RE = re.compile(r'(?:"((?:[^"\\]|\\.)*)"[ \t]*|([^"<]*))<([^<>"]*)>(.*)', re.DOTALL)
_TOKEN_SEQ_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+(?:[ \t]+[A-Za-z0-9\-.!%*_+`'~]+)*")
# Characters that may stand unescaped in a user part; everything else is escaped.
_USER_SAFE = b"-_.!~*'()&=+$,;?/"
_LWS = " \t"


def unescape(text: str) -> str:
    """Resolve %HH escapes (once: ``%2541`` becomes ``%41``, RFC 4475 §3.1.1.3).

    Escaped octets are read as UTF-8; invalid sequences survive as surrogates,
    so nothing is lost and a NUL stays a NUL.
    """
    if "%" not in text:
        return text
    return unquote_to_bytes(text).decode("utf-8", "surrogateescape")


def escape(text: str, safe: bytes = _USER_SAFE) -> str:
    """Escape ``text`` for a URI component (by default a user part)."""
    return quote_from_bytes(text.encode("utf-8", "surrogateescape"), safe=safe)


@dataclass(frozen=True, slots=True)
class SipUri:
    """A ``sip:`` or ``sips:`` URI. Text fields are as on the wire (still escaped)."""

    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    scheme: str = "sip"
    # serialize(), written once: our own URIs (Contact, From, the trunk) go
    # into every request, and the fields never change.
    _text: str | None = field(default=None, init=False, repr=False, compare=False, hash=False)

    def serialize(self) -> str:
        """The URI text, e.g. ``"sip:alice@example.com:5060;transport=tcp"``."""
        text = self._text
        if text is None:
            text = self._write()
            object.__setattr__(self, "_text", text)
        return text

    def _write(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += (":", self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out += (":", str(self.port))
        if self.params:
            out.append(format_params(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{name}={value}" for name, value in self.headers))
        return "".join(out)

    def __str__(self) -> str:
        return self.serialize()

    def param(self, name: str) -> str | None:
        """A URI parameter's value (case-insensitive name); None if absent or bare."""
        return get_param(self.params, name)

    def has_param(self, name: str) -> bool:
        """True if the parameter is present (``lr`` has no value)."""
        return has_param(self.params, name)

    def with_param(self, name: str, value: str | None) -> SipUri:
        """A copy with parameter ``name`` set."""
        if _PARAMCHAR_RE.fullmatch(name) is None:
            raise LocalProtocolError(f"bad URI parameter name: {name!r}")
        return replace(self, params=set_param(self.params, name, value))

    @property
    def transport(self) -> str | None:
        """The transport parameter, lower-cased (values are case-insensitive)."""
        value = get_param(self.params, "transport")
        return value.lower() if value is not None else None

    @property
    def lr(self) -> bool:
        """True for a loose router (RFC 3261 §16.12)."""
        return has_param(self.params, "lr")

    @property
    def maddr(self) -> str | None:
        """The maddr parameter."""
        return get_param(self.params, "maddr")

    @property
    def secure(self) -> bool:
        """True for ``sips:``."""
        return self.scheme == "sips"


@dataclass(frozen=True, slots=True)
class TelUri:
    """A ``tel:`` URI (RFC 3966): a number and its parameters."""

    number: str
    params: Params = ()
    scheme: str = "tel"

    def serialize(self) -> str:
        """The URI text, e.g. ``"tel:+1-201-555-0123;ext=1234"``."""
        return f"tel:{self.number}{format_params(self.params)}"

    def __str__(self) -> str:  # an alias would not compile: mypyc needs a def
        return self.serialize()

    def param(self, name: str) -> str | None:
        """A parameter's value (case-insensitive name)."""
        return get_param(self.params, name)

    @property
    def is_global(self) -> bool:
        """True for a global number (``+`` and a country code)."""
        return self.number.startswith("+")


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """A URI of a scheme we do not interpret; the rest is kept opaque."""

    scheme: str
    opaque: str

    def serialize(self) -> str:
        """The URI text, exactly as parsed (scheme lower-cased)."""
        return f"{self.scheme}:{self.opaque}"

    def __str__(self) -> str:  # an alias would not compile: mypyc needs a def
        return self.serialize()


Uri: TypeAlias = SipUri | TelUri | AbsoluteUri


def parse_uri(text: str) -> Uri:
    """Parse a URI: ``SipUri`` for sip/sips, ``TelUri`` for tel, else ``AbsoluteUri``."""
    if text.startswith("sip:"):
        return _parse_sip("sip", text[4:])
    colon = text.find(":")
    scheme = text[:colon]
    if colon <= 0 or _SCHEME_RE.fullmatch(scheme) is None:
        raise ParseError(f"bad URI scheme: {text[:60]!r}")
    scheme = scheme.lower()
    rest = text[colon + 1 :]
    if scheme == "sip" or scheme == "sips":
        return _parse_sip(scheme, rest)
    if scheme == "tel":
        return _parse_tel(rest)
    if _OPAQUE_RE.fullmatch(rest) is None:
        raise ParseError(f"bad URI: {text[:60]!r}")
    return AbsoluteUri(scheme, rest)


def _parse_sip(scheme: str, rest: str) -> SipUri:
    # Neither the user part nor anything after the host may hold an unescaped
    # "@", so the first "@" ends the userinfo. The user part *may* hold ";",
    # "?" and "/" (RFC 4475 §3.1.1.9): the pattern takes the userinfo first.
    m = _SIP_REST_RE.fullmatch(rest)
    if m is None:
        raise ParseError(f"bad {scheme} URI: {rest[:60]!r}")
    if "%" in rest and _BAD_ESCAPE_RE.search(rest) is not None:
        raise ParseError(f"bad %-escape in URI: {rest[:60]!r}")
    user, password, host, port_text, params_text, headers_text = m.groups()
    port = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            raise ParseError(f"port out of range: {port}")
    params: Params = ()
    if params_text:
        params = tuple(
            (name, value if eq else None)
            for name, eq, value in (piece.partition("=") for piece in params_text[1:].split(";"))
        )
    headers: tuple[tuple[str, str], ...] = ()
    if headers_text:
        headers = tuple(
            (name, value)
            for name, _, value in (piece.partition("=") for piece in headers_text.split("&"))
        )
    return SipUri(host, user, password, port, params, headers, scheme)


def _parse_uri_params(text: str) -> Params:
    out: list[tuple[str, str | None]] = []
    for piece in text.split(";"):
        name, eq, value = piece.partition("=")
        if _PARAMCHAR_RE.fullmatch(name) is None:
            raise ParseError(f"bad URI parameter: {piece[:60]!r}")
        if eq:
            if _PARAMCHAR_RE.fullmatch(value) is None:
                raise ParseError(f"bad URI parameter value: {piece[:60]!r}")
            out.append((name, value))
        else:
            out.append((name, None))
    if "%" in text and _BAD_ESCAPE_RE.search(text) is not None:
        raise ParseError(f"bad %-escape in URI parameters: {text[:60]!r}")
    return tuple(out)


def _parse_tel(rest: str) -> TelUri:
    semi = rest.find(";")
    number = rest if semi < 0 else rest[:semi]
    pattern = _TEL_GLOBAL_RE if number.startswith("+") else _TEL_LOCAL_RE
    if pattern.fullmatch(number) is None or _TEL_DIGIT_RE.search(number) is None:
        raise ParseError(f"bad tel number: {number[:40]!r}")
    params = _parse_uri_params(rest[semi + 1 :]) if semi >= 0 else ()
    return TelUri(number, params)


# --- comparison (§19.1.4) ---------------------------------------------------------

# Parameters that must match when either URI carries them; any other parameter
# is compared only when both carry it.
_STRICT_PARAMS = ("user", "ttl", "method", "maddr", "transport")


def _param_map(params: Params) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name, value in params:
        out.setdefault(unescape(name).lower(), None if value is None else unescape(value).lower())
    return out


def uris_equivalent(a: Uri, b: Uri) -> bool:
    """Compare two URIs by the rules of RFC 3261 §19.1.4 (tel and others: by text)."""
    if not (isinstance(a, SipUri) and isinstance(b, SipUri)):
        if isinstance(a, TelUri) and isinstance(b, TelUri):
            return a.number == b.number and _param_map(a.params) == _param_map(b.params)
        return a == b
    if a.scheme != b.scheme or a.port != b.port:
        return False
    if a.host.lower() != b.host.lower():
        return False
    # userinfo is case-sensitive; escaped and unescaped forms are equal.
    if (a.user is None) != (b.user is None) or (a.password is None) != (b.password is None):
        return False
    if a.user is not None and b.user is not None and unescape(a.user) != unescape(b.user):
        return False
    if (
        a.password is not None
        and b.password is not None
        and unescape(a.password) != unescape(b.password)
    ):
        return False
    pa, pb = _param_map(a.params), _param_map(b.params)
    for name in _STRICT_PARAMS:
        if (name in pa or name in pb) and pa.get(name, "") != pb.get(name, ""):
            return False
    for name in pa.keys() & pb.keys():
        if pa[name] != pb[name]:
            return False
    ha = {unescape(n).lower(): unescape(v) for n, v in a.headers}
    hb = {unescape(n).lower(): unescape(v) for n, v in b.headers}
    return ha == hb


# --- name-addr ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A From/To/Contact/Route-style value: optional display name, URI, header params.

    ``display_name`` is the decoded text (quotes and quoted-pairs resolved);
    ``params`` are the header's own parameters (``tag``, ``expires``, ``q``),
    never the URI's.
    """

    uri: Uri
    display_name: str | None = None
    params: Params = ()

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        """Parse ``"Name" <uri>;params``, ``Name <uri>``, ``<uri>`` or a bare addr-spec."""
        return parse_name_addr(text)

    def serialize(self) -> str:
        """The value, always with angle brackets (always legal, §20.10)."""
        head = "" if self.display_name is None else quote(self.display_name) + " "
        return f"{head}<{self.uri.serialize()}>{format_params(self.params)}"

    def __str__(self) -> str:  # an alias would not compile: mypyc needs a def
        return self.serialize()

    @property
    def tag(self) -> str | None:
        """The tag parameter (§19.3), the dialog's half-identifier."""
        return get_param(self.params, "tag")

    def param(self, name: str) -> str | None:
        """A header parameter's value (case-insensitive name)."""
        return get_param(self.params, name)

    def with_tag(self, tag: str) -> NameAddr:
        """A copy carrying ``tag`` (replacing any tag already there)."""
        return self.with_param("tag", tag)

    def with_param(self, name: str, value: str | None) -> NameAddr:
        """A copy with header parameter ``name`` set."""
        return replace(self, params=set_param(self.params, name, value))


def parse_name_addr(text: str) -> NameAddr:
    """Parse one name-addr / addr-spec value (see ``NameAddr``)."""
    text = text.strip(_LWS)
    m = _NAME_ADDR_RE.fullmatch(text)
    if m is not None:
        quoted, bare, uri_text, params_text = m.groups()
        display: str | None = None
        if quoted is not None:
            display = unquote(f'"{quoted}"') if "\\" in quoted else quoted
        elif bare:
            bare = bare.rstrip(_LWS)
            if _TOKEN_SEQ_RE.fullmatch(bare) is None:
                raise ParseError(f"bad display name: {bare[:60]!r}")
            display = " ".join(bare.split())
        params = parse_params(params_text) if params_text else ()
        return NameAddr(parse_uri(uri_text), display, params)
    return _parse_name_addr_slowly(text)


def _parse_name_addr_slowly(text: str) -> NameAddr:
    # The forms the fast pattern leaves out: addr-spec without <>, and every
    # malformed value (which this path turns into a precise ParseError).
    display: str | None = None
    if text.startswith('"'):
        end = end_of_quoted(text, 0)
        display = unquote(text[:end])
        rest = text[end:].lstrip(_LWS)
        if not rest.startswith("<"):
            raise ParseError("quoted display name without <URI>")
    else:
        lt = text.find("<")
        if lt < 0:
            return _parse_addr_spec(text)
        raw = text[:lt].strip(_LWS)
        if raw:
            # An unquoted display name is *(token LWS): "Bell, Alexander" is not
            # one (RFC 4475 §3.1.2.15).
            if _TOKEN_SEQ_RE.fullmatch(raw) is None:
                raise ParseError(f"bad display name: {raw[:60]!r}")
            display = " ".join(raw.split())
        rest = text[lt:]
    gt = rest.find(">")
    if gt < 0:
        raise ParseError("unterminated <URI>")
    # No LWS inside the brackets: "< sip:a@b >" is malformed (RFC 4475 §3.1.2.14);
    # parse_uri rejects the spaces.
    uri = parse_uri(rest[1:gt])
    return NameAddr(uri, display, parse_params(rest[gt + 1 :]))


def _parse_addr_spec(text: str) -> NameAddr:
    # §20.10: without angle brackets, everything after the first ";" is a
    # header parameter, and the URI may not contain ",", "?" or ";".
    semi = text.find(";")
    uri_text = (text if semi < 0 else text[:semi]).rstrip(_LWS)
    if "?" in uri_text or "," in uri_text:
        raise ParseError(f"addr-spec needs <> around {uri_text[:60]!r}")
    uri = parse_uri(uri_text)
    return NameAddr(uri, None, parse_params(text[semi:]) if semi >= 0 else ())


def ip_literal_address(uri: Uri) -> tuple[str, int] | None:
    """An IP-literal SIP URI (``maddr`` first) as ``(host, port)``; None when it needs DNS."""
    if not isinstance(uri, SipUri):
        return None
    host = uri.maddr or uri.host
    bare = host[1:-1] if host.startswith("[") else host
    if not (bare.replace(".", "").isdigit() or ":" in bare):
        return None
    return (bare, uri.port or (5061 if uri.secure else 5060))


# Called, not a decorator: mypyc builds a class under a decorator it does not know
# as a plain Python class (slot_init.py, rule 4).
slot_init(SipUri)
slot_init(NameAddr)

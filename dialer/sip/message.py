"""SIP requests and responses (RFC 3261 §7) as frozen values, and how to answer one.

Rules of this file:

1. A message is its start line, an ordered tuple of ``(name, value)`` header
   fields and body bytes. Values are kept as received (unfolded); known names
   are canonical (``v`` arrives as ``Via``), unknown ones are kept verbatim.
2. Typed views of the headers routing needs (Call-ID, CSeq, From/To and their
   tags, Via, Max-Forwards, Content-Type, Contact, Route, ...) are computed on
   first use and remembered. A view of a malformed header raises
   ``ParseError``. On a message from ``parse_message`` the views the parser
   checked never raise: ``call_id``, ``cseq``, ``from_addr``/``from_tag``,
   ``to_addr``/``to_tag``, ``top_via``/``branch`` and ``max_forwards``. The
   others (``vias`` beyond the top one, ``contacts``, ``routes``, ...) may.
   A message built in code is ``prime``d with the values it was built from,
   so our own text is never parsed back; the views are only a cache, and
   ``forget_views`` drops them from a message kept long after use.
3. Messages never change. ``with_header``, ``replace_header`` and friends
   return new messages; the edge serialises the one it wants to send.
4. ``serialize`` always writes Content-Length from the body (§18.3 makes it
   mandatory on streams; we write it on datagrams too, §20.14 "SHOULD").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Self, TypeAlias

from dialer.sip.errors import BadExtension, LocalProtocolError, ParseError
from dialer.sip.headers import (
    MULTI_VALUED,
    CSeq,
    Header,
    Via,
    canonical_name,
    is_token,
    parse_seq_number,
    split_values,
)
from dialer.sip.slot_init import slot_init
from dialer.sip.uri import NameAddr, Uri, parse_name_addr

__all__ = [
    "REASON_PHRASES",
    "Message",
    "Request",
    "Response",
    "copy_response_headers",
    "make_response",
    "reason_phrase",
    "require_supported",
]

SIP_VERSION = "SIP/2.0"

#: Default reason phrases (RFC 3261 §21 and the extensions a dialer meets).
REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    430: "Flow Failed",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}

_CLASS_PHRASES = {1: "Trying", 2: "OK", 3: "Redirect", 4: "Client Error", 5: "Server Error"}


def reason_phrase(status: int) -> str:
    """The usual reason phrase for ``status`` (the class's when the code is unknown)."""
    return REASON_PHRASES.get(status) or _CLASS_PHRASES.get(status // 100, "Global Failure")


# Content-Length as written: its long and compact (§7.3.3) names, lower-cased.
_LENGTH_NAMES = frozenset({"content-length", "l"})
_LENGTH_NAME_SIZES = frozenset(len(name) for name in _LENGTH_NAMES)

# Cache keys. A message's typed views live in its private dict under these.
_INDEX = "index"

_Views: TypeAlias = dict[str, object]


def _build_index(headers: tuple[Header, ...]) -> dict[str, list[str]]:
    # Lower-cased canonical name -> raw values in order. The parser hands in
    # the one it built while reading; messages built in code get one here.
    index: dict[str, list[str]] = {}
    for name, value in headers:
        key = canonical_name(name).lower()
        if key in index:
            index[key].append(value)
        else:
            index[key] = [value]
    return index


class Message:
    """Behaviour shared by ``Request`` and ``Response`` (header look-ups and views)."""

    __slots__ = ()

    headers: tuple[Header, ...]
    body: bytes
    _views: _Views

    # --- raw look-ups ---------------------------------------------------------

    def _index(self) -> dict[str, list[str]]:
        index = self._views.get(_INDEX)
        if index is None:
            index = self._views[_INDEX] = _build_index(self.headers)
        return index  # type: ignore[return-value]

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (any case, compact or long), or None."""
        values = self._index().get(canonical_name(name).lower())
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order. Comma lists are split for list headers
        (§7.3.1: ``Via: a, b`` is the same as two Via lines)."""
        canonical = canonical_name(name)
        values = self._index().get(canonical.lower(), [])
        if canonical in MULTI_VALUED:
            return [part for value in values for part in split_values(value)]
        return list(values)

    def __contains__(self, name: str) -> bool:
        return canonical_name(name).lower() in self._index()

    def _single(self, key: str, name: str) -> str:
        values = self._index().get(key)
        if not values:
            raise ParseError(f"missing {name} header")
        if len(values) > 1:
            raise ParseError(f"more than one {name} header")
        return values[0]

    # --- typed views of what routing needs ---------------------------------------

    @property
    def call_id(self) -> str:
        """Call-ID (§20.8)."""
        return self._single("call-id", "Call-ID")

    @property
    def cseq(self) -> CSeq:
        """CSeq (§20.16): number and method."""
        value = self._views.get("cseq")
        if value is None:
            value = self._views["cseq"] = CSeq.parse(self._single("cseq", "CSeq"))
        return value  # type: ignore[return-value]

    @property
    def from_addr(self) -> NameAddr:
        """The From header as a name-addr (its ``tag`` is the caller's dialog half)."""
        value = self._views.get("from")
        if value is None:
            value = self._views["from"] = parse_name_addr(self._single("from", "From"))
        return value  # type: ignore[return-value]

    @property
    def to_addr(self) -> NameAddr:
        """The To header as a name-addr."""
        value = self._views.get("to")
        if value is None:
            value = self._views["to"] = parse_name_addr(self._single("to", "To"))
        return value  # type: ignore[return-value]

    @property
    def from_tag(self) -> str | None:
        """The From tag (None for an RFC 2543 peer that sent none)."""
        return self.from_addr.tag

    @property
    def to_tag(self) -> str | None:
        """The To tag (None outside a dialog)."""
        return self.to_addr.tag

    @property
    def top_via(self) -> Via:
        """The topmost Via value: where a response goes, and the transaction's branch."""
        value = self._views.get("top_via")
        if value is None:
            values = self._index().get("via")
            if not values:
                raise ParseError("missing Via header")
            first = values[0]
            if "," in first:
                first = split_values(first)[0]
            value = self._views["top_via"] = Via.parse(first)
        return value  # type: ignore[return-value]

    @property
    def vias(self) -> tuple[Via, ...]:
        """Every Via value, top first."""
        value = self._views.get("vias")
        if value is None:
            value = self._views["vias"] = tuple(Via.parse(v) for v in self.get_all("Via"))
        return value  # type: ignore[return-value]

    @property
    def branch(self) -> str | None:
        """The top Via's branch parameter."""
        return self.top_via.branch

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0-255, §20.22), None if absent."""
        value = self._views.get("max_forwards", -1)
        if value == -1:
            values = self._index().get("max-forwards")
            if not values:
                value = None
            else:
                value = parse_seq_number(self._single("max-forwards", "Max-Forwards"), 255)
            self._views["max_forwards"] = value
        return value  # type: ignore[return-value]

    @property
    def content_type(self) -> str | None:
        """The Content-Type value as written (media type and parameters), None if absent."""
        return self.get("Content-Type")

    @property
    def media_type(self) -> str | None:
        """The Content-Type's ``type/subtype``, lower-cased, without parameters."""
        value = self.get("Content-Type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower()

    @property
    def expires(self) -> int | None:
        """Expires in seconds, None if absent."""
        value = self.get("Expires")
        return None if value is None else parse_seq_number(value)

    @property
    def contacts(self) -> tuple[NameAddr, ...]:
        """Contact values (the ``*`` of a REGISTER is not a name-addr and raises)."""
        return self._name_addrs("contacts", "Contact")

    @property
    def record_routes(self) -> tuple[NameAddr, ...]:
        """Record-Route values, top first."""
        return self._name_addrs("record_routes", "Record-Route")

    @property
    def routes(self) -> tuple[NameAddr, ...]:
        """Route values, top first."""
        return self._name_addrs("routes", "Route")

    def _name_addrs(self, key: str, name: str) -> tuple[NameAddr, ...]:
        value = self._views.get(key)
        if value is None:
            value = self._views[key] = tuple(parse_name_addr(v) for v in self.get_all(name))
        return value  # type: ignore[return-value]

    @property
    def require(self) -> tuple[str, ...]:
        """Option tags from Require (§20.32)."""
        return self._tokens("Require")

    @property
    def proxy_require(self) -> tuple[str, ...]:
        """Option tags from Proxy-Require (§20.29)."""
        return self._tokens("Proxy-Require")

    @property
    def supported(self) -> tuple[str, ...]:
        """Option tags from Supported (§20.37)."""
        return self._tokens("Supported")

    @property
    def allow(self) -> tuple[str, ...]:
        """Methods from Allow (§20.5)."""
        return self._tokens("Allow")

    def _tokens(self, name: str) -> tuple[str, ...]:
        out = []
        for item in self.get_all(name):
            if not item:
                continue  # tolerate "a, ,b": nothing is lost
            if not is_token(item):
                raise ParseError(f"bad token in {name}: {item[:40]!r}")
            out.append(item)
        return tuple(out)

    # --- views known in advance ---------------------------------------------------

    def prime(
        self,
        *,
        top_via: Via | None = None,
        from_addr: NameAddr | None = None,
        to_addr: NameAddr | None = None,
        cseq: CSeq | None = None,
        contacts: tuple[NameAddr, ...] | None = None,
    ) -> Self:
        """Remember typed views the builder already holds; returns the message itself.

        For a message built in code from these very values (the first Via, From,
        To, CSeq and Contact header fields are their ``serialize()``), so that
        reading them back never parses our own text again. Whoever passes a value
        that does not match its header field gets that value from the view.
        """
        views = self._views
        if top_via is not None:
            views["top_via"] = top_via
        if from_addr is not None:
            views["from"] = from_addr
        if to_addr is not None:
            views["to"] = to_addr
        if cseq is not None:
            views["cseq"] = cseq
        if contacts is not None:
            views["contacts"] = contacts
        return self

    def forget_views(self) -> None:
        """Drop the remembered typed views; they are worked out again if asked for.

        For a message kept long after anyone reads it (a transaction waiting out
        Timer M or K): the views are most of what it holds, and every object
        kept is one more for the garbage collector to walk.
        """
        self._views.clear()

    # --- building new messages ----------------------------------------------------

    def with_header(self, name: str, value: str) -> Self:
        """A copy with ``name: value`` appended after the existing headers."""
        _check_header(name, value)
        return self._with_headers((*self.headers, (name, value)))

    def with_header_first(self, name: str, value: str) -> Self:
        """A copy with ``name: value`` placed before every other header (a new top Via)."""
        _check_header(name, value)
        return self._with_headers(((name, value), *self.headers))

    def without_header(self, name: str) -> Self:
        """A copy without any ``name`` header."""
        key = canonical_name(name).lower()
        kept = tuple(h for h in self.headers if canonical_name(h[0]).lower() != key)
        return self._with_headers(kept)

    def replace_header(self, name: str, value: str) -> Self:
        """A copy where ``name`` has exactly this one value, at the first one's place."""
        _check_header(name, value)
        key = canonical_name(name).lower()
        out: list[Header] = []
        placed = False
        for header in self.headers:
            if canonical_name(header[0]).lower() == key:
                if not placed:
                    out.append((name, value))
                    placed = True
                continue
            out.append(header)
        if not placed:
            out.append((name, value))
        return self._with_headers(tuple(out))

    def _with_headers(self, headers: tuple[Header, ...]) -> Self:
        """A copy holding ``headers`` instead (and no remembered views)."""
        raise NotImplementedError

    def _serialize_headers(self, out: list[str]) -> None:
        length_written = False
        for name, value in self.headers:
            # Only "l" and "Content-Length" (any case) name it: test the length
            # before folding the case of every header name.
            if len(name) in _LENGTH_NAME_SIZES and name.lower() in _LENGTH_NAMES:
                if not length_written:
                    out.append(f"Content-Length: {len(self.body)}\r\n")
                    length_written = True
                continue
            out.append(f"{name}: {value}\r\n")
        if not length_written:
            out.append(f"Content-Length: {len(self.body)}\r\n")
        out.append("\r\n")


def _check_header(name: str, value: str) -> None:
    # A header built in our own code must not smuggle a line break (it would
    # let a value start a new header) nor carry a name that is not a token.
    if not is_token(name):
        raise LocalProtocolError(f"bad header name: {name!r}")
    if "\r" in value or "\n" in value:
        raise LocalProtocolError(f"line break in {name} value")


@dataclass(frozen=True, slots=True)
class Request(Message):
    """A SIP request. ``uri`` is the Request-URI; ``method`` is case-sensitive (§7.1)."""

    method: str
    uri: Uri
    headers: tuple[Header, ...] = ()
    body: bytes = b""
    version: str = SIP_VERSION
    _views: _Views = field(default_factory=dict, init=False, repr=False, compare=False)

    def _with_headers(self, headers: tuple[Header, ...]) -> Request:
        return Request(self.method, self.uri, headers, self.body, self.version)

    def serialize(self) -> bytes:
        """The wire form, Content-Length computed from the body."""
        out = [f"{self.method} {self.uri.serialize()} {self.version}\r\n"]
        self._serialize_headers(out)
        return "".join(out).encode("utf-8", "surrogateescape") + self.body


@dataclass(frozen=True, slots=True)
class Response(Message):
    """A SIP response."""

    status: int
    reason: str
    headers: tuple[Header, ...] = ()
    body: bytes = b""
    version: str = SIP_VERSION
    _views: _Views = field(default_factory=dict, init=False, repr=False, compare=False)

    def _with_headers(self, headers: tuple[Header, ...]) -> Response:
        return Response(self.status, self.reason, headers, self.body, self.version)

    def serialize(self) -> bytes:
        """The wire form, Content-Length computed from the body."""
        out = [f"{self.version} {self.status} {self.reason}\r\n"]
        self._serialize_headers(out)
        return "".join(out).encode("utf-8", "surrogateescape") + self.body

    @property
    def is_provisional(self) -> bool:
        """1xx."""
        return self.status < 200

    @property
    def is_final(self) -> bool:
        """2xx-6xx."""
        return self.status >= 200


# --- answering a request ---------------------------------------------------------------

_COPIED = {"via", "from", "to", "call-id", "cseq"}


def _has_tag(to_value: str) -> bool:
    try:
        return parse_name_addr(to_value).tag is not None
    except ParseError:
        # An unparseable To is copied as it is; look for the tag as text.
        lowered = to_value.lower()
        return ";tag=" in lowered.replace(" ", "").replace("\t", "")


def copy_response_headers(
    request_headers: Iterable[Header], to_tag: str | None = None, *, timestamp: bool = False
) -> list[Header]:
    """The header fields a response copies from its request (RFC 3261 §8.2.6.2).

    Via (every value, in order), From, To, Call-ID and CSeq are copied exactly;
    ``to_tag`` is added to To unless the request's To already has a tag (then
    the request is in a dialog and the tag MUST stay as it is). ``timestamp``
    also copies Timestamp, which a 100 (Trying) carries back (§8.2.6.1).
    """
    out: list[Header] = []
    for name, value in request_headers:
        key = canonical_name(name).lower()
        if key in _COPIED or (timestamp and key == "timestamp"):
            if key == "to" and to_tag is not None and not _has_tag(value):
                value = f"{value};tag={to_tag}"
            out.append((canonical_name(name), value))
    return out


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[Header] = (),
    body: bytes = b"",
) -> Response:
    """Build a response to ``request`` (RFC 3261 §8.2.6).

    ``to_tag`` is required by §8.2.6.2 for every response but 100 that creates
    or lives in a dialog; it is only added when the request's To has no tag.
    Extra ``headers`` (Contact, Allow, Unsupported, ...) follow the copied ones.
    """
    if not 100 <= status <= 699:
        raise LocalProtocolError(f"status out of range: {status}")
    if request.method == "ACK":
        # §17.1.1.3 / §8.2.6: ACK is never answered.
        raise LocalProtocolError("an ACK is never answered")
    copied = copy_response_headers(request.headers, to_tag, timestamp=status == 100)
    extra = list(headers)
    for name, value in extra:
        _check_header(name, value)
    return Response(
        status=status,
        reason=reason if reason is not None else reason_phrase(status),
        headers=(*copied, *extra),
        body=body,
    )


def require_supported(request: Request, supported: Iterable[str]) -> None:
    """Raise ``BadExtension`` (420) if the request requires an option we lack (§8.2.2.3).

    Option tags are tokens, and tokens always compare case-insensitively (§7.3.1).
    """
    known = {tag.lower() for tag in supported}
    missing = tuple(tag for tag in request.require if tag.lower() not in known)
    if missing:
        raise BadExtension(missing)


# Called, not a decorator: mypyc builds a class under a decorator it does not know
# as a plain Python class (slot_init.py, rule 4).
slot_init(Request)
slot_init(Response)

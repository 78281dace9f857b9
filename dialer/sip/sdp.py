"""SDP: session descriptions (RFC 4566) and the offer/answer model (RFC 3264).

Pure: bytes in, dataclasses out, and back. No networking, no clock.

Rules of this file:

1. ``SessionDescription.parse`` is the only way in from the wire. It either returns a
   fully checked description or raises ``SdpError`` naming what is wrong; no other
   exception escapes it, whatever the bytes (a malformed 200 OK ends one call, never
   the process).
2. Parsing keeps what it does not interpret (``i=``, ``b=``, ``k=``, ``r=``, ``z=``
   lines, unknown attributes), in order, so a description that follows the line order of
   RFC 4566 §5 serializes back to the same bytes.
3. Offer/answer logic speaks in G.711 and telephone-event only: the codecs the media
   package can play. Anything else in a peer's offer is declined, never an error.
4. Directions are bit sets (``SEND`` | ``RECV``) seen from the side that wrote the
   description; ``_mirror`` turns the peer's view into ours.
5. Hot path (one offer and one answer per call): an offer is built from a cached
   template and kept as a description beside its bytes, so the answer is read
   against it without parsing our own offer back; a plain dotted quad never goes
   through ``ipaddress``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from dialer.sip.slot_init import slot_init

__all__ = [
    "DIRECTIONS",
    "STATIC_PAYLOAD_TYPES",
    "Attribute",
    "Codec",
    "Connection",
    "MediaAnswer",
    "MediaDescription",
    "Origin",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "Timing",
    "build_answer",
    "build_offer",
    "build_offer_description",
    "negotiate_answer",
    "negotiate_offer",
]


def _show(value: str) -> str:
    """A peer's text quoted for an error message, cut short: reasons end up in logs."""
    return repr(value if len(value) <= 40 else value[:37] + "...")


class SdpError(ValueError):
    """A session description is malformed, or an offer/answer cannot be agreed.

    ``str(error)`` is a short reason fit for a call disposition detail ("no common
    codec", "media port 0 (rejected)", "line 3: bad port 'x'"). ``status_hint`` is the
    SIP status a UAS would answer an offer with: 400 for a description it cannot parse,
    488 (Not Acceptable Here) for one it parses but cannot accept.
    """

    def __init__(self, reason: str, status_hint: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_hint = status_hint


# --- grammar (RFC 4566 §9), ASCII only: int() would take other scripts' digits ----------

_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_TOKEN_RE = re.compile(_TOKEN)
_DIGITS_RE = re.compile(r"[0-9]{1,20}")
_PORT_RE = re.compile(r"([0-9]{1,5})(?:/([0-9]{1,5}))?")
_RTPMAP_RE = re.compile(r"([0-9]{1,3}) (" + _TOKEN + r")/([0-9]{1,10})(?:/([0-9]{1,3}))?")
_FMTP_RE = re.compile(r"(" + _TOKEN + r")(?: (.*))?")
_PTIME_RE = re.compile(r"([0-9]{1,5})(?:\.[0-9]{1,3})?")
_FQDN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?")
_LINE_TYPE_RE = re.compile(r"[a-z]")
_IP4_CHARS_RE = re.compile(r"[0-9.]+")
_PROTO_RE = re.compile(r"[A-Za-z0-9\-_.]+(?:/[A-Za-z0-9\-_.]+)*")

_MAX_PAYLOAD_TYPE = 127
_MAX_CLOCK_RATE = 0xFFFFFFFF
_MAX_PTIME_MS = 10_000

# Line types of RFC 4566 §5 with their order rank: a serializer emits them in this order.
_SESSION_RANK = {c: i for i, c in enumerate("vosiuepcbtrzka")}
_MEDIA_RANK = {c: i for i, c in enumerate("micbka")}

SEND = 1
RECV = 2
DIRECTIONS: dict[str, int] = {
    "inactive": 0,
    "sendonly": SEND,
    "recvonly": RECV,
    "sendrecv": SEND | RECV,
}
_DIRECTION_NAMES = {bits: name for name, bits in DIRECTIONS.items()}

# RFC 3551 §6: static payload types usable without an rtpmap line.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int]] = {
    0: ("PCMU", 8000),
    3: ("GSM", 8000),
    4: ("G723", 8000),
    5: ("DVI4", 8000),
    6: ("DVI4", 16000),
    7: ("LPC", 8000),
    8: ("PCMA", 8000),
    9: ("G722", 8000),
    10: ("L16", 44100),
    11: ("L16", 44100),
    12: ("QCELP", 8000),
    13: ("CN", 8000),
    14: ("MPA", 90000),
    15: ("G728", 8000),
    16: ("DVI4", 11025),
    17: ("DVI4", 22050),
    18: ("G729", 8000),
}

# What we can offer and accept: the codecs media/ plays, by name.
_LOCAL_CODECS: dict[str, tuple[int, int]] = {"PCMU": (0, 8000), "PCMA": (8, 8000)}
_TELEPHONE_EVENT = "telephone-event"
# RFC 3551 §3: payload types 96-127 are dynamic, bound by an rtpmap.
_DYNAMIC_PT_MIN = 96
_TELEPHONE_EVENT_RATE = 8000
# RFC 4733 §7.1.1: events 0-15 are the DTMF digits, 16 is flash.
_TELEPHONE_EVENTS = "0-16"
_LOCAL_EVENTS = frozenset(range(17))
_DEFAULT_PTIME_MS = 20  # RFC 3551 §4.5: 20 ms is the default packetization for G.711
_UNSPECIFIED = frozenset({"0.0.0.0", "::"})


# --- the data model ----------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Origin:
    """The ``o=`` line: who made the description and its version (RFC 4566 §5.2)."""

    username: str
    session_id: int
    session_version: int
    net_type: str
    addr_type: str
    address: str

    def serialize(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.net_type} {self.addr_type} {self.address}"
        )


@dataclass(slots=True, frozen=True)
class Connection:
    """A ``c=`` line (RFC 4566 §5.7). ``address`` keeps any multicast ``/ttl`` suffix."""

    addr_type: str
    address: str
    net_type: str = "IN"

    @property
    def host(self) -> str:
        """The address without a multicast TTL or count suffix."""
        return self.address.split("/", 1)[0]

    def serialize(self) -> str:
        return f"{self.net_type} {self.addr_type} {self.address}"


@dataclass(slots=True, frozen=True)
class Timing:
    """A ``t=`` line: start and stop as NTP seconds; ``0 0`` means unbounded."""

    start: int = 0
    stop: int = 0


@dataclass(slots=True, frozen=True)
class Attribute:
    """An ``a=`` line: a flag (``value`` None) or ``name:value``."""

    name: str
    value: str | None = None

    def serialize(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass(slots=True, frozen=True)
class RtpMap:
    """One ``a=rtpmap`` mapping, or the implied one of a static payload type."""

    payload_type: int
    encoding_name: str
    clock_rate: int
    channels: int | None = None


@dataclass(slots=True, frozen=True)
class MediaDescription:
    """An ``m=`` section: the ``m=`` line fields, its ``c=``, attributes and other lines."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    port_count: int | None = None
    connection: Connection | None = None
    attributes: tuple[Attribute, ...] = ()
    # i=, b=, k= lines as (type letter, value), in the order they came.
    other_lines: tuple[tuple[str, str], ...] = ()
    # rtpmaps(), worked out once: every answer is read against the same offer.
    _rtpmaps: dict[int, RtpMap] | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    @property
    def is_rtp(self) -> bool:
        """True when formats are RTP payload type numbers (RTP/AVP and its profiles)."""
        return "RTP/" in self.proto.upper()

    def attribute_values(self, name: str) -> list[str | None]:
        """Values of every attribute called ``name`` (case-sensitive, RFC 4566 §5.13)."""
        return [a.value for a in self.attributes if a.name == name]

    def rtpmaps(self) -> dict[int, RtpMap]:
        """Payload type to codec, for the formats listed on the ``m=`` line.

        Static payload types without an ``a=rtpmap`` take their RFC 3551 meaning;
        dynamic ones without it are left out (nothing is known about them).
        """
        return dict(self._rtpmap_table())

    def _rtpmap_table(self) -> dict[int, RtpMap]:
        # Read-only for callers in this module; rtpmaps() hands out copies.
        cached = self._rtpmaps
        if cached is None:
            explicit: dict[int, RtpMap] = {}
            for attribute in self.attributes:
                if attribute.name == "rtpmap" and attribute.value is not None:
                    rtpmap = _parse_rtpmap(attribute.value)
                    explicit[rtpmap.payload_type] = rtpmap
            cached = _resolve_rtpmaps(self, explicit)
            # Computed from frozen fields only, so it can never go stale.
            object.__setattr__(self, "_rtpmaps", cached)
        return cached

    def fmtp(self, payload_type: int) -> str | None:
        """The ``a=fmtp`` parameters of one payload type, if any."""
        prefix = str(payload_type)
        for value in self.attribute_values("fmtp"):
            if value is not None:
                match = _FMTP_RE.fullmatch(value)
                if match is not None and match.group(1) == prefix:
                    return match.group(2) or ""
        return None

    def ptime_ms(self) -> int | None:
        """The ``a=ptime`` of this section, in milliseconds."""
        return _ptime_attribute(self.attributes, "ptime")

    def maxptime_ms(self) -> int | None:
        """The ``a=maxptime`` of this section, in milliseconds."""
        return _ptime_attribute(self.attributes, "maxptime")

    def direction(self) -> str | None:
        """The direction attribute set at this level, or None."""
        return _direction_of(self.attributes)


@dataclass(slots=True, frozen=True)
class SessionDescription:
    """A whole session description (RFC 4566 §5).

    Build one with the constructor (our own offers and answers) or from the wire with
    ``parse``; ``serialize`` gives the bytes to send (CRLF line ends).
    """

    origin: Origin
    session_name: str = "-"
    connection: Connection | None = None
    timings: tuple[Timing, ...] = (Timing(),)
    attributes: tuple[Attribute, ...] = ()
    media: tuple[MediaDescription, ...] = ()
    # i=, u=, e=, p=, b=, r=, z=, k= lines as (type letter, value), in order.
    other_lines: tuple[tuple[str, str], ...] = ()
    version: int = 0

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        """Parse a description; raise ``SdpError`` (only) if it is not valid SDP."""
        return _Parser(data).parse()

    def serialize(self) -> bytes:
        """The description as bytes, lines in RFC 4566 §5 order, CRLF-terminated."""
        lines = [f"v={self.version}", f"o={self.origin.serialize()}", f"s={self.session_name}"]
        # Letters without a rank (only possible in a hand-built description) go last.
        rank = {t: _SESSION_RANK.get(t, len(_SESSION_RANK)) for t, _ in self.other_lines}
        others = sorted(self.other_lines, key=lambda line: rank[line[0]])
        lines.extend(f"{t}={v}" for t, v in others if rank[t] < _SESSION_RANK["c"])
        if self.connection is not None:
            lines.append(f"c={self.connection.serialize()}")
        lines.extend(f"{t}={v}" for t, v in others if t == "b")
        lines.extend(f"t={t.start} {t.stop}" for t in self.timings)
        lines.extend(f"{t}={v}" for t, v in others if rank[t] > _SESSION_RANK["t"])
        lines.extend(f"a={a.serialize()}" for a in self.attributes)
        for m in self.media:
            port = f"{m.port}" if m.port_count is None else f"{m.port}/{m.port_count}"
            lines.append(" ".join((f"m={m.media}", port, m.proto, *m.formats)))
            media_others = sorted(m.other_lines, key=lambda line: _MEDIA_RANK.get(line[0], 9))
            lines.extend(f"{t}={v}" for t, v in media_others if t == "i")
            if m.connection is not None:
                lines.append(f"c={m.connection.serialize()}")
            lines.extend(f"{t}={v}" for t, v in media_others if t != "i")
            lines.extend(f"a={a.serialize()}" for a in m.attributes)
        lines.append("")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape")

    def direction(self) -> str | None:
        """The session-level direction attribute, or None (RFC 4566 §6: the default)."""
        return _direction_of(self.attributes)

    def media_connection(self, index: int) -> Connection | None:
        """The connection of media section ``index``: its own ``c=`` wins (RFC 4566 §5.7)."""
        return self.media[index].connection or self.connection

    def media_direction(self, index: int) -> str:
        """The direction of media section ``index``: media level, session level, sendrecv."""
        return self.media[index].direction() or self.direction() or "sendrecv"


def _resolve_rtpmaps(m: MediaDescription, explicit: dict[int, RtpMap]) -> dict[int, RtpMap]:
    result: dict[int, RtpMap] = {}
    if not m.is_rtp:
        return result
    for fmt in m.formats:
        pt = int(fmt)
        if pt in explicit:
            result[pt] = explicit[pt]
        elif pt in STATIC_PAYLOAD_TYPES:
            name, rate = STATIC_PAYLOAD_TYPES[pt]
            result[pt] = RtpMap(pt, name, rate)
    return result


# --- parsing -----------------------------------------------------------------------------


def _direction_of(attributes: Iterable[Attribute]) -> str | None:
    for attribute in attributes:
        if attribute.name in DIRECTIONS:
            return attribute.name
    return None


def _ptime_attribute(attributes: Iterable[Attribute], name: str) -> int | None:
    for attribute in attributes:
        if attribute.name == name and attribute.value is not None:
            return _parse_ptime(attribute.value)
    return None


def _parse_ptime(value: str) -> int:
    match = _PTIME_RE.fullmatch(value.strip(" "))
    if match is None or not 0 < int(match.group(1)) <= _MAX_PTIME_MS:
        raise SdpError(f"bad packet time {_show(value)}")
    return int(match.group(1))


def _parse_rtpmap(value: str) -> RtpMap:
    match = _RTPMAP_RE.fullmatch(value.rstrip(" "))
    if match is None:
        raise SdpError(f"bad rtpmap {_show(value)}")
    pt, name, rate, channels = match.groups()
    if int(pt) > _MAX_PAYLOAD_TYPE:
        raise SdpError(f"rtpmap payload type {pt} out of range")
    if not 0 < int(rate) <= _MAX_CLOCK_RATE:
        raise SdpError(f"rtpmap clock rate {rate} out of range")
    if channels is not None and int(channels) == 0:
        raise SdpError("rtpmap channel count 0")
    return RtpMap(int(pt), name, int(rate), None if channels is None else int(channels))


def _ipv4_first_octet(host: str) -> int | None:
    """The first octet of a plain dotted quad, None for anything else.

    The common case costs a split and four small ints instead of an ``ipaddress``
    object (a profile at 600 calls a second showed it at 7 %). It accepts exactly
    what ``ipaddress`` accepts as IPv4: 1-3 ASCII digits per part, at most 255,
    no leading zeros. Anything it refuses takes the full path.
    """
    parts = host.split(".")
    if len(parts) != 4:
        return None
    for part in parts:
        if not (0 < len(part) <= 3 and part.isdigit() and part.isascii()):
            return None
        if (part[0] == "0" and len(part) > 1) or int(part) > 255:
            return None
    return int(parts[0])


def _check_address(addr_type: str, address: str) -> None:
    host, _, suffix = address.partition("/")
    if suffix and not all(part.isdigit() and part.isascii() for part in suffix.split("/")):
        raise SdpError(f"bad connection address {_show(address)}")
    if addr_type == "IP4" and _ipv4_first_octet(host) is not None:
        return
    if ":" in host or _IP4_CHARS_RE.fullmatch(host):
        try:
            parsed = ipaddress.ip_address(host)
        except ValueError:
            raise SdpError(f"bad {addr_type} address {_show(host)}") from None
        if parsed.version != (6 if addr_type == "IP6" else 4):
            raise SdpError(f"address {_show(host)} is not {addr_type}")
    elif _FQDN_RE.fullmatch(host) is None:
        raise SdpError(f"bad connection address {_show(address)}")


@dataclass(slots=True)
class _PendingMedia:
    """An m= section while its lines are still coming."""

    where: str
    media: str
    port: int
    port_count: int | None
    proto: str
    formats: tuple[str, ...]
    connection: Connection | None = None
    attributes: list[Attribute] = field(default_factory=list)
    others: list[tuple[str, str]] = field(default_factory=list)
    rtpmaps: list[RtpMap] = field(default_factory=list)  # parsed once, in order


class _Parser:
    """One pass over the lines; holds the pieces until the description is complete."""

    def __init__(self, data: bytes | str) -> None:
        if isinstance(data, str):
            try:
                data = data.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise SdpError("not encodable as UTF-8") from None
        # RFC 4566 §5: text is UTF-8 unless a=charset says otherwise. Undecodable bytes
        # survive as surrogates so that serialize() gives them back unchanged.
        self.text = data.decode("utf-8", "surrogateescape")

    def parse(self) -> SessionDescription:
        lines = self._split()
        if not lines:
            raise SdpError("empty session description")
        if lines[0] != (1, "v", "0"):
            if lines[0][1] == "v":
                raise SdpError(f"unsupported SDP version {_show(lines[0][2])}")
            raise SdpError("missing v= line (must come first)")
        origin: Origin | None = None
        session_name: str | None = None
        connection: Connection | None = None
        timings: list[Timing] = []
        attributes: list[Attribute] = []
        others: list[tuple[str, str]] = []
        media: list[MediaDescription] = []
        current: _PendingMedia | None = None  # the m= section being read

        for number, kind, value in lines[1:]:
            where = f"line {number}"
            if kind == "m":
                if current is not None:
                    media.append(self._finish_media(current))
                current = self._parse_m(value, where)
            elif current is not None:
                self._media_line(current, number, kind, value)
            elif kind == "o":
                if origin is not None:
                    raise SdpError(f"{where}: second o= line")
                origin = self._parse_o(value, where)
            elif kind == "s":
                if session_name is not None:
                    raise SdpError(f"{where}: second s= line")
                session_name = value
            elif kind == "c":
                if connection is not None:
                    raise SdpError(f"{where}: second session-level c= line")
                connection = self._parse_c(value, where)
            elif kind == "t":
                timings.append(self._parse_t(value, where))
            elif kind == "a":
                attributes.append(self._parse_a(value, where, in_media=False))
            elif kind == "v":
                raise SdpError(f"{where}: second v= line")
            else:
                others.append((kind, value))
        if current is not None:
            media.append(self._finish_media(current))

        if origin is None:
            raise SdpError("missing o= line")
        if session_name is None:
            raise SdpError("missing s= line")
        _check_single_direction(attributes, "session level")
        # RFC 4566 §5.7: a c= line at session level, or one in every media description.
        if connection is None:
            for index, m in enumerate(media):
                if m.connection is None:
                    raise SdpError(f"missing c= line (session level or media {index + 1})")
        # t= is required by RFC 4566 §5.9 but means nothing to a unicast call: some
        # gateways leave it out, and a missing one is tolerated as "t=0 0".
        return SessionDescription(
            origin=origin,
            session_name=session_name,
            connection=connection,
            timings=tuple(timings) or (Timing(),),
            attributes=tuple(attributes),
            media=tuple(media),
            other_lines=tuple(others),
        )

    def _split(self) -> list[tuple[int, str, str]]:
        # RFC 4566 §5: lines end in CRLF, but parsers SHOULD accept a bare LF too.
        raw = self.text.split("\n")
        while raw and raw[-1] in ("", "\r"):
            raw.pop()  # blank lines after the last one: tolerated, many stacks add them
        result = []
        for number, line in enumerate(raw, start=1):
            line = line.removesuffix("\r")
            if not line:
                raise SdpError(f"line {number}: empty line")
            if "\x00" in line or "\r" in line:
                raise SdpError(f"line {number}: NUL or CR inside a line")
            kind, sep, value = line.partition("=")
            if not sep or _LINE_TYPE_RE.fullmatch(kind) is None:
                raise SdpError(f"line {number}: not a '<type>=<value>' line")
            if kind not in _SESSION_RANK and kind != "m":
                # RFC 4566 §5: a description with a type letter we do not understand
                # MUST be ignored as a whole.
                raise SdpError(f"line {number}: unknown line type {_show(kind)}")
            result.append((number, kind, value))
        return result

    @staticmethod
    def _parse_o(value: str, where: str) -> Origin:
        fields = value.split()
        if len(fields) != 6:
            raise SdpError(f"{where}: o= needs 6 fields, got {len(fields)}")
        username, session_id, session_version, net_type, addr_type, address = fields
        for name, number in (("session id", session_id), ("session version", session_version)):
            if _DIGITS_RE.fullmatch(number) is None:
                raise SdpError(f"{where}: o= {name} {_show(number)} is not a number")
        return Origin(username, int(session_id), int(session_version), net_type, addr_type, address)

    @staticmethod
    def _parse_c(value: str, where: str) -> Connection:
        fields = value.split()
        if len(fields) != 3:
            raise SdpError(f"{where}: c= needs 3 fields, got {len(fields)}")
        net_type, addr_type, address = fields
        if net_type != "IN":
            raise SdpError(f"{where}: unsupported network type {_show(net_type)}")
        if addr_type not in ("IP4", "IP6"):
            raise SdpError(f"{where}: unsupported address type {_show(addr_type)}")
        try:
            _check_address(addr_type, address)
        except SdpError as error:
            raise SdpError(f"{where}: {error.reason}") from None
        return Connection(addr_type, address, net_type)

    @staticmethod
    def _parse_t(value: str, where: str) -> Timing:
        fields = value.split()
        if len(fields) != 2 or not all(_DIGITS_RE.fullmatch(f) for f in fields):
            raise SdpError(f"{where}: bad t= line {_show(value)}")
        return Timing(int(fields[0]), int(fields[1]))

    @staticmethod
    def _parse_a(
        value: str, where: str, *, in_media: bool, rtpmaps: list[RtpMap] | None = None
    ) -> Attribute:
        name, sep, attribute_value = value.partition(":")
        name = name.rstrip(" ")
        if _TOKEN_RE.fullmatch(name) is None:
            raise SdpError(f"{where}: bad attribute name {_show(name)}")
        try:
            if name in DIRECTIONS and sep:
                raise SdpError(f"a={name} takes no value")
            if name in ("ptime", "maxptime"):
                if not sep:
                    raise SdpError(f"a={name} needs a value")
                _parse_ptime(attribute_value)
            if in_media and name == "rtpmap":
                rtpmap = _parse_rtpmap(attribute_value if sep else "")
                if rtpmaps is not None:
                    rtpmaps.append(rtpmap)
            if in_media and name == "fmtp" and _FMTP_RE.fullmatch(attribute_value) is None:
                raise SdpError(f"bad fmtp {_show(attribute_value)}")
        except SdpError as error:
            raise SdpError(f"{where}: {error.reason}") from None
        return Attribute(name, attribute_value if sep else None)

    @staticmethod
    def _parse_m(value: str, where: str) -> _PendingMedia:
        fields = value.split()
        if len(fields) < 3:
            raise SdpError(f"{where}: m= needs media, port, proto and formats")
        media, port_text, proto, *formats = fields
        if _TOKEN_RE.fullmatch(media) is None:
            raise SdpError(f"{where}: bad media type {_show(media)}")
        match = _PORT_RE.fullmatch(port_text)
        if match is None or int(match.group(1)) > 0xFFFF:
            raise SdpError(f"{where}: bad port {_show(port_text)}")
        port = int(match.group(1))
        port_count = None if match.group(2) is None else int(match.group(2))
        if port_count == 0:
            raise SdpError(f"{where}: port count 0")
        if _PROTO_RE.fullmatch(proto) is None:
            raise SdpError(f"{where}: bad transport protocol {_show(proto)}")
        # RFC 3264 §6: a rejected stream still lists formats, but some stacks send none.
        if not formats and port != 0:
            raise SdpError(f"{where}: m= line without formats")
        is_rtp = "RTP/" in proto.upper()
        for fmt in formats:
            if _TOKEN_RE.fullmatch(fmt) is None:
                raise SdpError(f"{where}: bad format {_show(fmt)}")
            if is_rtp and not (fmt.isdigit() and fmt.isascii()):
                raise SdpError(f"{where}: payload type {_show(fmt)} is not a number")
            if is_rtp and (len(fmt) > 3 or int(fmt) > _MAX_PAYLOAD_TYPE):
                raise SdpError(f"{where}: payload type {_show(fmt)} out of range")
        return _PendingMedia(where, media, port, port_count, proto, tuple(formats))

    def _media_line(self, current: _PendingMedia, number: int, kind: str, value: str) -> None:
        where = f"line {number}"
        if kind == "c":
            if current.connection is not None:
                raise SdpError(f"{where}: second c= line in a media description")
            current.connection = self._parse_c(value, where)
        elif kind == "a":
            attribute = self._parse_a(value, where, in_media=True, rtpmaps=current.rtpmaps)
            current.attributes.append(attribute)
        elif kind in _MEDIA_RANK:
            current.others.append((kind, value))
        else:
            raise SdpError(f"{where}: {kind}= line not allowed in a media description")

    @staticmethod
    def _finish_media(current: _PendingMedia) -> MediaDescription:
        attributes = current.attributes
        _check_single_direction(attributes, f"media at {current.where}")
        seen: dict[int, RtpMap] = {}
        for rtpmap in current.rtpmaps:  # parsed (and checked) as each a= line came
            previous = seen.setdefault(rtpmap.payload_type, rtpmap)
            if previous != rtpmap:
                raise SdpError(
                    f"media at {current.where}: conflicting rtpmap for payload type "
                    f"{rtpmap.payload_type}"
                )
        media = MediaDescription(
            media=current.media,
            port=current.port,
            proto=current.proto,
            formats=current.formats,
            port_count=current.port_count,
            connection=current.connection,
            attributes=tuple(attributes),
            other_lines=tuple(current.others),
        )
        # The mappings are known already: the answer is read without parsing them again.
        object.__setattr__(media, "_rtpmaps", _resolve_rtpmaps(media, seen))
        return media


def _check_single_direction(attributes: list[Attribute], where: str) -> None:
    names = {a.name for a in attributes if a.name in DIRECTIONS}
    if len(names) > 1:
        raise SdpError(f"{where}: conflicting direction attributes {sorted(names)}")


# --- offer/answer (RFC 3264) -------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Codec:
    """The audio codec agreed on: its name, payload type number and RTP clock rate."""

    name: str
    payload_type: int
    clock_rate: int


@dataclass(slots=True, frozen=True)
class MediaAnswer:
    """What the media layer needs from a completed offer/answer exchange.

    ``direction`` is the peer's direction attribute as the peer wrote it (its own
    point of view). ``send`` and ``receive`` are what *we* do: send RTP to
    ``remote_address:remote_port``, expect RTP from the peer. ``on_hold`` is true when the
    peer holds the call (a=sendonly or a=inactive, or the RFC 2543 style
    c=0.0.0.0). ``telephone_event_pt`` is the payload type to send RFC 4733 events with,
    None if the peer did not accept them.
    """

    codec: Codec
    remote_address: str
    remote_port: int
    ptime_ms: int
    direction: str
    send: bool
    receive: bool
    on_hold: bool
    telephone_event_pt: int | None = None
    maxptime_ms: int | None = None
    media_index: int = 0


def _coerce(description: SessionDescription | bytes | str) -> SessionDescription:
    if isinstance(description, SessionDescription):
        return description
    return SessionDescription.parse(description)


def _mirror(bits: int) -> int:
    """The peer's direction seen from our side: its send is our receive."""
    return ((bits & SEND) << 1) | ((bits & RECV) >> 1)


def _telephone_event_pt(m: MediaDescription) -> int | None:
    for pt, rtpmap in m._rtpmap_table().items():
        if (
            rtpmap.encoding_name.lower() == _TELEPHONE_EVENT
            and rtpmap.clock_rate == _TELEPHONE_EVENT_RATE
        ):
            return pt
    return None


def _audio_codecs(m: MediaDescription) -> list[Codec]:
    """The codecs of a media section that we can play, in the section's own order.

    A codec counts on its own static payload type or on a dynamic one
    (96-127, RFC 3551 §3); an rtpmap that gives another static type's number
    to it (``a=rtpmap:0 PCMA/8000``) contradicts RFC 3551 and is not guessed at.
    """
    codecs = []
    for pt, rtpmap in m._rtpmap_table().items():
        name = rtpmap.encoding_name.upper()
        local = _LOCAL_CODECS.get(name)
        channels_ok = rtpmap.channels in (None, 1)
        numbered_ok = local is not None and (pt == local[0] or _DYNAMIC_PT_MIN <= pt <= 127)
        if numbered_ok and local is not None and rtpmap.clock_rate == local[1] and channels_ok:
            codecs.append(Codec(name, pt, rtpmap.clock_rate))
    return codecs


def _remote_endpoint(sd: SessionDescription, index: int) -> tuple[str, bool]:
    """The peer's RTP address for a media section, and whether it is the hold address."""
    connection = sd.media_connection(index)
    if connection is None:  # parse() guarantees one; a hand-built description may not
        raise SdpError("missing c= line")
    host = connection.host
    first = _ipv4_first_octet(host)
    if first is not None:
        multicast = 224 <= first <= 239  # 224.0.0.0/4 (RFC 5771)
    else:
        try:
            multicast = ipaddress.ip_address(host).is_multicast
        except ValueError:
            raise SdpError(f"connection address {_show(host)} is not an IP address") from None
    if multicast:
        raise SdpError("multicast media is not supported", 488)
    return host, host in _UNSPECIFIED


def negotiate_answer(
    offer: SessionDescription | bytes | str, answer: SessionDescription | bytes | str
) -> MediaAnswer:
    """Read the peer's answer to our offer (RFC 3264 §7): codec, address, direction.

    The codec is the first one in the answer's ``m=`` line that we offered (same name
    and clock rate); the answer's own payload type number is the one to send with.
    Raise ``SdpError`` with a disposition-ready reason when the answer cannot carry the
    call: unparseable, no common codec, stream rejected with port 0, ...
    """
    ours = _coerce(offer)
    theirs = _coerce(answer)
    # RFC 3264 §6: the answer MUST have as many m= lines as the offer, in the same order.
    if len(theirs.media) != len(ours.media):
        raise SdpError(
            f"answer has {len(theirs.media)} media lines, offer had {len(ours.media)}", 488
        )
    for index, (offered, answered) in enumerate(zip(ours.media, theirs.media, strict=True)):
        if offered.port == 0 or offered.media != "audio" or not offered.is_rtp:
            continue
        if answered.media != offered.media or answered.proto.upper() != offered.proto.upper():
            raise SdpError(
                f"answer media {_show(answered.media + ' ' + answered.proto)} does not match", 488
            )
        if answered.port == 0:
            raise SdpError("media port 0 (rejected)", 488)
        offered_codecs = {(c.name, c.clock_rate) for c in _audio_codecs(offered)}
        common = [c for c in _audio_codecs(answered) if (c.name, c.clock_rate) in offered_codecs]
        if not common:
            raise SdpError("no common codec", 488)
        address, hold_address = _remote_endpoint(theirs, index)
        their_direction = theirs.media_direction(index)
        their_bits = DIRECTIONS[their_direction]
        our_bits = DIRECTIONS[ours.media_direction(index)]
        telephone_event = (
            _telephone_event_pt(answered) if _telephone_event_pt(offered) is not None else None
        )
        agreed = our_bits & _mirror(their_bits)
        if hold_address:
            agreed &= ~SEND  # RFC 3264 §8.4: never send to 0.0.0.0
        return MediaAnswer(
            codec=common[0],
            remote_address=address,
            remote_port=answered.port,
            ptime_ms=answered.ptime_ms() or _DEFAULT_PTIME_MS,
            maxptime_ms=answered.maxptime_ms(),
            direction=their_direction,
            send=bool(agreed & SEND),
            receive=bool(agreed & RECV),
            # Held: we were willing to send and the peer refuses to receive.
            on_hold=hold_address or bool(our_bits & SEND and not their_bits & RECV),
            telephone_event_pt=telephone_event,
            media_index=index,
        )
    raise SdpError("no audio stream in offer", 488)


def negotiate_offer(
    remote_offer: SessionDescription | bytes | str,
    *,
    codecs: Iterable[str] = ("PCMU", "PCMA"),
    current_codec: str | None = None,
    local_direction: str = "sendrecv",
) -> MediaAnswer:
    """Decide how to answer a peer's offer (a re-INVITE: hold, unhold, new address).

    Picks the first audio RTP stream holding a codec of ``codecs``; keeps
    ``current_codec`` (the one in use) when the offer still lists it, else takes the
    offerer's most preferred one we support. ``direction`` is the offer's attribute as
    written; ``send``/``receive`` are what we do once we answer. Raise ``SdpError``
    (status hint 488) when no stream is acceptable.
    """
    offer = _coerce(remote_offer)
    allowed = _check_codecs(codecs)
    if local_direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {_show(local_direction)}")
    index = _acceptable_stream(offer, allowed)
    if index is None:
        if any(m.port != 0 and m.media == "audio" for m in offer.media):
            raise SdpError("no common codec", 488)
        raise SdpError("no audio stream in offer", 488)
    m = offer.media[index]
    candidates = [c for c in _audio_codecs(m) if c.name in allowed]
    chosen = candidates[0]
    if current_codec is not None:
        chosen = next((c for c in candidates if c.name == current_codec.upper()), chosen)
    address, hold_address = _remote_endpoint(offer, index)
    their_direction = offer.media_direction(index)
    their_bits = DIRECTIONS[their_direction]
    if hold_address:
        # RFC 3264 §8.4: c=0.0.0.0 is an offerer that does not want media (RFC 2543
        # hold); answer as to a sendonly offer, and send nothing to that address.
        their_bits &= ~RECV
    agreed = _mirror(their_bits) & DIRECTIONS[local_direction]
    return MediaAnswer(
        codec=chosen,
        remote_address=address,
        remote_port=m.port,
        ptime_ms=m.ptime_ms() or _DEFAULT_PTIME_MS,
        maxptime_ms=m.maxptime_ms(),
        direction=their_direction,
        send=bool(agreed & SEND),
        receive=bool(agreed & RECV),
        # RFC 3264 §8.4: the offerer holds us when it stops receiving (sendonly, inactive).
        on_hold=hold_address or not their_bits & RECV,
        telephone_event_pt=_telephone_event_pt(m),
        media_index=index,
    )


def _common_events(offered: str | None) -> str:
    """The RFC 4733 events both sides support, from the offer's fmtp event list."""
    if offered is None:
        return "0-15"  # RFC 4733 §7.1.1: no fmtp means the DTMF digits 0-15
    events: set[int] = set()
    for part in offered.replace(" ", "").split(","):
        low, _, high = part.partition("-")
        if not (low.isdigit() and low.isascii()) or (
            high and not (high.isdigit() and high.isascii())
        ):
            return "0-15"
        if len(low) > 3 or len(high) > 3:
            return "0-15"
        events.update(range(int(low), int(high or low) + 1))
    common = sorted(events & _LOCAL_EVENTS)
    if not common:
        return "0-15"
    ranges: list[str] = []
    start = previous = common[0]
    for event in [*common[1:], -1]:
        if event != previous + 1:
            ranges.append(str(start) if start == previous else f"{start}-{previous}")
            start = event
        previous = event
    return ",".join(ranges)


def _check_codecs(codecs: Iterable[str]) -> list[str]:
    names = [c.upper() for c in codecs]
    unknown = [c for c in names if c not in _LOCAL_CODECS]
    if unknown or not names:
        raise ValueError(f"codecs must be a non-empty subset of {sorted(_LOCAL_CODECS)}")
    return names


def _acceptable_stream(offer: SessionDescription, allowed: list[str]) -> int | None:
    for index, m in enumerate(offer.media):
        if m.port == 0 or m.media != "audio" or m.proto.upper() != "RTP/AVP":
            continue
        if any(c.name in allowed for c in _audio_codecs(m)):
            return index
    return None


def _connection_for(address: str) -> Connection:
    if _ipv4_first_octet(address) is not None:
        return Connection("IP4", address)  # a dotted quad is already in canonical form
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"not an IP address: {_show(address)}") from None
    return Connection("IP6" if parsed.version == 6 else "IP4", parsed.compressed)


def _check_common(port: int, session_id: int, session_version: int, ptime_ms: int | None) -> None:
    if not 0 < port <= 0xFFFF:
        raise ValueError(f"RTP port {port} out of range")
    if session_id < 0 or session_version < 0:
        raise ValueError("session id and version must not be negative")
    if ptime_ms is not None and not 0 < ptime_ms <= _MAX_PTIME_MS:
        raise ValueError(f"ptime {ptime_ms} ms out of range")


def build_offer(
    address: str,
    port: int,
    session_id: int,
    session_version: int,
    codecs: Iterable[str] = ("PCMU", "PCMA"),
    telephone_event_pt: int | None = 101,
    ptime_ms: int | None = 20,
    direction: str = "sendrecv",
) -> bytes:
    """Our offer: one audio stream on ``address:port`` (IPv4 or IPv6) with G.711.

    ``codecs`` are listed in order of preference; telephone-event/8000 (events 0-16,
    RFC 4733) is added on ``telephone_event_pt`` unless it is None. For a re-INVITE
    (hold: ``direction="sendonly"``) keep ``session_id`` and pass a ``session_version``
    one higher than the last one sent (RFC 3264 §8).
    """
    return build_offer_description(
        address,
        port,
        session_id,
        session_version,
        codecs,
        telephone_event_pt,
        ptime_ms,
        direction,
    )[1]


def build_offer_description(
    address: str,
    port: int,
    session_id: int,
    session_version: int,
    codecs: Iterable[str] = ("PCMU", "PCMA"),
    telephone_event_pt: int | None = 101,
    ptime_ms: int | None = 20,
    direction: str = "sendrecv",
) -> tuple[SessionDescription, bytes]:
    """``build_offer`` as the description and its bytes (``bytes == description.serialize()``).

    Keep the description to read the answer against (``negotiate_answer``): the
    offer is then never parsed back. Everything but the o= line comes from a
    small cache keyed by the media parameters, which a dialer repeats on every call.
    """
    _check_common(port, session_id, session_version, ptime_ms)
    connection, template, before_port, after_port = _offer_template(
        address, tuple(codecs), telephone_event_pt, ptime_ms, direction
    )
    # The template's m= section with this call's port; the rtpmap table does not
    # depend on the port, so the worked-out one is shared rather than redone.
    media = MediaDescription(
        template.media, port, template.proto, template.formats, attributes=template.attributes
    )
    object.__setattr__(media, "_rtpmaps", template._rtpmaps)
    tail = b"%s%d%s" % (before_port, port, after_port)
    origin = Origin("-", session_id, session_version, "IN", connection.addr_type, connection.host)
    description = SessionDescription(origin=origin, connection=connection, media=(media,))
    head = f"v=0\r\no={origin.serialize()}\r\n".encode("utf-8", "surrogateescape")
    return description, head + tail


@functools.lru_cache(maxsize=64)
def _offer_template(
    address: str,
    codecs: tuple[str, ...],
    telephone_event_pt: int | None,
    ptime_ms: int | None,
    direction: str,
) -> tuple[Connection, MediaDescription, bytes, bytes]:
    # The parts of an offer that depend on neither the o= line nor the port (each
    # call has its own RTP port, so a key with the port would rarely hit): the
    # connection, the m= section with port 0, and the bytes after o= split where
    # the port goes.
    names = _check_codecs(codecs)
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {_show(direction)}")
    if telephone_event_pt is not None and not 96 <= telephone_event_pt <= 127:
        raise ValueError("telephone-event needs a dynamic payload type (96-127)")
    connection = _connection_for(address)
    formats = [str(_LOCAL_CODECS[name][0]) for name in names]
    attributes = [
        Attribute("rtpmap", f"{pt} {name}/8000") for pt, name in zip(formats, names, strict=True)
    ]
    if telephone_event_pt is not None:
        formats.append(str(telephone_event_pt))
        attributes.append(Attribute("rtpmap", f"{telephone_event_pt} {_TELEPHONE_EVENT}/8000"))
        attributes.append(Attribute("fmtp", f"{telephone_event_pt} {_TELEPHONE_EVENTS}"))
    if ptime_ms is not None:
        attributes.append(Attribute("ptime", str(ptime_ms)))
    attributes.append(Attribute(direction))
    media = MediaDescription("audio", 0, "RTP/AVP", tuple(formats), attributes=tuple(attributes))
    media._rtpmap_table()  # worked out now, while the description is shared and cached
    serialized = _session(connection, 0, 0, [media]).serialize()
    # serialize() writes v= then o= first (RFC 4566 §5 order); the rest is the tail,
    # whose one m= line is "m=audio 0 RTP/AVP ...".
    tail = serialized.split(b"\r\n", 2)[2]
    before, marker, after = tail.partition(b"\r\nm=audio 0 ")
    assert marker and b"\r\nm=" not in after, "one m= line, port 0"
    return connection, media, before + b"\r\nm=audio ", b" " + after


def _session(
    connection: Connection, session_id: int, session_version: int, media: list[MediaDescription]
) -> SessionDescription:
    origin = Origin("-", session_id, session_version, "IN", connection.addr_type, connection.host)
    return SessionDescription(origin=origin, connection=connection, media=tuple(media))


def build_answer(
    remote_offer: SessionDescription | bytes | str,
    local_address: str,
    local_port: int,
    session_id: int,
    session_version: int,
    *,
    codecs: Iterable[str] = ("PCMU", "PCMA"),
    current_codec: str | None = None,
    local_direction: str = "sendrecv",
    telephone_event: bool = True,
    ptime_ms: int | None = 20,
) -> bytes:
    """Our answer to a peer's offer, typically a re-INVITE putting us on or off hold.

    One ``m=`` line per offered one (RFC 3264 §6): the accepted audio stream carries the
    chosen codec (``current_codec`` kept when still offered) and telephone-event if
    offered, with the offerer's payload type numbers; every other stream is declined
    with port 0. Direction follows RFC 3264 §6.1: sendonly -> recvonly, recvonly ->
    sendonly, inactive -> inactive, sendrecv -> ``local_direction``.

    The caller owns the o= line: ``session_id`` stays the one of our earlier
    descriptions in this dialog and ``session_version`` MUST be one higher than the
    last one we sent whenever the description changes (RFC 3264 §8). Raise
    ``SdpError`` (status hint 488) when nothing in the offer is acceptable.
    """
    offer = _coerce(remote_offer)
    _check_common(local_port, session_id, session_version, ptime_ms)
    agreed = negotiate_offer(
        offer, codecs=codecs, current_codec=current_codec, local_direction=local_direction
    )
    bits = (SEND if agreed.send else 0) | (RECV if agreed.receive else 0)
    connection = _connection_for(local_address)
    media = []
    for index, offered in enumerate(offer.media):
        if index != agreed.media_index:
            # RFC 3264 §6: decline with port 0, keeping the offered formats.
            declined = offered.formats or ("0",)
            media.append(MediaDescription(offered.media, 0, offered.proto, declined))
            continue
        codec = agreed.codec
        formats = [str(codec.payload_type)]
        attributes = [Attribute("rtpmap", f"{codec.payload_type} {codec.name}/{codec.clock_rate}")]
        event_pt = agreed.telephone_event_pt
        if telephone_event and event_pt is not None:
            formats.append(str(event_pt))
            attributes.append(Attribute("rtpmap", f"{event_pt} {_TELEPHONE_EVENT}/8000"))
            events = _common_events(offered.fmtp(event_pt))
            attributes.append(Attribute("fmtp", f"{event_pt} {events}"))
        if ptime_ms is not None:
            attributes.append(Attribute("ptime", str(ptime_ms)))
        attributes.append(Attribute(_DIRECTION_NAMES[bits]))
        media.append(
            MediaDescription(
                "audio", local_port, offered.proto, tuple(formats), attributes=tuple(attributes)
            )
        )
    return _session(connection, session_id, session_version, media).serialize()


# Called, not a decorator: mypyc builds a class under a decorator it does not know
# as a plain Python class (slot_init.py, rule 4).
slot_init(Origin)
slot_init(Connection)
slot_init(Timing)
slot_init(Attribute)
slot_init(RtpMap)
slot_init(MediaDescription)
slot_init(SessionDescription)
slot_init(Codec)
slot_init(MediaAnswer)

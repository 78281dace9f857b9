"""Bytes to SIP messages (RFC 3261 §7, §18.3), for datagrams and framed stream messages.

Rules of this file:

1. ``parse_message`` raises ``SipError`` subclasses and nothing else, for any
   input bytes whatsoever. Every step that could trip on hostile input (a
   number, a split, a decode) is written so that it cannot raise anything
   else, and the fuzz tests hold it to that.
2. Parse eagerly only what every message must have and routing needs at once:
   start line, Content-Length, Via (top), From, To, Call-ID and CSeq. Every
   other header stays text until someone asks (see ``message.py``).
3. Be liberal where the RFC allows it and the meaning stays unambiguous (LF-only
   line ends, LWS around ``:``, folded lines, leading CRLFs, extra datagram
   octets), strict where two readers could disagree about what the message
   says (two Content-Lengths, two CSeqs, a Request-Line with extra spaces).
4. Limits are configuration, passed in as a frozen ``ParserLimits``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dialer.sip.errors import (
    BadExtension,
    FramingError,
    MessageTooLarge,
    ParseError,
    SipError,
    VersionNotSupported,
)
from dialer.sip.headers import (
    CANONICAL_NAMES,
    SINGLE_VALUED,
    CSeq,
    Header,
    Via,
    is_token,
    parse_seq_number,
    split_values,
)
from dialer.sip.message import Request, Response, copy_response_headers, reason_phrase
from dialer.sip.uri import SipUri, parse_name_addr, parse_uri

__all__ = [
    "DEFAULT_LIMITS",
    "ParserLimits",
    "SalvagedRequest",
    "error_response",
    "find_head_end",
    "parse_content_length",
    "parse_message",
    "salvage_request",
]


@dataclass(frozen=True, slots=True)
class ParserLimits:
    """Size limits applied while parsing; anything past them is refused.

    ``max_message_bytes`` bounds a whole message (headers and body; 65,535 is
    the largest UDP payload), ``max_line_bytes`` one header line (after
    unfolding), ``max_headers`` the number of header fields.
    """

    max_message_bytes: int = 65535
    max_line_bytes: int = 8192
    max_headers: int = 256


DEFAULT_LIMITS = ParserLimits()

# The empty line that ends the headers, whatever the line ends look like.
_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
_METHOD_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
# Call-ID = word [ "@" word ]  (§25.1)
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID_RE = re.compile(rf"{_WORD}(?:@{_WORD})?")
_DIGITS_RE = re.compile(r"[0-9]+")

# Lower-cased name -> (name to store, index key). Known names are stored in
# canonical form, so a parsed message never needs to canonicalise again.
_NAME_KEYS: dict[str, tuple[str, str]] = {
    lower: (canonical, canonical.lower()) for lower, canonical in CANONICAL_NAMES.items()
}
# Checked in this order, so the error names the same header on every run.
_SINGLE_KEYS = tuple(sorted(name.lower() for name in SINGLE_VALUED))
_REQUIRED_KEYS = (
    ("via", "Via"),
    ("from", "From"),
    ("to", "To"),
    ("call-id", "Call-ID"),
    ("cseq", "CSeq"),
)
_LWS = " \t"


def parse_content_length(text: str, limit: int) -> int:
    """Parse a Content-Length value; FramingError if it is not a sane length.

    A negative, non-numeric or absurd length can never be used to cut a message
    (RFC 4475 §3.1.2.3), so it is a framing error, not a big number.
    """
    text = text.strip(_LWS)
    if len(text) > 10 or _DIGITS_RE.fullmatch(text) is None:
        raise FramingError(f"bad Content-Length: {text[:20]!r}")
    value = int(text)
    if value > limit:
        raise MessageTooLarge(f"Content-Length {value} exceeds the limit of {limit}")
    return value


def find_head_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int] | None:
    """Where the header block that starts at ``start`` ends: (end of head, start of body).

    None if the empty line has not arrived. Tolerates LF-only line ends; a
    plain ``find`` of CRLFCRLF covers the usual case far faster than a regex.
    """
    crlf = data.find(b"\r\n\r\n", start)
    if (
        crlf >= 0
        and data.find(b"\n\n", start, crlf) < 0
        and data.find(b"\n\r\n", start, crlf + 2) < 0
    ):
        return crlf, crlf + 4
    m = _HEAD_END_RE.search(data, start)
    return None if m is None else (m.start(), m.end())


def _split_lines(head: str) -> list[str]:
    lines = head.split("\r\n")
    breaks = len(lines) - 1
    if head.count("\n") == breaks and head.count("\r") == breaks:
        return lines
    # Tolerate bare-LF line ends (and a mix); a CR that does not end a line has
    # no meaning in a header and could hide a line break from other readers.
    lines = head.split("\n")
    for i, line in enumerate(lines):
        if line.endswith("\r"):
            line = lines[i] = line[:-1]
        if "\r" in line:
            raise ParseError("bare CR in the message head")
    return lines


def _unfold(lines: list[str]) -> list[str]:
    # §7.3.1: a line that starts with whitespace continues the previous one;
    # the line break and the leading whitespace read as a single SP.
    out: list[str] = []
    for line in lines:
        if line.startswith((" ", "\t")):
            if not out:
                raise ParseError("continuation line before any header")
            cont = line.strip(_LWS)
            if cont:
                out[-1] = f"{out[-1].rstrip(_LWS)} {cont}"
            continue
        out.append(line)
    return out


def _check_version(version: str) -> None:
    if version != "SIP/2.0" and version.upper() != "SIP/2.0":
        if _VERSION_RE.fullmatch(version):
            # §8.2.6 / §21.5.16: we speak 2.0 only.
            raise VersionNotSupported(f"unsupported SIP version {version[:20]!r}")
        raise ParseError(f"bad SIP version {version[:20]!r}")


def parse_message(data: bytes, limits: ParserLimits = DEFAULT_LIMITS) -> Request | Response:
    """Parse one whole message: a UDP datagram, or one frame cut by ``StreamFramer``.

    Returns a ``Request`` or ``Response`` whose Via, From, To, Call-ID and CSeq
    have been checked, or raises a ``SipError`` (``ParseError`` and its kin)
    whose ``status_hint`` says how a UAS would answer.

    Content-Length: when present it must fit the octets received; octets past
    it are ignored (§18.3: a datagram may carry trailing junk). When absent,
    the body is the rest of the datagram.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > limits.max_message_bytes:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds the limit")
    start = 0
    if data[:1] in (b"\r", b"\n"):
        # §7.5: CRLFs before the start-line are ignored (keep-alives, RFC 5626).
        start = len(data) - len(data.lstrip(b"\r\n"))
    bounds = find_head_end(data, start)
    if bounds is None:
        raise ParseError("no empty line after the header fields")
    head = data[start : bounds[0]].decode("utf-8", "surrogateescape")
    lines = _split_lines(head)
    first = lines[0]
    max_line = limits.max_line_bytes
    if len(first) > max_line:
        raise MessageTooLarge("start line too long")

    # --- header fields ------------------------------------------------------------
    header_lines = lines[1:]
    if len(header_lines) > limits.max_headers * 4:
        raise MessageTooLarge("too many header lines")
    if "\n " in head or "\n\t" in head:
        header_lines = _unfold(header_lines)
    if len(header_lines) > limits.max_headers:
        raise MessageTooLarge(f"more than {limits.max_headers} header fields")
    headers: list[Header] = []
    index: dict[str, list[str]] = {}
    name_keys = _NAME_KEYS
    # No line can be longer than the whole head: the usual case skips the check.
    check_lines = len(head) > max_line
    for line in header_lines:
        if check_lines and len(line) > max_line:
            raise MessageTooLarge("header line too long")
        colon = line.find(":")
        if colon <= 0:
            raise ParseError(f"header line without a name and colon: {line[:40]!r}")
        raw_name = line[:colon].rstrip(_LWS)
        known = name_keys.get(raw_name.lower())
        if known is None:
            if not is_token(raw_name):
                raise ParseError(f"bad header name: {raw_name[:40]!r}")
            name = raw_name
            key = raw_name.lower()
        else:
            name, key = known
        value = line[colon + 1 :].strip(_LWS)
        headers.append((name, value))
        bucket = index.get(key)
        if bucket is None:
            index[key] = [value]
        else:
            bucket.append(value)

    for key in _SINGLE_KEYS:
        values = index.get(key)
        if values is not None and len(values) > 1:
            # Two Content-Lengths, two CSeqs ...: readers would disagree on
            # what the message means (RFC 4475 §3.3.8, §3.3.9).
            if key == "content-length":
                raise FramingError("more than one Content-Length")
            raise ParseError(f"more than one {CANONICAL_NAMES[key]} header field")

    # --- body (§18.3) -----------------------------------------------------------------
    body = data[bounds[1] :]
    length_values = index.get("content-length")
    if length_values is not None:
        length = parse_content_length(length_values[0], limits.max_message_bytes)
        if length > len(body):
            raise ParseError(f"body shorter than Content-Length ({len(body)} < {length})")
        if length < len(body):
            body = body[:length]

    # --- start line -------------------------------------------------------------------
    message: Request | Response
    if first[:4].upper() == "SIP/":
        version, _, rest = first.partition(" ")
        _check_version(version)
        code, _, reason = rest.partition(" ")
        # Status-Code = 3DIGIT, and only classes 1-6 exist (RFC 4475 §3.1.2.19).
        if len(code) != 3 or _DIGITS_RE.fullmatch(code) is None or not "1" <= code[0] <= "6":
            raise ParseError(f"bad status code {code[:20]!r}")
        message = Response(int(code), reason, tuple(headers), body)
        method = None
    else:
        parts = first.split(" ")
        if len(parts) != 3:
            # Exactly one SP between the three elements (§25.1); extra or
            # trailing spaces are rejected (RFC 4475 §3.1.2.8-10 allow it).
            raise ParseError("Request-Line is not 'Method SP Request-URI SP SIP-Version'")
        method, uri_text, version = parts
        _check_version(version)
        if _METHOD_RE.fullmatch(method) is None:
            raise ParseError(f"bad method {method[:40]!r}")
        uri = parse_uri(uri_text)
        if isinstance(uri, SipUri) and uri.headers:
            # §19.1.1 Table 1: headers are not allowed in a Request-URI; turning
            # them into header fields would be an injection (RFC 4475 §3.1.2.11).
            raise ParseError("Request-URI carries headers")
        message = Request(method, uri, tuple(headers), body)

    # --- what every message must carry (§8.1.1) ---------------------------------------
    for key, label in _REQUIRED_KEYS:
        if key not in index:
            raise ParseError(f"missing {label} header field")
    cseq = CSeq.parse(index["cseq"][0])
    if method is not None and cseq.method != method:
        raise ParseError(f"CSeq method {cseq.method!r} does not match {method!r}")
    call_id = index["call-id"][0]
    if _CALL_ID_RE.fullmatch(call_id) is None:
        raise ParseError(f"bad Call-ID {call_id[:40]!r}")
    views = message._views
    views["index"] = index
    views["cseq"] = cseq
    views["from"] = parse_name_addr(index["from"][0])
    views["to"] = parse_name_addr(index["to"][0])
    top_via = index["via"][0]
    if "," in top_via:
        top_via = split_values(top_via)[0]
    views["top_via"] = Via.parse(top_via)
    max_forwards = index.get("max-forwards")
    views["max_forwards"] = (
        parse_seq_number(max_forwards[0], 255) if max_forwards is not None else None
    )
    return message


# --- answering what did not parse --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SalvagedRequest:
    """What could be read from a request that failed to parse: enough to answer it."""

    method: str
    headers: tuple[Header, ...]


_SALVAGED_KEYS = frozenset({"via", "from", "to", "call-id", "cseq"})


def salvage_request(data: bytes, limits: ParserLimits = DEFAULT_LIMITS) -> SalvagedRequest | None:
    """Read Via, From, To, Call-ID and CSeq from bytes that failed ``parse_message``.

    Returns None when the bytes must be dropped instead of answered: a response
    (never answered, §18.1.2), an ACK (never answered, §17), something without a
    method, or a request missing a field the answer has to copy (§8.2.6.2) or a
    top Via we could route the answer by (§18.2.2).
    """
    try:
        return _salvage(bytes(data[: limits.max_message_bytes]), limits)
    except SipError:
        return None


def _salvage(data: bytes, limits: ParserLimits) -> SalvagedRequest | None:
    data = data.lstrip(b"\r\n")
    bounds = find_head_end(data)
    head = (data if bounds is None else data[: bounds[0]]).decode("utf-8", "surrogateescape")
    lines = [line.rstrip("\r") for line in head.split("\n")]
    if any("\r" in line for line in lines):
        return None
    method = lines[0].split(" ", 1)[0]
    if _METHOD_RE.fullmatch(method) is None or method.upper().startswith("SIP/"):
        return None
    if method == "ACK":
        return None
    found: list[Header] = []
    seen: set[str] = set()
    for line in _unfold(lines[1:]):
        name, colon, value = line.partition(":")
        if not colon:
            continue
        known = _NAME_KEYS.get(name.rstrip(_LWS).lower())
        if known is None or known[1] not in _SALVAGED_KEYS:
            continue
        value = value.strip(_LWS)
        if not value or len(value) > limits.max_line_bytes:
            return None
        if known[1] != "via" and known[1] in seen:
            continue  # keep the first copy of a duplicated single field
        seen.add(known[1])
        found.append((known[0], value))
    if seen != _SALVAGED_KEYS:
        return None
    # The answer must be routable by the top Via's sent-by (§18.2.2); its
    # parameters may be what was malformed, so they are not looked at.
    first_via = next(value for name, value in found if name == "Via")
    Via.parse(split_values(first_via)[0].split(";", 1)[0])
    return SalvagedRequest(method, tuple(found))


def error_response(
    data: bytes,
    error: SipError,
    *,
    to_tag: str | None = None,
    limits: ParserLimits = DEFAULT_LIMITS,
) -> Response | None:
    """The response to send for bytes that raised ``error``, or None to drop them.

    Status is ``error.status_hint``; a 420 lists the unsupported option tags in
    Unsupported (§8.2.2.3). ``to_tag`` is added to To as §8.2.6.2 asks.
    """
    salvaged = salvage_request(data, limits)
    if salvaged is None:
        return None
    headers = copy_response_headers(salvaged.headers, to_tag)
    if isinstance(error, BadExtension):
        headers.append(("Unsupported", ", ".join(error.unsupported)))
    status = error.status_hint
    return Response(status, reason_phrase(status), tuple(headers))

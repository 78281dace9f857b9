"""Cutting a TCP/TLS byte stream into SIP messages (RFC 3261 §18.3, RFC 5626 §4.4.1).

Rules of this file:

1. Bytes come in any chunking, down to one at a time; frames come out whole.
   ``feed`` only stores; ``next_frame`` returns a frame, or None for "need more
   data", or raises ``FramingError`` (the connection must then be closed:
   nothing after a broken frame can be trusted). This is h11's reader contract.
2. On a stream, Content-Length is mandatory (§18.3): a head without one, with
   two, or with a value that is not a plain decimal ends the connection.
3. The framer never waits for more than ``ParserLimits.max_message_bytes`` and
   rejects a first line that is not SIP as soon as it is complete, so garbage
   cannot make it hold memory or stall silently.
4. CRLFs between messages are keep-alives: a double CRLF is a ping the edge
   should answer with a single CRLF (RFC 5626 §4.4.1); ``take_pings`` says how
   many arrived. A single CRLF (a pong) is skipped.
5. Scanning is incremental: each byte is looked at a bounded number of times,
   so feeding one byte at a time stays linear.
"""

from __future__ import annotations

import re

from dialer.sip.errors import FramingError
from dialer.sip.message import Request, Response
from dialer.sip.parser import DEFAULT_LIMITS, ParserLimits, find_head_end, parse_message

__all__ = ["StreamFramer"]

_CRLF_RUN_RE = re.compile(rb"[\r\n]*")
_CONTENT_LENGTH_RE = re.compile(
    rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE
)
_DIGITS_RE = re.compile(rb"[0-9]{1,10}")
# A plausible start line: a printable first element, a space, and "SIP/"
# somewhere (Request-Line ends with it, Status-Line starts with it).
_START_LINE_RE = re.compile(rb"[!-~]+ [^\r\n]*", re.DOTALL)
_PING = b"\r\n\r\n"


class StreamFramer:
    """Splits one connection's inbound bytes into whole SIP messages.

    Use::

        framer.feed(data)
        while (frame := framer.next_frame()) is not None:
            handle(parse_message(frame))   # ParseError here: answer 400 or drop
        for _ in range(framer.take_pings()):
            send(b"\\r\\n")                # pong

    A ``FramingError`` from ``next_frame`` means: close the connection.
    """

    __slots__ = ("_body_end", "_broken", "_buffer", "_limits", "_pings", "_scan_from", "_start_ok")

    def __init__(self, limits: ParserLimits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buffer = bytearray()
        self._scan_from = 0
        self._start_ok = False
        self._body_end: int | None = None
        self._broken: str | None = None
        self._pings = 0

    @property
    def buffered(self) -> int:
        """Bytes held back, waiting for the rest of a message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Store bytes read from the connection (call ``next_frame`` until None after)."""
        self._buffer += data

    def take_pings(self) -> int:
        """How many double-CRLF keep-alive pings arrived since the last call."""
        pings, self._pings = self._pings, 0
        return pings

    def next_frame(self) -> bytes | None:
        """The next whole message's bytes, None if more are needed; FramingError if broken."""
        if self._broken is not None:
            raise FramingError(self._broken)
        try:
            return self._next_frame()
        except FramingError as exc:
            self._broken = exc.reason
            raise

    def next_message(self) -> Request | Response | None:
        """``parse_message`` of the next frame, for callers that will not answer errors.

        A ``ParseError`` that is not a ``FramingError`` concerns that message
        alone: the framer has already moved past it and can go on.
        """
        frame = self.next_frame()
        return None if frame is None else parse_message(frame, self._limits)

    def _next_frame(self) -> bytes | None:
        buffer = self._buffer
        limit = self._limits.max_message_bytes
        if self._body_end is None:
            if not buffer:
                return None
            if buffer[0] in b"\r\n":
                run = _CRLF_RUN_RE.match(buffer).end()  # type: ignore[union-attr]
                if run == len(buffer) and run < 4 and _PING.startswith(buffer):
                    return None  # maybe the start of a ping: wait for the rest
                self._pings += bytes(buffer[:run]).count(_PING)
                del buffer[:run]
                if not buffer:
                    return None
            if not self._start_ok:
                self._check_start_line()
            bounds = find_head_end(buffer, self._scan_from)
            if bounds is None:
                if len(buffer) > limit:
                    raise FramingError(f"no end of headers within {limit} bytes", status_hint=513)
                # Resume where a CRLFCRLF could still begin.
                self._scan_from = max(0, len(buffer) - 3)
                return None
            self._body_end = bounds[1] + self._content_length(bytes(buffer[: bounds[0]]))
            if self._body_end > limit:
                raise FramingError(f"message longer than {limit} bytes", status_hint=513)
        if len(buffer) < self._body_end:
            return None
        frame = bytes(buffer[: self._body_end])
        del buffer[: self._body_end]
        self._body_end = None
        self._scan_from = 0
        self._start_ok = False
        return frame

    def _check_start_line(self) -> None:
        buffer = self._buffer
        # No line end can hide before _scan_from: earlier calls looked there.
        newline = buffer.find(b"\n", self._scan_from)
        if newline < 0:
            if len(buffer) > self._limits.max_line_bytes:
                raise FramingError("start line too long")
            return
        line = bytes(buffer[:newline]).rstrip(b"\r")
        if _START_LINE_RE.fullmatch(line) is None or b"SIP/" not in line.upper():
            raise FramingError(f"not a SIP start line: {line[:40]!r}")
        self._start_ok = True

    def _content_length(self, head: bytes) -> int:
        found = _CONTENT_LENGTH_RE.findall(head)
        if not found:
            raise FramingError("no Content-Length on a stream transport (RFC 3261 §18.3)")
        if len(found) > 1:
            raise FramingError("more than one Content-Length")
        if _DIGITS_RE.fullmatch(found[0]) is None:
            raise FramingError(f"bad Content-Length: {found[0][:20]!r}")
        return int(found[0])

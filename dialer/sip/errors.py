"""Named SIP errors, split by blame, each carrying a hint for the reply.

Rules of this file:

1. Errors are values at the protocol edge. The parser and the accessors raise
   them; the caller decides what to do. Only a request can be answered (RFC 3261
   §8.2: a UAS answers; a malformed response is silently discarded, §18.1.2),
   so ``status_hint`` is what a UAS *would* answer, never an order to answer.
2. ``RemoteProtocolError`` and its children mean "the bytes we were given are
   wrong": the peer is to blame. ``LocalProtocolError`` means "our own code asked
   for something the protocol does not allow": a bug on our side.
3. Every exception the parsing layer lets escape is a ``SipError``. A caller
   that catches ``SipError`` has caught everything, for any input bytes.
"""

from __future__ import annotations

__all__ = [
    "BadExtension",
    "FramingError",
    "LocalProtocolError",
    "MessageTooLarge",
    "ParseError",
    "RemoteProtocolError",
    "SipError",
    "UnsupportedUriScheme",
    "VersionNotSupported",
]


class SipError(Exception):
    """Base of every error raised by the SIP message layer.

    ``reason`` is a short human text for logs (never sent verbatim to peers
    without care: it may quote their bytes). ``status_hint`` is the response
    code a UAS would answer with if the offending message is a request.
    """

    status_hint: int

    def __init__(self, reason: str, status_hint: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_hint = status_hint


class RemoteProtocolError(SipError):
    """The peer sent something the protocol does not allow."""


class ParseError(RemoteProtocolError):
    """The bytes are not a well-formed SIP message (answer 400 if a request)."""


class VersionNotSupported(ParseError):
    """The SIP-Version is not 2.0 (RFC 3261 §8.2.6: answer 505)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status_hint=505)


class MessageTooLarge(ParseError):
    """A size limit was exceeded (answer 513 Message Too Large, §21.5.14)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status_hint=513)


class FramingError(ParseError):
    """A stream can no longer be split into messages: close the connection.

    RFC 3261 §18.3: on a stream transport the Content-Length decides where a
    message ends; when it is missing, negative, duplicated or absurd there is
    no way to find the next message, so the only safe move is to close.
    """


class UnsupportedUriScheme(RemoteProtocolError):
    """A Request-URI scheme we do not serve (RFC 3261 §8.2.2.1: answer 416)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status_hint=416)


class BadExtension(RemoteProtocolError):
    """The request requires option tags we do not support (§8.2.2.3: 420).

    ``unsupported`` lists them in the order given; the 420 response MUST carry
    them in an Unsupported header field.
    """

    def __init__(self, unsupported: tuple[str, ...]) -> None:
        super().__init__("unsupported extension: " + ", ".join(unsupported), status_hint=420)
        self.unsupported = unsupported


class LocalProtocolError(SipError):
    """Our own code tried to build something the protocol forbids (a bug)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status_hint=500)

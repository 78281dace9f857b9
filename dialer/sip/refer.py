"""Blind transfer by REFER (RFC 3515): the request we send and the NOTIFYs that report on it.

Rules of this file:

1. Pure: requests in, responses and small values out. The ``Call`` owns the
   transfer's state and timers; this file builds the REFER's header fields,
   reads a ``message/sipfrag`` body (RFC 3420) and answers the transferee's
   NOTIFYs (RFC 3515 §2.4.5, RFC 6665 §4.1.3).
2. A NOTIFY is always answered, never raises: ``Event`` other than ``refer``
   is a 489, an ``id`` naming a REFER we did not send a 481, anything else a
   200 (a body we cannot read is answered too and carries no status).
3. What a NOTIFY says is a ``ReferNotified`` event: the sipfrag status (None
   when absent or unreadable) and whether the subscription ended. A 1xx is
   progress, a 2xx success, 3xx-6xx failure (RFC 3515 §2.4.5); a terminated
   subscription without a final status is a failure the caller decides on.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass

from dialer.sip.dialog import DialogEvent, InDialogResult
from dialer.sip.errors import ParseError
from dialer.sip.headers import Header, get_param, parse_params
from dialer.sip.message import Request, make_response
from dialer.sip.uri import NameAddr, Uri

__all__ = [
    "SIPFRAG",
    "ReferNotified",
    "answer_notify",
    "parse_sipfrag_status",
    "refer_headers",
]

#: The media type of a NOTIFY body that reports a REFER's progress (RFC 3420).
SIPFRAG = "message/sipfrag"

# RFC 3420 §2: a sipfrag's start line is a whole SIP start line; a REFER's
# NOTIFY carries a Status-Line (RFC 3261 §7.2), "SIP/2.0 200 OK".
_STATUS_LINE = re.compile(rb"^\s*SIP/2\.0[ \t]+([1-6][0-9]{2})(?:[ \t]+([^\r\n]*))?(?:\r?\n|$)")


@dataclass(frozen=True, slots=True)
class ReferNotified(DialogEvent):
    """A NOTIFY about our REFER: the status of the transferee's INVITE, if it said.

    ``refer_seq`` is the CSeq of the REFER it reports on (its ``Event: refer;id=``),
    None when the NOTIFY names none (the only REFER of the dialog).
    """

    status: int | None
    reason: str | None
    terminated: bool
    refer_seq: int | None = None


def parse_sipfrag_status(body: bytes) -> tuple[int, str] | None:
    """The status code and reason of a sipfrag's Status-Line; None if it has none."""
    match = _STATUS_LINE.match(body)
    if match is None:
        return None
    reason = (match.group(2) or b"").strip().decode("utf-8", "replace")
    return int(match.group(1)), reason


def refer_headers(target: Uri, referred_by: NameAddr, contact: NameAddr | None) -> list[Header]:
    """Refer-To (exactly one, §2.4.1), Referred-By (RFC 3892) and our Contact.

    The target is written in angle brackets: a URI with parameters or
    headers must be (RFC 3261 §20.10), and every URI may be.
    """
    headers: list[Header] = [
        ("Refer-To", NameAddr(target).serialize()),
        ("Referred-By", NameAddr(referred_by.uri, referred_by.display_name).serialize()),
    ]
    if contact is not None:
        headers.append(("Contact", contact.serialize()))
    return headers


def _event(request: Request) -> tuple[str, int | None] | None:
    """The Event package and its ``id`` as a number; None when missing or malformed."""
    value = request.get("Event")
    if value is None:
        return None
    package, _, rest = value.partition(";")
    try:
        params = parse_params(";" + rest) if rest.strip() else ()
    except ParseError:
        return None
    event_id = get_param(params, "id")
    if event_id is not None and not (event_id.isdigit() and len(event_id) <= 10):
        return None
    return package.strip().lower(), None if event_id is None else int(event_id)


def _terminated(request: Request) -> bool:
    state = request.get("Subscription-State")
    return state is not None and state.partition(";")[0].strip().lower() == "terminated"


def answer_notify(request: Request, refer_seqs: Container[int]) -> InDialogResult:
    """Answer a NOTIFY in a dialog where we sent the REFERs numbered ``refer_seqs``.

    An ``id`` that names none of them is a subscription we do not have (481);
    a NOTIFY without ``id`` reports on the dialog's first REFER (§2.4.6).
    """
    event = _event(request)
    if event is None or event[0] != "refer":
        # RFC 6665 §4.1.3: an event package we did not subscribe to.
        return InDialogResult(make_response(request, 489, headers=[("Allow-Events", "refer")]))
    package_id = event[1]
    if package_id is not None and package_id not in refer_seqs:
        return InDialogResult(make_response(request, 481))
    status: tuple[int, str] | None = None
    if request.body and request.media_type == SIPFRAG:
        status = parse_sipfrag_status(request.body)
    notified = ReferNotified(
        status=None if status is None else status[0],
        reason=None if status is None else status[1],
        terminated=_terminated(request),
        refer_seq=package_id,
    )
    return InDialogResult(make_response(request, 200), notified)

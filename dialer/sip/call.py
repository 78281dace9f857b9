"""One outbound call as a pure state machine over the transaction and dialog layers.

Rules of this file:

1. A ``Call`` places one INVITE and follows it to its end: progress, early
   media, answer, digest retry, CANCEL at the ring timeout, in-dialog requests
   from the callee, session timers (RFC 4028), BYE. Every input takes ``now``;
   every output is a ``list[Action]``: wire work through the shared
   ``TransactionLayer``, call timers as ``StartTimer(CallTimerKey(call_id), ...)``,
   and application events (``Ringing``, ``Answered``, ``Ended`` ...).
   A blind transfer (``transfer``) is a REFER in the dialog (RFC 3515) whose
   verdict comes in the transferee's NOTIFYs (``dialer.sip.refer``): a 2xx
   sipfrag ends the call with our BYE as ``transferred``; a rejected REFER,
   a failure sipfrag or no verdict in time is a ``TransferFailed`` that
   leaves the call up, for the application to fall back.
2. Nothing a peer sends raises. A broken answer, an SDP without a common
   codec, a 2xx after our CANCEL, a second 2xx from another fork: each is
   ACKed as the RFC asks and then hung up, with a disposition that says why.
3. Tags, branches, Call-IDs and cnonces come from ``IdGenerators`` handed in.
4. ``CallRouter`` is the pure user agent core the edge holds: it owns the
   transaction layer and the calls by Call-ID, routes what arrives and what
   fires, and answers requests that belong to no call.
5. Every call ends with exactly one ``Ended(CallResult)``.

How a failed INVITE maps to a disposition (first match wins)::

    Reason: Q.850 cause (when present)  disposition
      1, 2, 3, 22, 28                   not_found
      17                                busy
      18, 19, 20                        no_answer
      21                                rejected
      34, 38, 41, 42, 44, 47            congestion

    SIP status                          disposition
      486, 600                          busy
      408, 480, 487 (not ours)          no_answer
      Timer B (nothing heard)           no_answer (as a 408, RFC 3261 §8.1.3.1)
      403, 603, 607, 608                rejected
      404, 410, 484, 604                not_found
      488, 606                          media_negotiation_failed
      500, 503 with Retry-After         congestion (the trunk asks us to back off)
      500, 502, 503, 504, 580           unavailable
      transport error                   unavailable (as a 503, §8.1.3.1)
      401/407 refused again             auth_failed (auth_refused, auth_unsupported:
                                        see dialer.sip.auth)
      any other 3xx-6xx                 failed

    Our side                            disposition
      hangup() before the answer        cancelled (487 or a 200 that crossed the CANCEL)
      withdraw() before the answer      cancelled (487); a 200 that crosses it is answered
      ring timeout                      no_answer (likewise)
      2xx whose SDP we cannot use       media_negotiation_failed (ACK, then BYE)
      answered, then either side BYEs   answered
      REFER accepted, then a 2xx sipfrag  transferred (our BYE; ``transferred_to``)
      REFER accepted, then the callee BYEs  transferred (the transferee took it over)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum

from dialer.sip.actions import (
    Action,
    Address,
    CancelTimer,
    Deliver,
    StartTimer,
    TimedOut,
    TransportFailed,
)
from dialer.sip.auth import AuthAttempt, Authorize, DigestClient
from dialer.sip.dialog import (
    ALLOW,
    AckReceived,
    ByeReceived,
    Dialog,
    DialogError,
    DtmfReceived,
    InDialogResult,
    LocalMedia,
    MediaSession,
    OfferAnswered,
)
from dialer.sip.errors import LocalProtocolError, ParseError, SipError
from dialer.sip.headers import CSeq, Header, Via, canonical_name, get_param, parse_params
from dialer.sip.message import Request, Response, make_response
from dialer.sip.refer import ReferNotified, answer_notify, refer_headers
from dialer.sip.sdp import MediaAnswer, SdpError
from dialer.sip.slot_init import slot_init
from dialer.sip.timers import DEFAULT_TIMERS, TimerConfig
from dialer.sip.transaction import (
    MAGIC_COOKIE,
    TransactionKey,
    TransactionLayer,
    build_cancel,
)
from dialer.sip.uri import NameAddr, SipUri, Uri, ip_literal_address

__all__ = [
    "Answered",
    "Call",
    "CallEvent",
    "CallResult",
    "CallRouter",
    "CallState",
    "CallStateError",
    "CallTimer",
    "CallTimerKey",
    "Dial",
    "Disposition",
    "Dtmf",
    "EarlyMedia",
    "Ended",
    "Held",
    "IdGenerators",
    "MediaUpdated",
    "Resumed",
    "Ringing",
    "TransferAccepted",
    "TransferFailed",
    "TransferProgress",
    "TransferState",
    "TransferSucceeded",
    "UserAgentConfig",
    "disposition_for",
]


# --- dispositions ------------------------------------------------------------------------


class Disposition(StrEnum):
    """How a call ended, for the scheduler's workflow branches."""

    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    REJECTED = "rejected"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    CONGESTION = "congestion"
    CANCELLED = "cancelled"
    MEDIA_FAILED = "media_negotiation_failed"
    AUTH_FAILED = "auth_failed"
    AUTH_REFUSED = "auth_refused"
    AUTH_UNSUPPORTED = "auth_unsupported"
    FAILED = "failed"
    TRANSFERRED = "transferred"


_BY_STATUS: dict[int, Disposition] = {
    486: Disposition.BUSY,
    600: Disposition.BUSY,
    408: Disposition.NO_ANSWER,
    480: Disposition.NO_ANSWER,
    487: Disposition.NO_ANSWER,
    403: Disposition.REJECTED,
    603: Disposition.REJECTED,
    607: Disposition.REJECTED,
    608: Disposition.REJECTED,
    404: Disposition.NOT_FOUND,
    410: Disposition.NOT_FOUND,
    484: Disposition.NOT_FOUND,
    604: Disposition.NOT_FOUND,
    488: Disposition.MEDIA_FAILED,
    606: Disposition.MEDIA_FAILED,
    500: Disposition.UNAVAILABLE,
    502: Disposition.UNAVAILABLE,
    503: Disposition.UNAVAILABLE,
    504: Disposition.UNAVAILABLE,
    580: Disposition.UNAVAILABLE,
}

_BY_Q850: dict[int, Disposition] = {
    **dict.fromkeys((1, 2, 3, 22, 28), Disposition.NOT_FOUND),
    17: Disposition.BUSY,
    **dict.fromkeys((18, 19, 20), Disposition.NO_ANSWER),
    21: Disposition.REJECTED,
    **dict.fromkeys((34, 38, 41, 42, 44, 47), Disposition.CONGESTION),
}


def _q850_cause(response: Response) -> int | None:
    try:
        values = response.get_all("Reason")
    except ParseError:
        return None
    for value in values:
        protocol, _, rest = value.partition(";")
        if protocol.strip().upper() != "Q.850":
            continue
        try:
            cause = get_param(parse_params(";" + rest), "cause")
        except ParseError:
            return None
        if cause is not None and cause.isdigit() and len(cause) <= 3:
            return int(cause)
    return None


def disposition_for(
    status: int, *, retry_after: bool = False, q850_cause: int | None = None
) -> Disposition:
    """The disposition of an INVITE that failed with ``status`` (see the module table)."""
    if q850_cause is not None and q850_cause in _BY_Q850:
        return _BY_Q850[q850_cause]
    if retry_after and status in (500, 503):
        return Disposition.CONGESTION
    return _BY_STATUS.get(status, Disposition.FAILED)


def _response_disposition(response: Response) -> Disposition:
    return disposition_for(
        response.status,
        retry_after="Retry-After" in response,
        q850_cause=_q850_cause(response),
    )


# --- configuration and identity -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdGenerators:
    """Where new identifiers come from (the edge owns the random source).

    ``branch`` may or may not include the ``z9hG4bK`` magic cookie; it is
    added when missing.
    """

    tag: Callable[[], str]
    branch: Callable[[], str]
    call_id: Callable[[], str]
    cnonce: Callable[[], str]


@dataclass(frozen=True, slots=True)
class UserAgentConfig:
    """How this user agent presents itself and where it sends INVITEs.

    ``proxy`` is the next hop for every request: the trunk, already resolved
    by the edge. In-dialog requests go to the dialog's next hop (first route,
    else remote target) when that is an IP literal, else to ``proxy`` too.
    ``session_expires_s`` None leaves session timers to the callee.
    """

    local_uri: SipUri
    contact: SipUri
    via_host: str
    proxy: Address
    via_port: int | None = None
    transport: str = "UDP"
    display_name: str | None = None
    user_agent: str | None = "dialer"
    ring_timeout_s: float = 45.0
    max_duration_s: float | None = 3600.0
    session_expires_s: int | None = 1800
    min_se_s: int = 90
    timers: TimerConfig = DEFAULT_TIMERS


@dataclass(frozen=True, slots=True)
class Dial:
    """One call to place: the Request-URI, our media, optional To and extra headers."""

    target: Uri
    media: LocalMedia
    to: NameAddr | None = None
    headers: tuple[Header, ...] = ()
    ring_timeout_s: float | None = None
    max_duration_s: float | None = None


# --- events for the application -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallResult:
    """What the call came to, with the time of every phase (``now`` values)."""

    call_id: str
    disposition: Disposition
    sip_status: int | None
    sip_reason: str | None
    hangup_by: str | None  # "caller" (us), "callee", or None when never answered
    end_reason: str | None  # why it ended, e.g. "hangup", "max_duration", "timer_b"
    created_at: float
    invite_sent_at: float | None
    provisional_at: float | None
    ringing_at: float | None
    early_media_at: float | None
    answered_at: float | None
    ended_at: float
    detail: str | None = None
    transferred_to: str | None = None  # the REFER's target, when it took the call over

    @property
    def talk_time_s(self) -> float:
        """Seconds between the answer and the end (0 when never answered)."""
        return 0.0 if self.answered_at is None else max(0.0, self.ended_at - self.answered_at)


class CallEvent(Action):
    """Base of the events a call reports to the application."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Ringing(CallEvent):
    """The callee is alerted (180, 181 or 182, the first time)."""

    call_id: str
    status: int


@dataclass(frozen=True, slots=True)
class EarlyMedia(CallEvent):
    """A provisional response carried an answer: play or record it before the answer."""

    call_id: str
    media: MediaAnswer


@dataclass(frozen=True, slots=True)
class Answered(CallEvent):
    """The callee answered and the media is agreed; the ACK is on its way."""

    call_id: str
    media: MediaAnswer


@dataclass(frozen=True, slots=True)
class Held(CallEvent):
    """The callee put the call on hold (re-INVITE with sendonly, inactive or 0.0.0.0)."""

    call_id: str
    media: MediaAnswer


@dataclass(frozen=True, slots=True)
class Resumed(CallEvent):
    """The callee took the call off hold."""

    call_id: str
    media: MediaAnswer


@dataclass(frozen=True, slots=True)
class MediaUpdated(CallEvent):
    """The media changed without a hold change (new address, port or codec)."""

    call_id: str
    media: MediaAnswer


@dataclass(frozen=True, slots=True)
class Dtmf(CallEvent):
    """A digit relayed by the callee in an INFO request."""

    call_id: str
    digit: str
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class TransferAccepted(CallEvent):
    """The callee accepted our REFER (a 2xx, usually 202): the verdict comes by NOTIFY."""

    call_id: str
    status: int


@dataclass(frozen=True, slots=True)
class TransferProgress(CallEvent):
    """A NOTIFY reported a provisional status of the transferee's INVITE (a 1xx sipfrag)."""

    call_id: str
    status: int
    reason: str | None


@dataclass(frozen=True, slots=True)
class TransferSucceeded(CallEvent):
    """The transfer took: a 2xx sipfrag (``status``), or the callee left after accepting it
    (``status`` None). Our BYE follows, if the callee's has not come."""

    call_id: str
    target: str
    status: int | None


@dataclass(frozen=True, slots=True)
class TransferFailed(CallEvent):
    """The transfer did not take; the call is still up unless ``Ended`` follows.

    ``reason``: ``refer_not_allowed`` (the callee's Allow lacks REFER),
    ``refer_rejected`` (a 3xx-6xx to the REFER, ``status``), ``refer_timeout``,
    ``transport_error``, ``notify_failure`` (a 3xx-6xx sipfrag, ``status``),
    ``subscription_terminated`` (ended without a final status),
    ``no_final_notify`` (no verdict in time), ``call_ended``.
    """

    call_id: str
    target: str
    status: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Ended(CallEvent):
    """The call is over (reported once)."""

    call_id: str
    result: CallResult


# --- the call state machine -------------------------------------------------------------------


class CallState(Enum):
    """Where an outbound call stands."""

    IDLE = "Idle"
    CALLING = "Calling"  # INVITE sent, nothing heard
    PROCEEDING = "Proceeding"  # a provisional arrived
    CANCELLING = "Cancelling"  # we want out before the answer (CANCEL sent or pending)
    CONFIRMED = "Confirmed"  # answered, media agreed
    TERMINATING = "Terminating"  # our BYE is out
    TERMINATED = "Terminated"


class CallStateError(LocalProtocolError):
    """The application asked a call for something its state does not allow."""


class CallTimer(StrEnum):
    """A call's own timers (the transaction timers live in the layer)."""

    # Equal to their values as strings, so hashed as those strings (in C).
    __hash__ = str.__hash__

    RING_TIMEOUT = "ring_timeout"
    CANCEL_GUARD = "cancel_guard"  # §9.1: give up on a 487 after 64*T1
    MAX_DURATION = "max_duration"
    SESSION_REFRESH = "session_refresh"  # RFC 4028: we refresh at half the interval
    SESSION_EXPIRY = "session_expiry"  # RFC 4028 §10: BYE if nobody refreshed
    RETRANSMIT_2XX = "retransmit_2xx"  # §13.3.1.4: our 2xx to a re-INVITE, until ACK
    TRANSFER_GUARD = "transfer_guard"  # how long a REFER may wait for its verdict


# Timer names as plain strings (``.value`` on a member is a Python-level property).
_CALL_TIMER_NAMES: dict[CallTimer, str] = {timer: timer.value for timer in CallTimer}


@dataclass(frozen=True, slots=True)
class CallTimerKey:
    """The ``key`` of a call's ``StartTimer``: route it back with ``CallRouter.timer_fired``."""

    call_id: str


@dataclass(slots=True)
class _Record:
    created_at: float
    invite_sent_at: float | None = None
    provisional_at: float | None = None
    ringing_at: float | None = None
    early_media_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    sip_status: int | None = None
    sip_reason: str | None = None


@dataclass(slots=True)
class _Retransmit2xx:
    key: TransactionKey
    response: Response
    cseq: int
    interval_s: float
    give_up_at: float


class TransferState(Enum):
    """Where our REFER stands."""

    REFERRING = "Referring"  # REFER sent, no final response yet
    ACCEPTED = "Accepted"  # 2xx to the REFER (or a NOTIFY came first): awaiting the verdict
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(slots=True)
class _Transfer:
    target: str
    key: TransactionKey | None
    seq: int
    state: TransferState
    progress: int | None = None  # the last 1xx sipfrag reported
    headers: list[Header] = field(default_factory=list)  # the REFER's own, to send it again
    authorized: bool = False  # the REFER was sent again with credentials (once only)
    uri: str = ""  # the REFER's request-URI, which a digest answer covers

    @property
    def pending(self) -> bool:
        return self.state in (TransferState.REFERRING, TransferState.ACCEPTED)


@dataclass(slots=True)
class _SessionTimer:
    interval_s: int
    we_refresh: bool


def _parse_session_expires(value: str | None) -> tuple[int, str | None] | None:
    """``Session-Expires: 1800;refresher=uac`` -> (1800, "uac"); None if absent or bad."""
    if value is None:
        return None
    number, _, rest = value.partition(";")
    number = number.strip()
    if not number.isdigit() or len(number) > 9:
        return None
    try:
        refresher = get_param(parse_params(";" + rest), "refresher") if rest else None
    except ParseError:
        refresher = None
    return int(number), (refresher.lower() if refresher else None)


class Call:
    """One outbound call, driving the transaction layer it is given."""

    def __init__(
        self,
        config: UserAgentConfig,
        dial: Dial,
        ids: IdGenerators,
        layer: TransactionLayer,
        *,
        digest: DigestClient | None = None,
        now: float,
        call_id: str | None = None,
    ) -> None:
        self.config = config
        self.dial = dial
        self.ids = ids
        self.layer = layer
        self.digest = digest
        self.call_id = call_id or ids.call_id()
        self._timer_key = CallTimerKey(self.call_id)  # one per call, for all its timers
        self.local_tag = ids.tag()
        self.state = CallState.IDLE
        self.dialog: Dialog | None = None
        self.media = MediaSession(dial.media, zlib.crc32(self.call_id.encode()) & 0x7FFFFFFF)
        self.record = _Record(created_at=now)
        self.result: CallResult | None = None
        self._cseq = 0
        self._invite: Request | None = None
        self._invite_key: TransactionKey | None = None
        self._ack: Request | None = None
        self._cancel_sent = False
        self._cancel_reason: Disposition | None = None
        # A withdrawn call (``withdraw``) keeps an answer that crosses its CANCEL.
        self._keep_crossed_answer = False
        self._bye_key: TransactionKey | None = None
        self._auth_headers: dict[str, str] = {}
        self._auth_attempts: dict[bool, AuthAttempt] = {}
        self._session_interval_s = config.session_expires_s
        self._session_retried = False
        self._session: _SessionTimer | None = None
        self._refresh: tuple[TransactionKey, Request] | None = None
        self._retransmit: _Retransmit2xx | None = None
        self._timers: set[CallTimer] = set()
        self._ringing_reported = False
        self._early_sdp: bytes | None = None
        self._peer_allow: tuple[str, ...] = ()
        self._transfer: _Transfer | None = None
        self._refer_seqs: list[int] = []  # every REFER of the dialog, first first

    def __repr__(self) -> str:
        return f"<Call {self.call_id} {self.state.value}>"

    @property
    def transfer_state(self) -> TransferState | None:
        """Where the last transfer stands; None before any."""
        return None if self._transfer is None else self._transfer.state

    @property
    def finished(self) -> bool:
        """True once nothing more is expected: the router forgets the call."""
        return self.state is CallState.TERMINATED

    def release(self) -> None:
        """Let go of what a finished call no longer needs (whoever forgets it calls this).

        Its INVITE and BYE live on in transactions that absorb retransmissions
        for up to 64*T1; their parsed views are dropped, so that each call
        leaves a handful of objects behind instead of dozens.
        """
        for request in (self._invite, self._ack, self._refresh[1] if self._refresh else None):
            if request is not None:
                request.forget_views()

    # --- application inputs ------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Send the INVITE with our SDP offer and start the ring timeout."""
        if self.state is not CallState.IDLE:
            raise CallStateError(f"call {self.call_id} already started")
        out: list[Action] = []
        self.media.make_offer()
        self._send_invite(now, out)
        self.record.invite_sent_at = now
        ring = self.dial.ring_timeout_s or self.config.ring_timeout_s
        self._start_timer(CallTimer.RING_TIMEOUT, now + ring, out)
        self.state = CallState.CALLING
        return out

    def send_request(
        self,
        method: str,
        now: float,
        *,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> list[Action]:
        """An in-dialog OPTIONS or INFO from our side (answered calls only).

        Its final response needs no action from us (§12.2.1.2 aside: a 481 or
        408 to it says the dialog is gone, which the BYE path then finds).
        """
        if method not in ("OPTIONS", "INFO"):
            raise ValueError(f"send_request sends OPTIONS or INFO, not {method}")
        if self.state is not CallState.CONFIRMED or self.dialog is None:
            raise CallStateError(f"{method} needs an answered call (state {self.state.value})")
        request = self.dialog.create_request(
            method, self._via(), headers=self._user_agent(), body=body, content_type=content_type
        )
        _key, actions = self.layer.send_request(request, self._next_hop(), self._tp, now)
        return actions

    def hold(self, now: float, *, on_hold: bool = True) -> list[Action]:
        """Put the callee on hold (a=sendonly re-offer) or take it off (a=sendrecv).

        The re-INVITE rides the refresh slot, so its answer is ACKed and read
        like a session refresh's (a MediaUpdated event follows).
        """
        if self.state is not CallState.CONFIRMED or self.dialog is None:
            raise CallStateError(f"hold needs an answered call (state {self.state.value})")
        if self._refresh is not None:
            raise CallStateError("a re-INVITE or UPDATE of ours is still pending")
        body = self.media.make_offer("sendonly" if on_hold else "sendrecv")
        request = self.dialog.create_request(
            "INVITE", self._via(), headers=self._user_agent(), body=body
        )
        key, actions = self.layer.send_request(request, self._next_hop(), self._tp, now)
        self._refresh = (key, request)
        return actions

    def transfer(self, target: Uri, now: float, *, timeout_s: float | None = None) -> list[Action]:
        """Blind transfer: send a REFER to ``target`` in the dialog (RFC 3515).

        The verdict arrives as ``TransferSucceeded`` (our BYE follows, the
        call ends ``transferred``) or ``TransferFailed`` (the call stays up).
        Without a verdict within ``timeout_s`` (by default the ring timeout
        plus 64*T1: the transferee's INVITE may ring that long) it failed.
        A callee whose Allow leaves REFER out fails at once, without a REFER.
        """
        dialog = self.dialog
        if self.state is not CallState.CONFIRMED or dialog is None:
            raise CallStateError(f"transfer needs an answered call (state {self.state.value})")
        if self._transfer is not None and self._transfer.pending:
            raise CallStateError("a transfer is already under way")
        out: list[Action] = []
        text = target.serialize()
        if self._peer_allow and "REFER" not in self._peer_allow:
            self._transfer = _Transfer(text, None, 0, TransferState.FAILED)
            out.append(TransferFailed(self.call_id, text, None, "refer_not_allowed"))
            return out
        config = self.config
        headers = refer_headers(
            target, NameAddr(config.local_uri, config.display_name), dialog.local_contact
        )
        headers += self._user_agent()
        request = dialog.create_request("REFER", self._via(), headers=headers)
        key, actions = self.layer.send_request(request, self._next_hop(), self._tp, now)
        seq = request.cseq.seq
        self._refer_seqs.append(seq)
        self._transfer = _Transfer(
            text, key, seq, TransferState.REFERRING, headers=headers, uri=request.uri.serialize()
        )
        out += actions
        if timeout_s is None:
            timeout_s = config.ring_timeout_s + config.timers.transaction_timeout_s
        self._start_timer(CallTimer.TRANSFER_GUARD, now + timeout_s, out)
        return out

    def hangup(self, now: float) -> list[Action]:
        """End the call from our side: CANCEL before the answer, BYE after.

        Calling it again while the call is ending does nothing (a hangup may
        cross the callee's BYE).
        """
        out: list[Action] = []
        match self.state:
            case CallState.IDLE:
                self._finish(now, Disposition.CANCELLED, "hangup", out, hangup_by=None)
                self.state = CallState.TERMINATED
            case CallState.CALLING | CallState.PROCEEDING:
                self._request_cancel(Disposition.CANCELLED, now, out)
            case CallState.CONFIRMED:
                self._send_bye(now, Disposition.ANSWERED, "hangup", out)
        return out

    def withdraw(self, now: float) -> list[Action]:
        """CANCEL a call that is still ringing, but keep an answer that crosses it.

        Unlike ``hangup``, a 200 that crosses the CANCEL is taken as an answer
        (``Answered``), so the application can speak to the person before it
        hangs up: a predictive dialer that takes back a ringing call owes anyone
        who answers it the identification message (47 CFR 64.1200(a)(7)).
        Outside CALLING and PROCEEDING it does nothing.
        """
        out: list[Action] = []
        if self.state in (CallState.CALLING, CallState.PROCEEDING):
            self._keep_crossed_answer = True
            self._request_cancel(Disposition.CANCELLED, now, out)
        return out

    # --- what the router hands us ---------------------------------------------------------

    def on_response(
        self, key: TransactionKey | None, response: Response, now: float
    ) -> list[Action]:
        """A response for one of our requests (``key`` None: no transaction matched)."""
        out: list[Action] = []
        method = response.cseq.method
        invite = self._invite
        if method == "INVITE" and invite is not None and response.cseq.seq == invite.cseq.seq:
            if key is None or key == self._invite_key:
                self._invite_response(response, now, out)
        elif self._refresh is not None and key == self._refresh[0]:
            self._refresh_response(response, now, out)
        elif self._transfer is not None and key is not None and key == self._transfer.key:
            self._refer_response(response, now, out)
        elif key is not None and key == self._bye_key and response.status >= 200:
            self.state = CallState.TERMINATED
        return out

    def on_request(self, key: TransactionKey | None, request: Request, now: float) -> list[Action]:
        """A request from the callee (``key`` None for an ACK of our 2xx)."""
        out: list[Action] = []
        dialog = self.dialog
        if dialog is None or not dialog.matches(request):
            if request.method != "ACK" and key is not None:
                # §12.2.2: no dialog of ours has this request's tags.
                out += self.layer.send_response(key, make_response(request, 481), now)
            return out
        glare = self._refresh is not None and self._refresh[1].method == "INVITE"
        if request.method == "INVITE" and glare and key is not None:
            # §14.2: an INVITE while ours is pending is glare: 491.
            out += self.layer.send_response(key, make_response(request, 491), now)
            return out
        extra = self._session_headers_for(request, now, out)
        result = dialog.handle_request(
            request,
            self.media,
            extra_headers=extra,
            on_notify=self._answer_notify if self._refer_seqs else None,
        )
        if result.response is not None and key is not None:
            out += self.layer.send_response(key, result.response, now)
            if request.method == "INVITE" and result.response.status // 100 == 2:
                self._start_2xx_retransmit(key, result.response, now, out)
        event = result.event
        match event:
            case ByeReceived():
                if self.state is CallState.CONFIRMED:
                    self._cancel_all_timers(out)
                    disposition = self._bye_during_transfer(out)
                    self._finish(now, disposition, "remote_bye", out, "callee")
                self.state = CallState.TERMINATED
            case ReferNotified():
                self._notified(event, now, out)
            case OfferAnswered(media=media, previous=previous):
                self._media_changed(media, previous, out)
            case DtmfReceived(digit=digit, duration_ms=duration_ms):
                out.append(Dtmf(self.call_id, digit, duration_ms))
            case AckReceived(cseq=cseq, media=media):
                retransmit = self._retransmit
                if retransmit is not None and retransmit.cseq == cseq:
                    self._retransmit = None
                    self._cancel_timer(CallTimer.RETRANSMIT_2XX, out)
                if media is not None:
                    out.append(MediaUpdated(self.call_id, media))
        return out

    def on_timeout(
        self, key: TransactionKey, now: float, *, transport: bool = False
    ) -> list[Action]:
        """Transaction ``key`` timed out (Timer B/F/H) or its transport failed."""
        out: list[Action] = []
        if key == self._invite_key and self.state in (
            CallState.CALLING,
            CallState.PROCEEDING,
            CallState.CANCELLING,
        ):
            self._cancel_all_timers(out)
            if self._cancel_reason is not None:
                disposition = self._cancel_reason
            else:
                disposition = Disposition.UNAVAILABLE if transport else disposition_for(408)
            status, reason = (503, "Service Unavailable") if transport else (408, "Request Timeout")
            self.record.sip_status, self.record.sip_reason = status, reason
            end = "transport_error" if transport else "timer_b"
            self._finish(now, disposition, end, out, hangup_by=None)
            self.state = CallState.TERMINATED
        elif key == self._bye_key:
            self.state = CallState.TERMINATED
        elif self._transfer is not None and key == self._transfer.key:
            if self._transfer.state is TransferState.REFERRING:
                # No answer to the REFER at all. §12.2.1.2 would end the dialog;
                # the callee may simply ignore REFER, so the call stays up for
                # the application's fallback (its media says whether it lives).
                status = 503 if transport else 408
                reason = "transport_error" if transport else "refer_timeout"
                self._transfer_failed(status, reason, out)
        elif self._refresh is not None and key == self._refresh[0]:
            self._refresh = None
            if self.state is CallState.CONFIRMED:
                # §12.2.1.2: a 408 to a mid-dialog request ends the dialog.
                self._send_bye(now, Disposition.ANSWERED, "refresh_failed", out)
        return out

    def timer_fired(self, timer: CallTimer, now: float) -> list[Action]:
        """One of this call's timers reached its deadline."""
        out: list[Action] = []
        if timer not in self._timers:
            return out  # cancelled in the same instant it fired
        self._timers.discard(timer)
        match timer:
            case CallTimer.RING_TIMEOUT:
                if self.state in (CallState.CALLING, CallState.PROCEEDING):
                    self._request_cancel(Disposition.NO_ANSWER, now, out)
            case CallTimer.CANCEL_GUARD:
                if self.state is CallState.CANCELLING:
                    # §9.1: no final response 64*T1 after the CANCEL: consider the
                    # INVITE cancelled.
                    self._cancel_all_timers(out)
                    if self._invite_key is not None:
                        out += self.layer.abandon(self._invite_key)
                    reason = self._cancel_reason or Disposition.CANCELLED
                    self._finish(now, reason, "cancel_timeout", out, hangup_by=None)
                    self.state = CallState.TERMINATED
            case CallTimer.MAX_DURATION:
                if self.state is CallState.CONFIRMED:
                    self._send_bye(now, Disposition.ANSWERED, "max_duration", out)
            case CallTimer.SESSION_REFRESH:
                if self.state is CallState.CONFIRMED:
                    self._send_refresh(now, out)
            case CallTimer.SESSION_EXPIRY:
                if self.state is CallState.CONFIRMED:
                    self._send_bye(now, Disposition.ANSWERED, "session_expired", out)
            case CallTimer.RETRANSMIT_2XX:
                self._retransmit_2xx(now, out)
            case CallTimer.TRANSFER_GUARD:
                if self._transfer is not None and self._transfer.pending:
                    self._transfer_failed(None, "no_final_notify", out)
        return out

    # --- the INVITE and its responses ----------------------------------------------------------

    def _branch(self) -> str:
        branch = self.ids.branch()
        return branch if branch.startswith(MAGIC_COOKIE) else MAGIC_COOKIE + branch

    def _via(self) -> Via:
        params = (("rport", None), ("branch", self._branch()))
        return Via(
            self.config.transport.upper(), self.config.via_host, self.config.via_port, params
        )

    def _send_invite(self, now: float, out: list[Action]) -> None:
        config = self.config
        self._cseq += 1
        from_addr = NameAddr(config.local_uri, config.display_name, (("tag", self.local_tag),))
        to_addr = self.dial.to or NameAddr(self.dial.target)
        contact = NameAddr(config.contact)
        via = self._via()
        cseq = CSeq(self._cseq, "INVITE")
        headers: list[Header] = [
            ("Via", via.serialize()),
            ("Max-Forwards", "70"),
            ("From", from_addr.serialize()),
            ("To", to_addr.serialize()),
            ("Call-ID", self.call_id),
            ("CSeq", cseq.serialize()),
            ("Contact", contact.serialize()),
            ("Allow", ALLOW),
            ("Supported", "timer"),
        ]
        if self._session_interval_s is not None:
            headers.append(("Session-Expires", str(self._session_interval_s)))
            headers.append(("Min-SE", str(config.min_se_s)))
        if config.user_agent:
            headers.append(("User-Agent", config.user_agent))
        headers += self._auth_headers.items()
        headers += self.dial.headers
        headers.append(("Content-Type", "application/sdp"))
        body = self.media.offer_sdp or b""
        invite = Request("INVITE", self.dial.target, tuple(headers), body)
        # The dialog and the transaction read these back: no need to parse our own text.
        extra_contact = any(canonical_name(name) == "Contact" for name, _ in self.dial.headers)
        invite.prime(
            top_via=via,
            from_addr=from_addr,
            to_addr=to_addr,
            cseq=cseq,
            contacts=None if extra_contact else (contact,),
        )
        self._invite = invite
        self._invite_key, actions = self.layer.send_request(
            invite, config.proxy, config.transport, now
        )
        out += actions

    def _invite_response(self, response: Response, now: float, out: list[Action]) -> None:
        status = response.status
        if status < 200:
            self._provisional(response, now, out)
        elif status < 300:
            self._success(response, now, out)
        elif self.state in (CallState.CALLING, CallState.PROCEEDING, CallState.CANCELLING):
            self._failure(response, now, out)

    def _provisional(self, response: Response, now: float, out: list[Action]) -> None:
        record = self.record
        if self.state not in (CallState.CALLING, CallState.PROCEEDING, CallState.CANCELLING):
            return
        if record.provisional_at is None:
            record.provisional_at = now
        if self.state is CallState.CALLING:
            self.state = CallState.PROCEEDING
        if self.state is CallState.CANCELLING:
            if not self._cancel_sent:
                # §9.1: a CANCEL waits for the first provisional response.
                self._send_cancel(now, out)
            return
        if response.status in (180, 181, 182) and not self._ringing_reported:
            self._ringing_reported = True
            record.ringing_at = now
            out.append(Ringing(self.call_id, response.status))
        if response.body and response.media_type == "application/sdp":
            if response.body == self._early_sdp:
                return
            try:
                media = self.media.take_answer(response.body)
            except SdpError:
                return  # an unusable preview; the 2xx carries the real answer
            self._early_sdp = response.body
            if record.early_media_at is None:
                record.early_media_at = now
            out.append(EarlyMedia(self.call_id, media))

    def _success(self, response: Response, now: float, out: list[Action]) -> None:
        invite = self._invite
        assert invite is not None
        if self.dialog is not None:
            if response.to_tag == self.dialog.remote_tag:
                # §13.2.2.4: every retransmission of the 2xx gets the ACK again.
                if self._ack is not None:
                    out.append(self.layer.send_stateless(self._ack, self._next_hop(), self._tp))
            else:
                self._drop_fork(invite, response, now, out)
            return
        try:
            dialog = Dialog.from_uac(invite, response)
        except (DialogError, ParseError) as error:
            fallback = _fallback_dialog(invite, response)
            self._set_status(response)
            if fallback is None:
                # Without even a To tag there is no ACK to build: the callee gives
                # up after 64*T1 without one.
                self._cancel_all_timers(out)
                self._finish(now, Disposition.FAILED, "bad_2xx", out, None, detail=str(error))
                self.state = CallState.TERMINATED
                return
            # §13.2.2.4: every 2xx gets its ACK. One we cannot use (its Contact or
            # Record-Route unreadable) is ACKed and ended with our BYE where the
            # INVITE went, so that the callee's leg does not stay up until its
            # own timers give up.
            self.dialog = fallback
            self._ack = fallback.create_ack(invite, self._via())
            out.append(self.layer.send_stateless(self._ack, self._next_hop(), self._tp))
            self._send_bye(now, Disposition.FAILED, "bad_2xx", out, detail=str(error))
            return
        self.dialog = dialog
        self._ack = dialog.create_ack(invite, self._via())
        out.append(self.layer.send_stateless(self._ack, self._next_hop(), self._tp))
        self.record.answered_at = now
        self._set_status(response)
        self._cancel_timer(CallTimer.RING_TIMEOUT, out)
        self._cancel_timer(CallTimer.CANCEL_GUARD, out)
        self._peer_allow = _tokens(response, "Allow")
        if self.state is CallState.CANCELLING and not self._keep_crossed_answer:
            # The 200 crossed our CANCEL (§9.1 race): ACK it, then BYE.
            reason = self._cancel_reason or Disposition.CANCELLED
            self._send_bye(now, reason, "cancelled_after_answer", out, hangup_by="caller")
            return
        try:
            if response.body:
                if response.media_type != "application/sdp":
                    raise SdpError(f"answer of type {response.media_type}")
                media = self.media.take_answer(response.body)
            elif self.media.current is not None:
                media = self.media.current  # the early answer stands (RFC 3261 §13.2.1)
            else:
                raise SdpError("2xx without an answer")
        except SdpError as error:
            self._send_bye(
                now, Disposition.MEDIA_FAILED, "media_negotiation_failed", out, detail=str(error)
            )
            return
        self.state = CallState.CONFIRMED
        out.append(Answered(self.call_id, media))
        limit = self.dial.max_duration_s or self.config.max_duration_s
        if limit is not None:
            self._start_timer(CallTimer.MAX_DURATION, now + limit, out)
        self._arm_session_timer(response, now, out, we_are_uac=True)

    def _drop_fork(
        self, invite: Request, response: Response, now: float, out: list[Action]
    ) -> None:
        # §13.2.2.4: a 2xx from another fork makes another dialog; ACK it, then
        # end it with a BYE, since we talk to one callee only.
        try:
            fork = Dialog.from_uac(invite, response)
        except (DialogError, ParseError):
            return
        ack = fork.create_ack(invite, self._via())
        out.append(self.layer.send_stateless(ack, self._next_hop(fork), self._tp))
        bye = fork.create_request("BYE", self._via())
        _, actions = self.layer.send_request(bye, self._next_hop(fork), self._tp, now)
        out += actions

    def _failure(self, response: Response, now: float, out: list[Action]) -> None:
        status = response.status
        if status in (401, 407) and self.state is not CallState.CANCELLING:
            self._retry_with_credentials(response, now, out)
            return
        if status == 422 and self.state is not CallState.CANCELLING and not self._session_retried:
            # RFC 4028 §7.4: retry once with the Min-SE the callee asks for.
            min_se = _parse_session_expires(response.get("Min-SE"))
            if min_se is not None:
                self._session_retried = True
                self._session_interval_s = max(min_se[0], self._session_interval_s or 0)
                self._send_invite(now, out)
                self.state = CallState.CALLING
                return
        self._cancel_all_timers(out)
        self._set_status(response)
        if self.state is CallState.CANCELLING and status == 487:
            # Our CANCEL ended it: the ring timeout's, or a hangup's.
            disposition = self._cancel_reason or Disposition.CANCELLED
            ring_timeout = disposition is Disposition.NO_ANSWER
            end_reason, hangup_by = ("ring_timeout" if ring_timeout else "hangup"), "caller"
        else:
            disposition = _response_disposition(response)
            end_reason, hangup_by = "rejected", None
        self._finish(now, disposition, end_reason, out, hangup_by=hangup_by)
        self.state = CallState.TERMINATED

    def _retry_with_credentials(self, response: Response, now: float, out: list[Action]) -> None:
        proxy = response.status == 407
        invite = self._invite
        assert invite is not None
        self._set_status(response)
        if self.digest is None:
            self._cancel_all_timers(out)
            self._finish(
                now, Disposition.AUTH_FAILED, "rejected", out, None, detail="no credentials"
            )
            self.state = CallState.TERMINATED
            return
        values = response.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate")
        target = invite.uri
        host = target.host if isinstance(target, SipUri) else self.config.proxy[0]
        previous = self._auth_attempts.get(proxy)
        answer = self.digest.respond(
            values,
            proxy=proxy,
            method="INVITE",
            uri=target.serialize(),
            target_host=host,
            cnonce=self.ids.cnonce(),
            body=invite.body,
            previous=previous,
        )
        if not isinstance(answer, Authorize):
            self._cancel_all_timers(out)
            disposition = Disposition(answer.reason)
            self._finish(now, disposition, "rejected", out, None, detail=answer.detail)
            self.state = CallState.TERMINATED
            return
        # §22.2: the same Call-ID and From tag, a new CSeq and a new branch.
        self._auth_attempts[proxy] = answer.attempt
        self._auth_headers[answer.header_name] = answer.header_value
        self._send_invite(now, out)
        self.state = CallState.CALLING

    # --- CANCEL and BYE ------------------------------------------------------------------------

    def _request_cancel(self, reason: Disposition, now: float, out: list[Action]) -> None:
        had_provisional = self.state is CallState.PROCEEDING
        self._cancel_reason = reason
        self.state = CallState.CANCELLING
        self._cancel_timer(CallTimer.RING_TIMEOUT, out)
        if had_provisional:
            self._send_cancel(now, out)
        # Otherwise §9.1: "SHOULD NOT be sent" before a provisional; it goes out
        # with the first one, and Timer B ends the INVITE if none comes.

    def _send_cancel(self, now: float, out: list[Action]) -> None:
        invite = self._invite
        assert invite is not None
        self._cancel_sent = True
        cancel = build_cancel(invite)
        _, actions = self.layer.send_request(cancel, self.config.proxy, self._tp, now)
        out += actions
        self._start_timer(
            CallTimer.CANCEL_GUARD, now + self.config.timers.transaction_timeout_s, out
        )

    def _send_bye(
        self,
        now: float,
        disposition: Disposition,
        end_reason: str,
        out: list[Action],
        *,
        hangup_by: str | None = "caller",
        detail: str | None = None,
    ) -> None:
        dialog = self.dialog
        assert dialog is not None
        self._cancel_all_timers(out)
        bye = dialog.create_request("BYE", self._via(), headers=self._user_agent())
        self._bye_key, actions = self.layer.send_request(bye, self._next_hop(), self._tp, now)
        out += actions
        self.state = CallState.TERMINATING
        self._finish(now, disposition, end_reason, out, hangup_by, detail=detail)

    # --- transfer: the REFER's answer and the NOTIFYs --------------------------------------------

    def _refer_response(self, response: Response, now: float, out: list[Action]) -> None:
        transfer = self._transfer
        assert transfer is not None
        status = response.status
        if status < 200 or transfer.state is not TransferState.REFERRING:
            return  # a provisional, or a NOTIFY got here first
        if status < 300:
            transfer.state = TransferState.ACCEPTED
            out.append(TransferAccepted(self.call_id, status))
            return
        if (
            status in (401, 407)
            and not transfer.authorized
            and self._refer_with_credentials(response, now, out)
        ):
            return
        self._transfer_failed(status, "refer_rejected", out)
        if status == 481 and self.state is CallState.CONFIRMED:
            # §12.2.1.2: the callee has no such dialog: it is gone.
            self._send_bye(now, Disposition.ANSWERED, "refer_failed", out)

    def _refer_with_credentials(self, response: Response, now: float, out: list[Action]) -> bool:
        """Send the REFER again answering a 401/407 (§22.2, as for the INVITE); False: cannot."""
        transfer = self._transfer
        dialog = self.dialog
        invite = self._invite
        if self.digest is None or transfer is None or dialog is None or invite is None:
            return False
        proxy = response.status == 407
        # The credentials are the call's: offered to the host the INVITE went
        # to (the REFER's request-URI is the callee's Contact, another host).
        target = invite.uri
        host = target.host if isinstance(target, SipUri) else self.config.proxy[0]
        answer = self.digest.respond(
            response.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate"),
            proxy=proxy,
            method="REFER",
            uri=transfer.uri,
            target_host=host,
            cnonce=self.ids.cnonce(),
        )
        if not isinstance(answer, Authorize):
            return False
        # A new CSeq in the dialog, the headers as before, and the answer.
        headers = [*transfer.headers, (answer.header_name, answer.header_value)]
        request = dialog.create_request("REFER", self._via(), headers=headers)
        key, actions = self.layer.send_request(request, self._next_hop(), self._tp, now)
        # The challenged REFER made no subscription: a NOTIFY without id
        # (§2.4.6, the dialog's first REFER) is about this one if it is first.
        self._refer_seqs.remove(transfer.seq)
        transfer.key = key
        transfer.seq = request.cseq.seq
        transfer.uri = request.uri.serialize()
        transfer.authorized = True
        self._refer_seqs.append(transfer.seq)
        out += actions
        return True

    def _answer_notify(self, request: Request) -> InDialogResult:
        return answer_notify(request, self._refer_seqs)

    def _notified(self, event: ReferNotified, now: float, out: list[Action]) -> None:
        transfer = self._transfer
        if transfer is None or not transfer.pending:
            return  # answered (200) and nothing more: the verdict is in
        # §2.4.6: a NOTIFY without id reports on the dialog's first REFER.
        seq = event.refer_seq if event.refer_seq is not None else self._refer_seqs[0]
        if seq != transfer.seq:
            return  # about an earlier REFER whose verdict is in
        if transfer.state is TransferState.REFERRING:
            # The NOTIFY overtook the 2xx (RFC 3515 §2.4.4 allows either order).
            transfer.state = TransferState.ACCEPTED
        status = event.status
        if status is None:
            if event.terminated:
                self._transfer_failed(None, "subscription_terminated", out)
        elif status < 200:
            if status != transfer.progress:
                transfer.progress = status
                out.append(TransferProgress(self.call_id, status, event.reason))
            if event.terminated:
                self._transfer_failed(status, "subscription_terminated", out)
        elif status < 300:
            transfer.state = TransferState.SUCCEEDED
            self._cancel_timer(CallTimer.TRANSFER_GUARD, out)
            out.append(TransferSucceeded(self.call_id, transfer.target, status))
            if self.state is CallState.CONFIRMED:
                # RFC 5589 §6.1: the transferor ends its leg once the transfer took.
                self._send_bye(now, Disposition.TRANSFERRED, "transferred", out)
        else:
            self._transfer_failed(status, "notify_failure", out)

    def _transfer_failed(self, status: int | None, reason: str, out: list[Action]) -> None:
        transfer = self._transfer
        assert transfer is not None
        transfer.state = TransferState.FAILED
        self._cancel_timer(CallTimer.TRANSFER_GUARD, out)
        out.append(TransferFailed(self.call_id, transfer.target, status, reason))

    def _bye_during_transfer(self, out: list[Action]) -> Disposition:
        """The disposition when the callee BYEs: transferred once it accepted our REFER."""
        transfer = self._transfer
        if transfer is None:
            return Disposition.ANSWERED
        if transfer.state is TransferState.ACCEPTED:
            # It took the transfer on and left without the final NOTIFY (some
            # gateways do): the call is the target's now, as far as we can tell.
            transfer.state = TransferState.SUCCEEDED
            out.append(TransferSucceeded(self.call_id, transfer.target, None))
        elif transfer.state is TransferState.REFERRING:
            self._transfer_failed(None, "call_ended", out)
        if transfer.state is TransferState.SUCCEEDED:
            return Disposition.TRANSFERRED
        return Disposition.ANSWERED

    # --- in-dialog work: session timers, 2xx retransmission ------------------------------------

    def _arm_session_timer(
        self, message: Request | Response, now: float, out: list[Action], *, we_are_uac: bool
    ) -> None:
        parsed = _parse_session_expires(message.get("Session-Expires"))
        if parsed is None:
            return
        interval, refresher = parsed
        if interval <= 0:
            return
        # "uac"/"uas" name the roles of *this* transaction's ends.
        if refresher is None:
            refresher = "uac"
        we_refresh = (refresher == "uac") == we_are_uac
        self._session = _SessionTimer(interval, we_refresh)
        self._cancel_timer(CallTimer.SESSION_REFRESH, out)
        if we_refresh:
            self._start_timer(CallTimer.SESSION_REFRESH, now + interval / 2, out)
        # RFC 4028 §10: without a refresh, BYE at expiry minus min(32, SE/3).
        self._start_timer(CallTimer.SESSION_EXPIRY, now + interval - min(32, interval / 3), out)

    def _session_headers_for(self, request: Request, now: float, out: list[Action]) -> list[Header]:
        if request.method not in ("INVITE", "UPDATE"):
            return []
        parsed = _parse_session_expires(request.get("Session-Expires"))
        if parsed is None:
            if self._session is None:
                return []
            # A refresh without Session-Expires keeps the interval (RFC 4028 §9).
            parsed = (self._session.interval_s, None)
        interval, refresher = parsed
        refresher = refresher or "uac"
        value = f"{interval};refresher={refresher}"
        self._arm_session_timer_value(interval, refresher == "uas", now, out)
        headers: list[Header] = [("Session-Expires", value)]
        if "timer" in _tokens(request, "Supported"):
            headers.append(("Require", "timer"))
        return headers

    def _arm_session_timer_value(
        self, interval: int, we_refresh: bool, now: float, out: list[Action]
    ) -> None:
        self._session = _SessionTimer(interval, we_refresh)
        self._cancel_timer(CallTimer.SESSION_REFRESH, out)
        if we_refresh:
            self._start_timer(CallTimer.SESSION_REFRESH, now + interval / 2, out)
        self._start_timer(CallTimer.SESSION_EXPIRY, now + interval - min(32, interval / 3), out)

    def _send_refresh(self, now: float, out: list[Action]) -> None:
        dialog = self.dialog
        session = self._session
        assert dialog is not None and session is not None
        if self._refresh is not None:
            return
        headers: list[Header] = [
            ("Session-Expires", f"{session.interval_s};refresher=uac"),
            ("Supported", "timer"),
            *self._user_agent(),
        ]
        if "UPDATE" in self._peer_allow:
            request = dialog.create_request("UPDATE", self._via(), headers=headers)
        else:
            # RFC 4028 §7.4: a re-INVITE refresh repeats the session description.
            body = self.media.make_offer()
            request = dialog.create_request("INVITE", self._via(), headers=headers, body=body)
        key, actions = self.layer.send_request(request, self._next_hop(), self._tp, now)
        self._refresh = (key, request)
        out += actions

    def _refresh_response(self, response: Response, now: float, out: list[Action]) -> None:
        assert self._refresh is not None
        request = self._refresh[1]
        if response.status < 200:
            return
        self._refresh = None
        dialog = self.dialog
        assert dialog is not None
        if response.status < 300:
            if request.method == "INVITE":
                ack = dialog.create_ack(request, self._via())
                out.append(self.layer.send_stateless(ack, self._next_hop(), self._tp))
                dialog.target_refresh(response)
                if response.body:
                    # take_answer makes the answer current: compare with the one before.
                    previous = self.media.current
                    try:
                        media = self.media.take_answer(response.body)
                    except SdpError:
                        media = None
                    if media is not None and media != previous:
                        out.append(MediaUpdated(self.call_id, media))
            if self.state is CallState.CONFIRMED:
                if "Session-Expires" in response:
                    self._arm_session_timer(response, now, out, we_are_uac=True)
                elif self._session is not None:
                    self._arm_session_timer_value(self._session.interval_s, True, now, out)
        elif response.status in (408, 481) and self.state is CallState.CONFIRMED:
            # §12.2.1.2: the dialog is gone. A BYE is harmless if it is not.
            self._send_bye(now, Disposition.ANSWERED, "refresh_failed", out)

    def _start_2xx_retransmit(
        self, key: TransactionKey, response: Response, now: float, out: list[Action]
    ) -> None:
        t1 = self.config.timers.t1_s
        self._retransmit = _Retransmit2xx(
            key,
            response,
            response.cseq.seq,
            t1,
            now + self.config.timers.transaction_timeout_s,
        )
        self._start_timer(CallTimer.RETRANSMIT_2XX, now + t1, out)

    def _retransmit_2xx(self, now: float, out: list[Action]) -> None:
        retransmit = self._retransmit
        if retransmit is None:
            return
        if now >= retransmit.give_up_at or retransmit.key not in self.layer:
            # §13.3.1.4: no ACK within 64*T1: confirm the session ended with a BYE.
            self._retransmit = None
            if self.state is CallState.CONFIRMED:
                self._send_bye(now, Disposition.ANSWERED, "ack_timeout", out)
            return
        out += self.layer.send_response(retransmit.key, retransmit.response, now)
        retransmit.interval_s = min(2 * retransmit.interval_s, self.config.timers.t2_s)
        self._start_timer(CallTimer.RETRANSMIT_2XX, now + retransmit.interval_s, out)

    def _media_changed(
        self, media: MediaAnswer, previous: MediaAnswer | None, out: list[Action]
    ) -> None:
        was_held = previous is not None and previous.on_hold
        if media.on_hold and not was_held:
            out.append(Held(self.call_id, media))
        elif was_held and not media.on_hold:
            out.append(Resumed(self.call_id, media))
        elif previous is None or replace(media, direction=previous.direction) != previous:
            out.append(MediaUpdated(self.call_id, media))

    # --- helpers ----------------------------------------------------------------------------------

    @property
    def _tp(self) -> str:
        return self.config.transport

    def _user_agent(self) -> list[Header]:
        return [("User-Agent", self.config.user_agent)] if self.config.user_agent else []

    def _next_hop(self, dialog: Dialog | None = None) -> Address:
        dialog = dialog or self.dialog
        if dialog is None:
            return self.config.proxy
        return ip_literal_address(dialog.next_hop) or self.config.proxy

    def _set_status(self, response: Response) -> None:
        self.record.sip_status = response.status
        self.record.sip_reason = response.reason

    def _start_timer(self, timer: CallTimer, at: float, out: list[Action]) -> None:
        self._timers.add(timer)
        out.append(StartTimer(self._timer_key, _CALL_TIMER_NAMES[timer], at))

    def _cancel_timer(self, timer: CallTimer, out: list[Action]) -> None:
        if timer in self._timers:
            self._timers.discard(timer)
            out.append(CancelTimer(self._timer_key, _CALL_TIMER_NAMES[timer]))

    def _cancel_all_timers(self, out: list[Action]) -> None:
        for timer in sorted(self._timers):
            self._cancel_timer(timer, out)

    def _finish(
        self,
        now: float,
        disposition: Disposition,
        end_reason: str,
        out: list[Action],
        hangup_by: str | None,
        *,
        detail: str | None = None,
    ) -> None:
        if self.result is not None:
            return
        record = self.record
        record.ended_at = now
        self.result = CallResult(
            call_id=self.call_id,
            disposition=disposition,
            sip_status=record.sip_status,
            sip_reason=record.sip_reason,
            hangup_by=hangup_by,
            end_reason=end_reason,
            created_at=record.created_at,
            invite_sent_at=record.invite_sent_at,
            provisional_at=record.provisional_at,
            ringing_at=record.ringing_at,
            early_media_at=record.early_media_at,
            answered_at=record.answered_at,
            ended_at=now,
            detail=detail,
            transferred_to=self._transfer.target
            if self._transfer is not None and disposition is Disposition.TRANSFERRED
            else None,
        )
        out.append(Ended(self.call_id, self.result))


def _fallback_dialog(invite: Request, response: Response) -> Dialog | None:
    """A dialog for a 2xx whose Contact or Record-Route cannot be used, or None.

    Its remote target is the INVITE's Request-URI and it has no route set, so
    the ACK and BYE follow the INVITE's way. Needs the To tag.
    """
    try:
        if not response.to_tag:
            return None
        repaired = response.without_header("Record-Route").replace_header(
            "Contact", f"<{invite.uri.serialize()}>"
        )
        return Dialog.from_uac(invite, repaired)
    except (DialogError, SipError):
        return None


def _tokens(message: Request | Response, name: str) -> tuple[str, ...]:
    """Allow (upper-cased) or Supported (lower-cased) tokens; empty when malformed."""
    try:
        if name == "Allow":
            return tuple(token.upper() for token in message.allow)
        return tuple(token.lower() for token in message.supported)
    except ParseError:
        return ()


def _tx_key(key: object) -> TransactionKey | None:
    return key if isinstance(key, TransactionKey) else None


# --- the user agent core ------------------------------------------------------------------------


@dataclass(slots=True)
class CallRouter:
    """The pure user agent core: calls by Call-ID over one transaction layer.

    The edge feeds it every parsed message (``receive``), every timer that
    fires (``timer_fired``, transaction or call timer alike) and every
    transport failure, and carries out what comes back; application events
    (``CallEvent`` subclasses) are in the same lists, in order.
    """

    config: UserAgentConfig
    ids: IdGenerators
    digest: DigestClient | None = None
    # Made from the config's timers; not a parameter (no caller passes its own).
    layer: TransactionLayer = field(init=False)
    calls: dict[str, Call] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layer = TransactionLayer(self.config.timers)

    def place(self, dial: Dial, now: float) -> tuple[Call, list[Action]]:
        """Create a call and send its INVITE."""
        call = Call(self.config, dial, self.ids, self.layer, digest=self.digest, now=now)
        if call.call_id in self.calls:
            raise LocalProtocolError(f"Call-ID {call.call_id} is already in use")
        self.calls[call.call_id] = call
        return call, self._run(call, call.start(now))

    def hangup(self, call_id: str, now: float) -> list[Action]:
        """Hang up a call (CANCEL or BYE); nothing if it is unknown or already over."""
        call = self.calls.get(call_id)
        return [] if call is None else self._run(call, call.hangup(now))

    def withdraw(self, call_id: str, now: float) -> list[Action]:
        """CANCEL a ringing call, keeping a crossing answer (see ``Call.withdraw``)."""
        call = self.calls.get(call_id)
        return [] if call is None else self._run(call, call.withdraw(now))

    def transfer(
        self, call_id: str, target: Uri, now: float, *, timeout_s: float | None = None
    ) -> list[Action]:
        """Blind-transfer an answered call by REFER (see ``Call.transfer``)."""
        call = self.calls.get(call_id)
        if call is None:
            raise CallStateError(f"no call {call_id}")
        return self._run(call, call.transfer(target, now, timeout_s=timeout_s))

    def receive(
        self, message: Request | Response, source: Address, transport: str, now: float
    ) -> list[Action]:
        """Hand in a message the edge received and parsed."""
        return self._dispatch(self.layer.receive(message, source, transport, now), now)

    def timer_fired(self, key: object, timer: str, now: float) -> list[Action]:
        """Hand in a timer that fired (any key this router's actions used)."""
        if isinstance(key, CallTimerKey):
            call = self.calls.get(key.call_id)
            if call is None:
                return []
            return self._run(call, call.timer_fired(CallTimer(timer), now))
        if isinstance(key, TransactionKey):
            return self._dispatch(self.layer.timer_fired(key, timer, now), now)
        raise LocalProtocolError(f"unknown timer key {key!r}")

    def transport_failed(self, key: TransactionKey, now: float) -> list[Action]:
        """The edge could not send for transaction ``key``."""
        return self._dispatch(self.layer.transport_failed(key, now), now)

    def _run(self, call: Call, actions: list[Action]) -> list[Action]:
        if call.finished and self.calls.pop(call.call_id, None) is not None:
            call.release()
        return actions

    def _dispatch(self, actions: list[Action], now: float) -> list[Action]:
        out: list[Action] = []
        for action in actions:
            match action:
                case Deliver(key=key, message=Response() as response):
                    call = self.calls.get(response.call_id)
                    if call is not None:
                        out += self._run(call, call.on_response(_tx_key(key), response, now))
                case Deliver(key=key, message=Request() as request):
                    out += self._request(_tx_key(key), request, now)
                case (
                    TimedOut(key=TransactionKey() as key, request=request)
                    | TransportFailed(key=TransactionKey() as key, request=request)
                ):
                    call = self.calls.get(request.call_id)
                    if call is not None:
                        failed = isinstance(action, TransportFailed)
                        out += self._run(call, call.on_timeout(key, now, transport=failed))
                case _:
                    out.append(action)
        return out

    def _request(self, key: TransactionKey | None, request: Request, now: float) -> list[Action]:
        call = self.calls.get(request.call_id)
        if call is not None:
            return self._run(call, call.on_request(key, request, now))
        if key is None or request.method == "ACK":
            return []  # an ACK is never answered
        try:
            if request.to_tag is not None or request.method not in ("OPTIONS", "INVITE"):
                # §12.2.2 / §9.2: no such dialog, no such transaction.
                response = make_response(request, 481)
            elif request.method == "OPTIONS":
                response = make_response(
                    request, 200, to_tag=self.ids.tag(), headers=[("Allow", ALLOW)]
                )
            else:
                # An outbound dialer takes no calls.
                response = make_response(request, 480, to_tag=self.ids.tag())
        except SipError:
            return []
        return self.layer.send_response(key, response, now)


# Called, not a decorator: mypyc builds a class under a decorator it does not know
# as a plain Python class (slot_init.py, rule 4).
slot_init(Dial)
slot_init(CallResult)
slot_init(Ringing)
slot_init(EarlyMedia)
slot_init(Answered)
slot_init(Held)
slot_init(Resumed)
slot_init(MediaUpdated)
slot_init(Dtmf)
slot_init(TransferAccepted)
slot_init(TransferProgress)
slot_init(TransferSucceeded)
slot_init(TransferFailed)
slot_init(Ended)
slot_init(CallTimerKey)

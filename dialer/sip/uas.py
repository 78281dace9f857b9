"""Inbound calls (the UAS side of an INVITE) as a pure state machine over the transaction layer.

Rules of this file:

1. An ``InboundCall`` follows one INVITE we received from its arrival to its
   end: 100 (sent at once), provisional responses the application asks for
   (180, or 183 with an SDP answer for early media), then a 200 with the SDP
   answer or a final failure (486, 480, 404, 503 ...). It answers CANCEL,
   BYE, re-INVITE, INFO and OPTIONS in the dialog and sends our own BYE.
   Every input takes ``now``; every output is a ``list[Action]``: wire work
   through the shared ``TransactionLayer``, call timers as
   ``StartTimer(UasTimerKey(call_id), ...)``, and application events
   (``Incoming``, ``Confirmed``, ``DtmfInfo``, ``MediaChanged``,
   ``InboundEnded``).
2. The transaction layer retransmits responses over UDP only up to the 2xx:
   RFC 3261 §13.3.1.4 leaves the 2xx to the UAS core, which resends it at T1,
   2*T1, ... capped at T2, until the ACK arrives, and ends the session with a
   BYE when no ACK came within 64*T1. A 2xx to a re-INVITE is resent the same
   way.
3. Nothing a peer sends raises: a request we cannot serve gets its answer
   (400, 420, 481, 482, 488 ...) and is counted by the caller if it wishes.
   A call from our own code that the state does not allow raises
   ``UasStateError``.
4. Tags and branches come from the ``IdGenerators`` handed in.
5. Every call that produced an ``Incoming`` ends with exactly one
   ``InboundEnded(InboundResult)``. ``InboundRouter`` is what the edge holds:
   it owns the transaction layer and the calls by Call-ID, routes what
   arrives and what fires, and answers requests that belong to no call.

States (``UasState``) and what moves them::

    Proceeding --ring--> Proceeding (180 / 183 sent; the dialog is early)
    Proceeding --answer--> Accepted (2xx sent, resent until ACK)
    Proceeding --reject / CANCEL / early BYE--> Terminated (final failure sent)
    Accepted --ACK--> Confirmed
    Accepted --no ACK in 64*T1--> Terminating (BYE sent)
    Confirmed --BYE received--> Terminated
    Confirmed --hangup--> Terminating --BYE answered or timed out--> Terminated
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from dialer.sip.call import IdGenerators
from dialer.sip.dialog import (
    ALLOW,
    AckReceived,
    ByeReceived,
    Dialog,
    DialogError,
    DialogState,
    DtmfReceived,
    LocalMedia,
    MediaSession,
    OfferAnswered,
)
from dialer.sip.errors import BadExtension, LocalProtocolError, ParseError, SipError
from dialer.sip.headers import Header, Via
from dialer.sip.message import Request, Response, make_response, require_supported
from dialer.sip.sdp import MediaAnswer, SdpError, negotiate_offer
from dialer.sip.timers import DEFAULT_TIMERS, TimerConfig
from dialer.sip.transaction import MAGIC_COOKIE, TransactionKey, TransactionLayer
from dialer.sip.uri import NameAddr, SipUri, ip_literal_address

__all__ = [
    "Confirmed",
    "DtmfInfo",
    "InboundCall",
    "InboundEnded",
    "InboundResult",
    "InboundRouter",
    "Incoming",
    "MediaChanged",
    "UasConfig",
    "UasEvent",
    "UasState",
    "UasStateError",
    "UasTimer",
    "UasTimerKey",
]

_SDP = "application/sdp"
# Methods a UAS knows but does not serve outside a dialog: 405 rather than 501.
_KNOWN_METHODS = frozenset(
    {"REGISTER", "REFER", "SUBSCRIBE", "NOTIFY", "MESSAGE", "PRACK", "PUBLISH", "UPDATE", "INFO"}
)


@dataclass(frozen=True, slots=True)
class UasConfig:
    """How this UAS presents itself.

    ``contact`` goes into every dialog-creating response (§12.1.1 requires
    it). ``via_host``/``via_port`` are our sent-by for the requests we send
    (BYE, INFO). ``supported`` lists the option tags a ``Require`` may name
    (§8.2.2.3); anything else gets a 420.
    """

    contact: SipUri
    via_host: str
    via_port: int | None = None
    user_agent: str | None = "dialer-sandbox"
    supported: tuple[str, ...] = ()
    timers: TimerConfig = DEFAULT_TIMERS


# --- events for the application -----------------------------------------------------------


class UasEvent(Action):
    """Base of the events an inbound call reports to the application."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Incoming(UasEvent):
    """A new INVITE, already answered with 100: ring, answer or reject it.

    ``offer`` is what the caller's SDP offer settles if we accept it (None
    for an INVITE without an offer: our 200 will carry one).
    """

    call_id: str
    invite: Request
    source: Address
    offer: MediaAnswer | None


@dataclass(frozen=True, slots=True)
class Confirmed(UasEvent):
    """The ACK for our 2xx arrived; ``media`` is the agreement in force."""

    call_id: str
    media: MediaAnswer | None


@dataclass(frozen=True, slots=True)
class DtmfInfo(UasEvent):
    """The caller relayed a digit in an INFO request."""

    call_id: str
    digit: str
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class MediaChanged(UasEvent):
    """The caller changed the media with a re-INVITE or UPDATE (hold, new address)."""

    call_id: str
    media: MediaAnswer


@dataclass(frozen=True, slots=True)
class InboundResult:
    """What an inbound call came to, with the time of every phase (``now`` values).

    ``end_reason`` is one of: ``rejected`` (we sent a final failure),
    ``cancelled`` (the caller's CANCEL, 487), ``remote_bye``, ``local_bye``,
    ``ack_timeout`` (no ACK for our 2xx within 64*T1: we sent a BYE),
    ``transport_error``. ``hangup_by`` is "caller", "callee" (us) or None.
    """

    call_id: str
    final_status: int | None
    end_reason: str
    hangup_by: str | None
    received_at: float
    ringing_at: float | None
    answered_at: float | None
    confirmed_at: float | None
    ended_at: float

    @property
    def talk_time_s(self) -> float:
        """Seconds between our 2xx and the end (0 when never answered)."""
        return 0.0 if self.answered_at is None else max(0.0, self.ended_at - self.answered_at)


@dataclass(frozen=True, slots=True)
class InboundEnded(UasEvent):
    """The call is over for the application (reported once)."""

    call_id: str
    result: InboundResult


# --- the state machine --------------------------------------------------------------------


class UasState(Enum):
    """Where an inbound call stands."""

    PROCEEDING = "Proceeding"  # INVITE received, no final response yet
    ACCEPTED = "Accepted"  # 2xx sent, waiting for the ACK
    CONFIRMED = "Confirmed"  # ACK received
    TERMINATING = "Terminating"  # our BYE is out
    TERMINATED = "Terminated"


class UasStateError(LocalProtocolError):
    """The application asked an inbound call for a move its state does not allow."""


class UasTimer(StrEnum):
    """An inbound call's own timers (the transaction timers live in the layer)."""

    RETRANSMIT_2XX = "retransmit_2xx"  # §13.3.1.4: our 2xx until the ACK


@dataclass(frozen=True, slots=True)
class UasTimerKey:
    """The ``key`` of a call's ``StartTimer``: route it back with ``InboundRouter.timer_fired``."""

    call_id: str


@dataclass(slots=True)
class _Retransmit2xx:
    key: TransactionKey
    response: Response
    cseq: int
    interval_s: float
    give_up_at: float


class InboundCall:
    """One INVITE we received, driving the transaction layer it is given."""

    def __init__(
        self,
        config: UasConfig,
        layer: TransactionLayer,
        ids: IdGenerators,
        key: TransactionKey,
        invite: Request,
        source: Address,
        transport: str,
        *,
        now: float,
    ) -> None:
        self.config = config
        self.layer = layer
        self.ids = ids
        self.key = key
        self.invite = invite
        self.source = source
        self.transport = transport
        self.call_id = invite.call_id
        self.local_tag = ids.tag()
        self.state = UasState.PROCEEDING
        self.dialog: Dialog | None = None
        self.media: MediaSession | None = None
        self.result: InboundResult | None = None
        self.final_status: int | None = None
        self.received_at = now
        self.ringing_at: float | None = None
        self.answered_at: float | None = None
        self.confirmed_at: float | None = None
        self._contact = NameAddr(config.contact)
        self._retransmit: _Retransmit2xx | None = None
        self._timers: set[UasTimer] = set()
        self._bye_key: TransactionKey | None = None
        self._bye_pending = False
        self._offerless = not invite.body

    def __repr__(self) -> str:
        return f"<InboundCall {self.call_id} {self.state.value}>"

    @property
    def finished(self) -> bool:
        """True once nothing more is expected: the router forgets the call."""
        return self.state is UasState.TERMINATED

    @property
    def agreed(self) -> MediaAnswer | None:
        """The media agreement in force (after an answer in a 183, a 200 or an ACK)."""
        return self.media.current if self.media is not None else None

    # --- application inputs ------------------------------------------------------------

    def trying(self, now: float) -> list[Action]:
        """Send 100 (Trying): no To tag, Timestamp echoed (§8.2.6.1)."""
        self._require(UasState.PROCEEDING, "send 100")
        return self.layer.send_response(self.key, make_response(self.invite, 100), now)

    def ring(
        self, now: float, *, status: int = 180, media: LocalMedia | None = None
    ) -> list[Action]:
        """Send a provisional response (180 by default) with our tag and Contact.

        With ``media``, the response carries our SDP answer (early media,
        usually a 183); the 200 will repeat the very same description.
        Raises ``SdpError`` when the offer cannot be answered.
        """
        self._require(UasState.PROCEEDING, "send a provisional response")
        if not 101 <= status <= 199:
            raise UasStateError(f"{status} is not a provisional status")
        body = b""
        if media is not None:
            if self._offerless:
                # RFC 3261 §13.2.1: the offer of an offerless INVITE goes in the
                # first reliable non-failure message; a plain 1xx is not one.
                raise UasStateError("no early media for an INVITE without an offer")
            body = self._answer_sdp(media)
        self._ensure_dialog(early=True)
        if self.ringing_at is None:
            self.ringing_at = now
        response = self._response(status, body)
        return self.layer.send_response(self.key, response, now)

    def answer(self, now: float, media: LocalMedia | None) -> list[Action]:
        """Send the 200 with our SDP answer (or our offer, to an offerless INVITE).

        ``media`` is where we receive RTP; it may be None only when a 183
        already carried the answer. Raises ``SdpError`` when the offer cannot
        be answered (then ``reject(now, 488)`` is the way out).
        """
        self._require(UasState.PROCEEDING, "answer")
        if media is not None:
            body = self._answer_sdp(media)
        elif self.media is not None and self.media.local_sdp is not None:
            body = self.media.local_sdp
        else:
            raise UasStateError("answer needs local media")
        dialog = self._ensure_dialog(early=False)
        dialog.state = DialogState.CONFIRMED
        out: list[Action] = []
        response = self._response(200, body)
        out += self.layer.send_response(self.key, response, now)
        self.final_status = 200
        self.answered_at = now
        self.state = UasState.ACCEPTED
        self._start_2xx_retransmit(self.key, response, now, out)
        return out

    def reject(
        self,
        now: float,
        status: int,
        reason: str | None = None,
        *,
        headers: Sequence[Header] = (),
    ) -> list[Action]:
        """Send a final failure (300-699) to the INVITE; the call ends ("rejected")."""
        self._require(UasState.PROCEEDING, "reject")
        if not 300 <= status <= 699:
            raise UasStateError(f"{status} is not a failure status")
        out = self._fail(now, status, reason, headers)
        self._finish(now, "rejected", out, hangup_by="callee")
        return out

    def hangup(self, now: float) -> list[Action]:
        """End the call from our side.

        Before the answer this rejects the INVITE with 480. Between our 2xx and
        the caller's ACK the BYE waits: "the callee's UA MUST NOT send a BYE on
        a confirmed dialog until it has received an ACK for its 2xx response
        or until the server transaction times out" (§15). Once confirmed it
        sends the BYE. When the call is ending already it does nothing.
        """
        out: list[Action] = []
        match self.state:
            case UasState.PROCEEDING:
                out += self._fail(now, 480, None, ())
                self._finish(now, "rejected", out, hangup_by="callee")
            case UasState.ACCEPTED:
                self._bye_pending = True
            case UasState.CONFIRMED:
                self._send_bye(now, "local_bye", out)
        return out

    def send_info(
        self, now: float, body: bytes, content_type: str = "application/dtmf-relay"
    ) -> list[Action]:
        """Send an INFO in the confirmed dialog (DTMF relay when RTP events are off)."""
        self._require(UasState.CONFIRMED, "send INFO")
        dialog = self.dialog
        assert dialog is not None
        request = dialog.create_request(
            "INFO", self._via(), headers=self._user_agent(), body=body, content_type=content_type
        )
        _, out = self.layer.send_request(request, self._next_hop(), self.transport, now)
        return out

    # --- what the router hands us ---------------------------------------------------------

    def on_request(self, key: TransactionKey | None, request: Request, now: float) -> list[Action]:
        """A request of this call (``key`` None for the ACK of a 2xx)."""
        out: list[Action] = []
        method = request.method
        if method == "CANCEL":
            self._cancel(key, request, now, out)
            return out
        if method == "INVITE" and request.to_tag is None:
            if key is not None and key != self.key:
                # §8.2.2.2: the same request arriving by another path (a new
                # branch, no To tag, same Call-ID and CSeq): a merged request.
                out += self.layer.send_response(key, make_response(request, 482), now)
            return out
        dialog = self.dialog
        if dialog is None or not dialog.matches(request):
            if method != "ACK" and key is not None:
                out += self.layer.send_response(key, make_response(request, 481), now)
            return out
        if self.state is UasState.PROCEEDING and method == "BYE" and key is not None:
            # §15.1.2: a BYE on an early dialog ends it; the pending INVITE
            # gets the RECOMMENDED 487.
            out += self.layer.send_response(key, make_response(request, 200), now)
            out += self._fail(now, 487, None, ())
            self._finish(now, "remote_bye", out, hangup_by="caller")
            return out
        result = dialog.handle_request(request, self.media)
        if result.response is not None and key is not None:
            out += self.layer.send_response(key, result.response, now)
            if method == "INVITE" and result.response.status // 100 == 2:
                self._start_2xx_retransmit(key, result.response, now, out)
        match result.event:
            case ByeReceived():
                self._cancel_all_timers(out)
                self._finish(now, "remote_bye", out, hangup_by="caller")
                self.state = UasState.TERMINATED
            case AckReceived(cseq=cseq, media=media):
                self._ack(cseq, media, now, out)
            case OfferAnswered(media=media):
                out.append(MediaChanged(self.call_id, media))
            case DtmfReceived(digit=digit, duration_ms=duration_ms):
                out.append(DtmfInfo(self.call_id, digit, duration_ms))
        return out

    def on_response(
        self, key: TransactionKey | None, response: Response, now: float
    ) -> list[Action]:
        """A response to a request we sent (our BYE or INFO)."""
        if key is not None and key == self._bye_key and response.status >= 200:
            self.state = UasState.TERMINATED
        return []

    def on_timeout(
        self, key: TransactionKey, now: float, *, transport: bool = False
    ) -> list[Action]:
        """Transaction ``key`` timed out or its transport failed."""
        out: list[Action] = []
        if key == self._bye_key:
            self.state = UasState.TERMINATED
        elif key == self.key and transport and self.state is UasState.PROCEEDING:
            # The caller cannot be reached: nothing more can be said to it.
            out += self.layer.abandon(self.key)
            self._finish(now, "transport_error", out, hangup_by=None)
            self.state = UasState.TERMINATED
        return out

    def timer_fired(self, timer: UasTimer, now: float) -> list[Action]:
        """One of this call's timers reached its deadline."""
        out: list[Action] = []
        if timer not in self._timers:
            return out
        self._timers.discard(timer)
        if timer is UasTimer.RETRANSMIT_2XX:
            self._retransmit_2xx(now, out)
        return out

    # --- helpers ------------------------------------------------------------------------------

    def _require(self, state: UasState, what: str) -> None:
        if self.state is not state:
            raise UasStateError(f"cannot {what} in state {self.state.value}")

    def _answer_sdp(self, media: LocalMedia) -> bytes:
        session = self.media
        if session is None:
            session = self.media = MediaSession(
                media, zlib.crc32(self.call_id.encode()) & 0x7FFFFFFF
            )
        if session.local_sdp is not None:
            return session.local_sdp  # RFC 3264 §8: unchanged, so the same bytes
        if self._offerless:
            return session.make_offer()
        sdp, _ = session.answer_offer(self.invite.body)
        return sdp

    def _ensure_dialog(self, *, early: bool) -> Dialog:
        if self.dialog is None:
            # The router checked the From tag and Contact before the call was made.
            self.dialog = Dialog.from_uas(self.invite, self.local_tag, self._contact)
            if early:
                self.dialog.state = DialogState.EARLY
        return self.dialog

    def _response(self, status: int, body: bytes) -> Response:
        headers: list[Header] = [("Contact", self._contact.serialize()), ("Allow", ALLOW)]
        headers += self._user_agent(server=True)
        if body:
            headers.append(("Content-Type", _SDP))
        return make_response(self.invite, status, to_tag=self.local_tag, headers=headers, body=body)

    def _fail(
        self, now: float, status: int, reason: str | None, headers: Sequence[Header]
    ) -> list[Action]:
        extra = list(headers) + self._user_agent(server=True)
        response = make_response(self.invite, status, reason, to_tag=self.local_tag, headers=extra)
        self.final_status = status
        if self.dialog is not None:
            self.dialog.state = DialogState.TERMINATED
        self.state = UasState.TERMINATED
        # The server transaction resends it (Timer G) and absorbs the ACK.
        return self.layer.send_response(self.key, response, now)

    def _cancel(
        self, key: TransactionKey | None, request: Request, now: float, out: list[Action]
    ) -> None:
        if key is None:
            return
        # §9.2: the CANCEL itself always gets a 200 once its INVITE is found.
        out += self.layer.send_response(key, make_response(request, 200), now)
        if self.state is UasState.PROCEEDING:
            # §9.2: "the UAS MUST respond to the INVITE with a 487".
            out += self._fail(now, 487, None, ())
            self._finish(now, "cancelled", out, hangup_by="caller")
        # Answered already: the CANCEL has no effect.

    def _ack(self, cseq: int, media: MediaAnswer | None, now: float, out: list[Action]) -> None:
        retransmit = self._retransmit
        if retransmit is not None and retransmit.cseq == cseq:
            self._retransmit = None
            self._cancel_timer(UasTimer.RETRANSMIT_2XX, out)
        if self.state is not UasState.ACCEPTED or cseq != self.invite.cseq.seq:
            if media is not None:
                out.append(MediaChanged(self.call_id, media))
            return
        self.state = UasState.CONFIRMED
        self.confirmed_at = now
        out.append(Confirmed(self.call_id, self.agreed))
        if self._offerless and media is None:
            # §13.3.1.4 leaves a missing or broken answer in the ACK to the
            # UAS; without media the call is useless: end it.
            self._bye_pending = True
        if self._bye_pending:
            self._send_bye(now, "local_bye", out)

    def _start_2xx_retransmit(
        self, key: TransactionKey, response: Response, now: float, out: list[Action]
    ) -> None:
        timers = self.config.timers
        self._retransmit = _Retransmit2xx(
            key, response, response.cseq.seq, timers.t1_s, now + timers.transaction_timeout_s
        )
        self._start_timer(UasTimer.RETRANSMIT_2XX, now + timers.t1_s, out)

    def _retransmit_2xx(self, now: float, out: list[Action]) -> None:
        retransmit = self._retransmit
        if retransmit is None:
            return
        if now >= retransmit.give_up_at or retransmit.key not in self.layer:
            # §13.3.1.4: "If the server retransmits the 2xx response for 64*T1
            # seconds without receiving an ACK, the dialog is confirmed, but the
            # session SHOULD be terminated. This is accomplished with a BYE."
            self._retransmit = None
            if self.state in (UasState.ACCEPTED, UasState.CONFIRMED):
                self._send_bye(now, "ack_timeout", out)
            return
        out += self.layer.send_response(retransmit.key, retransmit.response, now)
        retransmit.interval_s = min(2 * retransmit.interval_s, self.config.timers.t2_s)
        self._start_timer(UasTimer.RETRANSMIT_2XX, now + retransmit.interval_s, out)

    def _send_bye(self, now: float, end_reason: str, out: list[Action]) -> None:
        dialog = self.dialog
        assert dialog is not None
        self._cancel_all_timers(out)
        self._retransmit = None
        bye = dialog.create_request("BYE", self._via(), headers=self._user_agent())
        self._bye_key, actions = self.layer.send_request(bye, self._next_hop(), self.transport, now)
        out += actions
        self.state = UasState.TERMINATING
        self._finish(now, end_reason, out, hangup_by="callee")

    def _via(self) -> Via:
        branch = self.ids.branch()
        if not branch.startswith(MAGIC_COOKIE):
            branch = MAGIC_COOKIE + branch
        params = (("rport", None), ("branch", branch))
        return Via(self.transport.upper(), self.config.via_host, self.config.via_port, params)

    def _next_hop(self) -> Address:
        # In-dialog requests go to the first route, else the remote target
        # (§12.2.1.1), when that is an IP literal; else back where the INVITE
        # came from.
        dialog = self.dialog
        if dialog is None:
            return self.source
        return ip_literal_address(dialog.next_hop) or self.source

    def _user_agent(self, *, server: bool = False) -> list[Header]:
        agent = self.config.user_agent
        if not agent:
            return []
        return [("Server" if server else "User-Agent", agent)]

    def _start_timer(self, timer: UasTimer, at: float, out: list[Action]) -> None:
        self._timers.add(timer)
        out.append(StartTimer(UasTimerKey(self.call_id), timer.value, at))

    def _cancel_timer(self, timer: UasTimer, out: list[Action]) -> None:
        if timer in self._timers:
            self._timers.discard(timer)
            out.append(CancelTimer(UasTimerKey(self.call_id), timer.value))

    def _cancel_all_timers(self, out: list[Action]) -> None:
        for timer in sorted(self._timers):
            self._cancel_timer(timer, out)

    def _finish(
        self, now: float, end_reason: str, out: list[Action], hangup_by: str | None
    ) -> None:
        if self.result is not None:
            return
        self.result = InboundResult(
            call_id=self.call_id,
            final_status=self.final_status,
            end_reason=end_reason,
            hangup_by=hangup_by,
            received_at=self.received_at,
            ringing_at=self.ringing_at,
            answered_at=self.answered_at,
            confirmed_at=self.confirmed_at,
            ended_at=now,
        )
        out.append(InboundEnded(self.call_id, self.result))


# --- the router ---------------------------------------------------------------------------------


def _tx_key(key: object) -> TransactionKey | None:
    return key if isinstance(key, TransactionKey) else None


@dataclass(slots=True)
class InboundRouter:
    """The pure UAS core: inbound calls by Call-ID over one transaction layer.

    The edge feeds it every parsed message (``receive``), every timer that
    fires and every transport failure, and carries out what comes back;
    application events (``UasEvent`` subclasses) are in the same lists, in
    order. The application answers an ``Incoming`` through ``ring``,
    ``answer``, ``reject`` and ``hangup`` here, by Call-ID.
    """

    config: UasConfig
    ids: IdGenerators
    # Made from the config's timers; not a parameter (no caller passes its own).
    layer: TransactionLayer = field(init=False)
    calls: dict[str, InboundCall] = field(default_factory=dict)
    # Requests answered outside any call, by status (for the edge's counters).
    answered: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layer = TransactionLayer(self.config.timers)

    def call(self, call_id: str) -> InboundCall:
        """The live call with this Call-ID (``UasStateError`` if there is none)."""
        call = self.calls.get(call_id)
        if call is None:
            raise UasStateError(f"no inbound call {call_id}")
        return call

    def ring(
        self, call_id: str, now: float, *, status: int = 180, media: LocalMedia | None = None
    ) -> list[Action]:
        """``InboundCall.ring`` on the call ``call_id``."""
        call = self.call(call_id)
        return self._run(call, call.ring(now, status=status, media=media))

    def answer(self, call_id: str, now: float, media: LocalMedia | None) -> list[Action]:
        """``InboundCall.answer`` on the call ``call_id``."""
        call = self.call(call_id)
        return self._run(call, call.answer(now, media))

    def reject(
        self,
        call_id: str,
        now: float,
        status: int,
        reason: str | None = None,
        *,
        headers: Sequence[Header] = (),
    ) -> list[Action]:
        """``InboundCall.reject`` on the call ``call_id``."""
        call = self.call(call_id)
        return self._run(call, call.reject(now, status, reason, headers=headers))

    def hangup(self, call_id: str, now: float) -> list[Action]:
        """End a call from our side; nothing if it is unknown or already over."""
        call = self.calls.get(call_id)
        return [] if call is None else self._run(call, call.hangup(now))

    def send_info(
        self, call_id: str, now: float, body: bytes, content_type: str = "application/dtmf-relay"
    ) -> list[Action]:
        """``InboundCall.send_info`` on the call ``call_id``."""
        call = self.call(call_id)
        return self._run(call, call.send_info(now, body, content_type))

    def receive(
        self, message: Request | Response, source: Address, transport: str, now: float
    ) -> list[Action]:
        """Hand in a message the edge received and parsed."""
        return self._dispatch(self.layer.receive(message, source, transport, now), transport, now)

    def timer_fired(self, key: object, timer: str, now: float) -> list[Action]:
        """Hand in a timer that fired (any key this router's actions used)."""
        if isinstance(key, UasTimerKey):
            call = self.calls.get(key.call_id)
            if call is None:
                return []
            return self._run(call, call.timer_fired(UasTimer(timer), now))
        if isinstance(key, TransactionKey):
            return self._dispatch(self.layer.timer_fired(key, timer, now), "", now)
        raise LocalProtocolError(f"unknown timer key {key!r}")

    def transport_failed(self, key: TransactionKey, now: float) -> list[Action]:
        """The edge could not send for transaction ``key``."""
        return self._dispatch(self.layer.transport_failed(key, now), "", now)

    def _run(self, call: InboundCall, actions: list[Action]) -> list[Action]:
        if call.finished:
            self.calls.pop(call.call_id, None)
        return actions

    def _dispatch(self, actions: list[Action], transport: str, now: float) -> list[Action]:
        out: list[Action] = []
        for action in actions:
            match action:
                case Deliver(key=key, message=Response() as response):
                    call = self.calls.get(response.call_id)
                    if call is not None:
                        out += self._run(call, call.on_response(_tx_key(key), response, now))
                case Deliver(key=key, message=Request() as request, source=source):
                    out += self._request(
                        _tx_key(key), request, source, transport, action.cancels, now
                    )
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

    def _request(
        self,
        key: TransactionKey | None,
        request: Request,
        source: Address | None,
        transport: str,
        cancels: object,
        now: float,
    ) -> list[Action]:
        call = self.calls.get(request.call_id)
        if call is not None:
            return self._run(call, call.on_request(key, request, now))
        if key is None or request.method == "ACK":
            return []  # an ACK is never answered
        if request.method == "INVITE" and request.to_tag is None and source is not None:
            return self._invite(key, request, source, transport, now)
        try:
            response = self._out_of_dialog(request, cancels is not None)
        except SipError:
            return []  # a request too broken to answer
        self.answered[response.status] = self.answered.get(response.status, 0) + 1
        return self.layer.send_response(key, response, now)

    def _out_of_dialog(self, request: Request, cancel_found: bool) -> Response:
        method = request.method
        if method == "CANCEL":
            # §9.2: a CANCEL whose INVITE is known but already answered gets 200
            # and has no effect; one that matches nothing gets 481.
            return make_response(request, 200 if cancel_found else 481)
        if request.to_tag is not None:
            return make_response(request, 481)  # §12.2.2: no such dialog
        if method == "OPTIONS":
            headers: list[Header] = [("Allow", ALLOW), ("Accept", _SDP)]
            if self.config.user_agent:
                headers.append(("Server", self.config.user_agent))
            return make_response(request, 200, to_tag=self.ids.tag(), headers=headers)
        if method == "BYE":
            return make_response(request, 481)
        status = 405 if method in _KNOWN_METHODS else 501
        return make_response(request, status, to_tag=self.ids.tag(), headers=[("Allow", ALLOW)])

    def _invite(
        self,
        key: TransactionKey,
        request: Request,
        source: Address,
        transport: str,
        now: float,
    ) -> list[Action]:
        tag = self.ids.tag()
        offer: MediaAnswer | None = None
        try:
            require_supported(request, self.config.supported)
            if not request.from_tag or not request.contacts:
                raise DialogError("an INVITE needs a From tag and a Contact (§8.1.1)")
            if request.body:
                if request.media_type != _SDP:
                    raise SdpError(f"offer of type {request.media_type}", 415)
                offer = negotiate_offer(request.body)
        except BadExtension as error:
            response = make_response(
                request, 420, to_tag=tag, headers=[("Unsupported", ", ".join(error.unsupported))]
            )
            return self._refuse(key, response, now)
        except SdpError as error:
            status = error.status_hint if error.status_hint >= 400 else 488
            extra = [("Accept", _SDP)] if status == 415 else []
            return self._refuse(key, make_response(request, status, to_tag=tag, headers=extra), now)
        except (DialogError, ParseError):
            return self._refuse(key, make_response(request, 400, to_tag=tag), now)
        call = InboundCall(
            self.config, self.layer, self.ids, key, request, source, transport, now=now
        )
        self.calls[call.call_id] = call
        out = call.trying(now)
        out.append(Incoming(call.call_id, request, source, offer))
        return out

    def _refuse(self, key: TransactionKey, response: Response, now: float) -> list[Action]:
        self.answered[response.status] = self.answered.get(response.status, 0) + 1
        return self.layer.send_response(key, response, now)

"""SIP dialogs (RFC 3261 §12-§15) and the media session they carry (RFC 3264).

Rules of this file:

1. A ``Dialog`` is the state of §12: the id (Call-ID and both tags), both
   URIs, the remote target, the route set, both CSeq counters. It builds every
   request we send in the dialog (§12.2.1.1, loose and strict routing) and the
   ACK for a 2xx (§13.2.2.4), and answers every request the peer sends in it
   (§12.2.2). It never sends anything: it returns requests and responses, and
   the caller passes them to the transaction layer.
2. ``handle_request`` always produces an answer, never raises on a peer's
   mistake: a bad offer is a 488, a lower CSeq a 500, a stranger's tag a 481,
   a method we do not know a 501. What happened besides the answer is a small
   event (``ByeReceived``, ``OfferAnswered``, ``DtmfReceived`` ...).
3. ``MediaSession`` owns our side of the offer/answer exchange: the o= line's
   session id and version (one higher whenever our description changes,
   RFC 3264 §8), our last offer, the agreement in force.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from dialer.sip.errors import LocalProtocolError, ParseError, RemoteProtocolError
from dialer.sip.headers import CSeq, Header, Via, canonical_name
from dialer.sip.message import Request, Response, make_response
from dialer.sip.sdp import (
    MediaAnswer,
    SdpError,
    SessionDescription,
    build_answer,
    build_offer_description,
    negotiate_answer,
    negotiate_offer,
)
from dialer.sip.slot_init import slot_init
from dialer.sip.uri import NameAddr, SipUri, Uri

__all__ = [
    "ALLOW",
    "AckReceived",
    "ByeReceived",
    "Dialog",
    "DialogError",
    "DialogEvent",
    "DialogId",
    "DialogState",
    "DtmfReceived",
    "InDialogResult",
    "LocalMedia",
    "MediaSession",
    "OfferAnswered",
    "parse_dtmf_info",
]

#: The methods we accept inside a dialog (sent in Allow, §20.5).
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"

# Methods we know of but do not serve in a dialog: 405 rather than 501 (§8.2.1).
_KNOWN_NOT_ALLOWED = frozenset(
    {"REFER", "SUBSCRIBE", "NOTIFY", "MESSAGE", "PRACK", "PUBLISH", "REGISTER"}
)
_SDP = "application/sdp"
# Header fields whose views a request we build is primed with (unless the
# caller's extra headers add a copy of one).
_PRIMED = frozenset({"Via", "From", "To", "CSeq"})


class DialogError(RemoteProtocolError):
    """A response cannot create a dialog (no To tag, a 2xx without Contact)."""


class DialogState(Enum):
    """Dialog states (§12): early after a 1xx with a To tag, confirmed after a 2xx."""

    EARLY = "Early"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


@dataclass(frozen=True, slots=True)
class DialogId:
    """Call-ID, local tag and remote tag (§12): what names a dialog on our side."""

    call_id: str
    local_tag: str
    remote_tag: str


# --- media ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalMedia:
    """Where we receive RTP and what we can play: handed in by the media layer."""

    address: str
    port: int
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    telephone_event_pt: int | None = 101
    ptime_ms: int | None = 20


class MediaSession:
    """Our half of the offer/answer exchanges of one call (RFC 3264)."""

    __slots__ = (
        "_offer",
        "current",
        "local",
        "local_sdp",
        "offer_sdp",
        "session_id",
        "session_version",
    )

    def __init__(self, local: LocalMedia, session_id: int, session_version: int = 0) -> None:
        self.local = local
        self.session_id = session_id
        self.session_version = session_version
        self.local_sdp: bytes | None = None  # the last description we sent
        self.offer_sdp: bytes | None = None  # our last offer (answers are read against it)
        self.current: MediaAnswer | None = None  # the agreement in force
        # Our offer as built, beside its bytes: answers are read against it
        # without parsing our own offer back (valid while offer_sdp is those bytes).
        self._offer: tuple[bytes, SessionDescription] | None = None

    @property
    def on_hold(self) -> bool:
        """True when the peer holds the call (by the agreement in force)."""
        return self.current is not None and self.current.on_hold

    def _versioned(self, build: Callable[[int], bytes]) -> bytes:
        # RFC 3264 §8: the version goes up by one whenever the description
        # changes, and only then (a session refresh resends the same bytes).
        sdp = build(self.session_version)
        if self.local_sdp is not None and sdp != self.local_sdp:
            self.session_version += 1
            sdp = build(self.session_version)
        self.local_sdp = sdp
        return sdp

    def make_offer(self, direction: str = "sendrecv") -> bytes:
        """Our offer (the INVITE's body, or a re-offer); remembered for the answer."""
        local = self.local
        built: dict[bytes, SessionDescription] = {}

        def build(version: int) -> bytes:
            description, sdp = build_offer_description(
                local.address,
                local.port,
                self.session_id,
                version,
                codecs=local.codecs,
                telephone_event_pt=local.telephone_event_pt,
                ptime_ms=local.ptime_ms,
                direction=direction,
            )
            built[sdp] = description
            return sdp

        sdp = self._versioned(build)
        self.offer_sdp = sdp
        self._offer = (sdp, built[sdp])
        return sdp

    def take_answer(self, answer: bytes) -> MediaAnswer:
        """Read the peer's answer to our last offer; ``SdpError`` if it cannot carry media."""
        offer = self.offer_sdp
        if offer is None:
            raise LocalProtocolError("an answer without an offer")
        kept = self._offer
        ours = kept[1] if kept is not None and kept[0] is offer else offer
        self.current = negotiate_answer(ours, answer)
        return self.current

    def answer_offer(self, offer: bytes) -> tuple[bytes, MediaAnswer]:
        """Our answer to the peer's offer (a re-INVITE or UPDATE), and what it agrees.

        Keeps the codec in use when the offer still lists it. ``SdpError``
        (status hint 488) when nothing in the offer is acceptable.
        """
        local = self.local
        current_codec = self.current.codec.name if self.current is not None else None

        def build(version: int) -> bytes:
            return build_answer(
                offer,
                local.address,
                local.port,
                self.session_id,
                version,
                codecs=local.codecs,
                current_codec=current_codec,
                telephone_event=local.telephone_event_pt is not None,
                ptime_ms=local.ptime_ms,
            )

        # Agree first: a refused offer raises here, before the version moves.
        agreed = negotiate_offer(offer, codecs=local.codecs, current_codec=current_codec)
        sdp = self._versioned(build)
        self.current = agreed
        return sdp, agreed


# --- DTMF over INFO ----------------------------------------------------------------------

# application/dtmf-relay carries "Signal=5" and "Duration=160" lines; some
# gateways send 10 and 11 for * and #, and 12-15 for A-D (RFC 4733 event codes).
_DTMF_RELAY_RE = re.compile(r"^[ \t]*(signal|duration)[ \t]*=[ \t]*(\S+)[ \t\r]*$", re.I | re.M)
_EVENT_DIGITS = {str(n): d for n, d in enumerate("0123456789*#ABCD")}
_DIGITS = frozenset("0123456789*#ABCD")


def _digit(text: str) -> str | None:
    text = text.strip().upper()
    if text in _DIGITS:
        return text
    return _EVENT_DIGITS.get(text.lstrip("0") or "0") if text.isdigit() else None


def parse_dtmf_info(media_type: str | None, body: bytes) -> tuple[str, int | None] | None:
    """The digit and duration (ms) of an INFO body, None if it carries no valid digit.

    ``application/dtmf-relay`` (``Signal=5`` / ``Duration=160`` lines) and
    ``application/dtmf`` (the digit alone) are the two forms in use.
    """
    text = body.decode("ascii", "replace")
    if media_type == "application/dtmf":
        digit = _digit(text)
        return None if digit is None else (digit, None)
    if media_type == "application/dtmf-relay":
        signal: str | None = None
        duration: int | None = None
        for name, value in _DTMF_RELAY_RE.findall(text):
            if name.lower() == "signal":
                signal = value
            elif value.isdigit() and len(value) <= 6:
                duration = int(value)
        digit = _digit(signal) if signal is not None else None
        return None if digit is None else (digit, duration)
    return None


# --- what handle_request reports -----------------------------------------------------------


class DialogEvent:
    """Base of what happened in a dialog besides the answer."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ByeReceived(DialogEvent):
    """The peer ended the dialog (§15.1.2); we answered 200."""


@dataclass(frozen=True, slots=True)
class OfferAnswered(DialogEvent):
    """The peer offered (re-INVITE or UPDATE) and we answered; ``previous`` was in force."""

    media: MediaAnswer
    previous: MediaAnswer | None


@dataclass(frozen=True, slots=True)
class DtmfReceived(DialogEvent):
    """A digit relayed in an INFO request."""

    digit: str
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class AckReceived(DialogEvent):
    """The ACK for our 2xx to a re-INVITE; ``media`` when it carried an answer."""

    cseq: int
    media: MediaAnswer | None = None


@dataclass(frozen=True, slots=True)
class InDialogResult:
    """The answer to send (None for an ACK) and what the request meant."""

    response: Response | None
    event: DialogEvent | None = None


# --- the dialog ------------------------------------------------------------------------------


def _without_tag(addr: NameAddr) -> NameAddr:
    params = tuple(p for p in addr.params if p[0].lower() != "tag")
    return NameAddr(addr.uri, addr.display_name, params)


def _strip_for_request_uri(uri: Uri) -> Uri:
    # §12.2.1.1: parameters not allowed in a Request-URI are stripped (§19.1.1
    # table: method is not allowed; URI headers are not allowed either).
    if isinstance(uri, SipUri):
        params = tuple(p for p in uri.params if p[0].lower() != "method")
        return SipUri(uri.host, uri.user, uri.password, uri.port, params, (), uri.scheme)
    return uri


class Dialog:
    """One dialog's state (§12.1) and the requests and answers it produces."""

    __slots__ = (
        "_from",
        "_to",
        "call_id",
        "local_contact",
        "local_seq",
        "local_tag",
        "local_uri",
        "remote_seq",
        "remote_tag",
        "remote_target",
        "remote_uri",
        "route_set",
        "secure",
        "state",
    )

    def __init__(
        self,
        *,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local_uri: NameAddr,
        remote_uri: NameAddr,
        remote_target: Uri,
        route_set: tuple[NameAddr, ...],
        local_seq: int,
        remote_seq: int | None,
        local_contact: NameAddr | None,
        state: DialogState,
        secure: bool = False,
    ) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.local_contact = local_contact
        self.state = state
        self.secure = secure
        # From and To of our requests, built once: (uri, tag, value, text).
        self._from: tuple[NameAddr, str, NameAddr, str] | None = None
        self._to: tuple[NameAddr, str, NameAddr, str] | None = None

    def __repr__(self) -> str:
        return f"<Dialog {self.call_id} {self.local_tag}/{self.remote_tag} {self.state.value}>"

    # --- creation ---------------------------------------------------------------------

    @classmethod
    def from_uac(cls, request: Request, response: Response) -> Dialog:
        """The dialog a 1xx (early) or 2xx (confirmed) creates at the UAC (§12.1.2)."""
        remote_tag = response.to_tag
        local_tag = request.from_tag
        if not remote_tag or not local_tag:
            raise DialogError("a dialog needs both tags (§12.1.2)")
        contacts = response.contacts
        if contacts:
            target = contacts[0].uri
        elif response.status < 200:
            target = request.uri  # an early dialog without Contact: refreshed by the 2xx
        else:
            raise DialogError("2xx without Contact cannot establish a dialog (§12.1.2)", 400)
        our_contacts = request.contacts
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=_without_tag(request.from_addr),
            remote_uri=_without_tag(request.to_addr),
            remote_target=target,
            # §12.1.2: the route set is the Record-Route list in reverse order.
            route_set=tuple(reversed(response.record_routes)),
            local_seq=request.cseq.seq,
            remote_seq=None,
            local_contact=our_contacts[0] if our_contacts else None,
            state=DialogState.EARLY if response.status < 200 else DialogState.CONFIRMED,
            secure=isinstance(request.uri, SipUri) and request.uri.secure,
        )

    @classmethod
    def from_uas(cls, request: Request, local_tag: str, local_contact: NameAddr) -> Dialog:
        """The dialog our 2xx to ``request`` creates at the UAS (§12.1.1)."""
        remote_tag = request.from_tag
        contacts = request.contacts
        if not remote_tag or not contacts:
            raise DialogError("request without From tag or Contact cannot create a dialog")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=_without_tag(request.to_addr),
            remote_uri=_without_tag(request.from_addr),
            remote_target=contacts[0].uri,
            route_set=request.record_routes,  # §12.1.1: in the order received
            local_seq=0,
            remote_seq=request.cseq.seq,
            local_contact=local_contact,
            state=DialogState.CONFIRMED,
            secure=isinstance(request.uri, SipUri) and request.uri.secure,
        )

    @property
    def id(self) -> DialogId:
        """Call-ID, local tag, remote tag."""
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    def confirm(self, response: Response) -> None:
        """A 2xx for the INVITE arrived on this early dialog (§13.2.2.4).

        The dialog becomes confirmed and its route set and remote target are
        recomputed from the 2xx.
        """
        if response.status // 100 != 2:
            raise LocalProtocolError("only a 2xx confirms a dialog")
        self.route_set = tuple(reversed(response.record_routes))
        self.target_refresh(response)
        self.state = DialogState.CONFIRMED

    def target_refresh(self, message: Request | Response) -> None:
        """Take a new remote target from a target refresh's Contact (§12.2)."""
        try:
            contacts = message.contacts
        except ParseError:
            return  # a broken Contact leaves the old target in place
        if contacts:
            self.remote_target = contacts[0].uri

    def matches(self, message: Request | Response) -> bool:
        """True if a request from the peer (or a response to us) belongs to this dialog."""
        if message.call_id != self.call_id:
            return False
        if isinstance(message, Request):
            return message.to_tag == self.local_tag and message.from_tag == self.remote_tag
        return message.from_tag == self.local_tag and message.to_tag == self.remote_tag

    # --- requests we send (§12.2.1.1) --------------------------------------------------

    @property
    def next_hop(self) -> Uri:
        """The URI the next hop is resolved from: the first route, else the remote target."""
        return self.route_set[0].uri if self.route_set else self.remote_target

    def _target_and_routes(self) -> tuple[Uri, list[str]]:
        if not self.route_set:
            return self.remote_target, []
        first = self.route_set[0].uri
        if isinstance(first, SipUri) and first.lr:
            return self.remote_target, [r.serialize() for r in self.route_set]
        # Strict router (RFC 2543): its URI becomes the Request-URI and the remote
        # target goes last in Route.
        routes = [r.serialize() for r in self.route_set[1:]]
        routes.append(NameAddr(self.remote_target).serialize())
        return _strip_for_request_uri(first), routes

    def _local_party(self) -> tuple[NameAddr, str, NameAddr, str]:
        cached = self._from
        if cached is None or cached[0] is not self.local_uri or cached[1] != self.local_tag:
            value = self.local_uri.with_tag(self.local_tag)
            cached = self._from = (self.local_uri, self.local_tag, value, value.serialize())
        return cached

    def _remote_party(self) -> tuple[NameAddr, str, NameAddr, str]:
        cached = self._to
        if cached is None or cached[0] is not self.remote_uri or cached[1] != self.remote_tag:
            value = self.remote_uri.with_tag(self.remote_tag)
            cached = self._to = (self.remote_uri, self.remote_tag, value, value.serialize())
        return cached

    def _headers(self, via: Via, seq: int, method: str, max_forwards: int) -> list[Header]:
        uri_routes = self._target_and_routes()[1]
        headers: list[Header] = [("Via", via.serialize())]
        headers += [("Route", route) for route in uri_routes]
        headers += [
            ("Max-Forwards", str(max_forwards)),
            ("From", self._local_party()[3]),
            ("To", self._remote_party()[3]),
            ("Call-ID", self.call_id),
            ("CSeq", f"{seq} {method}"),
        ]
        return headers

    def _prime(self, request: Request, via: Via, seq: int, method: str) -> Request:
        # The views of a request we built are the values we built it from.
        return request.prime(
            top_via=via,
            from_addr=self._local_party()[2],
            to_addr=self._remote_party()[2],
            cseq=CSeq(seq, method),
        )

    def create_request(
        self,
        method: str,
        via: Via,
        *,
        headers: Sequence[Header] = (),
        body: bytes = b"",
        content_type: str | None = None,
        max_forwards: int = 70,
    ) -> Request:
        """A new request in the dialog; the local CSeq goes up by one (§12.2.1.1).

        ``via`` carries our sent-by and the new branch. INVITE and UPDATE carry
        our Contact (they are target refreshes, §12.2). Use ``create_ack`` for
        the ACK of a 2xx and ``transaction.build_cancel`` for CANCEL.
        """
        if method in ("ACK", "CANCEL"):
            raise LocalProtocolError(f"{method} is not built by create_request")
        if self.state is DialogState.TERMINATED and method != "BYE":
            raise LocalProtocolError(f"dialog is terminated; cannot send {method}")
        self.local_seq += 1
        uri = self._target_and_routes()[0]
        out = self._headers(via, self.local_seq, method, max_forwards)
        if method in ("INVITE", "UPDATE") and self.local_contact is not None:
            out.append(("Contact", self.local_contact.serialize()))
        out += headers
        if body:
            out.append(("Content-Type", content_type or _SDP))
        request = Request(method, uri, tuple(out), body)
        if not any(canonical_name(name) in _PRIMED for name, _ in headers):
            self._prime(request, via, self.local_seq, method)
        return request

    def create_ack(
        self, invite: Request, via: Via, *, body: bytes = b"", content_type: str | None = None
    ) -> Request:
        """The ACK for a 2xx to ``invite`` (§13.2.2.4).

        Built like any request in the dialog, with the INVITE's CSeq number and
        a new branch (``via``); the INVITE's credentials are copied (§22.1).
        """
        uri = self._target_and_routes()[0]
        out = self._headers(via, invite.cseq.seq, "ACK", 70)
        for name in ("Authorization", "Proxy-Authorization"):
            out += [(name, value) for value in invite.get_all(name)]
        if body:
            out.append(("Content-Type", content_type or _SDP))
        return self._prime(Request("ACK", uri, tuple(out), body), via, invite.cseq.seq, "ACK")

    # --- requests we receive (§12.2.2) ----------------------------------------------------

    def handle_request(
        self,
        request: Request,
        media: MediaSession | None,
        *,
        extra_headers: Sequence[Header] = (),
        on_notify: Callable[[Request], InDialogResult] | None = None,
    ) -> InDialogResult:
        """Answer a request from the peer in this dialog.

        ``media`` answers offers (None: offers get 488). ``extra_headers`` go
        into a 2xx for INVITE and UPDATE (session-timer headers, RFC 4028).
        ``on_notify`` answers a NOTIFY once it passed the dialog's checks
        (whoever subscribed, e.g. our REFER: ``dialer.sip.refer``); without
        it a NOTIFY gets 405. Never raises on the peer's account.
        """
        if not self.matches(request):
            # §12.2.2: a request with a To tag that matches no dialog gets 481.
            if request.method == "ACK":
                return InDialogResult(None)  # an ACK is never answered
            return InDialogResult(make_response(request, 481))
        method = request.method
        seq = request.cseq.seq
        if method == "ACK":
            return self._ack(request, media)
        if method == "CANCEL":
            # §9.2: a CANCEL of a request already answered has no effect; it
            # shares the INVITE's CSeq number, so it skips the order check.
            return InDialogResult(make_response(request, 200))
        if self.remote_seq is not None and seq < self.remote_seq:
            # §12.2.2: out of order, MUST be rejected with a 500.
            return InDialogResult(make_response(request, 500, headers=[("Retry-After", "1")]))
        self.remote_seq = seq
        if self.state is DialogState.TERMINATED:
            return InDialogResult(make_response(request, 481))
        match method:
            case "BYE":
                self.state = DialogState.TERMINATED
                return InDialogResult(make_response(request, 200), ByeReceived())
            case "INVITE" | "UPDATE":
                return self._offer(request, media, extra_headers)
            case "OPTIONS":
                return InDialogResult(
                    make_response(request, 200, headers=[("Allow", ALLOW), ("Accept", _SDP)])
                )
            case "INFO":
                return self._info(request)
            case "NOTIFY" if on_notify is not None:
                return on_notify(request)
        if method in _KNOWN_NOT_ALLOWED:
            return InDialogResult(make_response(request, 405, headers=[("Allow", ALLOW)]))
        return InDialogResult(make_response(request, 501, headers=[("Allow", ALLOW)]))

    def _ack(self, request: Request, media: MediaSession | None) -> InDialogResult:
        answer: MediaAnswer | None = None
        if request.body and media is not None and request.media_type == _SDP:
            try:
                answer = media.take_answer(request.body)
            except SdpError:
                answer = None  # §13.3.1.4 leaves it to the UAS: the caller hangs up
        return InDialogResult(None, AckReceived(request.cseq.seq, answer))

    def _offer(
        self, request: Request, media: MediaSession | None, extra: Sequence[Header]
    ) -> InDialogResult:
        self.target_refresh(request)
        headers: list[Header] = []
        if self.local_contact is not None:
            headers.append(("Contact", self.local_contact.serialize()))
        headers.append(("Allow", ALLOW))
        headers += extra
        if not request.body:
            if request.method == "UPDATE" or media is None or media.local_sdp is None:
                return InDialogResult(make_response(request, 200, headers=headers))
            # An offerless re-INVITE: the 200 carries our offer (the one in
            # force, same version) and the ACK will carry the answer (§14.2).
            media.offer_sdp = media.local_sdp
            headers.append(("Content-Type", _SDP))
            return InDialogResult(
                make_response(request, 200, headers=headers, body=media.local_sdp)
            )
        if media is None or request.media_type != _SDP:
            return InDialogResult(
                make_response(
                    request, 415 if media is not None else 488, headers=[("Accept", _SDP)]
                )
            )
        previous = media.current
        try:
            sdp, agreed = media.answer_offer(request.body)
        except SdpError as error:
            return InDialogResult(
                make_response(request, error.status_hint if error.status_hint >= 400 else 488)
            )
        headers.append(("Content-Type", _SDP))
        response = make_response(request, 200, headers=headers, body=sdp)
        return InDialogResult(response, OfferAnswered(agreed, previous))

    def _info(self, request: Request) -> InDialogResult:
        if not request.body:
            return InDialogResult(make_response(request, 200))  # a keep-alive INFO
        media_type = request.media_type
        if media_type not in ("application/dtmf-relay", "application/dtmf"):
            return InDialogResult(
                make_response(
                    request, 415, headers=[("Accept", "application/dtmf-relay, application/dtmf")]
                )
            )
        parsed = parse_dtmf_info(media_type, request.body)
        if parsed is None:
            return InDialogResult(make_response(request, 400, "Bad DTMF Body"))
        return InDialogResult(make_response(request, 200), DtmfReceived(*parsed))


# Called, not a decorator: mypyc builds a class under a decorator it does not know
# as a plain Python class (slot_init.py, rule 4).
slot_init(DialogId)

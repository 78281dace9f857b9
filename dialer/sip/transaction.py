"""SIP transactions (RFC 3261 §17, amended by RFC 6026) as pure state machines.

Rules of this file:

1. No IO, no clock. Every input is a method call with ``now`` handed in
   (``start``, ``receive``, ``send_response``, ``timer_fired``,
   ``transport_failed``) and every output is a ``list[Action]``.
2. Each kind of transaction is a table ``{(state, input): next state}`` with the
   RFC's state names. A message from the network that the table has no row for
   is dropped (the RFC's "discard"), because the peer's mistakes must never
   break us. A timer or a call from our own code that the table has no row for
   raises ``TransactionStateError``: that is a bug on our side.
3. Only the client INVITE transaction builds a request of its own: the ACK
   for a non-2xx final response, on the INVITE's branch (§17.1.1.3). The ACK
   for a 2xx is the dialog's business (§13.2.2.4), never a transaction's.
4. After a 2xx both INVITE transactions wait in Accepted (RFC 6026 §7): the
   client passes every 2xx retransmission up (the TU re-ACKs each), the server
   forwards every 2xx retransmission the TU hands it and absorbs INVITE
   retransmissions.
5. ``TransactionLayer`` is the only object the edge holds: it matches responses
   to client transactions (§17.1.3), requests to server transactions (§17.2.3)
   and forgets a transaction once it is Terminated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from dialer.sip.actions import (
    Action,
    Address,
    CancelTimer,
    Deliver,
    Send,
    StartTimer,
    TimedOut,
    TransactionTerminated,
    TransportFailed,
)
from dialer.sip.errors import LocalProtocolError
from dialer.sip.headers import Via, canonical_name, split_values
from dialer.sip.message import Request, Response
from dialer.sip.slot_init import slot_init
from dialer.sip.timers import DEFAULT_TIMERS, TimerConfig, TimerName

__all__ = [
    "MAGIC_COOKIE",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "Input",
    "Role",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "Transaction",
    "TransactionKey",
    "TransactionLayer",
    "TransactionState",
    "TransactionStateError",
    "UnknownTransaction",
    "build_ack_for_non2xx",
    "build_cancel",
    "is_reliable",
    "response_address",
    "stamp_received",
]

#: RFC 3261 §8.1.1.7: a branch starting with this was built by an RFC 3261 stack
#: and is unique per transaction; anything else is matched the RFC 2543 way.
MAGIC_COOKIE = "z9hG4bK"

_RELIABLE = frozenset({"TCP", "TLS", "SCTP", "WS", "WSS"})


def is_reliable(transport: str) -> bool:
    """True for a transport that retransmits by itself (no Timers A, E, G)."""
    return transport.upper() in _RELIABLE


class TransactionState(Enum):
    """The states of RFC 3261 §17 figures 5-8 and RFC 6026 (Accepted)."""

    # Members are singletons: hash by identity, in C (Enum's own hash is Python
    # code, and every table look-up and transaction key hashes these).
    __hash__ = object.__hash__

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Input(Enum):
    """What can happen to a transaction, apart from its timers."""

    # Members are singletons: hash by identity, in C (Enum's own hash is Python
    # code, and every table look-up and transaction key hashes these).
    __hash__ = object.__hash__

    RESPONSE_1XX = "1xx received"
    RESPONSE_2XX = "2xx received"
    RESPONSE_FINAL = "300-699 received"
    REQUEST = "request retransmission received"
    ACK = "ACK received"
    SEND_1XX = "TU sends 1xx"
    SEND_2XX = "TU sends 2xx"
    SEND_FINAL = "TU sends 300-699"
    TRANSPORT_ERROR = "transport error"


# Timer names as plain strings for StartTimer/CancelTimer (``.value`` on an
# enum member is a Python-level property: a dict is cheaper on every step).
_TIMER_NAMES: dict[TimerName, str] = {timer: timer.value for timer in TimerName}

# Inputs that come from the network: without a row they are dropped, not errors.
_FROM_NETWORK = frozenset(
    {Input.RESPONSE_1XX, Input.RESPONSE_2XX, Input.RESPONSE_FINAL, Input.REQUEST, Input.ACK}
)

_Event = Input | TimerName
_Table = dict[tuple[TransactionState, _Event], TransactionState]


class TransactionStateError(LocalProtocolError):
    """Our own code asked a transaction for a move its state machine does not have."""

    def __init__(self, kind: str, state: TransactionState, event: _Event) -> None:
        name = f"timer {event.value}" if isinstance(event, TimerName) else event.value
        super().__init__(f"{kind}: {name} is not allowed in state {state.value}")
        self.state = state
        self.event = event


class UnknownTransaction(LocalProtocolError):
    """No transaction has this key (already terminated, or never existed)."""


class Role(Enum):
    """Which side of the transaction we are."""

    # Members are singletons: hash by identity, in C (Enum's own hash is Python
    # code, and every table look-up and transaction key hashes these).
    __hash__ = object.__hash__

    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """What identifies a transaction (§17.1.3 for clients, §17.2.3 for servers).

    ``method`` is the CSeq method, with ACK folded into INVITE for servers so
    that the ACK for a non-2xx response finds its INVITE transaction.
    ``sent_by`` is the top Via's ``host:port`` (servers only: two clients may
    pick the same branch).
    """

    role: Role
    branch: str
    method: str
    sent_by: str = ""

    # Written out, as dataclasses would make them, so that mypyc compiles them: the
    # ones dataclasses generates stay interpreted, and every dict of transactions
    # and timers hashes these keys.
    def __hash__(self) -> int:
        return hash((self.role, self.branch, self.method, self.sent_by))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TransactionKey):  # no subclasses: as the class check
            return NotImplemented
        return (
            self.branch == other.branch
            and self.method == other.method
            and self.sent_by == other.sent_by
            and self.role is other.role
        )


def _server_key(request: Request) -> TransactionKey:
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    sent_by = via.host if via.port is None else f"{via.host}:{via.port}"
    branch = via.branch or ""
    if not branch.startswith(MAGIC_COOKIE):
        # RFC 2543 peer: no unique branch. §17.2.3 then matches on Request-URI,
        # tags, Call-ID, CSeq and top Via; the To tag is left out so that the
        # ACK (which carries our tag) still finds its INVITE.
        branch = "|".join(
            (
                "rfc2543",
                branch,
                request.uri.serialize(),
                request.from_tag or "",
                request.call_id,
                str(request.cseq.seq),
            )
        )
    return TransactionKey(Role.SERVER, branch, method, sent_by)


def _client_key(branch: str, method: str) -> TransactionKey:
    return TransactionKey(Role.CLIENT, branch, method)


# --- requests a transaction builds -----------------------------------------------------


def _first_value(request: Request, name: str) -> str:
    for header_name, value in request.headers:
        if canonical_name(header_name) == name:
            return split_values(value)[0] if "," in value else value
    raise LocalProtocolError(f"request has no {name}")


def _copy(request: Request, names: tuple[str, ...]) -> list[tuple[str, str]]:
    wanted = set(names)
    return [(canonical_name(n), v) for n, v in request.headers if canonical_name(n) in wanted]


def build_ack_for_non2xx(invite: Request, response: Response) -> Request:
    """The ACK a client INVITE transaction sends for a 300-699 response (§17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number as the INVITE; To from the
    response (it carries the UAS's tag); one Via, the INVITE's top one (so the
    same branch); the INVITE's Route header fields.
    """
    headers: list[tuple[str, str]] = [("Via", _first_value(invite, "Via"))]
    headers += _copy(invite, ("Route",))
    headers += [
        ("Max-Forwards", "70"),
        ("From", invite.get("From") or ""),
        ("To", response.get("To") or ""),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.seq} ACK"),
    ]
    return Request("ACK", invite.uri, tuple(headers))


def build_cancel(request: Request) -> Request:
    """The CANCEL for a pending request (§9.1).

    Request-URI, Call-ID, From, To, CSeq number and Route as in the request; a
    single Via equal to the request's top one (same branch, so the server finds
    the transaction to cancel); method CANCEL.
    """
    if request.method in ("ACK", "CANCEL"):
        raise LocalProtocolError(f"a {request.method} cannot be cancelled (§9.1)")
    headers: list[tuple[str, str]] = [("Via", _first_value(request, "Via"))]
    headers += _copy(request, ("Route",))
    headers += [
        ("Max-Forwards", "70"),
        ("From", request.get("From") or ""),
        ("To", request.get("To") or ""),
        ("Call-ID", request.call_id),
        ("CSeq", f"{request.cseq.seq} CANCEL"),
    ]
    return Request("CANCEL", request.uri, tuple(headers))


# --- where responses go (§18.2.2, RFC 3581) ------------------------------------------------


def stamp_received(request: Request, source: Address) -> Request:
    """Record where a request came from in its top Via (§18.2.1, RFC 3581 §4).

    ``received`` is added when the sent-by host differs from the source address;
    an ``rport`` without a value gets the source port. The responses copy this
    Via, so the client learns its public address from them.
    """
    via = request.top_via
    stamped = via
    if via.host != source[0]:
        stamped = stamped.with_param("received", source[0])
    if via.has_rport and via.rport is None:
        stamped = stamped.with_param("rport", str(source[1]))
    if stamped is via:
        return request
    out: list[tuple[str, str]] = []
    done = False
    for name, value in request.headers:
        if not done and canonical_name(name) == "Via":
            rest = split_values(value)[1:] if "," in value else []
            value = ", ".join([stamped.serialize(), *rest])
            done = True
        out.append((name, value))
    return Request(request.method, request.uri, tuple(out), request.body, request.version)


def response_address(via: Via, source: Address, transport: str) -> Address:
    """Where to send a response to a request that arrived from ``source``.

    Reliable transports answer on the connection the request came in on
    (§18.2.2), which the edge finds by ``source``. Over UDP the answer goes to
    the source address (the ``received`` rule) and, when the client asked with
    ``rport``, to the source port (RFC 3581 §4); else to the sent-by port.
    """
    if is_reliable(transport) or via.has_rport:
        return source
    default_port = 5061 if transport.upper() == "TLS" else 5060
    return (source[0], via.port if via.port is not None else default_port)


# --- the state machines ------------------------------------------------------------------

S = TransactionState

# Figure 5 + RFC 6026 §7.2.
_CLIENT_INVITE: _Table = {
    (S.CALLING, TimerName.A): S.CALLING,
    (S.CALLING, TimerName.B): S.TERMINATED,
    (S.CALLING, Input.RESPONSE_1XX): S.PROCEEDING,
    (S.CALLING, Input.RESPONSE_2XX): S.ACCEPTED,
    (S.CALLING, Input.RESPONSE_FINAL): S.COMPLETED,
    (S.CALLING, Input.TRANSPORT_ERROR): S.TERMINATED,
    (S.PROCEEDING, Input.RESPONSE_1XX): S.PROCEEDING,
    (S.PROCEEDING, Input.RESPONSE_2XX): S.ACCEPTED,
    (S.PROCEEDING, Input.RESPONSE_FINAL): S.COMPLETED,
    (S.PROCEEDING, Input.TRANSPORT_ERROR): S.TERMINATED,
    (S.COMPLETED, Input.RESPONSE_FINAL): S.COMPLETED,
    (S.COMPLETED, Input.TRANSPORT_ERROR): S.TERMINATED,
    (S.COMPLETED, TimerName.D): S.TERMINATED,
    (S.ACCEPTED, Input.RESPONSE_2XX): S.ACCEPTED,
    (S.ACCEPTED, TimerName.M): S.TERMINATED,
}

# Figure 6.
_CLIENT_NON_INVITE: _Table = {
    (S.TRYING, TimerName.E): S.TRYING,
    (S.TRYING, TimerName.F): S.TERMINATED,
    (S.TRYING, Input.RESPONSE_1XX): S.PROCEEDING,
    (S.TRYING, Input.RESPONSE_2XX): S.COMPLETED,
    (S.TRYING, Input.RESPONSE_FINAL): S.COMPLETED,
    (S.TRYING, Input.TRANSPORT_ERROR): S.TERMINATED,
    (S.PROCEEDING, TimerName.E): S.PROCEEDING,
    (S.PROCEEDING, TimerName.F): S.TERMINATED,
    (S.PROCEEDING, Input.RESPONSE_1XX): S.PROCEEDING,
    (S.PROCEEDING, Input.RESPONSE_2XX): S.COMPLETED,
    (S.PROCEEDING, Input.RESPONSE_FINAL): S.COMPLETED,
    (S.PROCEEDING, Input.TRANSPORT_ERROR): S.TERMINATED,
    (S.COMPLETED, Input.RESPONSE_1XX): S.COMPLETED,
    (S.COMPLETED, Input.RESPONSE_2XX): S.COMPLETED,
    (S.COMPLETED, Input.RESPONSE_FINAL): S.COMPLETED,
    (S.COMPLETED, TimerName.K): S.TERMINATED,
}

# Figure 7 + RFC 6026 §7.1.
_SERVER_INVITE: _Table = {
    (S.PROCEEDING, Input.REQUEST): S.PROCEEDING,
    (S.PROCEEDING, Input.SEND_1XX): S.PROCEEDING,
    (S.PROCEEDING, Input.SEND_2XX): S.ACCEPTED,
    (S.PROCEEDING, Input.SEND_FINAL): S.COMPLETED,
    (S.PROCEEDING, Input.TRANSPORT_ERROR): S.TERMINATED,
    (S.COMPLETED, Input.REQUEST): S.COMPLETED,
    (S.COMPLETED, Input.ACK): S.CONFIRMED,
    (S.COMPLETED, TimerName.G): S.COMPLETED,
    (S.COMPLETED, TimerName.H): S.TERMINATED,
    (S.COMPLETED, Input.TRANSPORT_ERROR): S.TERMINATED,
    (S.CONFIRMED, Input.REQUEST): S.CONFIRMED,
    (S.CONFIRMED, Input.ACK): S.CONFIRMED,
    (S.CONFIRMED, TimerName.I): S.TERMINATED,
    (S.ACCEPTED, Input.REQUEST): S.ACCEPTED,
    (S.ACCEPTED, Input.ACK): S.ACCEPTED,
    (S.ACCEPTED, Input.SEND_2XX): S.ACCEPTED,
    (S.ACCEPTED, TimerName.L): S.TERMINATED,
}

# Figure 8.
_SERVER_NON_INVITE: _Table = {
    (S.TRYING, Input.REQUEST): S.TRYING,
    (S.TRYING, Input.SEND_1XX): S.PROCEEDING,
    (S.TRYING, Input.SEND_2XX): S.COMPLETED,
    (S.TRYING, Input.SEND_FINAL): S.COMPLETED,
    (S.PROCEEDING, Input.REQUEST): S.PROCEEDING,
    (S.PROCEEDING, Input.SEND_1XX): S.PROCEEDING,
    (S.PROCEEDING, Input.SEND_2XX): S.COMPLETED,
    (S.PROCEEDING, Input.SEND_FINAL): S.COMPLETED,
    (S.PROCEEDING, Input.TRANSPORT_ERROR): S.TERMINATED,
    (S.COMPLETED, Input.REQUEST): S.COMPLETED,
    (S.COMPLETED, Input.TRANSPORT_ERROR): S.TERMINATED,
    (S.COMPLETED, TimerName.J): S.TERMINATED,
}


def _response_input(status: int) -> Input:
    if status < 200:
        return Input.RESPONSE_1XX
    return Input.RESPONSE_2XX if status < 300 else Input.RESPONSE_FINAL


def _send_input(status: int) -> Input:
    if status < 200:
        return Input.SEND_1XX
    return Input.SEND_2XX if status < 300 else Input.SEND_FINAL


class Transaction:
    """What all four transaction kinds share: state, table, timers, addressing."""

    __slots__ = ("_intervals", "addr", "config", "key", "reliable", "request", "state", "transport")

    _TABLE: ClassVar[_Table] = {}
    _KIND: ClassVar[str] = "transaction"

    def __init__(
        self,
        key: TransactionKey,
        request: Request,
        addr: Address,
        transport: str,
        config: TimerConfig,
        state: TransactionState,
    ) -> None:
        self.key = key
        # None once nothing can need it again (see `_forget_request`).
        self.request: Request | None = request
        self.addr = addr
        self.transport = transport
        self.reliable = is_reliable(transport)
        self.config = config
        self.state = state
        # Running timers -> their current interval (for the doubling ones).
        self._intervals: dict[TimerName, float] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key.method} {self.key.branch} {self.state.value}>"

    @property
    def running_timers(self) -> frozenset[TimerName]:
        """Timers started and neither fired nor cancelled (for tests and metrics)."""
        return frozenset(self._intervals)

    @property
    def terminated(self) -> bool:
        """True once the transaction reached Terminated."""
        return self.state is S.TERMINATED

    def timer_fired(self, timer: TimerName, now: float) -> list[Action]:
        """Timer ``timer`` of this transaction reached its deadline."""
        if timer not in self._intervals:
            raise TransactionStateError(self._KIND, self.state, timer)
        interval = self._intervals.pop(timer)
        return self._step(timer, now, None, interval)

    def transport_failed(self, now: float) -> list[Action]:
        """The transport could not deliver our message (§17.1.4, §17.2.4)."""
        if (self.state, Input.TRANSPORT_ERROR) not in self._TABLE:
            return []
        return self._step(Input.TRANSPORT_ERROR, now, None, 0.0)

    # --- machinery ------------------------------------------------------------------

    def _step(
        self,
        event: _Event,
        now: float,
        message: Request | Response | None,
        interval: float,
    ) -> list[Action]:
        new = self._TABLE.get((self.state, event))
        if new is None:
            if event in _FROM_NETWORK:
                return []  # the RFC's "discard": a peer's stray message is not our bug
            raise TransactionStateError(self._KIND, self.state, event)
        out: list[Action] = []
        old = self.state
        self.state = new
        new = self._act(old, event, message, now, interval, out)
        self.state = new
        if new is S.TERMINATED:
            for timer in list(self._intervals):
                self._cancel(timer, out)
            # No table reaches these from a state that has forgotten its request.
            request = self.request
            if request is None:
                pass
            elif isinstance(event, TimerName) and event in (
                TimerName.B,
                TimerName.F,
                TimerName.H,
            ):
                out.append(TimedOut(self.key, event.value, request))
            elif event is Input.TRANSPORT_ERROR:
                out.append(TransportFailed(self.key, request))
            out.append(TransactionTerminated(self.key))
        return out

    def _act(
        self,
        old: TransactionState,
        event: _Event,
        message: Request | Response | None,
        now: float,
        interval: float,
        out: list[Action],
    ) -> TransactionState:
        raise NotImplementedError

    def _start(self, timer: TimerName, now: float, out: list[Action], interval: float) -> None:
        self._intervals[timer] = interval
        out.append(StartTimer(self.key, _TIMER_NAMES[timer], now + interval))

    def _start_initial(self, timer: TimerName, now: float, out: list[Action]) -> bool:
        """Start ``timer`` at its initial value; False when it is zero (end now)."""
        interval = self.config.initial(timer, self.reliable)
        if interval is None:
            return True
        if interval <= 0:
            return False
        self._start(timer, now, out, interval)
        return True

    def _cancel(self, timer: TimerName, out: list[Action]) -> None:
        if self._intervals.pop(timer, None) is not None:
            out.append(CancelTimer(self.key, _TIMER_NAMES[timer]))

    def _held(self) -> Request:
        """The request, in a state that still holds it."""
        request = self.request
        if request is None:
            raise TransactionStateError(self._KIND, self.state, Input.REQUEST)
        return request

    def _send(self, data: bytes, message: Request | Response, out: list[Action]) -> None:
        out.append(Send(data, self.addr, self.transport, message))

    def _pass_up(self, message: Request | Response | None, out: list[Action]) -> None:
        if message is not None:
            out.append(Deliver(self.key, message))


class _ClientTransaction(Transaction):
    __slots__ = ("_data",)

    def __init__(
        self,
        request: Request,
        addr: Address,
        transport: str,
        config: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        branch = request.branch
        if not branch or not branch.startswith(MAGIC_COOKIE):
            # §8.1.1.7: the branch MUST start with the magic cookie.
            raise LocalProtocolError(f"branch must start with {MAGIC_COOKIE}: {branch!r}")
        key = _client_key(branch, request.method)
        initial = S.CALLING if request.method == "INVITE" else S.TRYING
        super().__init__(key, request, addr, transport, config, initial)
        self._data = request.serialize()

    def receive(self, response: Response, now: float) -> list[Action]:
        """A response matched to this transaction arrived."""
        return self._step(_response_input(response.status), now, response, 0.0)

    def _forget_request(self) -> None:
        """Drop the request and its bytes where only retransmissions remain to absorb.

        A client INVITE transaction stays 32 s in Accepted (Timer M) and a
        non-INVITE one 5 s in Completed (Timer K): at 300 calls/s, holding
        each call's parsed INVITE that long kept ~10,000 of them alive, and
        walking them cost a worker a seventh of its CPU in garbage collection.
        """
        self.request = None
        self._data = b""


class ClientInviteTransaction(_ClientTransaction):
    """The INVITE client transaction (§17.1.1, RFC 6026 §7.2).

    Calling -> Proceeding on 1xx; Accepted on 2xx (Timer M); Completed on
    300-699, ACKed here, Timer D; Terminated on Timer B (TimedOut).
    """

    __slots__ = ("_ack",)
    _TABLE = _CLIENT_INVITE
    _KIND = "client INVITE transaction"

    def __init__(
        self,
        request: Request,
        addr: Address,
        transport: str,
        config: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        if request.method != "INVITE":
            raise LocalProtocolError("ClientInviteTransaction needs an INVITE")
        super().__init__(request, addr, transport, config)
        self._ack: tuple[bytes, Request] | None = None

    def start(self, now: float) -> list[Action]:
        """Send the INVITE; start Timer A (unreliable transports) and Timer B."""
        out: list[Action] = []
        self._send(self._data, self._held(), out)
        self._start_initial(TimerName.A, now, out)
        self._start_initial(TimerName.B, now, out)
        return out

    def _act(
        self,
        old: TransactionState,
        event: _Event,
        message: Request | Response | None,
        now: float,
        interval: float,
        out: list[Action],
    ) -> TransactionState:
        match event:
            case TimerName.A:
                self._send(self._data, self._held(), out)
                self._start(TimerName.A, now, out, self.config.next_interval(TimerName.A, interval))
            case Input.RESPONSE_1XX:
                # §17.1.1.2: no retransmissions in Proceeding, and Timer B only
                # guards Calling.
                self._cancel(TimerName.A, out)
                self._cancel(TimerName.B, out)
                self._pass_up(message, out)
            case Input.RESPONSE_2XX:
                self._cancel(TimerName.A, out)
                self._cancel(TimerName.B, out)
                self._pass_up(message, out)
                self._forget_request()  # never sent again: not held for Timer M
                if old is not S.ACCEPTED:
                    # RFC 6026 §7.2: Timer M keeps the transaction for the 2xx
                    # retransmissions of other forks.
                    self._start_initial(TimerName.M, now, out)
            case Input.RESPONSE_FINAL:
                assert isinstance(message, Response)
                if old is S.COMPLETED:
                    # §17.1.1.2: a retransmitted final response is ACKed again
                    # and not passed up.
                    if self._ack is not None:
                        self._send(self._ack[0], self._ack[1], out)
                    return S.COMPLETED
                self._cancel(TimerName.A, out)
                self._cancel(TimerName.B, out)
                ack = build_ack_for_non2xx(self._held(), message)
                self._ack = (ack.serialize(), ack)
                # What Timer D holds from here on is the ACK (same Call-ID for a
                # transport failure's report), not the INVITE with its offer.
                self.request = ack
                self._data = b""
                self._send(self._ack[0], ack, out)
                self._pass_up(message, out)
                if not self._start_initial(TimerName.D, now, out):
                    return S.TERMINATED
        return self.state


class ClientNonInviteTransaction(_ClientTransaction):
    """A non-INVITE client transaction (§17.1.2): Timers E, F, K."""

    __slots__ = ()
    _TABLE = _CLIENT_NON_INVITE
    _KIND = "client non-INVITE transaction"

    def __init__(
        self,
        request: Request,
        addr: Address,
        transport: str,
        config: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise LocalProtocolError(f"{request.method} has no non-INVITE client transaction")
        super().__init__(request, addr, transport, config)

    def start(self, now: float) -> list[Action]:
        """Send the request; start Timer E (unreliable transports) and Timer F."""
        out: list[Action] = []
        self._send(self._data, self._held(), out)
        self._start_initial(TimerName.E, now, out)
        self._start_initial(TimerName.F, now, out)
        return out

    def _act(
        self,
        old: TransactionState,
        event: _Event,
        message: Request | Response | None,
        now: float,
        interval: float,
        out: list[Action],
    ) -> TransactionState:
        match event:
            case TimerName.E:
                self._send(self._data, self._held(), out)
                # §17.1.2.2: in Proceeding the interval is T2 straight away.
                if old is S.PROCEEDING:
                    next_interval = self.config.t2_s
                else:
                    next_interval = self.config.next_interval(TimerName.E, interval)
                self._start(TimerName.E, now, out, next_interval)
            case Input.RESPONSE_1XX:
                self._pass_up(message, out)
            case Input.RESPONSE_2XX | Input.RESPONSE_FINAL:
                if old is S.COMPLETED:
                    return S.COMPLETED  # retransmission: absorbed
                self._cancel(TimerName.E, out)
                self._cancel(TimerName.F, out)
                self._pass_up(message, out)
                self._forget_request()  # never sent again: not held for Timer K
                if not self._start_initial(TimerName.K, now, out):
                    return S.TERMINATED
        return self.state


class _ServerTransaction(Transaction):
    __slots__ = ("_last",)

    def __init__(
        self,
        request: Request,
        source: Address,
        transport: str,
        config: TimerConfig = DEFAULT_TIMERS,
        *,
        key: TransactionKey | None = None,
    ) -> None:
        addr = response_address(request.top_via, source, transport)
        initial = S.PROCEEDING if request.method == "INVITE" else S.TRYING
        super().__init__(key or _server_key(request), request, addr, transport, config, initial)
        self._last: tuple[bytes, Response] | None = None

    def receive(self, request: Request, now: float) -> list[Action]:
        """A retransmission of the request (or, for INVITE, an ACK) arrived."""
        event = Input.ACK if request.method == "ACK" else Input.REQUEST
        return self._step(event, now, request, 0.0)

    def send_response(self, response: Response, now: float) -> list[Action]:
        """The TU answers the request (raises ``TransactionStateError`` once final)."""
        if response.cseq.method != self._held().method:
            raise LocalProtocolError("response CSeq method does not match the request")
        return self._step(_send_input(response.status), now, response, 0.0)

    def _resend_last(self, out: list[Action]) -> None:
        if self._last is not None:
            self._send(self._last[0], self._last[1], out)

    def _remember_and_send(self, response: Request | Response | None, out: list[Action]) -> None:
        if not isinstance(response, Response):
            raise LocalProtocolError("a server transaction sends responses only")
        self._last = (response.serialize(), response)
        self._send(self._last[0], response, out)


class ServerInviteTransaction(_ServerTransaction):
    """The INVITE server transaction (§17.2.1, RFC 6026 §7.1): Timers G, H, I, L.

    It never sends a 100 (Trying) by itself: our TU answers at once (a
    re-INVITE is answered in the same step it arrives), which §17.2.1 allows.
    """

    __slots__ = ()
    _TABLE = _SERVER_INVITE
    _KIND = "server INVITE transaction"

    def _act(
        self,
        old: TransactionState,
        event: _Event,
        message: Request | Response | None,
        now: float,
        interval: float,
        out: list[Action],
    ) -> TransactionState:
        match event:
            case Input.REQUEST:
                # §17.2.1: a retransmitted INVITE gets the last provisional or
                # final response again; in Accepted it is absorbed (RFC 6026).
                if old is not S.ACCEPTED:
                    self._resend_last(out)
            case Input.ACK:
                if old is S.COMPLETED:
                    self._cancel(TimerName.G, out)
                    self._cancel(TimerName.H, out)
                    if not self._start_initial(TimerName.I, now, out):
                        return S.TERMINATED
                elif old is S.ACCEPTED:
                    # RFC 6026 §7.1: an ACK matching in Accepted goes to the TU.
                    self._pass_up(message, out)
            case Input.SEND_1XX:
                self._remember_and_send(message, out)
            case Input.SEND_2XX:
                self._remember_and_send(message, out)
                if old is S.PROCEEDING:
                    self._start_initial(TimerName.L, now, out)
            case Input.SEND_FINAL:
                self._remember_and_send(message, out)
                self._start_initial(TimerName.G, now, out)
                self._start_initial(TimerName.H, now, out)
            case TimerName.G:
                self._resend_last(out)
                self._start(TimerName.G, now, out, self.config.next_interval(TimerName.G, interval))
        return self.state


class ServerNonInviteTransaction(_ServerTransaction):
    """A non-INVITE server transaction (§17.2.2): Timer J."""

    __slots__ = ()
    _TABLE = _SERVER_NON_INVITE
    _KIND = "server non-INVITE transaction"

    def _act(
        self,
        old: TransactionState,
        event: _Event,
        message: Request | Response | None,
        now: float,
        interval: float,
        out: list[Action],
    ) -> TransactionState:
        match event:
            case Input.REQUEST:
                # §17.2.2: absorbed in Trying; the last response again otherwise.
                self._resend_last(out)
            case Input.SEND_1XX:
                self._remember_and_send(message, out)
            case Input.SEND_2XX | Input.SEND_FINAL:
                self._remember_and_send(message, out)
                if not self._start_initial(TimerName.J, now, out):
                    return S.TERMINATED
        return self.state


ClientTransaction = ClientInviteTransaction | ClientNonInviteTransaction
ServerTransaction = ServerInviteTransaction | ServerNonInviteTransaction


class TransactionLayer:
    """All live transactions of one user agent, and the matching rules between them.

    Pure: the edge feeds it what arrives and carries out what it returns. A
    transaction that reaches Terminated is forgotten in the same call, after
    its ``TransactionTerminated`` action.
    """

    __slots__ = ("_transactions", "_unanswered", "config")

    def __init__(self, config: TimerConfig = DEFAULT_TIMERS) -> None:
        self.config = config
        self._transactions: dict[TransactionKey, Transaction] = {}
        # Client transactions still in Calling or Trying: sent, nothing heard yet.
        self._unanswered: set[TransactionKey] = set()

    def __len__(self) -> int:
        return len(self._transactions)

    @property
    def unanswered(self) -> int:
        """Our requests that have heard nothing yet (client transactions in Calling
        or Trying): the first number to grow when the peer, or our own event loop,
        falls behind."""
        return len(self._unanswered)

    def __contains__(self, key: object) -> bool:
        return key in self._transactions

    def __iter__(self) -> Iterator[Transaction]:
        return iter(list(self._transactions.values()))

    def get(self, key: TransactionKey) -> Transaction | None:
        """The live transaction with this key, None if there is none."""
        return self._transactions.get(key)

    # --- our requests ------------------------------------------------------------------

    def send_request(
        self, request: Request, addr: Address, transport: str, now: float
    ) -> tuple[TransactionKey, list[Action]]:
        """Start a client transaction for ``request`` (not an ACK) and send it.

        ``addr`` is the next hop, already resolved by the caller.
        """
        tx: ClientTransaction
        if request.method == "INVITE":
            tx = ClientInviteTransaction(request, addr, transport, self.config)
        else:
            tx = ClientNonInviteTransaction(request, addr, transport, self.config)
        if tx.key in self._transactions:
            raise LocalProtocolError(f"branch {tx.key.branch} is already in use")
        self._transactions[tx.key] = tx
        self._unanswered.add(tx.key)
        return tx.key, self._settle(tx, tx.start(now))

    def send_stateless(self, message: Request | Response, addr: Address, transport: str) -> Send:
        """Send with no transaction: the ACK for a 2xx (§13.2.2.4, §17.1.1.3)."""
        return Send(message.serialize(), addr, transport, message)

    # --- what arrives ------------------------------------------------------------------

    def receive(
        self, message: Request | Response, source: Address, transport: str, now: float
    ) -> list[Action]:
        """Match an arriving message to its transaction, or start a server transaction.

        Responses without a transaction and ACKs for 2xx responses come back
        as ``Deliver(None, ...)``; a new request comes back as
        ``Deliver(key, request)`` with its server transaction started.
        """
        if isinstance(message, Response):
            branch = message.branch or ""
            client = self._transactions.get(_client_key(branch, message.cseq.method))
            # A client key only ever names a client transaction; the check tells the
            # type checker (and the compiled code) which ``receive`` this is.
            if not isinstance(client, _ClientTransaction):
                return [Deliver(None, message, source)]
            return self._settle(client, client.receive(message, now))
        request = stamp_received(message, source)
        key = _server_key(request)
        existing = self._transactions.get(key)
        if isinstance(existing, _ServerTransaction):
            if request.method == "ACK" and not isinstance(existing, ServerInviteTransaction):
                return [Deliver(None, request, source)]
            return self._settle(existing, existing.receive(request, now))
        if request.method == "ACK":
            return [Deliver(None, request, source)]
        tx: ServerTransaction
        if request.method == "INVITE":
            tx = ServerInviteTransaction(request, source, transport, self.config, key=key)
        else:
            tx = ServerNonInviteTransaction(request, source, transport, self.config, key=key)
        self._transactions[key] = tx
        cancels = None
        if request.method == "CANCEL":
            # §9.2: the CANCEL matches the transaction it cancels like an ACK
            # would: same branch and sent-by, method INVITE.
            target = TransactionKey(Role.SERVER, key.branch, "INVITE", key.sent_by)
            if target in self._transactions:
                cancels = target
        return [Deliver(key, request, source, cancels)]

    def send_response(self, key: TransactionKey, response: Response, now: float) -> list[Action]:
        """Send the TU's response through server transaction ``key``."""
        tx = self._transactions.get(key)
        if tx is None:
            raise UnknownTransaction(f"no transaction {key}")
        if not isinstance(tx, _ServerTransaction):
            raise LocalProtocolError("responses are sent by server transactions only")
        return self._settle(tx, tx.send_response(response, now))

    def timer_fired(self, key: TransactionKey, timer: str, now: float) -> list[Action]:
        """A timer the layer asked for fired. A forgotten transaction's timer is ignored."""
        tx = self._transactions.get(key)
        if tx is None:
            return []
        return self._settle(tx, tx.timer_fired(TimerName(timer), now))

    def transport_failed(self, key: TransactionKey, now: float) -> list[Action]:
        """The edge could not send for transaction ``key`` (ICMP error, TCP reset)."""
        tx = self._transactions.get(key)
        if tx is None:
            return []
        return self._settle(tx, tx.transport_failed(now))

    def abandon(self, key: TransactionKey) -> list[Action]:
        """Destroy a transaction its TU has given up on (§9.1: a CANCELled INVITE
        with no final response 64*T1 later). Its timers are cancelled; no event
        but ``TransactionTerminated`` is reported. Unknown keys are ignored."""
        tx = self._transactions.pop(key, None)
        self._unanswered.discard(key)
        if tx is None:
            return []
        out: list[Action] = []
        for timer in list(tx._intervals):
            tx._cancel(timer, out)
        tx.state = S.TERMINATED
        out.append(TransactionTerminated(key))
        return out

    def _settle(self, tx: Transaction, actions: list[Action]) -> list[Action]:
        state = tx.state
        if state is not S.CALLING and state is not S.TRYING:
            self._unanswered.discard(tx.key)
        if state is S.TERMINATED:
            self._transactions.pop(tx.key, None)
        return actions


# Called, not a decorator: mypyc builds a class under a decorator it does not know
# as a plain Python class (slot_init.py, rule 4).
slot_init(TransactionKey)

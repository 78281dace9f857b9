"""An in-memory SIP network for tests: peers, a fake clock, a lossy wire.

Every message crosses the wire as bytes and is parsed again on arrival, so
the tests exercise serialisation and parsing as well as the state machines.
Nothing sleeps: ``Wire.advance`` moves the fake clock from one timer
deadline to the next and runs what is due, in order.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

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
from dialer.sip.dialog import Dialog, LocalMedia, MediaSession
from dialer.sip.errors import SipError
from dialer.sip.headers import Via
from dialer.sip.message import Request, Response, make_response
from dialer.sip.parser import parse_message
from dialer.sip.sdp import build_answer, build_offer
from dialer.sip.timers import DEFAULT_TIMERS, TimerConfig
from dialer.sip.transaction import TransactionKey, TransactionLayer
from dialer.sip.uri import NameAddr, SipUri

__all__ = [
    "TRUNK_ADDR",
    "UAC_ADDR",
    "FakeClock",
    "FakeTrunk",
    "LayerPeer",
    "Node",
    "Wire",
    "sent_by",
]

UAC_ADDR: Address = ("192.0.2.10", 5060)
TRUNK_ADDR: Address = ("192.0.2.20", 5060)


class Handler(Protocol):
    def receive(
        self, message: Request | Response, source: Address, transport: str, now: float
    ) -> list[Action]: ...

    def timer_fired(self, key: object, timer: str, now: float) -> list[Action]: ...


class FakeClock:
    """Timers as a heap of deadlines; cancelling marks an entry dead."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._heap: list[tuple[float, int, Address, Hashable, str]] = []
        self._live: dict[tuple[Address, Hashable, str], int] = {}
        self._seq = itertools.count()

    def schedule(self, owner: Address, key: Hashable, timer: str, at: float) -> None:
        seq = next(self._seq)
        self._live[(owner, key, timer)] = seq  # replaces a running one
        heapq.heappush(self._heap, (at, seq, owner, key, timer))

    def cancel(self, owner: Address, key: Hashable, timer: str) -> None:
        self._live.pop((owner, key, timer), None)

    def pending(self, owner: Address | None = None) -> list[tuple[float, Hashable, str]]:
        """Live timers (deadline, key, name), soonest first."""
        return sorted(
            (at, key, timer)
            for at, seq, who, key, timer in self._heap
            if self._live.get((who, key, timer)) == seq and (owner is None or who == owner)
        )

    def pop_due(self, until: float) -> tuple[float, Address, Hashable, str] | None:
        while self._heap and self._heap[0][0] <= until:
            at, seq, owner, key, timer = heapq.heappop(self._heap)
            if self._live.get((owner, key, timer)) == seq:
                del self._live[(owner, key, timer)]
                return at, owner, key, timer
        return None


@dataclass
class Node:
    """One peer on the wire: its handler and what it did."""

    addr: Address
    handler: Handler
    events: list[Action] = field(default_factory=list)
    sent: list[tuple[float, Request | Response]] = field(default_factory=list)
    received: list[tuple[float, Request | Response]] = field(default_factory=list)


class Wire:
    """Two or more peers, a fake clock, and an optional drop rule."""

    def __init__(self, transport: str = "UDP") -> None:
        self.transport = transport
        self.clock = FakeClock()
        self.nodes: dict[Address, Node] = {}
        self.queue: deque[tuple[Address, Address, bytes]] = deque()
        self.drop: Callable[[Request | Response, Address, Address], bool] | None = None
        self.dropped: list[Request | Response] = []
        # Bytes that do not parse: an error by default; set drop_malformed to have
        # them dropped and kept here instead, as the real transport does.
        self.drop_malformed = False
        self.malformed: list[bytes] = []

    @property
    def now(self) -> float:
        return self.clock.now

    def add(self, addr: Address, handler: Handler) -> Node:
        node = self.nodes[addr] = Node(addr, handler)
        return node

    def execute(self, addr: Address, actions: Iterable[Action]) -> None:
        """Carry out a peer's actions, as the edge would."""
        node = self.nodes[addr]
        for action in actions:
            match action:
                case Send(data=data, addr=to, message=message):
                    node.sent.append((self.clock.now, message))
                    self.queue.append((addr, to, data))
                case StartTimer(key=key, timer=timer, at=at):
                    assert at >= self.clock.now, "a timer in the past"
                    self.clock.schedule(addr, key, timer, at)
                case CancelTimer(key=key, timer=timer):
                    self.clock.cancel(addr, key, timer)
                case _:
                    node.events.append(action)

    def flush(self) -> None:
        """Deliver everything in flight (which may send more), at the current time."""
        for _ in range(10_000):
            if not self.queue:
                return
            source, to, data = self.queue.popleft()
            try:
                message = parse_message(data)
            except SipError:
                if not self.drop_malformed:
                    raise
                self.malformed.append(data)
                continue
            if self.drop is not None and self.drop(message, source, to):
                self.dropped.append(message)
                continue
            node = self.nodes[to]
            node.received.append((self.clock.now, message))
            self.execute(to, node.handler.receive(message, source, self.transport, self.clock.now))
        raise AssertionError("message storm on the wire")

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing every due timer in deadline order."""
        self.flush()
        until = self.clock.now + seconds
        while (due := self.clock.pop_due(until)) is not None:
            at, owner, key, timer = due
            self.clock.now = max(self.clock.now, at)
            node = self.nodes[owner]
            self.execute(owner, node.handler.timer_fired(key, timer, self.clock.now))
            self.flush()
        self.clock.now = until


def sent_by(node: Node, method: str | None = None, status: int | None = None) -> list:
    """What a node sent, filtered by request method or response status."""
    out = []
    for _, message in node.sent:
        if isinstance(message, Request):
            wanted = method is not None and message.method == method
        else:
            wanted = status is not None and message.status == status
        if wanted:
            out.append(message)
    return out


class LayerPeer:
    """A peer that is just a transaction layer; it records what the layer passes up."""

    def __init__(self, addr: Address, config: TimerConfig) -> None:
        self.addr = addr
        self.layer = TransactionLayer(config)
        self.delivered: list[Deliver] = []
        self.timeouts: list[TimedOut | TransportFailed] = []
        self.terminated: list[Hashable] = []

    def receive(
        self, message: Request | Response, source: Address, transport: str, now: float
    ) -> list[Action]:
        return self._sift(self.layer.receive(message, source, transport, now), now)

    def timer_fired(self, key: object, timer: str, now: float) -> list[Action]:
        assert isinstance(key, TransactionKey)
        return self._sift(self.layer.timer_fired(key, timer, now), now)

    def _sift(self, actions: list[Action], now: float) -> list[Action]:
        out: list[Action] = []
        for action in actions:
            match action:
                case Deliver():
                    self.delivered.append(action)
                    out += self.on_deliver(action, now)
                case TimedOut() | TransportFailed():
                    self.timeouts.append(action)
                case TransactionTerminated(key=key):
                    self.terminated.append(key)
                case _:
                    out.append(action)
        return out

    def on_deliver(self, deliver: Deliver, now: float) -> list[Action]:
        return []


class FakeTrunk(LayerPeer):
    """A scriptable UAS standing in for the carrier: the test says what it answers.

    It answers CANCEL (200, then 487 to the INVITE), in-dialog requests through
    a real ``Dialog``, and ACKs 2xx responses to its own re-INVITEs (unless
    ``ack_invites`` is False).
    """

    def __init__(
        self,
        wire: Wire,
        addr: Address = TRUNK_ADDR,
        peer: Address = UAC_ADDR,
        config: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        super().__init__(addr, config)
        self.wire = wire
        self.peer = peer
        self.invite: Request | None = None
        self.invite_key: TransactionKey | None = None
        self.invites: list[Request] = []
        self.acks: list[Request] = []
        self.requests: list[Request] = []
        self.responses: list[Response] = []
        self.dialog: Dialog | None = None
        self.media = MediaSession(LocalMedia("192.0.2.20", 30000), 42)
        self.contact = NameAddr(SipUri(addr[0], "trunk", port=addr[1]))
        self.ack_invites = True
        self.answer_cancel = True
        self._branches = itertools.count(1)
        self._final_sent = False
        self.node = wire.add(addr, self)

    # --- what arrives -----------------------------------------------------------------

    def on_deliver(self, deliver: Deliver, now: float) -> list[Action]:
        message = deliver.message
        if isinstance(message, Response):
            self.responses.append(message)
            if (
                message.cseq.method == "INVITE"
                and message.status // 100 == 2
                and self.dialog is not None
                and self.ack_invites
            ):
                sent = [r for r in self.requests_sent() if r.method == "INVITE"]
                ack = self.dialog.create_ack(sent[-1], self.via())
                return [self.layer.send_stateless(ack, self.peer, self.wire.transport)]
            return []
        request = message
        if request.method == "ACK":
            self.acks.append(request)
            return []
        key = deliver.key
        assert isinstance(key, TransactionKey)
        if request.method == "INVITE" and request.to_tag is None:
            self.invite, self.invite_key = request, key
            self.invites.append(request)
            self._final_sent = False
            return []
        self.requests.append(request)
        if request.method == "CANCEL":
            out = self.layer.send_response(key, make_response(request, 200), now)
            if deliver.cancels is not None and self.answer_cancel and not self._final_sent:
                out += self._respond(487, None, now)
            return out
        if self.dialog is None:
            return self.layer.send_response(key, make_response(request, 481), now)
        result = self.dialog.handle_request(request, self.media)
        if result.response is None:
            return []
        return self.layer.send_response(key, result.response, now)

    def requests_sent(self) -> list[Request]:
        return [m for _, m in self.node.sent if isinstance(m, Request)]

    # --- what the test makes it do ---------------------------------------------------------

    def via(self) -> Via:
        branch = f"z9hG4bKtrunk{next(self._branches)}"
        return Via(self.wire.transport, self.addr[0], self.addr[1], (("branch", branch),))

    def answer_sdp(self, direction: str = "sendrecv", codecs: tuple[str, ...] = ("PCMU",)) -> bytes:
        assert self.invite is not None
        return build_answer(
            self.invite.body, "192.0.2.20", 30000, 42, 1, codecs=codecs, local_direction=direction
        )

    def offer_sdp(self, direction: str = "sendrecv", version: int = 2) -> bytes:
        return build_offer("192.0.2.20", 30000, 42, version, codecs=("PCMU",), direction=direction)

    def _respond(
        self,
        status: int,
        body: bytes | None,
        now: float,
        *,
        to_tag: str = "trunk-tag",
        headers: Iterable[tuple[str, str]] = (),
    ) -> list[Action]:
        assert self.invite is not None and self.invite_key is not None
        extra = list(headers)
        if 100 < status < 300 and not any(n == "Contact" for n, _ in extra):
            extra.insert(0, ("Contact", self.contact.serialize()))
        if body:
            extra.append(("Content-Type", "application/sdp"))
        response = make_response(
            self.invite,
            status,
            to_tag=None if status == 100 else to_tag,
            headers=extra,
            body=body or b"",
        )
        if status >= 200:
            self._final_sent = True
        if status // 100 == 2 and self.dialog is None:
            self.dialog = Dialog.from_uas(self.invite, to_tag, self.contact)
            if self.invite.body:
                self.media.answer_offer(self.invite.body)
        return self.layer.send_response(self.invite_key, response, now)

    def respond(
        self,
        status: int,
        body: bytes | None = None,
        *,
        to_tag: str = "trunk-tag",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Answer the last INVITE with ``status`` and put it on the wire."""
        actions = self._respond(status, body, self.wire.now, to_tag=to_tag, headers=headers)
        self.wire.execute(self.addr, actions)
        self.wire.flush()

    def retransmit(self, response: Response) -> None:
        """Put a copy of a response on the wire, outside any transaction (a proxy's resend)."""
        self.wire.execute(
            self.addr, [self.layer.send_stateless(response, self.peer, self.wire.transport)]
        )
        self.wire.flush()

    def send(
        self,
        method: str,
        body: bytes = b"",
        *,
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """Send a request in the dialog (BYE, re-INVITE, INFO, ...)."""
        assert self.dialog is not None
        request = self.dialog.create_request(
            method, self.via(), headers=list(headers), body=body, content_type=content_type
        )
        self.send_raw(request)
        return request

    def send_raw(self, request: Request) -> None:
        _, actions = self.layer.send_request(request, self.peer, self.wire.transport, self.wire.now)
        self.wire.execute(self.addr, actions)
        self.wire.flush()

"""Transactions (dialer.sip.transaction): every timer path, over a fake wire, never sleeping."""

from __future__ import annotations

import pytest

from dialer.sip.actions import Deliver, Send, StartTimer, TimedOut
from dialer.sip.errors import LocalProtocolError
from dialer.sip.headers import Via
from dialer.sip.message import Request, Response, make_response
from dialer.sip.timers import DEFAULT_TIMERS, TimerConfig, TimerName
from dialer.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Role,
    TransactionKey,
    TransactionState,
    TransactionStateError,
    UnknownTransaction,
    build_ack_for_non2xx,
    build_cancel,
    response_address,
    stamp_received,
)
from dialer.sip.uri import parse_uri

from .wire import TRUNK_ADDR, UAC_ADDR, LayerPeer, Wire

T1 = DEFAULT_TIMERS.t1_s


def request(method: str, branch: str = "z9hG4bKabc", seq: int = 1, to_tag: str | None = None):
    to = "<sip:bob@192.0.2.20>" + (f";tag={to_tag}" if to_tag else "")
    return Request(
        method,
        parse_uri("sip:bob@192.0.2.20"),
        (
            ("Via", f"SIP/2.0/UDP 192.0.2.10:5060;rport;branch={branch}"),
            ("Route", "<sip:proxy.example;lr>"),
            ("Max-Forwards", "70"),
            ("From", "<sip:alice@192.0.2.10>;tag=a1"),
            ("To", to),
            ("Call-ID", "c1@192.0.2.10"),
            ("CSeq", f"{seq} {method}"),
        ),
    )


class Pair:
    """A client layer and a server layer on one wire."""

    def __init__(self, transport: str = "UDP", config: TimerConfig = DEFAULT_TIMERS) -> None:
        self.wire = Wire(transport)
        self.client = LayerPeer(UAC_ADDR, config)
        self.server = LayerPeer(TRUNK_ADDR, config)
        self.client_node = self.wire.add(UAC_ADDR, self.client)
        self.server_node = self.wire.add(TRUNK_ADDR, self.server)

    def send(self, req: Request) -> TransactionKey:
        key, actions = self.client.layer.send_request(
            req, TRUNK_ADDR, self.wire.transport, self.wire.now
        )
        self.wire.execute(UAC_ADDR, actions)
        self.wire.flush()
        return key

    def server_key(self) -> TransactionKey:
        return self.server.delivered[-1].key  # type: ignore[return-value]

    def answer(self, status: int, to_tag: str = "t1") -> Response:
        deliver = self.server.delivered[-1]
        assert isinstance(deliver.message, Request)
        response = make_response(deliver.message, status, to_tag=to_tag)
        actions = self.server.layer.send_response(self.server_key(), response, self.wire.now)
        self.wire.execute(TRUNK_ADDR, actions)
        self.wire.flush()
        return response

    def times_sent(self, node_sent, what: str) -> list[float]:
        out = []
        for at, message in node_sent:
            label = message.method if isinstance(message, Request) else str(message.status)
            if label == what:
                out.append(round(at - 1000.0, 3))
        return out


def drop_requests(method: str):
    return lambda message, source, to: isinstance(message, Request) and message.method == method


# --- timers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timer", "reliable", "expected"),
    [
        (TimerName.A, False, 0.5),
        (TimerName.A, True, None),
        (TimerName.B, True, 32.0),
        (TimerName.D, False, 32.0),
        (TimerName.D, True, 0.0),
        (TimerName.E, True, None),
        (TimerName.F, False, 32.0),
        (TimerName.G, False, 0.5),
        (TimerName.H, True, 32.0),
        (TimerName.I, False, 5.0),
        (TimerName.I, True, 0.0),
        (TimerName.J, False, 32.0),
        (TimerName.J, True, 0.0),
        (TimerName.K, False, 5.0),
        (TimerName.K, True, 0.0),
        (TimerName.L, False, 32.0),
        (TimerName.M, True, 32.0),
    ],
)
def test_timer_defaults(timer: TimerName, reliable: bool, expected: float | None) -> None:
    assert DEFAULT_TIMERS.initial(timer, reliable) == expected


def test_timer_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TimerConfig(t1_s=5, t2_s=4)


# --- client INVITE: A, B, D, M ------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "expected"),
    [
        # §17.1.1.2: A doubles each time (no T2 cap); B ends it at 64*T1.
        ("UDP", [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]),
        ("TCP", [0.0]),
    ],
)
def test_timer_a_retransmits_until_timer_b(transport: str, expected: list[float]) -> None:
    pair = Pair(transport)
    pair.wire.drop = drop_requests("INVITE")
    key = pair.send(request("INVITE"))
    pair.wire.advance(40)
    assert pair.times_sent(pair.client_node.sent, "INVITE") == expected
    assert [type(t) for t in pair.client.timeouts] == [TimedOut]
    timeout = pair.client.timeouts[0]
    assert isinstance(timeout, TimedOut) and timeout.timer == "B" and timeout.key == key
    assert key not in pair.client.layer
    assert pair.wire.clock.pending() == []


def test_provisional_stops_retransmissions_and_timer_b() -> None:
    pair = Pair()
    key = pair.send(request("INVITE"))
    pair.answer(180)
    tx = pair.client.layer.get(key)
    assert tx is not None and tx.state is TransactionState.PROCEEDING
    assert tx.running_timers == frozenset()
    pair.wire.advance(100)
    assert pair.times_sent(pair.client_node.sent, "INVITE") == [0.0]
    assert pair.client.timeouts == []
    assert [d.message.status for d in pair.client.delivered] == [180]  # type: ignore[union-attr]


@pytest.mark.parametrize(("transport", "lifetime"), [("UDP", 32.0), ("TCP", 0.0)])
def test_timer_d_absorbs_retransmitted_finals(transport: str, lifetime: float) -> None:
    pair = Pair(transport)
    key = pair.send(request("INVITE"))
    pair.wire.drop = drop_requests("ACK")  # the server keeps resending its 486 (Timer G)
    pair.answer(486)
    # The transaction built the ACK itself, on the INVITE's branch.
    acks = [m for _, m in pair.client_node.sent if isinstance(m, Request) and m.method == "ACK"]
    assert acks and acks[0].branch == "z9hG4bKabc" and acks[0].to_tag == "t1"
    assert (key in pair.client.layer) is (lifetime > 0)
    pair.wire.advance(4)
    finals = [d for d in pair.client.delivered if isinstance(d.message, Response)]
    assert len(finals) == 1  # retransmissions are not passed up
    acks = pair.times_sent(pair.client_node.sent, "ACK")
    if transport == "UDP":
        assert acks == [0.0, 0.5, 1.5, 3.5]  # one ACK per 486 retransmission
        pair.wire.advance(lifetime - 4 + 0.01)
        assert key not in pair.client.layer
    else:
        assert acks == [0.0]


def test_timer_m_passes_2xx_retransmissions_up() -> None:
    pair = Pair()
    key = pair.send(request("INVITE"))
    response = pair.answer(200)
    tx = pair.client.layer.get(key)
    assert tx is not None and tx.state is TransactionState.ACCEPTED
    assert tx.running_timers == {TimerName.M}
    # Another fork's 2xx (another To tag) arrives on the same transaction.
    other = Response(200, "OK", tuple((n, v.replace("t1", "t2")) for n, v in response.headers))
    pair.wire.execute(TRUNK_ADDR, [Send(other.serialize(), UAC_ADDR, "UDP", other)])
    pair.wire.flush()
    assert [d.message.to_tag for d in pair.client.delivered] == ["t1", "t2"]  # type: ignore[union-attr]
    pair.wire.advance(32.01)
    assert key not in pair.client.layer


def test_what_each_client_transaction_holds_while_absorbing_retransmissions() -> None:
    """After its final response a client transaction holds no INVITE: Timer M's
    32 s and Timer K's 5 s would keep every recent call's parsed request alive."""
    pair = Pair()
    key = pair.send(request("INVITE"))
    pair.answer(200)
    tx = pair.client.layer.get(key)
    assert tx is not None and tx.state is TransactionState.ACCEPTED and tx.request is None
    # A failed call: only its ACK, resent on each retransmitted final response.
    failed = Pair()
    key = failed.send(request("INVITE", branch="z9hG4bKbusy"))
    failed.answer(486)
    tx = failed.client.layer.get(key)
    assert tx is not None and tx.state is TransactionState.COMPLETED
    assert tx.request is not None and tx.request.method == "ACK"
    bye = Pair()
    key = bye.send(request("BYE", branch="z9hG4bKbye"))
    bye.answer(200)
    tx = bye.client.layer.get(key)
    assert tx is not None and tx.state is TransactionState.COMPLETED and tx.request is None


# --- client non-INVITE: E, F, K --------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "expected"),
    [
        # §17.1.2.2: E doubles up to T2 = 4 s; F ends it at 64*T1.
        ("UDP", [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]),
        ("TCP", [0.0]),
    ],
)
def test_timer_e_until_timer_f(transport: str, expected: list[float]) -> None:
    pair = Pair(transport)
    pair.wire.drop = drop_requests("BYE")
    pair.send(request("BYE"))
    pair.wire.advance(40)
    assert pair.times_sent(pair.client_node.sent, "BYE") == expected
    assert [t.timer for t in pair.client.timeouts] == ["F"]  # type: ignore[union-attr]


def test_timer_e_runs_at_t2_in_proceeding() -> None:
    pair = Pair()
    pair.send(request("OPTIONS"))
    pair.answer(100)
    pair.wire.drop = drop_requests("OPTIONS")
    pair.wire.advance(10)
    assert pair.times_sent(pair.client_node.sent, "OPTIONS") == [0.0, 0.5, 4.5, 8.5]


@pytest.mark.parametrize(("transport", "lifetime"), [("UDP", 5.0), ("TCP", 0.0)])
def test_timer_k(transport: str, lifetime: float) -> None:
    pair = Pair(transport)
    key = pair.send(request("BYE"))
    pair.answer(200)
    assert (key in pair.client.layer) is (lifetime > 0)
    pair.wire.advance(lifetime + 0.01)
    assert key not in pair.client.layer
    assert pair.client.terminated == [key]


# --- server non-INVITE: J ---------------------------------------------------------------------


@pytest.mark.parametrize(("transport", "lifetime"), [("UDP", 32.0), ("TCP", 0.0)])
def test_timer_j_and_response_retransmission(transport: str, lifetime: float) -> None:
    pair = Pair(transport)
    pair.wire.drop = lambda m, s, t: isinstance(m, Response)  # the client never hears us
    pair.send(request("BYE"))
    key = pair.server_key()
    pair.answer(200)
    pair.wire.advance(10)
    # Each client retransmission is answered with the same 200, not delivered again.
    assert len([d for d in pair.server.delivered if d.message.method == "BYE"]) == 1  # type: ignore[union-attr]
    sent_200 = pair.times_sent(pair.server_node.sent, "200")
    if transport == "UDP":
        assert sent_200 == [0.0, 0.5, 1.5, 3.5, 7.5]
        assert key in pair.server.layer
        pair.wire.advance(lifetime - 10 + 0.01)
    else:
        assert sent_200 == [0.0]
    assert key not in pair.server.layer


def test_server_non_invite_illegal_second_final() -> None:
    pair = Pair()
    pair.send(request("BYE"))
    pair.answer(200)
    with pytest.raises(TransactionStateError) as error:
        pair.answer(500)
    assert error.value.state is TransactionState.COMPLETED


# --- server INVITE: G, H, I, L ------------------------------------------------------------------


def test_timers_g_and_h_without_ack() -> None:
    pair = Pair()
    pair.wire.drop = drop_requests("ACK")
    pair.send(request("INVITE"))
    key = pair.server_key()
    pair.answer(486)
    pair.wire.advance(40)
    # §17.2.1: G doubles up to T2; H gives up at 64*T1.
    expected = [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert pair.times_sent(pair.server_node.sent, "486") == expected
    assert [t.timer for t in pair.server.timeouts] == ["H"]  # type: ignore[union-attr]
    assert key not in pair.server.layer


@pytest.mark.parametrize(("transport", "lifetime"), [("UDP", 5.0), ("TCP", 0.0)])
def test_timer_i_after_ack(transport: str, lifetime: float) -> None:
    pair = Pair(transport)
    pair.send(request("INVITE"))
    key = pair.server_key()
    pair.answer(603)
    tx = pair.server.layer.get(key)
    if lifetime:
        assert tx is not None and tx.state is TransactionState.CONFIRMED
        assert tx.running_timers == {TimerName.I}
    else:
        assert tx is None
    # The ACK of a non-2xx is absorbed by the transaction, never passed up.
    assert all(d.message.method != "ACK" for d in pair.server.delivered)  # type: ignore[union-attr]
    pair.wire.advance(lifetime + 0.01)
    assert key not in pair.server.layer
    assert pair.server.timeouts == []


def test_timer_l_absorbs_invite_retransmissions() -> None:
    pair = Pair()
    pair.wire.drop = lambda m, s, t: isinstance(m, Response) and m.status == 200
    key = pair.send(request("INVITE"))
    server_key = pair.server_key()
    pair.answer(200)
    tx = pair.server.layer.get(server_key)
    assert tx is not None and tx.state is TransactionState.ACCEPTED
    # The client's INVITE retransmissions (Timer A) are absorbed: no new 200.
    pair.wire.advance(10)
    assert pair.times_sent(pair.server_node.sent, "200") == [0.0]
    assert len(pair.server.delivered) == 1
    # RFC 6026: a 2xx retransmission from the TU goes out in Accepted.
    response = make_response(pair.server.delivered[0].message, 200, to_tag="t1")  # type: ignore[arg-type]
    actions = pair.server.layer.send_response(server_key, response, pair.wire.now)
    assert [type(a) for a in actions] == [Send]
    pair.wire.advance(22.01)
    assert server_key not in pair.server.layer
    assert key not in pair.client.layer  # the client hit Timer B meanwhile
    assert [t.timer for t in pair.client.timeouts] == ["B"]  # type: ignore[union-attr]


# --- matching (§17.1.3, §17.2.3) ---------------------------------------------------------------


def test_cancel_matches_invite_and_response_matches_by_method() -> None:
    pair = Pair()
    invite = request("INVITE")
    pair.send(invite)
    invite_key = pair.server_key()
    pair.answer(180)
    cancel_key = pair.send(build_cancel(invite))
    deliver = pair.server.delivered[-1]
    assert deliver.message.method == "CANCEL"  # type: ignore[union-attr]
    assert deliver.cancels == invite_key
    assert deliver.key != invite_key
    pair.answer(200)  # to the CANCEL
    delivered = [(d.key, d.message.cseq.method) for d in pair.client.delivered]  # type: ignore[union-attr]
    assert delivered[-1] == (cancel_key, "CANCEL")


def test_cancel_without_invite_has_no_target() -> None:
    pair = Pair()
    pair.send(build_cancel(request("INVITE", branch="z9hG4bKnone")))
    assert pair.server.delivered[-1].cancels is None


def test_ack_for_2xx_and_stray_response_are_delivered_without_key() -> None:
    pair = Pair()
    ack = request("ACK", branch="z9hG4bKnew", to_tag="t1")
    pair.wire.execute(UAC_ADDR, [Send(ack.serialize(), TRUNK_ADDR, "UDP", ack)])
    stray = make_response(request("INVITE", branch="z9hG4bKgone"), 200, to_tag="x")
    pair.wire.execute(TRUNK_ADDR, [Send(stray.serialize(), UAC_ADDR, "UDP", stray)])
    pair.wire.flush()
    assert [(d.key, d.message.method) for d in pair.server.delivered] == [(None, "ACK")]  # type: ignore[union-attr]
    assert [(d.key, d.message.status) for d in pair.client.delivered] == [(None, 200)]  # type: ignore[union-attr]
    assert len(pair.server.layer) == 0


def test_rfc2543_branch_still_matches_retransmissions() -> None:
    pair = Pair()
    old = request("OPTIONS", branch="1234")
    for _ in range(2):
        pair.wire.execute(UAC_ADDR, [Send(old.serialize(), TRUNK_ADDR, "UDP", old)])
        pair.wire.flush()
    assert len(pair.server.delivered) == 1
    assert len(pair.server.layer) == 1


def test_client_refuses_a_branch_without_cookie_and_reuse() -> None:
    layer = LayerPeer(UAC_ADDR, DEFAULT_TIMERS).layer
    with pytest.raises(LocalProtocolError, match="z9hG4bK"):
        layer.send_request(request("OPTIONS", branch="abc"), TRUNK_ADDR, "UDP", 0.0)
    layer.send_request(request("OPTIONS"), TRUNK_ADDR, "UDP", 0.0)
    with pytest.raises(LocalProtocolError, match="already in use"):
        layer.send_request(request("OPTIONS"), TRUNK_ADDR, "UDP", 0.0)


def test_unknown_and_illegal_calls() -> None:
    layer = LayerPeer(UAC_ADDR, DEFAULT_TIMERS).layer
    key = TransactionKey(Role.SERVER, "z9hG4bKx", "BYE", "h:1")
    with pytest.raises(UnknownTransaction):
        layer.send_response(key, Response(200, "OK"), 0.0)
    assert layer.timer_fired(key, "J", 0.0) == []
    tx = ClientNonInviteTransaction(request("BYE"), TRUNK_ADDR, "UDP")
    tx.start(0.0)
    with pytest.raises(TransactionStateError):
        tx.timer_fired(TimerName.K, 1.0)  # K is not running in Trying
    with pytest.raises(LocalProtocolError, match="needs an INVITE"):
        ClientInviteTransaction(request("BYE"), TRUNK_ADDR, "UDP")


def test_transport_failure_reports_and_terminates() -> None:
    tx = ClientInviteTransaction(request("INVITE"), TRUNK_ADDR, "TCP")
    actions = tx.start(0.0)
    assert [type(a) for a in actions] == [Send, StartTimer]  # no Timer A over TCP
    out = tx.transport_failed(0.1)
    assert tx.state is TransactionState.TERMINATED
    assert [type(a).__name__ for a in out] == [
        "CancelTimer",
        "TransportFailed",
        "TransactionTerminated",
    ]


# --- requests the transaction layer builds; addressing -------------------------------------------


def test_ack_and_cancel_construction() -> None:
    invite = request("INVITE").with_header("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKlower")
    response = make_response(invite, 486, to_tag="callee")  # type: ignore[arg-type]
    ack = build_ack_for_non2xx(invite, response)  # type: ignore[arg-type]
    cancel = build_cancel(invite)  # type: ignore[arg-type]
    for built, method in ((ack, "ACK"), (cancel, "CANCEL")):
        assert built.method == method and built.uri == invite.uri
        assert built.get_all("Via") == ["SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bKabc"]
        assert built.get_all("Route") == ["<sip:proxy.example;lr>"]
        assert built.cseq.seq == 1 and built.cseq.method == method
        assert built.call_id == invite.call_id and built.from_tag == "a1"
    assert ack.to_tag == "callee"
    assert cancel.to_tag is None
    with pytest.raises(LocalProtocolError, match="cannot be cancelled"):
        build_cancel(ack)


@pytest.mark.parametrize(
    ("via", "source", "transport", "expected"),
    [
        (
            "SIP/2.0/UDP 192.0.2.10:5070;rport=7000",
            ("203.0.113.5", 7000),
            "UDP",
            ("203.0.113.5", 7000),
        ),
        ("SIP/2.0/UDP 192.0.2.10:5070", ("203.0.113.5", 7000), "UDP", ("203.0.113.5", 5070)),
        ("SIP/2.0/UDP 192.0.2.10", ("192.0.2.10", 7000), "UDP", ("192.0.2.10", 5060)),
        ("SIP/2.0/TLS 192.0.2.10", ("192.0.2.10", 7000), "TLS", ("192.0.2.10", 7000)),
        ("SIP/2.0/TCP 192.0.2.10:5070", ("192.0.2.10", 40000), "TCP", ("192.0.2.10", 40000)),
    ],
)
def test_response_address(via: str, source, transport: str, expected) -> None:
    assert response_address(Via.parse(via), source, transport) == expected


def test_stamp_received_fills_rport_and_received() -> None:
    req = request("OPTIONS").with_header_first(
        "Via", "SIP/2.0/UDP pc33.example;rport;branch=z9hG4bK1"
    )
    stamped = stamp_received(req, ("203.0.113.5", 7000))  # type: ignore[arg-type]
    top = stamped.top_via
    assert top.received == "203.0.113.5" and top.rport == 7000
    assert len(stamped.vias) == 2 and stamped.vias[1].branch == "z9hG4bKabc"
    same = request("OPTIONS")
    assert stamp_received(same, ("192.0.2.10", 5060)).top_via.rport == 5060
    plain = same.replace_header("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKq")
    assert stamp_received(plain, ("192.0.2.10", 5060)) is plain  # type: ignore[arg-type]


def test_deliver_is_what_the_server_sees() -> None:
    pair = Pair()
    pair.send(request("INFO"))
    deliver = pair.server.delivered[0]
    assert isinstance(deliver, Deliver) and deliver.source == UAC_ADDR
    assert deliver.message.top_via.rport == 5060  # type: ignore[union-attr]


# --- requests that heard nothing yet -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "unanswered_after"),
    [
        ("INVITE", 180, 0),  # Calling -> Proceeding: heard
        ("INVITE", 200, 0),  # -> Accepted
        ("INVITE", 486, 0),  # -> Completed
        ("BYE", 100, 0),  # Trying -> Proceeding
        ("BYE", 200, 0),  # -> Completed
    ],
)
def test_unanswered_counts_requests_until_their_first_response(
    method: str, status: int, unanswered_after: int
) -> None:
    pair = Pair()
    assert pair.client.layer.unanswered == 0
    pair.send(request(method))
    assert pair.client.layer.unanswered == 1
    assert pair.server.layer.unanswered == 0  # server transactions never count
    pair.answer(status)
    assert pair.client.layer.unanswered == unanswered_after


@pytest.mark.parametrize("method", ["INVITE", "OPTIONS"])
def test_unanswered_forgets_a_timed_out_or_abandoned_request(method: str) -> None:
    pair = Pair()
    pair.wire.drop = lambda message, source, to: True  # nothing gets through
    key = pair.send(request(method))
    assert pair.client.layer.unanswered == 1
    pair.wire.advance(64 * T1 + 1)  # Timer B / F
    assert pair.client.layer.unanswered == 0 and len(pair.client.timeouts) == 1
    key = pair.send(request(method, branch="z9hG4bKother"))
    pair.client.layer.abandon(key)
    assert pair.client.layer.unanswered == 0

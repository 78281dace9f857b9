"""Inbound calls (dialer.sip.uas): our InboundRouter against the dialer's own CallRouter.

The caller is the real outbound call core (``dialer.sip.call``) at UAC_ADDR;
the callee is the UAS core at TRUNK_ADDR. Both talk over the in-memory wire
with a fake clock, so every message is serialised and parsed again.
"""

from __future__ import annotations

import itertools

import pytest

from dialer.sip.actions import Action, Address
from dialer.sip.call import (
    Answered,
    CallRouter,
    Dial,
    Disposition,
    Dtmf,
    EarlyMedia,
    Ended,
    IdGenerators,
    Ringing,
    UserAgentConfig,
)
from dialer.sip.dialog import LocalMedia
from dialer.sip.message import Request, Response
from dialer.sip.sdp import SessionDescription, build_answer, build_offer
from dialer.sip.timers import TimerConfig
from dialer.sip.uas import (
    Confirmed,
    DtmfInfo,
    InboundEnded,
    InboundRouter,
    Incoming,
    UasConfig,
    UasState,
    UasStateError,
)
from dialer.sip.uri import SipUri, parse_uri

from .wire import TRUNK_ADDR, UAC_ADDR, LayerPeer, Wire, sent_by

TIMERS = TimerConfig(t1_s=0.5, t2_s=4.0, t4_s=5.0, timer_d_s=32.0)
CALLEE_MEDIA = LocalMedia("192.0.2.20", 30000)


def ids(prefix: str) -> IdGenerators:
    counter = itertools.count(1)
    return IdGenerators(
        tag=lambda: f"{prefix}tag{next(counter)}",
        branch=lambda: f"{prefix}br{next(counter)}",
        call_id=lambda: f"{prefix}call{next(counter)}",
        cnonce=lambda: f"{prefix}cn{next(counter)}",
    )


class Callee:
    """The InboundRouter on the wire, with what it reported."""

    def __init__(self, wire: Wire, addr: Address = TRUNK_ADDR) -> None:
        config = UasConfig(
            contact=SipUri(addr[0], "sandbox", port=addr[1]),
            via_host=addr[0],
            via_port=addr[1],
            timers=TIMERS,
        )
        self.router = InboundRouter(config, ids("uas"))
        self.wire = wire
        self.addr = addr
        self.node = wire.add(addr, self)

    def receive(
        self, message: Request | Response, source: Address, transport: str, now: float
    ) -> list[Action]:
        return self.router.receive(message, source, transport, now)

    def timer_fired(self, key: object, timer: str, now: float) -> list[Action]:
        return self.router.timer_fired(key, timer, now)

    def do(self, actions: list[Action]) -> None:
        self.wire.execute(self.addr, actions)
        self.wire.flush()

    @property
    def events(self) -> list[Action]:
        return self.node.events

    def incoming(self) -> Incoming:
        found = [e for e in self.events if isinstance(e, Incoming)]
        assert len(found) == 1, self.events
        return found[0]

    def ended(self):
        ends = [e for e in self.events if isinstance(e, InboundEnded)]
        assert len(ends) == 1, self.events
        return ends[0].result

    def statuses(self) -> list[int]:
        return [m.status for _, m in self.node.sent if isinstance(m, Response)]


class Harness:
    def __init__(self) -> None:
        self.wire = Wire("UDP")
        config = UserAgentConfig(
            local_uri=SipUri("192.0.2.10", "dialer"),
            contact=SipUri("192.0.2.10", "dialer", port=5060),
            via_host="192.0.2.10",
            via_port=5060,
            proxy=TRUNK_ADDR,
            ring_timeout_s=30.0,
            session_expires_s=None,
            timers=TIMERS,
        )
        self.caller = CallRouter(config, ids("uac"))
        self.uac = self.wire.add(UAC_ADDR, self.caller)
        self.callee = Callee(self.wire)
        dial = Dial(parse_uri("sip:+15551230000@192.0.2.20"), LocalMedia("192.0.2.10", 20000))
        self.call, actions = self.caller.place(dial, self.wire.now)
        self.wire.execute(UAC_ADDR, actions)
        self.wire.flush()
        self.call_id = self.call.call_id

    @property
    def router(self) -> InboundRouter:
        return self.callee.router

    def uac_kinds(self) -> list[str]:
        return [
            type(e).__name__
            for e in self.uac.events
            if isinstance(e, Ringing | EarlyMedia | Answered | Ended | Dtmf)
        ]

    def uac_result(self):
        ends = [e for e in self.uac.events if isinstance(e, Ended)]
        assert len(ends) == 1, self.uac.events
        return ends[0].result

    def hangup_caller(self) -> None:
        self.wire.execute(UAC_ADDR, self.caller.hangup(self.call_id, self.wire.now))
        self.wire.flush()

    def quiet(self) -> None:
        """Nothing left over on our side once the waits are over."""
        self.wire.advance(100)
        assert self.router.calls == {}
        assert len(self.router.layer) == 0
        assert self.wire.clock.pending(TRUNK_ADDR) == []


@pytest.fixture
def h() -> Harness:
    return Harness()


# --- arrival -----------------------------------------------------------------------------------


def test_invite_gets_100_at_once_and_is_reported(h: Harness) -> None:
    incoming = h.callee.incoming()
    assert incoming.call_id == h.call_id and incoming.source == UAC_ADDR
    assert incoming.offer is not None and incoming.offer.remote_port == 20000
    trying = sent_by(h.callee.node, status=100)
    assert len(trying) == 1 and trying[0].to_tag is None  # §8.2.6.1
    assert h.router.call(h.call_id).state is UasState.PROCEEDING


def test_answered_call_caller_hangs_up(h: Harness) -> None:
    h.callee.do(h.router.ring(h.call_id, h.wire.now))
    h.wire.advance(1.0)
    h.callee.do(h.router.answer(h.call_id, h.wire.now, CALLEE_MEDIA))
    assert h.uac_kinds() == ["Ringing", "Answered"]
    confirmed = [e for e in h.callee.events if isinstance(e, Confirmed)]
    assert len(confirmed) == 1 and confirmed[0].media is not None
    assert confirmed[0].media.remote_address == "192.0.2.10"
    call = h.router.call(h.call_id)
    assert call.state is UasState.CONFIRMED
    ringing, ok = sent_by(h.callee.node, status=180)[0], sent_by(h.callee.node, status=200)[0]
    assert ringing.to_tag == ok.to_tag and ringing.to_tag
    assert str(ok.contacts[0].uri) == "sip:sandbox@192.0.2.20:5060"
    answer = SessionDescription.parse(ok.body)
    assert answer.media[0].port == 30000
    h.wire.advance(5.0)
    h.hangup_caller()
    result = h.callee.ended()
    assert (result.end_reason, result.hangup_by, result.final_status) == (
        "remote_bye",
        "caller",
        200,
    )
    assert result.talk_time_s == pytest.approx(5.0)
    assert result.ringing_at is not None and result.ringing_at < result.answered_at  # type: ignore[operator]
    assert h.uac_result().disposition is Disposition.ANSWERED
    h.quiet()


@pytest.mark.parametrize(
    ("status", "disposition"),
    [
        (486, Disposition.BUSY),
        (480, Disposition.NO_ANSWER),
        (404, Disposition.NOT_FOUND),
        (503, Disposition.UNAVAILABLE),
        (603, Disposition.REJECTED),
    ],
)
def test_rejections_reach_the_caller(h: Harness, status: int, disposition: Disposition) -> None:
    h.callee.do(h.router.reject(h.call_id, h.wire.now, status))
    assert h.uac_result().disposition is disposition
    result = h.callee.ended()
    assert (result.end_reason, result.final_status, result.hangup_by) == (
        "rejected",
        status,
        "callee",
    )
    # The ACK for the failure is the transaction's business: absorbed, never delivered.
    assert not any(isinstance(e, Confirmed) for e in h.callee.events)
    assert h.router.calls == {}
    h.quiet()


def test_cancel_while_ringing_gets_200_and_487(h: Harness) -> None:
    h.callee.do(h.router.ring(h.call_id, h.wire.now))
    h.hangup_caller()
    assert sorted(h.callee.statuses()) == [100, 180, 200, 487]
    cancel_ok = [m for m in sent_by(h.callee.node, status=200) if m.cseq.method == "CANCEL"]
    assert len(cancel_ok) == 1
    result = h.callee.ended()
    assert (result.end_reason, result.hangup_by, result.final_status) == (
        "cancelled",
        "caller",
        487,
    )
    assert h.uac_result().disposition is Disposition.CANCELLED
    h.quiet()


def test_early_media_183_then_200_repeats_the_answer(h: Harness) -> None:
    h.callee.do(h.router.ring(h.call_id, h.wire.now, status=183, media=CALLEE_MEDIA))
    assert h.uac_kinds() == ["EarlyMedia"]
    h.callee.do(h.router.answer(h.call_id, h.wire.now, None))
    early, ok = sent_by(h.callee.node, status=183)[0], sent_by(h.callee.node, status=200)[0]
    assert early.body and early.body == ok.body  # same description, same o= version
    assert h.uac_kinds() == ["EarlyMedia", "Answered"]
    h.hangup_caller()
    h.quiet()


# --- the 2xx and its ACK (§13.3.1.4) ------------------------------------------------------------


def test_2xx_is_resent_until_ack_then_bye_after_64_t1(h: Harness) -> None:
    h.wire.drop = lambda message, source, to: (
        isinstance(message, Request) and message.method == "ACK"
    )
    start = h.wire.now
    h.callee.do(h.router.answer(h.call_id, h.wire.now, CALLEE_MEDIA))
    h.wire.advance(40.0)
    times = [
        t - start for t, m in h.callee.node.sent if isinstance(m, Response) and m.status == 200
    ]
    # T1 doubling, capped at T2 = 4 s, until 64*T1 = 32 s.
    expected = [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert times == pytest.approx(expected)
    byes = sent_by(h.callee.node, method="BYE")
    assert len(byes) == 1
    result = h.callee.ended()
    assert (result.end_reason, result.hangup_by, result.confirmed_at) == (
        "ack_timeout",
        "callee",
        None,
    )
    h.wire.drop = None
    h.quiet()


def test_lost_ack_is_recovered_by_a_retransmission(h: Harness) -> None:
    dropped: list[Request] = []

    def drop_first_ack(message, source, to) -> bool:
        if isinstance(message, Request) and message.method == "ACK" and not dropped:
            dropped.append(message)
            return True
        return False

    h.wire.drop = drop_first_ack
    h.callee.do(h.router.answer(h.call_id, h.wire.now, CALLEE_MEDIA))
    assert not any(isinstance(e, Confirmed) for e in h.callee.events)
    h.wire.advance(0.6)
    assert len(sent_by(h.callee.node, status=200)) == 2
    assert [type(e) for e in h.callee.events if isinstance(e, Confirmed)] == [Confirmed]
    h.wire.advance(10.0)
    assert len(sent_by(h.callee.node, status=200)) == 2  # the ACK stopped the resending


def test_our_hangup_waits_for_the_ack(h: Harness) -> None:
    h.wire.drop = lambda message, source, to: (
        isinstance(message, Request) and message.method == "ACK"
    )
    h.callee.do(h.router.answer(h.call_id, h.wire.now, CALLEE_MEDIA))
    h.callee.do(h.router.hangup(h.call_id, h.wire.now))
    assert sent_by(h.callee.node, method="BYE") == []  # §15: not before the ACK
    h.wire.drop = None
    h.wire.advance(0.6)  # the 2xx is resent, the caller ACKs again, then our BYE goes
    assert len(sent_by(h.callee.node, method="BYE")) == 1
    result = h.callee.ended()
    assert (result.end_reason, result.hangup_by) == ("local_bye", "callee")
    assert h.uac_result().hangup_by == "callee"
    h.quiet()


def test_we_hang_up_a_confirmed_call(h: Harness) -> None:
    h.callee.do(h.router.answer(h.call_id, h.wire.now, CALLEE_MEDIA))
    h.wire.advance(2.0)
    h.callee.do(h.router.hangup(h.call_id, h.wire.now))
    bye = sent_by(h.callee.node, method="BYE")[0]
    assert str(bye.uri) == "sip:dialer@192.0.2.10:5060"  # the caller's Contact (§12.2.1.1)
    assert bye.from_tag == sent_by(h.callee.node, status=200)[0].to_tag
    assert h.uac_result().end_reason == "remote_bye"
    assert h.callee.ended().talk_time_s == pytest.approx(2.0)
    h.quiet()


def test_hangup_before_the_answer_is_a_480(h: Harness) -> None:
    h.callee.do(h.router.ring(h.call_id, h.wire.now))
    h.callee.do(h.router.hangup(h.call_id, h.wire.now))
    assert h.callee.statuses() == [100, 180, 480]
    assert h.uac_result().disposition is Disposition.NO_ANSWER
    h.quiet()


def test_dtmf_info_reaches_the_caller(h: Harness) -> None:
    h.callee.do(h.router.answer(h.call_id, h.wire.now, CALLEE_MEDIA))
    h.callee.do(h.router.send_info(h.call_id, h.wire.now, b"Signal=1\r\nDuration=160\r\n"))
    digits = [(e.digit, e.duration_ms) for e in h.uac.events if isinstance(e, Dtmf)]
    assert digits == [("1", 160)]


@pytest.mark.parametrize(
    ("move", "state"),
    [
        ("answer_twice", "Accepted"),
        ("reject_with_200", "Proceeding"),
        ("ring_after_answer", "Accepted"),
        ("info_before_answer", "Proceeding"),
    ],
)
def test_moves_the_state_does_not_allow_raise(h: Harness, move: str, state: str) -> None:
    now = h.wire.now
    with pytest.raises(UasStateError):
        match move:
            case "answer_twice":
                h.callee.do(h.router.answer(h.call_id, now, CALLEE_MEDIA))
                h.router.answer(h.call_id, now, CALLEE_MEDIA)
            case "reject_with_200":
                h.router.reject(h.call_id, now, 200)
            case "ring_after_answer":
                h.callee.do(h.router.answer(h.call_id, now, CALLEE_MEDIA))
                h.router.ring(h.call_id, now)
            case "info_before_answer":
                h.router.send_info(h.call_id, now, b"Signal=1\r\n")
    call = h.router.calls.get(h.call_id)
    assert call is not None and call.state.value in (state, "Confirmed")


# --- requests from a raw peer --------------------------------------------------------------------

RAW_ADDR: Address = ("192.0.2.30", 5060)


class Raw(LayerPeer):
    """A bare transaction layer that sends hand-built requests and keeps the answers."""

    def __init__(self, wire: Wire) -> None:
        super().__init__(RAW_ADDR, TIMERS)
        self.wire = wire
        self.node = wire.add(RAW_ADDR, self)
        self.counter = itertools.count(1)

    def request(
        self,
        method: str,
        *,
        to_tag: str | None = None,
        contact: bool = True,
        body: bytes = b"",
        extra: tuple[tuple[str, str], ...] = (),
        call_id: str | None = None,
        branch: str | None = None,
    ) -> Request:
        n = next(self.counter)
        to = "<sip:+15550001111@192.0.2.20>" + (f";tag={to_tag}" if to_tag else "")
        headers = [
            ("Via", f"SIP/2.0/UDP 192.0.2.30:5060;branch={branch or f'z9hG4bKraw{n}'}"),
            ("Max-Forwards", "70"),
            ("From", "<sip:raw@192.0.2.30>;tag=rawtag"),
            ("To", to),
            ("Call-ID", call_id or f"raw-call-{n}"),
            ("CSeq", f"1 {method}"),
        ]
        if contact:
            headers.append(("Contact", "<sip:raw@192.0.2.30:5060>"))
        headers += extra
        if body:
            headers.append(("Content-Type", "application/sdp"))
        request = Request(method, parse_uri("sip:+15550001111@192.0.2.20"), tuple(headers), body)
        _, actions = self.layer.send_request(request, TRUNK_ADDR, "UDP", self.wire.now)
        self.wire.execute(RAW_ADDR, actions)
        self.wire.flush()
        return request

    def finals(self) -> list[Response]:
        return [
            d.message
            for d in self.delivered
            if isinstance(d.message, Response) and d.message.status >= 200
        ]


G729_ONLY = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.30\r\ns=-\r\nc=IN IP4 192.0.2.30\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n"
)


@pytest.mark.parametrize(
    ("method", "kwargs", "status", "header"),
    [
        ("OPTIONS", {}, 200, ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE")),
        ("BYE", {"to_tag": "nosuch"}, 481, None),
        ("CANCEL", {}, 481, None),
        ("INFO", {"to_tag": "nosuch"}, 481, None),
        ("REGISTER", {}, 405, ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE")),
        ("FROBNICATE", {}, 501, None),
        ("INVITE", {"extra": (("Require", "100rel"),)}, 420, ("Unsupported", "100rel")),
        ("INVITE", {"contact": False}, 400, None),
        ("INVITE", {"to_tag": "stale"}, 481, None),
        ("INVITE", {"body": G729_ONLY}, 488, None),
    ],
)
def test_requests_outside_a_call(method: str, kwargs: dict, status: int, header) -> None:
    wire = Wire("UDP")
    callee = Callee(wire)
    raw = Raw(wire)
    raw.request(method, **kwargs)
    finals = raw.finals()
    assert [r.status for r in finals] == [status]
    if header is not None:
        assert finals[0].get(header[0]) == header[1]
    assert not any(isinstance(e, Incoming) for e in callee.events)
    assert callee.router.answered == {status: 1}
    wire.advance(100)
    assert len(callee.router.layer) == 0 and callee.router.calls == {}


def test_merged_invite_gets_482() -> None:
    wire = Wire("UDP")
    callee = Callee(wire)
    raw = Raw(wire)
    offer = build_offer("192.0.2.30", 4000, 1, 1)
    raw.request("INVITE", body=offer, call_id="merged", branch="z9hG4bKfirst")
    raw.request("INVITE", body=offer, call_id="merged", branch="z9hG4bKsecond")
    assert [r.status for r in raw.finals()] == [482]
    assert len([e for e in callee.events if isinstance(e, Incoming)]) == 1


def test_offerless_invite_gets_our_offer_and_the_ack_answers() -> None:
    wire = Wire("UDP")
    callee = Callee(wire)
    raw = Raw(wire)
    invite = raw.request("INVITE", call_id="offerless")
    incoming = next(e for e in callee.events if isinstance(e, Incoming))
    assert incoming.offer is None
    with pytest.raises(UasStateError):
        callee.router.ring("offerless", wire.now, status=183, media=CALLEE_MEDIA)
    callee.do(callee.router.answer("offerless", wire.now, CALLEE_MEDIA))
    ok = raw.finals()[0]
    offer = SessionDescription.parse(ok.body)
    assert offer.media[0].port == 30000
    answer = build_answer(ok.body, "192.0.2.30", 4000, 7, 1)
    ack_headers = [
        ("Via", "SIP/2.0/UDP 192.0.2.30:5060;branch=z9hG4bKack1"),
        ("Max-Forwards", "70"),
        ("From", invite.get("From")),
        ("To", ok.get("To")),
        ("Call-ID", "offerless"),
        ("CSeq", "1 ACK"),
        ("Content-Type", "application/sdp"),
    ]
    ack = Request("ACK", ok.contacts[0].uri, tuple(ack_headers), answer)
    wire.execute(RAW_ADDR, [raw.layer.send_stateless(ack, TRUNK_ADDR, "UDP")])
    wire.flush()
    confirmed = [e for e in callee.events if isinstance(e, Confirmed)]
    assert len(confirmed) == 1 and confirmed[0].media is not None
    assert confirmed[0].media.remote_port == 4000


def test_incoming_info_dtmf_is_reported() -> None:
    wire = Wire("UDP")
    callee = Callee(wire)
    raw = Raw(wire)
    raw.request("INVITE", call_id="dtmf", body=build_offer("192.0.2.30", 4000, 1, 1))
    callee.do(callee.router.answer("dtmf", wire.now, CALLEE_MEDIA))
    tag = raw.finals()[0].to_tag
    ack = Request(
        "ACK",
        parse_uri("sip:sandbox@192.0.2.20:5060"),
        (
            ("Via", "SIP/2.0/UDP 192.0.2.30:5060;branch=z9hG4bKack2"),
            ("From", "<sip:raw@192.0.2.30>;tag=rawtag"),
            ("To", f"<sip:+15550001111@192.0.2.20>;tag={tag}"),
            ("Call-ID", "dtmf"),
            ("CSeq", "1 ACK"),
        ),
    )
    wire.execute(RAW_ADDR, [raw.layer.send_stateless(ack, TRUNK_ADDR, "UDP")])
    wire.flush()
    info = Request(
        "INFO",
        parse_uri("sip:sandbox@192.0.2.20:5060"),
        (
            ("Via", "SIP/2.0/UDP 192.0.2.30:5060;branch=z9hG4bKinfo"),
            ("From", "<sip:raw@192.0.2.30>;tag=rawtag"),
            ("To", f"<sip:+15550001111@192.0.2.20>;tag={tag}"),
            ("Call-ID", "dtmf"),
            ("CSeq", "2 INFO"),
            ("Content-Type", "application/dtmf-relay"),
        ),
        b"Signal=#\r\nDuration=100\r\n",
    )
    _, actions = raw.layer.send_request(info, TRUNK_ADDR, "UDP", wire.now)
    wire.execute(RAW_ADDR, actions)
    wire.flush()
    assert [(e.digit, e.duration_ms) for e in callee.events if isinstance(e, DtmfInfo)] == [
        ("#", 100)
    ]
    assert [r.status for r in raw.finals()] == [200, 200]


def test_bye_on_an_early_dialog_ends_the_invite_with_487() -> None:
    wire = Wire("UDP")
    callee = Callee(wire)
    raw = Raw(wire)
    raw.request("INVITE", call_id="early", body=build_offer("192.0.2.30", 4000, 1, 1))
    callee.do(callee.router.ring("early", wire.now))
    tag = [d.message for d in raw.delivered if isinstance(d.message, Response)][-1].to_tag
    raw.request("BYE", call_id="early", to_tag=tag)
    assert sorted(r.status for r in raw.finals()) == [200, 487]
    ended = [e for e in callee.events if isinstance(e, InboundEnded)]
    assert len(ended) == 1 and ended[0].result.end_reason == "remote_bye"

"""Outbound calls (dialer.sip.call): a CallRouter and a scripted trunk over a fake wire."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialer.sip.auth import Credentials, DigestClient
from dialer.sip.call import (
    Answered,
    CallRouter,
    CallState,
    Dial,
    Disposition,
    Dtmf,
    EarlyMedia,
    Ended,
    Held,
    IdGenerators,
    Resumed,
    Ringing,
    UserAgentConfig,
    disposition_for,
)
from dialer.sip.dialog import LocalMedia
from dialer.sip.message import Request, Response
from dialer.sip.sdp import SessionDescription
from dialer.sip.uri import SipUri, parse_uri

from .wire import TRUNK_ADDR, UAC_ADDR, FakeTrunk, Wire, sent_by

CHALLENGE = 'Digest realm="trunk", nonce="n1", qop="auth", algorithm=MD5'


def ids() -> IdGenerators:
    counter = itertools.count(1)
    return IdGenerators(
        tag=lambda: f"tag{next(counter)}",
        branch=lambda: f"br{next(counter)}",
        call_id=lambda: f"call{next(counter)}",
        cnonce=lambda: f"cn{next(counter)}",
    )


class Harness:
    """Our user agent (CallRouter) at UAC_ADDR, the fake trunk at TRUNK_ADDR."""

    def __init__(
        self,
        transport: str = "UDP",
        *,
        digest: DigestClient | None = None,
        session_expires_s: int | None = 1800,
        max_duration_s: float | None = 3600.0,
    ) -> None:
        self.wire = Wire(transport)
        config = UserAgentConfig(
            local_uri=SipUri("192.0.2.10", "dialer"),
            contact=SipUri("192.0.2.10", "dialer", port=5060),
            via_host="192.0.2.10",
            via_port=5060,
            proxy=TRUNK_ADDR,
            transport=transport,
            ring_timeout_s=30.0,
            session_expires_s=session_expires_s,
            max_duration_s=max_duration_s,
        )
        self.router = CallRouter(config, ids(), digest=digest)
        self.uac = self.wire.add(UAC_ADDR, self.router)
        self.trunk = FakeTrunk(self.wire)
        self.call = None

    def place(self) -> None:
        dial = Dial(parse_uri("sip:+15551234567@192.0.2.20"), LocalMedia("192.0.2.10", 20000))
        self.call, actions = self.router.place(dial, self.wire.now)
        self.wire.execute(UAC_ADDR, actions)
        self.wire.flush()

    def hangup(self) -> None:
        assert self.call is not None
        self.wire.execute(UAC_ADDR, self.router.hangup(self.call.call_id, self.wire.now))
        self.wire.flush()

    def withdraw(self) -> None:
        assert self.call is not None
        self.wire.execute(UAC_ADDR, self.router.withdraw(self.call.call_id, self.wire.now))
        self.wire.flush()

    def answer(self, **kwargs) -> None:
        self.trunk.respond(200, self.trunk.answer_sdp(), **kwargs)

    @property
    def events(self) -> list:
        return self.uac.events

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events if not type(e).__name__.startswith("Trans")]

    def ended(self):
        ends = [e for e in self.events if isinstance(e, Ended)]
        assert len(ends) == 1, self.events
        return ends[0].result

    def sent(self, method: str) -> list[Request]:
        return sent_by(self.uac, method=method)


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.place()
    return harness


def assert_quiet(h: Harness) -> None:
    """Nothing left over: no call, no transaction, no timer (after the waits)."""
    h.wire.advance(100)
    assert h.router.calls == {}
    assert len(h.router.layer) == 0
    assert h.wire.clock.pending(UAC_ADDR) == []


# --- the INVITE -----------------------------------------------------------------------------------


def test_invite_is_well_formed(h: Harness) -> None:
    invite = h.trunk.invite
    assert invite is not None and invite.method == "INVITE"
    assert str(invite.uri) == "sip:+15551234567@192.0.2.20"
    via = invite.top_via
    assert via.has_rport and via.branch == "z9hG4bKbr3"
    assert invite.from_tag == "tag2" and invite.to_tag is None
    assert invite.call_id == "call1" and invite.cseq.seq == 1
    assert str(invite.contacts[0].uri) == "sip:dialer@192.0.2.10:5060"
    assert "timer" in invite.supported and invite.get("Session-Expires") == "1800"
    offer = SessionDescription.parse(invite.body)
    assert offer.media[0].port == 20000 and offer.connection.address == "192.0.2.10"  # type: ignore[union-attr]
    assert h.call is not None and h.call.state is CallState.CALLING


# --- answered calls -------------------------------------------------------------------------------


def test_answer_then_callee_hangs_up(h: Harness) -> None:
    h.wire.advance(1)
    h.trunk.respond(100)
    h.trunk.respond(180)
    h.wire.advance(2)
    h.answer()
    assert h.kinds() == ["Ringing", "Answered"]
    answered = h.events[1]
    assert isinstance(answered, Answered) and answered.media.remote_port == 30000
    assert answered.media.codec.name == "PCMU"
    assert len(h.trunk.acks) == 1 and h.trunk.acks[0].cseq.seq == 1
    assert h.trunk.acks[0].branch != h.trunk.invite.branch  # type: ignore[union-attr]
    h.wire.advance(10)
    h.trunk.send("BYE")
    result = h.ended()
    assert result.disposition is Disposition.ANSWERED and result.hangup_by == "callee"
    assert result.end_reason == "remote_bye" and result.sip_status == 200
    assert (result.invite_sent_at, result.provisional_at, result.ringing_at) == (1000, 1001, 1001)
    assert result.answered_at == 1003 and result.ended_at == 1013
    assert result.talk_time_s == 10
    assert [r.status for r in h.trunk.responses if r.cseq.method == "BYE"] == [200]
    assert_quiet(h)


def test_answer_then_we_hang_up(h: Harness) -> None:
    h.answer()
    h.wire.advance(5)
    h.hangup()
    h.hangup()  # a second hangup does nothing
    result = h.ended()
    assert (result.hangup_by, result.end_reason) == ("caller", "hangup")
    byes = h.sent("BYE")
    assert len(byes) == 1 and byes[0].to_tag == "trunk-tag" and byes[0].cseq.seq == 2
    assert h.trunk.dialog is not None and h.trunk.dialog.state.value == "Terminated"
    assert_quiet(h)


def test_retransmitted_2xx_is_acked_again(h: Harness) -> None:
    h.answer()
    ok = next(m for _, m in h.trunk.node.sent if isinstance(m, Response) and m.status == 200)
    h.trunk.retransmit(ok)
    assert len(h.trunk.acks) == 2
    assert h.trunk.acks[0].serialize() == h.trunk.acks[1].serialize()
    assert h.kinds() == ["Answered"]


@pytest.mark.parametrize(
    "header",
    [("Contact", "garbage"), ("Contact", "<sip:@>"), ("Record-Route", "<garbage>")],
)
def test_a_2xx_we_cannot_use_is_acked_and_ended(h: Harness, header: tuple[str, str]) -> None:
    h.answer(headers=[header])
    # §13.2.2.4: the 2xx still gets its ACK, then our BYE ends the callee's leg.
    assert len(h.trunk.acks) == 1
    byes = h.sent("BYE")
    assert len(byes) == 1 and byes[0].to_tag == "trunk-tag"
    result = h.ended()
    assert (result.disposition, result.end_reason) == (Disposition.FAILED, "bad_2xx")
    assert (result.sip_status, result.hangup_by) == (200, "caller")
    assert "Answered" not in h.kinds()
    assert h.trunk.dialog is not None and h.trunk.dialog.state.value == "Terminated"
    assert_quiet(h)


def test_early_media_then_200_without_sdp(h: Harness) -> None:
    h.trunk.respond(183, h.trunk.answer_sdp())
    h.trunk.respond(180)
    h.trunk.respond(200)
    assert h.kinds() == ["EarlyMedia", "Ringing", "Answered"]
    early, answered = h.events[0], h.events[2]
    assert isinstance(early, EarlyMedia) and isinstance(answered, Answered)
    assert answered.media == early.media
    assert h.call is not None and h.call.record.early_media_at == 1000


def test_max_duration_sends_bye() -> None:
    h = Harness(max_duration_s=60)
    h.place()
    h.answer()
    h.wire.advance(59)
    assert h.sent("BYE") == []
    h.wire.advance(2)
    result = h.ended()
    assert (result.end_reason, result.hangup_by) == ("max_duration", "caller")
    assert result.ended_at == 1060


# --- failures and their dispositions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "disposition"),
    [
        (486, (), Disposition.BUSY),
        (600, (), Disposition.BUSY),
        (480, (), Disposition.NO_ANSWER),
        (408, (), Disposition.NO_ANSWER),
        (404, (), Disposition.NOT_FOUND),
        (484, (), Disposition.NOT_FOUND),
        (604, (), Disposition.NOT_FOUND),
        (403, (), Disposition.REJECTED),
        (603, (), Disposition.REJECTED),
        (488, (), Disposition.MEDIA_FAILED),
        (503, (), Disposition.UNAVAILABLE),
        (502, (), Disposition.UNAVAILABLE),
        (503, (("Retry-After", "30"),), Disposition.CONGESTION),
        (503, (("Reason", 'Q.850;cause=34;text="No circuit"'),), Disposition.CONGESTION),
        (480, (("Reason", "Q.850;cause=17"),), Disposition.BUSY),
        (500, (("Reason", "SIP;cause=500"),), Disposition.UNAVAILABLE),
        (302, (("Contact", "<sip:elsewhere@192.0.2.99>"),), Disposition.FAILED),
        (415, (), Disposition.FAILED),
    ],
)
def test_failure_dispositions(h: Harness, status: int, headers, disposition: Disposition) -> None:
    h.trunk.respond(180)
    h.trunk.respond(status, headers=headers)
    result = h.ended()
    assert result.disposition is disposition
    assert result.sip_status == status and result.hangup_by is None
    assert len(h.trunk.acks) == 0  # the ACK for a non-2xx is hop-by-hop: absorbed by the trunk's tx
    assert [m.method for m in h.sent("ACK")] == ["ACK"]
    assert_quiet(h)


def test_disposition_table_defaults() -> None:
    assert disposition_for(699) is Disposition.FAILED
    assert disposition_for(500, retry_after=True) is Disposition.CONGESTION
    assert disposition_for(503, q850_cause=1) is Disposition.NOT_FOUND


@pytest.mark.parametrize(("transport", "invites"), [("UDP", 7), ("TCP", 1)])
def test_timer_b_when_nothing_answers(transport: str, invites: int) -> None:
    h = Harness(transport)
    h.wire.drop = lambda message, source, to: to == TRUNK_ADDR
    h.place()
    h.wire.advance(31.9)
    assert [e for e in h.events if isinstance(e, Ended)] == []
    h.wire.advance(0.2)
    result = h.ended()
    assert result.disposition is disposition_for(408)
    assert (result.sip_status, result.end_reason, result.ended_at) == (408, "timer_b", 1032)
    assert len(h.sent("INVITE")) == invites
    assert h.sent("CANCEL") == []  # §9.1: never a CANCEL without a provisional
    assert_quiet(h)


# --- CANCEL ---------------------------------------------------------------------------------------


def test_ring_timeout_cancels_then_487(h: Harness) -> None:
    h.trunk.respond(180)
    h.wire.advance(29)
    assert h.sent("CANCEL") == []
    h.wire.advance(1.5)
    cancels = h.sent("CANCEL")
    assert len(cancels) == 1
    cancel = cancels[0]
    assert cancel.branch == h.trunk.invite.branch and cancel.cseq.seq == 1  # type: ignore[union-attr]
    result = h.ended()
    assert (result.disposition, result.sip_status) == (Disposition.NO_ANSWER, 487)
    assert (result.end_reason, result.hangup_by) == ("ring_timeout", "caller")
    assert result.ended_at == 1030
    assert_quiet(h)


def test_cancel_waits_for_a_provisional(h: Harness) -> None:
    h.hangup()
    assert h.sent("CANCEL") == []
    assert h.call is not None and h.call.state is CallState.CANCELLING
    h.wire.advance(2)
    h.trunk.respond(100)
    assert len(h.sent("CANCEL")) == 1
    result = h.ended()
    assert (result.disposition, result.sip_status) == (Disposition.CANCELLED, 487)
    assert (result.end_reason, result.hangup_by) == ("hangup", "caller")


@pytest.mark.parametrize(
    ("by_hangup", "disposition"),
    [(True, Disposition.CANCELLED), (False, Disposition.NO_ANSWER)],
)
def test_200_crossing_our_cancel(h: Harness, by_hangup: bool, disposition: Disposition) -> None:
    h.trunk.answer_cancel = False  # the callee picks up as the CANCEL flies
    h.trunk.respond(180)
    if by_hangup:
        h.hangup()
    else:
        h.wire.advance(30.1)
    assert len(h.sent("CANCEL")) == 1
    h.answer()
    assert len(h.trunk.acks) == 1
    byes = h.sent("BYE")
    assert len(byes) == 1 and byes[0].to_tag == "trunk-tag"
    result = h.ended()
    assert result.disposition is disposition
    assert "Answered" not in h.kinds()
    assert_quiet(h)


def test_withdrawn_call_keeps_an_answer_that_crosses_the_cancel(h: Harness) -> None:
    h.trunk.answer_cancel = False
    h.trunk.respond(180)
    h.withdraw()
    assert len(h.sent("CANCEL")) == 1
    h.answer()
    assert len(h.trunk.acks) == 1
    assert h.sent("BYE") == []  # the application speaks first, then hangs up
    assert h.call is not None and h.call.state is CallState.CONFIRMED
    assert "Answered" in h.kinds()
    h.wire.advance(4)
    h.hangup()
    assert len(h.sent("BYE")) == 1
    result = h.ended()
    assert result.disposition is Disposition.ANSWERED
    assert result.answered_at is not None and result.talk_time_s == pytest.approx(4)
    assert_quiet(h)


def test_withdrawn_call_ends_cancelled_on_487(h: Harness) -> None:
    h.trunk.respond(180)
    h.withdraw()
    h.withdraw()  # a second ask changes nothing
    assert len(h.sent("CANCEL")) == 1
    result = h.ended()
    assert (result.disposition, result.sip_status) == (Disposition.CANCELLED, 487)
    assert "Answered" not in h.kinds()
    assert_quiet(h)


def test_withdraw_leaves_an_answered_call_alone(h: Harness) -> None:
    h.trunk.respond(180)
    h.answer()
    h.withdraw()
    assert h.sent("CANCEL") == [] and h.sent("BYE") == []
    assert h.call is not None and h.call.state is CallState.CONFIRMED


def test_cancel_guard_when_no_final_ever_comes(h: Harness) -> None:
    h.trunk.answer_cancel = False
    h.trunk.respond(180)
    h.hangup()
    h.wire.advance(31.9)
    assert [e for e in h.events if isinstance(e, Ended)] == []
    h.wire.advance(0.2)
    result = h.ended()
    assert (result.disposition, result.end_reason) == (Disposition.CANCELLED, "cancel_timeout")


# --- digest authentication ------------------------------------------------------------------------


def digest_harness() -> Harness:
    h = Harness(digest=DigestClient(Credentials("trunk-user", "s3cret"), "192.0.2.20"))
    h.place()
    return h


@pytest.mark.parametrize(
    ("status", "challenge", "answer"),
    [
        (401, "WWW-Authenticate", "Authorization"),
        (407, "Proxy-Authenticate", "Proxy-Authorization"),
    ],
)
def test_challenge_then_200(status: int, challenge: str, answer: str) -> None:
    h = digest_harness()
    first = h.trunk.invite
    h.trunk.respond(status, headers=[(challenge, CHALLENGE)])
    second = h.trunk.invite
    assert first is not None and second is not None and second is not first
    assert second.call_id == first.call_id and second.from_tag == first.from_tag
    assert second.cseq.seq == first.cseq.seq + 1
    assert second.branch != first.branch
    value = second.get(answer)
    assert value is not None and 'username="trunk-user"' in value and "s3cret" not in value
    assert second.body == first.body
    h.answer()
    assert h.kinds() == ["Answered"]


def test_second_challenge_is_auth_failed() -> None:
    h = digest_harness()
    h.trunk.respond(401, headers=[("WWW-Authenticate", CHALLENGE)])
    h.trunk.respond(401, headers=[("WWW-Authenticate", CHALLENGE.replace("n1", "n2"))])
    result = h.ended()
    assert (result.disposition, result.sip_status) == (Disposition.AUTH_FAILED, 401)
    assert len(h.trunk.invites) == 2  # one retry only
    assert_quiet(h)


def test_challenge_without_credentials(h: Harness) -> None:
    h.trunk.respond(407, headers=[("Proxy-Authenticate", CHALLENGE)])
    result = h.ended()
    assert (result.disposition, result.detail) == (Disposition.AUTH_FAILED, "no credentials")


def test_422_retries_with_min_se(h: Harness) -> None:
    h.trunk.respond(422, headers=[("Min-SE", "3600")])
    assert len(h.trunk.invites) == 2
    assert h.trunk.invites[1].get("Session-Expires") == "3600"
    h.answer()
    assert h.kinds() == ["Answered"]


# --- media trouble in the answer ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"v=0\r\nthis is not sdp\r\n",
        None,  # a 200 without an answer and no early one
        b"codec-less",  # replaced below by an answer with only G.729
    ],
)
def test_unusable_answer_is_acked_then_byed(h: Harness, body: bytes | None) -> None:
    if body == b"codec-less":
        body = h.trunk.answer_sdp().replace(b"PCMU/8000", b"G729/8000").replace(b" 0 ", b" 18 ")
        body = body.replace(b"rtpmap:0 ", b"rtpmap:18 ")
    h.trunk.respond(200, body)
    assert len(h.trunk.acks) == 1
    assert len(h.sent("BYE")) == 1
    result = h.ended()
    assert result.disposition is Disposition.MEDIA_FAILED
    assert result.hangup_by == "caller" and result.detail
    assert "Answered" not in h.kinds()
    assert_quiet(h)


def test_forked_2xx_gets_ack_and_bye(h: Harness) -> None:
    h.answer(to_tag="fork-a")
    h.trunk.respond(200, h.trunk.answer_sdp(), to_tag="fork-b")
    assert [a.to_tag for a in h.trunk.acks] == ["fork-a", "fork-b"]
    byes = h.sent("BYE")
    assert [b.to_tag for b in byes] == ["fork-b"]
    assert h.call is not None and h.call.state is CallState.CONFIRMED
    assert h.kinds() == ["Answered"]


# --- in-dialog requests from the callee -----------------------------------------------------------


def test_hold_and_unhold_from_callee(h: Harness) -> None:
    h.answer()
    h.trunk.send("INVITE", h.trunk.offer_sdp("sendonly", 2))
    h.trunk.send("INVITE", h.trunk.offer_sdp("sendrecv", 3))
    assert h.kinds() == ["Answered", "Held", "Resumed"]
    held, resumed = h.events[1], h.events[2]
    assert isinstance(held, Held) and held.media.on_hold and not held.media.send
    assert isinstance(resumed, Resumed) and resumed.media.send and resumed.media.receive
    ours = [
        SessionDescription.parse(r.body)
        for r in sent_by(h.uac, status=200)
        if r.cseq.method == "INVITE"
    ]
    assert [sd.media_direction(0) for sd in ours] == ["recvonly", "sendrecv"]
    assert [sd.origin.session_version for sd in ours] == [1, 2]
    acks_to_us = [m for _, m in h.uac.received if isinstance(m, Request) and m.method == "ACK"]
    assert [a.cseq.seq for a in acks_to_us] == [1, 2]  # the trunk ACKed both of our 2xx
    h.wire.advance(40)
    assert h.sent("BYE") == []  # the ACKs stopped our 2xx retransmissions


def test_reinvite_2xx_retransmitted_until_ack_then_bye(h: Harness) -> None:
    h.answer()
    h.trunk.ack_invites = False
    h.trunk.send("INVITE", h.trunk.offer_sdp("sendonly", 2))
    h.wire.advance(40)
    times = [
        round(t - 1000, 2)
        for t, m in h.uac.sent
        if isinstance(m, Response) and m.status == 200 and m.cseq.method == "INVITE"
    ]
    # §13.3.1.4: T1, doubling to T2, for 64*T1; then the call is ended with a BYE.
    assert times == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    result = h.ended()
    assert result.end_reason == "ack_timeout" and len(h.sent("BYE")) == 1


@pytest.mark.parametrize(
    ("body", "content_type", "digit", "duration"),
    [
        (b"Signal=5\r\nDuration=160\r\n", "application/dtmf-relay", "5", 160),
        (b"*", "application/dtmf", "*", None),
    ],
)
def test_info_dtmf(h: Harness, body: bytes, content_type: str, digit: str, duration) -> None:
    h.answer()
    h.trunk.send("INFO", body, content_type=content_type)
    dtmf = [e for e in h.events if isinstance(e, Dtmf)]
    assert [(d.digit, d.duration_ms) for d in dtmf] == [(digit, duration)]
    assert [r.status for r in h.trunk.responses if r.cseq.method == "INFO"] == [200]


@pytest.mark.parametrize(("method", "status"), [("OPTIONS", 200), ("MESSAGE", 405), ("XYZ", 501)])
def test_other_in_dialog_requests(h: Harness, method: str, status: int) -> None:
    h.answer()
    h.trunk.send(method)
    assert [r.status for r in h.trunk.responses if r.cseq.method == method] == [status]


def test_lower_cseq_is_500(h: Harness) -> None:
    h.answer()
    h.trunk.send("INFO")
    h.trunk.send("INFO")
    assert h.trunk.dialog is not None
    h.trunk.dialog.local_seq = 0  # the next INFO carries CSeq 1, below the 2 we saw
    h.trunk.send("INFO")
    assert [r.status for r in h.trunk.responses if r.cseq.method == "INFO"] == [200, 200, 500]


def test_unknown_dialog_and_out_of_dialog_requests(h: Harness) -> None:
    h.answer()
    dialog = h.trunk.dialog
    assert dialog is not None
    dialog.local_tag = "stranger"  # the callee now names a dialog we do not have
    h.trunk.send("BYE")
    dialog.local_tag = "trunk-tag"
    dialog.call_id = "no-such-call"
    h.trunk.send("INFO")
    statuses = [r.status for r in h.trunk.responses if r.cseq.method in ("BYE", "INFO")]
    assert statuses == [481, 481]
    assert h.call is not None and h.call.state is CallState.CONFIRMED


def test_out_of_dialog_options_and_invite(h: Harness) -> None:
    h.answer()
    dialog = h.trunk.dialog
    assert dialog is not None
    for method, status in (("OPTIONS", 200), ("INVITE", 480)):
        request = dialog.create_request(method, h.trunk.via())
        request = request.replace_header("To", "<sip:dialer@192.0.2.10>")
        request = request.replace_header("Call-ID", f"fresh-{method}")
        h.trunk.send_raw(request)  # type: ignore[arg-type]
        answers = [r for r in h.trunk.responses if r.call_id == f"fresh-{method}"]
        assert [r.status for r in answers] == [status]
        assert answers[0].to_tag


# --- session timers (RFC 4028) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow", "method"),
    [("INVITE, ACK, BYE, CANCEL, UPDATE", "UPDATE"), ("INVITE, ACK, BYE, CANCEL", "INVITE")],
)
def test_session_refresh_when_we_refresh(h: Harness, allow: str, method: str) -> None:
    h.answer(
        headers=[("Session-Expires", "120;refresher=uac"), ("Require", "timer"), ("Allow", allow)]
    )
    h.wire.advance(59)
    assert [r.method for r in h.trunk.requests] == []
    h.wire.advance(2)
    refreshes = [r for r in h.trunk.requests if r.method == method]
    assert len(refreshes) == 1
    assert refreshes[0].get("Session-Expires") == "120;refresher=uac"
    if method == "INVITE":
        assert refreshes[0].body == h.trunk.invites[0].body  # the same description again
        assert len(h.trunk.acks) == 2
    h.wire.advance(60)  # the second refresh, rescheduled from the first one's 2xx
    assert len([r for r in h.trunk.requests if r.method == method]) == 2
    assert [e for e in h.events if isinstance(e, Ended)] == []


def test_session_expires_when_callee_does_not_refresh(h: Harness) -> None:
    h.answer(headers=[("Session-Expires", "90;refresher=uas"), ("Require", "timer")])
    h.wire.advance(59)
    assert h.sent("BYE") == []
    h.wire.advance(2)
    # RFC 4028 §10: BYE at 90 - min(32, 90/3) = 60 s.
    result = h.ended()
    assert (result.end_reason, result.ended_at) == ("session_expired", 1060)
    assert [r.method for r in h.trunk.requests] == ["BYE"]


def test_callee_refresh_postpones_expiry(h: Harness) -> None:
    h.answer(headers=[("Session-Expires", "90;refresher=uas"), ("Require", "timer")])
    h.wire.advance(40)
    h.trunk.send(
        "UPDATE", headers=[("Session-Expires", "90;refresher=uac"), ("Supported", "timer")]
    )
    ok = [r for r in h.trunk.responses if r.cseq.method == "UPDATE"]
    assert ok and ok[0].get("Session-Expires") == "90;refresher=uac"
    assert ok[0].get("Require") == "timer"
    h.wire.advance(59)
    assert h.sent("BYE") == []
    h.wire.advance(2)
    assert h.ended().ended_at == 1100


def test_no_session_timer_without_session_expires() -> None:
    h = Harness(session_expires_s=None, max_duration_s=None)
    h.place()
    assert "Session-Expires" not in h.trunk.invite  # type: ignore[operator]
    h.answer()
    h.wire.advance(3600)
    assert h.trunk.requests == [] and h.kinds() == ["Answered"]


def test_events_are_reported_in_order_with_ringing_once(h: Harness) -> None:
    h.trunk.respond(180)
    h.trunk.respond(180)
    h.trunk.respond(183)
    assert h.kinds() == ["Ringing"]
    assert isinstance(h.events[0], Ringing) and h.events[0].status == 180


# --- a lossy wire ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), loss=st.floats(0.0, 0.5))
def test_lossy_wire_always_ends_once_and_cleans_up(seed: int, loss: float) -> None:
    """Whatever the datagrams lost, a call ends exactly once and leaves nothing behind."""
    rng = random.Random(seed)
    h = Harness()
    h.wire.drop = lambda message, source, to: rng.random() < loss
    h.place()
    h.wire.advance(0.2)
    if h.trunk.invite is not None:
        h.trunk.respond(180)
        h.wire.advance(1)
        h.answer()
    h.wire.advance(5)
    h.hangup()
    h.wire.advance(200)
    assert len([e for e in h.events if isinstance(e, Ended)]) == 1
    assert h.router.calls == {}
    assert len(h.router.layer) == 0
    assert h.wire.clock.pending(UAC_ADDR) == []

"""Blind transfer by REFER (dialer.sip.refer and Call.transfer) over the fake wire."""

from __future__ import annotations

import pytest

from dialer.sip.actions import Action, Deliver
from dialer.sip.call import (
    CallState,
    CallStateError,
    Disposition,
    TransferAccepted,
    TransferFailed,
    TransferProgress,
    TransferState,
    TransferSucceeded,
)
from dialer.sip.message import Request, make_response
from dialer.sip.refer import SIPFRAG, parse_sipfrag_status
from dialer.sip.transaction import TransactionKey
from dialer.sip.uri import parse_uri

from .test_call import Harness, assert_quiet
from .wire import FakeTrunk, Wire

TARGET = "sip:agent@192.0.2.30:5070"


class ReferTrunk(FakeTrunk):
    """The fake carrier, taking REFERs itself: answers ``refer_status`` (None: never)."""

    def __init__(self, wire: Wire) -> None:
        super().__init__(wire)
        self.refers: list[Request] = []
        self.refer_key: TransactionKey | None = None
        self.refer_status: int | None = 202

    def on_deliver(self, deliver: Deliver, now: float) -> list[Action]:
        request = deliver.message
        if isinstance(request, Request) and request.method == "REFER" and self.dialog:
            assert isinstance(deliver.key, TransactionKey)
            self.refers.append(request)
            self.refer_key = deliver.key
            self.dialog.remote_seq = request.cseq.seq
            if self.refer_status is None:
                return []
            return self.layer.send_response(
                deliver.key, make_response(request, self.refer_status), now
            )
        return super().on_deliver(deliver, now)

    def notify(
        self,
        body: bytes | None,
        state: str = "active;expires=60",
        *,
        event: str = "refer",
    ) -> int:
        """Send a NOTIFY with a sipfrag ``body``; the status our side answered."""
        self.send(
            "NOTIFY",
            body or b"",
            content_type=SIPFRAG if body else None,
            headers=[("Event", event), ("Subscription-State", state)],
        )
        return [r.status for r in self.responses if r.cseq.method == "NOTIFY"][-1]


class ReferHarness(Harness):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = ReferTrunk(self.wire)  # takes the fake carrier's place on the wire

    def transfer(self, target: str = TARGET, **kwargs: float) -> None:
        assert self.call is not None
        actions = self.router.transfer(
            self.call.call_id, parse_uri(target), self.wire.now, **kwargs
        )
        self.wire.execute(self.uac.addr, actions)
        self.wire.flush()

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def h() -> ReferHarness:
    harness = ReferHarness()
    harness.place()
    harness.answer()
    return harness


# --- sipfrag ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"SIP/2.0 200 OK\r\n", (200, "OK")),
        (b"SIP/2.0 100 Trying", (100, "Trying")),
        (b"SIP/2.0 603 Declined\r\nContent-Length: 0\r\n\r\n", (603, "Declined")),
        (b"  SIP/2.0 486 Busy Here\n", (486, "Busy Here")),
        (b"SIP/2.0 180\r\n", (180, "")),
        (b"INVITE sip:agent@example.com SIP/2.0\r\n", None),
        (b"SIP/2.0 99 Odd\r\n", None),
        (b"SIP/2.0 2000 OK\r\n", None),
        (b"SIP/3.0 200 OK\r\n", None),
        (b"", None),
    ],
)
def test_sipfrag_status_line(body: bytes, expected) -> None:
    assert parse_sipfrag_status(body) == expected


# --- the REFER ----------------------------------------------------------------------------------


def test_refer_is_in_the_dialog_with_refer_to_and_referred_by(h: ReferHarness) -> None:
    h.transfer()
    [refer] = h.trunk.refers
    invite = h.trunk.invite
    assert invite is not None
    assert refer.call_id == invite.call_id and refer.from_tag == invite.from_tag
    assert refer.to_tag == "trunk-tag" and refer.cseq.seq == 2
    assert str(refer.uri) == "sip:trunk@192.0.2.20:5060"  # the callee's Contact
    assert refer.get("Refer-To") == f"<{TARGET}>"
    assert refer.get("Referred-By") == "<sip:dialer@192.0.2.10>"
    assert str(refer.contacts[0].uri) == "sip:dialer@192.0.2.10:5060"
    assert h.of(TransferAccepted) == [TransferAccepted(h.call.call_id, 202)]  # type: ignore[union-attr]
    assert h.call is not None and h.call.transfer_state is TransferState.ACCEPTED


def test_accepted_then_200_sipfrag_ends_the_call_transferred(h: ReferHarness) -> None:
    h.transfer()
    assert h.trunk.notify(b"SIP/2.0 100 Trying\r\n") == 200
    assert h.trunk.notify(b"SIP/2.0 180 Ringing\r\n") == 200
    h.wire.advance(5)
    assert h.trunk.notify(b"SIP/2.0 200 OK\r\n", "terminated;reason=noresource") == 200
    progress = [(e.status, e.reason) for e in h.of(TransferProgress)]
    assert progress == [(100, "Trying"), (180, "Ringing")]
    assert [(e.target, e.status) for e in h.of(TransferSucceeded)] == [(TARGET, 200)]
    assert len(h.sent("BYE")) == 1
    result = h.ended()
    assert result.disposition is Disposition.TRANSFERRED
    assert (result.end_reason, result.hangup_by) == ("transferred", "caller")
    assert result.transferred_to == TARGET
    assert h.of(TransferFailed) == []
    assert_quiet(h)


def test_accepted_then_the_transferee_byes(h: ReferHarness) -> None:
    h.transfer()
    h.trunk.notify(b"SIP/2.0 100 Trying\r\n")
    h.trunk.send("BYE")
    assert [e.status for e in h.of(TransferSucceeded)] == [None]
    result = h.ended()
    assert result.disposition is Disposition.TRANSFERRED and result.hangup_by == "callee"
    assert result.transferred_to == TARGET and h.sent("BYE") == []
    assert_quiet(h)


def test_notify_may_overtake_the_202(h: ReferHarness) -> None:
    h.trunk.refer_status = None
    h.transfer()
    h.trunk.notify(b"SIP/2.0 200 OK\r\n", "terminated")
    assert h.call is not None and h.call.transfer_state is TransferState.SUCCEEDED
    assert h.trunk.refer_key is not None
    late = make_response(h.trunk.refers[0], 202)
    h.wire.execute(h.trunk.addr, h.trunk.layer.send_response(h.trunk.refer_key, late, h.wire.now))
    h.wire.flush()
    assert h.of(TransferAccepted) == [] and h.ended().disposition is Disposition.TRANSFERRED


@pytest.mark.parametrize("status", [405, 403, 501, 603])
def test_refer_rejected_leaves_the_call_up(h: ReferHarness, status: int) -> None:
    h.trunk.refer_status = status
    h.transfer()
    [failed] = h.of(TransferFailed)
    assert (failed.status, failed.reason, failed.target) == (status, "refer_rejected", TARGET)
    assert h.call is not None and h.call.state is CallState.CONFIRMED
    assert h.sent("BYE") == []
    h.wire.advance(200)  # the guard timer was cancelled: nothing more happens
    assert len(h.of(TransferFailed)) == 1 and h.call.state is CallState.CONFIRMED


def test_481_to_the_refer_means_the_dialog_is_gone(h: ReferHarness) -> None:
    h.trunk.refer_status = 481
    h.transfer()
    assert [e.reason for e in h.of(TransferFailed)] == ["refer_rejected"]
    assert len(h.sent("BYE")) == 1
    assert h.ended().disposition is Disposition.ANSWERED


@pytest.mark.parametrize(
    ("body", "state", "status", "reason"),
    [
        (b"SIP/2.0 486 Busy Here\r\n", "terminated;reason=noresource", 486, "notify_failure"),
        (b"SIP/2.0 603 Decline\r\n", "active", 603, "notify_failure"),
        (None, "terminated;reason=timeout", None, "subscription_terminated"),
        (b"SIP/2.0 180 Ringing\r\n", "terminated", 180, "subscription_terminated"),
    ],
)
def test_failure_verdicts_leave_the_call_up(
    h: ReferHarness, body: bytes | None, state: str, status: int | None, reason: str
) -> None:
    h.transfer()
    h.trunk.notify(b"SIP/2.0 100 Trying\r\n")
    assert h.trunk.notify(body, state) == 200
    [failed] = h.of(TransferFailed)
    assert (failed.status, failed.reason) == (status, reason)
    assert h.call is not None and h.call.state is CallState.CONFIRMED and h.sent("BYE") == []
    # A NOTIFY after the verdict is answered and changes nothing.
    assert h.trunk.notify(b"SIP/2.0 200 OK\r\n", "terminated") == 200
    assert h.of(TransferSucceeded) == [] and h.call.state is CallState.CONFIRMED
    # The callee hanging up later is a plain answered call.
    h.trunk.send("BYE")
    assert h.ended().disposition is Disposition.ANSWERED


def test_refer_never_answered_is_a_timeout(h: ReferHarness) -> None:
    h.trunk.refer_status = None
    h.transfer()
    h.wire.advance(40)  # Timer F: 64*T1
    [failed] = h.of(TransferFailed)
    assert (failed.status, failed.reason) == (408, "refer_timeout")
    assert h.call is not None and h.call.state is CallState.CONFIRMED


def test_no_verdict_in_time(h: ReferHarness) -> None:
    h.transfer(timeout_s=20.0)
    h.trunk.notify(b"SIP/2.0 100 Trying\r\n")
    h.wire.advance(19)
    assert h.of(TransferFailed) == []
    h.wire.advance(2)
    assert [e.reason for e in h.of(TransferFailed)] == ["no_final_notify"]
    # After a failure, another transfer may be tried: its NOTIFYs carry its id.
    h.transfer("sip:other@192.0.2.31")
    assert h.trunk.refers[-1].cseq.seq == 3
    assert h.trunk.notify(b"SIP/2.0 200 OK\r\n", "terminated", event="refer;id=2") == 200
    assert h.of(TransferSucceeded) == []  # about the first REFER: ignored
    assert h.trunk.notify(b"SIP/2.0 200 OK\r\n", "terminated", event="refer;id=3") == 200
    assert [e.target for e in h.of(TransferSucceeded)] == ["sip:other@192.0.2.31"]
    assert h.ended().transferred_to == "sip:other@192.0.2.31"


def test_notify_answers(h: ReferHarness) -> None:
    # Before any REFER there is no subscription: a NOTIFY is refused.
    assert h.trunk.notify(b"SIP/2.0 100 Trying\r\n") == 405
    h.transfer()
    assert h.trunk.notify(b"SIP/2.0 100 Trying\r\n", event="presence") == 489
    assert h.trunk.notify(b"SIP/2.0 100 Trying\r\n", event="refer;id=99") == 481
    assert h.trunk.notify(b"SIP/2.0 100 Trying\r\n", event="refer;id=x") == 489
    assert h.of(TransferProgress) == []
    assert h.trunk.notify(b"SIP/2.0 100 Trying\r\n", event="refer;id=2") == 200
    assert len(h.of(TransferProgress)) == 1


def test_callee_that_does_not_allow_refer() -> None:
    h = ReferHarness()
    h.place()
    h.answer(headers=[("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS")])
    h.transfer()
    assert h.trunk.refers == []
    [failed] = h.of(TransferFailed)
    assert failed.reason == "refer_not_allowed" and failed.status is None


def test_transfer_needs_an_answered_call_and_one_at_a_time() -> None:
    h = ReferHarness()
    h.place()
    with pytest.raises(CallStateError):
        h.transfer()
    h.answer()
    h.trunk.refer_status = None
    h.transfer()
    with pytest.raises(CallStateError):
        h.transfer()


def test_we_hang_up_during_a_transfer(h: ReferHarness) -> None:
    h.transfer()
    h.hangup()
    result = h.ended()
    assert result.disposition is Disposition.ANSWERED and result.transferred_to is None
    assert_quiet(h)

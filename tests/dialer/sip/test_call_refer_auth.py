"""A REFER challenged with 401/407 is sent again with digest credentials (Call.transfer)."""

from __future__ import annotations

import pytest

from dialer.sip.actions import Action, Deliver
from dialer.sip.auth import Credentials, DigestClient
from dialer.sip.call import CallState, TransferAccepted, TransferFailed, TransferSucceeded
from dialer.sip.message import Request, make_response
from dialer.sip.transaction import TransactionKey

from .test_call import CHALLENGE, Harness
from .test_refer import TARGET, ReferHarness, ReferTrunk
from .wire import Wire


class ChallengingTrunk(ReferTrunk):
    """Answers each REFER with the next of ``challenges`` (status, header), then 202."""

    def __init__(self, wire: Wire, challenges: list[tuple[int, str]]) -> None:
        super().__init__(wire)
        self.challenges = list(challenges)

    def on_deliver(self, deliver: Deliver, now: float) -> list[Action]:
        request = deliver.message
        if (
            isinstance(request, Request)
            and request.method == "REFER"
            and self.dialog
            and self.challenges
        ):
            assert isinstance(deliver.key, TransactionKey)
            self.refers.append(request)
            self.dialog.remote_seq = request.cseq.seq
            status, header = self.challenges.pop(0)
            nonce = f"n{len(self.refers)}"
            challenge = CHALLENGE.replace("n1", nonce)
            response = make_response(request, status, headers=[(header, challenge)])
            return self.layer.send_response(deliver.key, response, now)
        return super().on_deliver(deliver, now)


class AuthReferHarness(ReferHarness):
    def __init__(self, challenges: list[tuple[int, str]], *, credentials: bool = True) -> None:
        digest = DigestClient(Credentials("trunk-user", "s3cret"), "192.0.2.20")
        Harness.__init__(self, digest=digest if credentials else None)
        self.trunk = ChallengingTrunk(self.wire, challenges)
        self.place()
        self.answer()


@pytest.mark.parametrize(
    ("status", "challenge", "answer"),
    [
        (401, "WWW-Authenticate", "Authorization"),
        (407, "Proxy-Authenticate", "Proxy-Authorization"),
    ],
)
def test_challenged_refer_is_sent_again_with_credentials(
    status: int, challenge: str, answer: str
) -> None:
    h = AuthReferHarness([(status, challenge)])
    h.transfer()
    first, second = h.trunk.refers
    # A new CSeq in the dialog, the same Refer-To, and the digest answer for REFER.
    assert second.cseq.seq == first.cseq.seq + 1 and second.cseq.method == "REFER"
    assert second.get("Refer-To") == first.get("Refer-To") and TARGET in (
        first.get("Refer-To") or ""
    )
    assert first.get(answer) is None
    value = second.get(answer)
    assert value is not None and 'username="trunk-user"' in value and "s3cret" not in value
    assert f'uri="{first.uri.serialize()}"' in value
    assert h.of(TransferFailed) == []
    assert [e.status for e in h.of(TransferAccepted)] == [202]
    # The NOTIFYs of the REFER that was accepted are ours: the transfer completes.
    assert h.trunk.notify(b"SIP/2.0 200 OK\r\n", "terminated;reason=noresource") == 200
    assert len(h.of(TransferSucceeded)) == 1


def test_a_second_challenge_is_refer_rejected() -> None:
    h = AuthReferHarness([(407, "Proxy-Authenticate"), (407, "Proxy-Authenticate")])
    h.transfer()
    assert len(h.trunk.refers) == 2  # one retry only
    [failed] = h.of(TransferFailed)
    assert (failed.status, failed.reason) == (407, "refer_rejected")
    assert h.call is not None and h.call.state is CallState.CONFIRMED


def test_a_challenge_without_credentials_is_refer_rejected() -> None:
    h = AuthReferHarness([(401, "WWW-Authenticate")], credentials=False)
    h.transfer()
    assert len(h.trunk.refers) == 1
    [failed] = h.of(TransferFailed)
    assert (failed.status, failed.reason) == (401, "refer_rejected")

"""PROTOS c07-sip SDP mutations as the answer in a 200 OK to our own INVITE.

Cases 2427-4526 of the suite mutate one element of the SDP body (attributes,
version, origin, session, connection, time, media and rtpmap fields). Each one
arrives here as the body of the trunk's 200 to a call we placed, in the pure
core over the in-memory wire. What must hold for every case: nothing raises,
the call ends exactly once, and nothing is left behind (no call, transaction
or timer once the waits are over). A 200 we can use is a call like any
other; one we cannot use is ACKed and hung up with a BYE (RFC 3261
§13.2.2.4, then §15) and ends as a failed media negotiation; one too large
to be a SIP message at all (over 64 KiB) never reaches the call, which then
ends at its ring timeout.

The cases live beside the repository (``../shared/testdata``) or where
``DIALER_TESTDATA`` says; without them this test skips.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from dialer.sip.call import (
    CallRouter,
    CallState,
    Dial,
    Disposition,
    Ended,
    IdGenerators,
    UserAgentConfig,
)
from dialer.sip.dialog import LocalMedia
from dialer.sip.parser import DEFAULT_LIMITS
from dialer.sip.timers import TimerConfig
from dialer.sip.uri import SipUri, parse_uri

from .wire import TRUNK_ADDR, UAC_ADDR, FakeTrunk, Wire, sent_by


def _cases_dir() -> Path:
    configured = os.environ.get("DIALER_TESTDATA")
    root = (
        Path(configured)
        if configured
        else Path(__file__).resolve().parents[3] / ".." / "shared" / "testdata"
    )
    return root / "protos-c07-sip" / "cases"


CASES = _cases_dir()
SDP_GROUP = range(2427, 4527)
# The addresses the suite leaves as placeholders in its SDP bodies.
PLACEHOLDERS = {b"<From-Address>": b"192.0.2.77", b"<From-IP>": b"192.0.2.77"}
# A short ring timeout and a fast T1: the cases the call never hears from end quickly.
TIMERS = TimerConfig(t1_s=0.05, t2_s=0.4, t4_s=0.5, timer_d_s=0.5)

pytestmark = pytest.mark.skipif(
    not CASES.is_dir(), reason=f"PROTOS c07-sip cases not found at {CASES}"
)


def sdp_body(number: int) -> bytes:
    """The SDP body of a case's INVITE (the first of its two length-prefixed messages)."""
    data = (CASES / f"{number:07d}").read_bytes()
    length, _, rest = data.partition(b" ")
    invite = rest[: int(length)]
    body = invite.split(b"\r\n\r\n", 1)[1]
    for placeholder, value in PLACEHOLDERS.items():
        body = body.replace(placeholder, value)
    return body


def ids() -> IdGenerators:
    counter = itertools.count(1)
    return IdGenerators(
        tag=lambda: f"tag{next(counter)}",
        branch=lambda: f"br{next(counter)}",
        call_id=lambda: f"call{next(counter)}",
        cnonce=lambda: f"cn{next(counter)}",
    )


CONFIG = UserAgentConfig(
    local_uri=SipUri("192.0.2.10", "dialer"),
    contact=SipUri("192.0.2.10", "dialer", port=5060),
    via_host="192.0.2.10",
    via_port=5060,
    proxy=TRUNK_ADDR,
    ring_timeout_s=2.0,
    session_expires_s=None,
    timers=TIMERS,
)
TARGET = parse_uri("sip:+15551234567@192.0.2.20")
MEDIA = LocalMedia("192.0.2.10", 20000)


def answer_with(body: bytes) -> tuple[Wire, CallRouter, FakeTrunk]:
    """Place one call and have the trunk answer it with ``body`` as its SDP."""
    wire = Wire()
    wire.drop_malformed = True  # what the transport does with what does not parse
    router = CallRouter(CONFIG, ids())
    wire.add(UAC_ADDR, router)
    trunk = FakeTrunk(wire, config=TIMERS)
    _, actions = router.place(Dial(TARGET, MEDIA), wire.now)
    wire.execute(UAC_ADDR, actions)
    wire.flush()
    trunk.respond(180)
    trunk.respond(200, body)
    for call in list(router.calls.values()):
        if call.state is CallState.CONFIRMED:
            # Answered and up: hang up as the application would.
            wire.execute(UAC_ADDR, router.hangup(call.call_id, wire.now))
    wire.advance(60)  # past the ring timeout, Timer M and Timer K
    return wire, router, trunk


def ended(events: list) -> object | None:
    ends = [e for e in events if isinstance(e, Ended)]
    assert len(ends) <= 1, "a call ends once"
    return ends[0].result if ends else None


def test_reference_answer_is_a_normal_call() -> None:
    wire, _, trunk = answer_with(sdp_body(0))
    result = ended(wire.nodes[UAC_ADDR].events)
    assert result is not None and result.disposition is Disposition.ANSWERED
    assert result.hangup_by == "caller" and len(trunk.acks) == 1


def test_sdp_mutations_in_a_200_end_the_call_cleanly() -> None:
    outcomes: dict[str, list[int]] = {}
    for number in SDP_GROUP:
        body = sdp_body(number)
        wire, router, trunk = answer_with(body)
        node = wire.nodes[UAC_ADDR]
        result = ended(node.events)
        assert result is not None, f"case {number}: the call never ended"
        # Nothing left behind once the waits are over.
        assert router.calls == {}, number
        assert len(router.layer) == 0, number
        assert wire.clock.pending(UAC_ADDR) == [], number
        disposition = result.disposition  # type: ignore[attr-defined]
        outcomes.setdefault(str(disposition), []).append(number)
        if len(body) > DEFAULT_LIMITS.max_message_bytes:
            # Too large to be a message: dropped unread, the call rings out.
            assert wire.malformed, number
            assert disposition is Disposition.NO_ANSWER, number
            continue
        assert wire.malformed == [], number
        # Every 2xx is ACKed (§13.2.2.4) and every answered dialog ends with a BYE.
        assert len(trunk.acks) == 1, number
        assert len(sent_by(node, method="BYE")) == 1, number
        if disposition is Disposition.MEDIA_FAILED:
            assert result.detail, number  # type: ignore[attr-defined]
            assert result.end_reason == "media_negotiation_failed", number  # type: ignore[attr-defined]
        else:
            assert disposition is Disposition.ANSWERED, (number, disposition)
    # The group holds both kinds; the grammar breakers are refused.
    assert len(outcomes["answered"]) > 100
    assert len(outcomes["media_negotiation_failed"]) > 100
    for broken in (2437, 2453, 2428):  # "=0" first line, non-ASCII type, NUL after rtpmap
        assert broken in outcomes["media_negotiation_failed"]

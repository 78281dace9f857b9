"""The bookkeeping of slow webhook endpoints: when they are gated, leased, and forgotten."""

from __future__ import annotations

import uuid

import pytest

from api.endpoint_gates import EndpointGates

SLOW, FAST = uuid.uuid4(), uuid.uuid4()


def test_an_endpoint_never_slow_has_no_gate_and_is_never_full() -> None:
    gates = EndpointGates(cap=2, hold_s=10.0)
    for _ in range(50):
        gates.leased(FAST)
    assert gates.enter(FAST, 0.0) is None
    assert gates.full(0.0) == []


def test_a_slow_endpoint_is_full_at_its_cap_of_leased_attempts() -> None:
    gates = EndpointGates(cap=2, hold_s=10.0)
    gates.mark_slow(SLOW, 0.0)
    assert gates.is_slow(SLOW, 9.9) and not gates.is_slow(FAST, 0.0)
    gates.leased(SLOW)
    assert gates.full(1.0) == []
    gates.leased(SLOW)
    assert gates.full(1.0) == [SLOW]
    gates.finished(SLOW)
    assert gates.full(1.0) == []


async def test_the_gate_lets_cap_sends_through() -> None:
    gates = EndpointGates(cap=2, hold_s=10.0)
    gates.mark_slow(SLOW, 0.0)
    gate = gates.enter(SLOW, 1.0)
    assert gate is not None and gates.enter(SLOW, 1.0) is gate
    await gate.acquire()
    await gate.acquire()
    assert gate.locked()


def test_a_recovered_endpoint_meets_no_gate_while_the_old_one_drains() -> None:
    gates = EndpointGates(cap=2, hold_s=10.0)
    gates.mark_slow(SLOW, 0.0)
    gate = gates.enter(SLOW, 5.0)  # one attempt at the gate
    assert gate is not None
    for _ in range(5):
        gates.leased(SLOW)
    # Past the hold: new attempts go ungated and its deliveries are leased again,
    # however many it has, while the attempt inside drains.
    assert gates.enter(SLOW, 11.0) is None
    assert gates.full(11.0) == []
    # Slow again before the gate drained: the same gate, so the one inside can leave it.
    gates.mark_slow(SLOW, 12.0)
    assert gates.enter(SLOW, 12.0) is gate
    assert gates.full(12.0) == [SLOW]
    gates.leave(SLOW)
    gates.leave(SLOW)
    assert gates.enter(SLOW, 23.0) is None
    assert not gates.is_slow(SLOW, 23.0)
    assert gates.full(23.0) == []


def test_a_new_stall_extends_the_hold() -> None:
    gates = EndpointGates(cap=1, hold_s=10.0)
    gates.mark_slow(SLOW, 0.0)
    gates.mark_slow(SLOW, 8.0)
    gates.leased(SLOW)
    assert gates.full(15.0) == [SLOW]
    assert gates.full(18.5) == []  # forgotten: its hold ran out and nobody is at its gate


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="cap"):
        EndpointGates(cap=0, hold_s=1.0)

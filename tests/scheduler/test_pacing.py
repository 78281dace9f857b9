"""Pacing as a pure function of observed statistics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.pacing import (
    AbandonmentTracker,
    DurationSummary,
    PacingDecision,
    PacingMode,
    PacingPolicy,
    PacingStats,
    RollingWindow,
    _answers_law,
    _keeping_risks,
    _laws,
    calls_to_cancel,
    dials_to_place,
    next_dial_risk,
    pace,
    risk_threshold,
)

PROGRESSIVE = PacingPolicy(mode=PacingMode.PROGRESSIVE)
FIXED = PacingPolicy(mode=PacingMode.FIXED_RATIO, ratio=2.5)
PREDICTIVE = PacingPolicy(mode=PacingMode.PREDICTIVE)


def stats(**changes: object) -> PacingStats:
    """A 50-seat workflow in steady state under the bench's model."""
    base = PacingStats(
        seats=50,
        seats_busy=46,
        calls_in_flight=10,
        answer_rate=0.30,
        answer_samples=5000,
        ring_to_answer=DurationSummary(12.0, 4.62, 1500),
        not_answered_hold=DurationSummary(14.0, 6.93, 3500),
        handle=DurationSummary(130.0, 120.0, 1400),
        window_live=1000,
        # On budget (0.98 * 3 % of 1000, less the opening debt of one): the
        # threshold is near the target.
        window_abandoned=28,
        seats_wrapping=4,
        wrap_mean_s=10.0,
        wrap_remaining_s=(1.0, 4.0, 7.0, 9.5),
        in_flight_ages_s=(0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 9.0, 12.0, 15.0, 18.0),
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("seats", "busy", "waiting", "in_flight", "expected"),
    [
        (10, 0, 0, 0, 10),
        (10, 4, 0, 0, 6),
        (10, 4, 0, 2, 4),
        (10, 4, 1, 2, 3),  # an answer waiting for a seat has claimed it
        (10, 10, 0, 0, 0),
        (10, 6, 0, 9, 0),  # never negative
    ],
)
def test_progressive_is_one_call_per_free_seat(
    seats: int, busy: int, waiting: int, in_flight: int, expected: int
):
    s = stats(seats=seats, seats_busy=busy, calls_waiting=waiting, calls_in_flight=in_flight)
    assert dials_to_place(PROGRESSIVE, s, now=0.0) == expected


@pytest.mark.parametrize(
    ("busy", "in_flight", "expected"),
    [(46, 0, 10), (46, 4, 6), (46, 11, 0), (50, 0, 0), (47, 1, 6)],
)
def test_fixed_ratio(busy: int, in_flight: int, expected: int):
    s = stats(seats_busy=busy, calls_in_flight=in_flight)
    assert dials_to_place(FIXED, s, now=0.0) == expected


@pytest.mark.parametrize("mode", list(PacingMode))
@pytest.mark.parametrize(
    ("cps_limit", "recent", "channel_limit", "channels", "expected"),
    [
        (3.0, (), None, None, 3),
        (3.0, (9.5, 9.9), None, None, 1),
        (3.0, (8.9, 9.0), None, None, 3),  # older than a second: no longer counted
        (3.0, (9.1, 9.2, 9.3, 9.4), None, None, 0),
        (None, (), 60, 58, 2),
        (None, (), 60, 61, 0),
        (5.0, (9.5,), 60, 57, 3),
    ],
)
def test_trunk_limits_cap_every_mode(
    mode: PacingMode,
    cps_limit: float | None,
    recent: tuple[float, ...],
    channel_limit: int | None,
    channels: int | None,
    expected: int,
):
    # 20 free seats and nothing in flight: every mode wants more than the caps allow.
    s = stats(
        seats_busy=30,
        seats_wrapping=0,
        wrap_remaining_s=(),
        calls_in_flight=0,
        in_flight_ages_s=(),
        recent_dial_times=recent,
        channels_in_use=channels,
    )
    policy = PacingPolicy(mode=mode, cps_limit=cps_limit, channel_limit=channel_limit)
    assert dials_to_place(policy, s, now=10.0) == expected


def test_channels_in_use_defaults_to_calls_held():
    # 10 in flight + 1 waiting + (46 busy - 4 wrapping) talking = 53 channels.
    policy = PacingPolicy(mode=PacingMode.FIXED_RATIO, ratio=5.0, channel_limit=55)
    assert dials_to_place(policy, stats(calls_waiting=1), now=0.0) == 2


def test_predictive_dials_ahead_of_free_seats():
    s = stats()
    predictive = dials_to_place(PREDICTIVE, s, now=0.0)
    progressive = dials_to_place(PROGRESSIVE, s, now=0.0)
    assert progressive == 0  # 4 free seats, 10 calls in flight
    assert predictive > 0


def test_predictive_backs_off_over_target():
    under = dials_to_place(PREDICTIVE, stats(window_live=1000, window_abandoned=5), now=0.0)
    at = dials_to_place(PREDICTIVE, stats(window_live=1000, window_abandoned=30), now=0.0)
    over = dials_to_place(PREDICTIVE, stats(window_live=1000, window_abandoned=80), now=0.0)
    assert under > at > over


@pytest.mark.parametrize(
    ("live", "abandoned"),
    [(0, 0), (100, 0), (100, 3), (100, 10), (1000, 25), (1000, 40)],
)
def test_risk_threshold_falls_as_abandonment_rises(live: int, abandoned: int):
    s = stats(window_live=live, window_abandoned=abandoned)
    more = stats(window_live=live, window_abandoned=abandoned + 1)
    low, high = 0.02 * 0.03, 5.0 * 0.03
    assert low <= risk_threshold(s) <= high
    # Strictly lower unless the threshold is held at one of its bounds.
    assert risk_threshold(more) < risk_threshold(s) or risk_threshold(more) in (low, high)
    assert risk_threshold(more) <= risk_threshold(s)


def test_budget_opens_in_debt():
    # Nothing observed yet: the threshold starts under the target, and live
    # answers without abandons earn it up past the target.
    assert risk_threshold(stats(window_live=0, window_abandoned=0)) < 0.03
    assert risk_threshold(stats(window_live=100, window_abandoned=0)) > 0.03
    # Spending on target (aim 0.98) over a long window holds it near the target.
    on_target = risk_threshold(stats(window_live=10_000, window_abandoned=293))
    assert 0.5 * 0.03 < on_target < 2.0 * 0.03


def test_one_abandon_moves_the_threshold_less_as_the_window_fills():
    # Early in a day (30 live answers) an abandon more than halves the
    # threshold, which keeps short days near the target; over a day's window
    # (5,000 live answers, about 150 abandons expected) it moves it by about a
    # sixth, not near half: a threshold that jumps with every abandon costs
    # occupancy.
    def step(live: int, abandoned: int) -> float:
        before = risk_threshold(stats(window_live=live, window_abandoned=abandoned))
        after = risk_threshold(stats(window_live=live, window_abandoned=abandoned + 1))
        return after / before

    assert step(30, 0) < 0.5
    assert 0.8 < step(5000, 146) < 0.9


def test_conservative_start():
    # Nothing observed yet: behave like progressive, one call per free seat at most.
    cold = stats(
        seats_busy=0,
        seats_wrapping=0,
        wrap_remaining_s=(),
        calls_in_flight=0,
        in_flight_ages_s=(),
        answer_rate=0.0,
        answer_samples=0,
        ring_to_answer=DurationSummary(),
        not_answered_hold=DurationSummary(),
        handle=DurationSummary(),
        window_live=0,
        window_abandoned=0,
    )
    cold_dials = dials_to_place(PREDICTIVE, cold, now=0.0)
    assert 0 < cold_dials <= 50
    # With the same state and a day's worth of samples it dials well ahead.
    warm = dataclasses.replace(
        cold,
        answer_rate=0.3,
        answer_samples=5000,
        ring_to_answer=DurationSummary(12.0, 4.62, 1500),
        not_answered_hold=DurationSummary(14.0, 6.93, 3500),
        handle=DurationSummary(130.0, 120.0, 1400),
    )
    assert dials_to_place(PREDICTIVE, warm, now=0.0) > 2 * cold_dials
    # A few samples move it only part of the way.
    early = dataclasses.replace(warm, answer_samples=20)
    assert (
        cold_dials
        <= dials_to_place(PREDICTIVE, early, now=0.0)
        < dials_to_place(PREDICTIVE, warm, now=0.0)
    )


def test_predictive_counts_calls_in_flight_and_waiting():
    base = dials_to_place(PREDICTIVE, stats(), now=0.0)
    more_in_flight = stats(
        calls_in_flight=20, in_flight_ages_s=stats().in_flight_ages_s + (0.1,) * 10
    )
    assert dials_to_place(PREDICTIVE, more_in_flight, now=0.0) < base
    assert dials_to_place(PREDICTIVE, stats(calls_waiting=3), now=0.0) < base


@pytest.mark.parametrize(
    "changes",
    [{"in_flight_ages_s": None}, {"wrap_remaining_s": None}, {"wrap_mean_s": 0.0}],
)
def test_predictive_paces_from_summaries_alone(changes: dict[str, object]):
    # Without per-call ages or per-seat wrap-up times it falls back on counts
    # and means, and lands near the answer it gives with them.
    exact = dials_to_place(PREDICTIVE, stats(), now=0.0)
    rough = dials_to_place(PREDICTIVE, stats(**{"wrap_remaining_s": None, **changes}), now=0.0)
    assert 0.5 * exact <= rough <= 1.5 * exact


@pytest.mark.parametrize(
    ("seats", "answer_rate", "waiting", "wrapping", "expected"),
    [
        # One free seat: a second dial is abandoned if the first answers before
        # it, p / 2 on average, far over a 3 % threshold.
        (1, 1.0, 0, 0, 1),
        (1, 0.3, 0, 0, 1),
        # Three free seats, everyone answers: a fourth dial is last of four a
        # quarter of the time.
        (3, 1.0, 0, 0, 3),
        # Answers already waiting hold every seat: nothing to dial.
        (2, 0.3, 2, 0, 0),
        # Seats whose wrap-up ends before any new answer count as free.
        (3, 1.0, 0, 3, 3),
    ],
)
def test_predictive_small_cases_by_hand(
    seats: int, answer_rate: float, waiting: int, wrapping: int, expected: int
):
    s = stats(
        seats=seats,
        seats_busy=wrapping,
        seats_wrapping=wrapping,
        wrap_remaining_s=(0.5,) * wrapping,
        calls_waiting=waiting,
        calls_in_flight=0,
        in_flight_ages_s=(),
        answer_rate=answer_rate,
    )
    assert dials_to_place(PREDICTIVE, s, now=0.0) == expected


# The bench's ring law U(4, 20) s and no-answer hold U(2, 26) s, as summaries.
RING = DurationSummary(12.0, 16.0 / 12**0.5, 10**6)
HOLD = DurationSummary(14.0, 24.0 / 12**0.5, 10**6)


def one_seat(**changes: object) -> PacingStats:
    """One seat, answer rate 0.3 known from a million dials, nothing in flight."""
    base = stats(
        seats=1,
        seats_busy=0,
        seats_wrapping=0,
        wrap_remaining_s=(),
        calls_in_flight=0,
        in_flight_ages_s=(),
        answer_samples=10**9,
        ring_to_answer=RING,
        not_answered_hold=HOLD,
    )
    return dataclasses.replace(base, **changes)


def wrapping_seat_one_call(wrap_left_s: float, age_s: float) -> PacingStats:
    """The one seat in wrap-up for ``wrap_left_s`` more, one call in flight for ``age_s``."""
    return one_seat(
        seats_busy=1,
        seats_wrapping=1,
        wrap_remaining_s=(wrap_left_s,),
        calls_in_flight=1,
        in_flight_ages_s=(age_s,),
    )


def test_next_dial_risk_by_hand_new_dials():
    # One free seat. The first dial always finds it. The second is abandoned
    # when the first is answered (0.3) before it (half the time, same ring law).
    assert next_dial_risk(PREDICTIVE, one_seat()) == 0.0
    assert next_dial_risk(PREDICTIVE, one_seat(), planned=1) == pytest.approx(0.15, abs=1e-6)


def test_next_dial_risk_by_hand_call_in_flight():
    # The seat is in wrap-up for 1 s more, so it is free in time for any answer.
    # A call in flight for 10 s answers with P = 0.3 * 10/16 / (0.3 * 10/16 +
    # 0.7 * 16/24) = 0.2866, uniformly within the next 10 s; a new dial answers
    # at t ~ U(4, 20), after it with probability E[min(t, 10) / 10] = 0.8875.
    s = wrapping_seat_one_call(wrap_left_s=1.0, age_s=10.0)
    answers = 0.3 * 10 / 16 / (0.3 * 10 / 16 + 0.7 * 16 / 24)
    assert next_dial_risk(PREDICTIVE, s) == pytest.approx(answers * 0.8875, rel=0.01)
    # Past the longest ring, a call in flight is a no-answer: no risk.
    assert next_dial_risk(PREDICTIVE, dataclasses.replace(s, in_flight_ages_s=(21.0,))) == 0.0
    # A seat still talking (memoryless, mean 120 s) frees in time only now and then.
    talking = dataclasses.replace(s, seats_wrapping=0, wrap_remaining_s=())
    assert next_dial_risk(PREDICTIVE, talking) > 0.9


def test_dials_stop_where_the_risk_passes_the_threshold():
    s = stats()
    n = dials_to_place(PREDICTIVE, s, now=0.0)
    assert n > 0
    assert next_dial_risk(PREDICTIVE, s, planned=n - 1) <= risk_threshold(s)
    assert next_dial_risk(PREDICTIVE, s, planned=n) > risk_threshold(s)


def ringing_risks(s: PacingStats) -> list[float]:
    """Each call in flight's risk if kept, as `calls_to_cancel` weighs it."""
    laws = _laws(PREDICTIVE, s)
    everyone = np.arange(len(laws.ages))
    kept = np.ones(len(laws.ages), dtype=bool)
    return list(_keeping_risks(PREDICTIVE, s, laws, everyone, kept))


def test_ringing_call_risk_by_hand():
    # The seat's wrap-up ends in 3 s. A call that has rung 16 s answers, if
    # live, within U(0, 4) s; it finds the seat unless it answers within 1 s
    # (the 2 s wait covers the rest): a risk of 1/4.
    s = wrapping_seat_one_call(wrap_left_s=3.0, age_s=16.0)
    assert ringing_risks(s) == pytest.approx([0.25])
    # Two calls and a free seat: each is abandoned when the other answers
    # live first. Live given still ringing at 16 s: 0.3 * 4/16 / (0.3 * 4/16 +
    # 0.7 * 10/24) = 0.2045, at 17 s: 0.1765. The call at 16 s answers within
    # U(0, 4) s and is beaten by the one at 17 s (within U(0, 3) s) with
    # probability 0.625; the call at 17 s is beaten with probability 0.375.
    two = one_seat(calls_in_flight=2, in_flight_ages_s=(16.0, 17.0))
    live_16 = 0.075 / (0.075 + 0.7 * 10 / 24)
    live_17 = 0.05625 / (0.05625 + 0.7 * 9 / 24)
    assert ringing_risks(two) == pytest.approx([live_17 * 0.625, live_16 * 0.375], rel=0.02)


def test_riskiest_ringing_call_is_hung_up_first_and_the_rest_weighed_again():
    two = one_seat(calls_in_flight=2, in_flight_ages_s=(16.0, 17.0))
    assert min(ringing_risks(two)) > risk_threshold(two)
    # Once the call at 16 s is gone the other one has the seat to itself.
    assert calls_to_cancel(PREDICTIVE, two) == (0,)


def test_ringing_calls_kept_under_the_threshold_or_the_floor():
    s = wrapping_seat_one_call(wrap_left_s=3.0, age_s=16.0)
    assert calls_to_cancel(PREDICTIVE, s) == (0,)
    # A free seat: no risk.
    assert calls_to_cancel(PREDICTIVE, dataclasses.replace(s, seats_busy=0, seats_wrapping=0)) == ()
    # Under 15 s of ringing (47 CFR 64.1200(a)(6)) the call rings on.
    young = dataclasses.replace(s, in_flight_ages_s=(14.9,))
    assert ringing_risks(young)[0] > risk_threshold(young)
    assert calls_to_cancel(PREDICTIVE, young) == ()
    # A threshold over the risk (a 10 % target, well under budget).
    generous = dataclasses.replace(s, target_abandon_rate=0.10, window_live=10**5)
    assert risk_threshold(generous) > 0.25
    assert calls_to_cancel(PREDICTIVE, generous) == ()


def test_only_cancellable_calls_are_hung_up():
    two = one_seat(calls_in_flight=2, in_flight_ages_s=(16.0, 17.0))
    # The riskier call may not be taken back (already asked, or not heard ringing
    # long enough): the other one is weighed with it still ahead, and goes.
    assert calls_to_cancel(PREDICTIVE, two, cancellable=(False, True)) == (1,)
    assert calls_to_cancel(PREDICTIVE, two, cancellable=(False, False)) == ()
    decision = pace(PREDICTIVE, two, now=0.0, cancellable=(True, True))
    assert decision.cancel == (0,)


def test_the_work_of_one_decision_is_bounded():
    # 2,000 calls in flight for 1,000 seats all busy, half of them ringing past
    # 15 s: a decision takes at most _CANCEL_ROUNDS calls back, without
    # holding the laws of every candidate at once.
    ages = tuple(float(a) for a in np.random.default_rng(0).uniform(0.0, 30.0, 2000))
    s = stats(
        seats=1000,
        seats_busy=1000,
        seats_wrapping=0,
        wrap_remaining_s=(),
        calls_in_flight=2000,
        in_flight_ages_s=ages,
    )
    assert 1 <= len(calls_to_cancel(PREDICTIVE, s)) <= 8


@pytest.mark.parametrize(
    ("policy", "changes"),
    [
        (PROGRESSIVE, {}),
        (FIXED, {}),
        (PacingPolicy(cancel_ringing_after_s=None), {}),
        (PREDICTIVE, {"in_flight_ages_s": None}),  # ages unknown
        (PREDICTIVE, {"ring_to_answer": DurationSummary(12.0, 4.6, 3)}),  # ring law unknown
    ],
)
def test_ringing_calls_never_hung_up_without_grounds(
    policy: PacingPolicy, changes: dict[str, object]
):
    s = one_seat(seats_busy=1, calls_in_flight=3, in_flight_ages_s=(15.0, 16.0, 17.0))
    assert calls_to_cancel(PREDICTIVE, s) != ()
    assert calls_to_cancel(policy, dataclasses.replace(s, **changes)) == ()


def test_pace_dials_as_if_the_hung_up_calls_were_gone():
    # Two free seats, ten calls that have rung 16 s: about two live answers to come.
    s = stats(seats_busy=48, seats_wrapping=0, wrap_remaining_s=(), in_flight_ages_s=(16.0,) * 10)
    decision = pace(PREDICTIVE, s, now=0.0)
    assert 0 < len(decision.cancel) < 10
    rest = dataclasses.replace(
        s,
        calls_in_flight=10 - len(decision.cancel),
        in_flight_ages_s=(16.0,) * (10 - len(decision.cancel)),
    )
    assert decision.dials == dials_to_place(PREDICTIVE, rest, now=0.0)
    # What is kept sits at the threshold: the last call kept is under it.
    assert calls_to_cancel(PREDICTIVE, rest) == ()
    never = PacingPolicy(cancel_ringing_after_s=None)
    assert pace(never, s, now=0.0) == PacingDecision(dials_to_place(never, s, now=0.0))


@settings(max_examples=40, deadline=None)
@given(
    q=st.lists(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3), min_size=0, max_size=12),
    waiting=st.integers(0, 3),
    size=st.integers(2, 20),
)
def test_answers_law_is_the_convolution_of_its_calls(q: list[list[float]], waiting: int, size: int):
    # Reference: add the calls one at a time to the law of the count.
    expected = np.zeros((3, size + 20))
    expected[:, waiting] = 1.0
    for row in q:
        p = np.asarray(row)[:, None]
        expected = expected * (1.0 - p) + np.pad(expected, ((0, 0), (1, 0)))[:, :-1] * p
    expected[:, size - 1] += expected[:, size:].sum(axis=1)
    law = _answers_law(waiting, np.asarray(q, dtype=float).reshape(-1, 3), size)
    assert law == pytest.approx(expected[:, :size], abs=1e-9)


@pytest.mark.parametrize(
    "changes",
    [
        {"ratio": 0.0},
        {"max_wait_s": -1.0},
        {"cps_limit": 0.0},
        {"channel_limit": -1},
        {"cancel_ringing_after_s": -1.0},
    ],
)
def test_policy_validation(changes: dict[str, float]):
    with pytest.raises(ValueError):
        PacingPolicy(**changes)  # type: ignore[arg-type]


def test_rolling_window_expires_old_events():
    window = RollingWindow(span_s=60.0, buckets=6)
    window.add(0.0)
    window.add(5.0, count=2)
    window.add(30.0)
    assert window.total(30.0) == 4
    assert window.total(59.0) == 4
    assert window.total(60.0) == 1  # the 0-10 s bucket has left the window
    assert window.total(95.0) == 0


def test_abandonment_tracker():
    tracker = AbandonmentTracker(span_s=100.0, buckets=10)
    for t in range(10):
        tracker.record_live(float(t))
    tracker.record_abandoned(9.0)
    assert tracker.counts(9.0) == (10, 1)
    assert tracker.counts(200.0) == (0, 0)

"""A short simulated hour: predictive pacing holds its target and beats progressive."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from scheduler.pacing import PacingMode, PacingPolicy
from scheduler.simulate import SimConfig, simulate

PROGRESSIVE = PacingPolicy(mode=PacingMode.PROGRESSIVE)

# Room for the noise of half an hour (~150 live answers) over the 3 % target;
# the warm-up is cautious, so an overshoot past it means the pacer is wrong.
MARGIN = 0.02


@pytest.mark.parametrize(
    ("config", "gain"),
    [
        (SimConfig(seats=10, hours=0.5), 1.05),
        # Other parameters too: fewer answers, shorter talk, longer rings.
        (
            SimConfig(
                seats=8, hours=0.5, answer_rate=0.15, talk_mean_s=60.0, ring_min_s=6, ring_max_s=30
            ),
            1.05,
        ),
        # Many answers, a wide ring, no wrap-up: every seat frees unannounced.
        # Progressive already keeps 8 seats ~0.79 busy when 60 % answer, and
        # the budget's opening debt weighs on half an hour: a smaller gain.
        (
            SimConfig(
                seats=8, hours=0.5, answer_rate=0.6, ring_min_s=2.0, ring_max_s=30.0, wrap_s=0.0
            ),
            1.02,
        ),
    ],
)
def test_predictive_holds_target_and_beats_progressive(config: SimConfig, gain: float):
    predictive = simulate(PacingPolicy(mode=PacingMode.PREDICTIVE), config, random.Random(1))
    progressive = simulate(PacingPolicy(mode=PacingMode.PROGRESSIVE), config, random.Random(1))
    assert predictive.live_answers > 100
    # A day's figure is ~0.79 at 10 seats; half an hour carries the warm-up.
    assert predictive.occupancy > gain * progressive.occupancy
    assert predictive.abandonment <= config.target_abandon_rate + MARGIN
    assert predictive.occupancy > progressive.occupancy
    assert progressive.abandonment == 0.0


def test_simulation_is_deterministic_for_a_seed():
    config = SimConfig(seats=5, hours=0.05)
    policy = PacingPolicy()
    assert simulate(policy, config, random.Random(7)) == simulate(policy, config, random.Random(7))


def test_totals_are_consistent():
    config = SimConfig(seats=5, hours=0.5)
    result = simulate(
        PacingPolicy(mode=PacingMode.FIXED_RATIO, ratio=3.0), config, random.Random(3)
    )
    assert result.connects + result.abandoned <= result.live_answers <= result.dials
    assert 0.0 < result.occupancy <= config.occupancy_ceiling + 0.05
    assert result.connects_per_seat_hour == pytest.approx(result.connects / 2.5)


def test_ringing_calls_taken_back_only_when_their_cancel_comes_in_time():
    config = SimConfig(seats=10, hours=0.5)
    policy = PacingPolicy()
    result = simulate(policy, config, random.Random(2))
    assert 0 < result.cancelled < result.dials
    assert 0.0 < result.cancelled_share < 0.3
    # A CANCEL later than any ring: every call answers or ends first.
    late = simulate(policy, replace(config, take_back_lag_s=60.0), random.Random(2))
    assert late.cancelled == 0
    never = simulate(PacingPolicy(cancel_ringing_after_s=None), config, random.Random(2))
    assert never.cancelled == 0
    assert simulate(PROGRESSIVE, config, random.Random(2)).cancelled == 0


@pytest.mark.parametrize(
    "changes",
    [
        {"seats": 0},
        {"answer_rate": 0.0},
        {"ring_min_s": 5.0, "ring_max_s": 4.0},
        {"hours": 0.0},
        {"take_back_lag_s": -1.0},
    ],
)
def test_config_validation(changes: dict[str, float]):
    with pytest.raises(ValueError):
        SimConfig(**changes)  # type: ignore[arg-type]

"""Pacing: how many calls to dial now so that seats stay busy and few answers wait.

A *seat* is whatever takes an answered call: a voicebot slot or an agent. A
*live answer* that finds no free seat within ``max_wait_s`` is *abandoned*; the
FCC's telemarketing rule, 47 CFR 64.1200(a)(7)(i), caps abandoned calls at
"three percent of all calls that are answered live by a person, as measured
over a 30-day period for a single calling campaign", and a call is abandoned
when not connected to a live sales representative "within two (2) seconds of
the called person's completed greeting". Hence the defaults: a 3 % target and
a 2 s wait.

Rules of this file:

1. Pacing is a pure function of observed statistics (`PacingStats`) and the
   workflow's `PacingPolicy`: no clock, no state. The caller keeps the
   statistics (an `AbandonmentTracker` and running means) and asks again on
   every call event and on a periodic tick; each answer is the number of *new*
   dials to place now, given the calls already in flight.
2. Three modes. Progressive keeps one call in flight per free seat and never
   abandons. Fixed ratio keeps ``ratio`` calls in flight per free seat.
   Predictive adds dials while the chance that one more dial's live answer
   finds no seat stays under a threshold; the counts behind that chance
   (answers to come, seats to free) are computed exactly, not approximated,
   and a feedback controller moves the threshold from the realised
   abandonment (see `risk_threshold`).
3. The trunk's calls-per-second and channel limits cap every mode, last.
4. While little is known (few finished dials) the pacer assumes answers are
   more likely than observed, which dials fewer calls: the cost of knowing
   little is idle seats, never abandoned people.
5. A call still ringing is a dial already placed, and it can be taken back.
   Predictive mode hangs up a call that has rung at least
   ``cancel_ringing_after_s`` (15 s: the FCC's floor for unanswered
   telemarketing calls, 47 CFR 64.1200(a)(6), "15 seconds or four (4) rings")
   when its chance of being abandoned, were it answered now or later, is over
   the same threshold a new dial must stay under: the threshold is the price
   of abandonment the controller has set, and a call above it costs more in
   expected abandons than a fresh dial placed in its stead. Riskiest first,
   each one taken back lowering the risk of the rest (`calls_to_cancel`).
   Late answers are the dangerous ones, as seats are planned for the calls
   dialled since; taking them back lets the pacer dial harder. One decision
   takes back at most `_CANCEL_ROUNDS` calls and weighs only as many of the
   longest-ringing candidates as `_CANCEL_WORK` allows; the rest wait for the
   next decision.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

__all__ = [
    "AbandonmentTracker",
    "DurationSummary",
    "PacingDecision",
    "PacingMode",
    "PacingPolicy",
    "PacingStats",
    "RollingWindow",
    "calls_to_cancel",
    "dials_to_place",
    "next_dial_risk",
    "pace",
    "risk_threshold",
]


class PacingMode(StrEnum):
    """Which pacing rule a workflow uses."""

    PROGRESSIVE = "progressive"
    FIXED_RATIO = "fixed_ratio"
    PREDICTIVE = "predictive"


@dataclass(frozen=True, slots=True)
class PacingPolicy:
    """A workflow's pacing configuration.

    ``max_wait_s`` is how long a live answer may wait for a seat before it
    counts as abandoned. ``warmup_samples`` is the weight, in finished dials,
    of the pessimistic prior that everyone answers (rule 4).
    ``cps_limit`` caps dials started in any one second and ``channel_limit``
    the calls held on the trunk at once (ringing, waiting or talking).
    ``cancel_ringing_after_s``: in predictive mode, a call that has rung this
    long and would more likely than the threshold find no seat if answered is
    hung up (rule 5); None never hangs up a ringing call. Under 15 s breaks
    47 CFR 64.1200(a)(6) for telemarketing calls.
    """

    mode: PacingMode = PacingMode.PREDICTIVE
    ratio: float = 2.0
    max_wait_s: float = 2.0
    warmup_samples: int = 30
    max_dials_per_free_seat: float = 10.0
    cps_limit: float | None = None
    channel_limit: int | None = None
    cancel_ringing_after_s: float | None = 15.0

    def __post_init__(self) -> None:
        if self.ratio <= 0:
            raise ValueError(f"ratio must be > 0, got {self.ratio}")
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {self.max_wait_s}")
        if self.warmup_samples < 0:
            raise ValueError(f"warmup_samples must be >= 0, got {self.warmup_samples}")
        if self.cps_limit is not None and self.cps_limit <= 0:
            raise ValueError(f"cps_limit must be > 0, got {self.cps_limit}")
        if self.channel_limit is not None and self.channel_limit < 0:
            raise ValueError(f"channel_limit must be >= 0, got {self.channel_limit}")
        if self.cancel_ringing_after_s is not None and self.cancel_ringing_after_s < 0:
            raise ValueError(
                f"cancel_ringing_after_s must be >= 0, got {self.cancel_ringing_after_s}"
            )


@dataclass(frozen=True, slots=True)
class DurationSummary:
    """Mean and standard deviation of an observed duration, with its sample size."""

    mean_s: float = 0.0
    stdev_s: float = 0.0
    samples: int = 0


@dataclass(frozen=True, slots=True)
class PacingStats:
    """What the pacer sees of one workflow at one instant.

    Seats: ``seats`` logged in, of which ``seats_busy`` are on a call or in
    wrap-up (``seats_wrapping`` of those in wrap-up). Calls: ``calls_in_flight``
    dialled and neither answered nor ended; ``calls_waiting`` answered live
    and waiting for a seat. Observed so far: ``answer_rate`` (live answers per
    finished dial) over ``answer_samples`` finished dials; ``ring_to_answer``
    (dial to live answer); ``not_answered_hold`` (dial to the end of a dial
    that reached nobody); ``handle`` (talk plus wrap-up per connected call).
    Abandonment over the tracker's rolling window: ``window_live`` live answers
    of which ``window_abandoned`` abandoned, held to ``target_abandon_rate``;
    the rule measures it over 30 days, and a window that long lets the
    controller hold the realised rate at the target rather than near it.
    ``recent_dial_times`` are the start times of recent dials (at least those
    of the last second) for the calls-per-second cap; ``channels_in_use``
    defaults to the calls in flight, waiting and connected.
    Optional detail sharpens the prediction: ``in_flight_ages_s`` the age of
    each call in flight (else all are taken as just dialled),
    ``wrap_remaining_s`` the wrap-up left on each seat in wrap-up (else
    uniform over ``wrap_mean_s``), ``wrap_mean_s`` the part of ``handle``
    spent in wrap-up (talk time is the rest, taken as memoryless).
    """

    seats: int
    seats_busy: int
    calls_in_flight: int
    answer_rate: float
    answer_samples: int
    ring_to_answer: DurationSummary
    not_answered_hold: DurationSummary
    handle: DurationSummary
    window_live: int = 0
    window_abandoned: int = 0
    target_abandon_rate: float = 0.03
    calls_waiting: int = 0
    seats_wrapping: int = 0
    recent_dial_times: tuple[float, ...] = ()
    channels_in_use: int | None = None
    in_flight_ages_s: tuple[float, ...] | None = None
    wrap_remaining_s: tuple[float, ...] | None = None
    wrap_mean_s: float = 0.0

    @property
    def seats_free(self) -> int:
        """Seats neither on a call nor in wrap-up, less answers already waiting for one."""
        return max(0, self.seats - self.seats_busy - self.calls_waiting)


def _cap(policy: PacingPolicy, stats: PacingStats, now: float, dials: int) -> int:
    """Apply the trunk limits, which hold whatever the pacing mode asks."""
    if policy.cps_limit is not None:
        started = sum(1 for t in stats.recent_dial_times if now - 1.0 < t <= now)
        dials = min(dials, math.floor(policy.cps_limit) - started)
    if policy.channel_limit is not None:
        in_use = stats.channels_in_use
        if in_use is None:
            connected = stats.seats_busy - stats.seats_wrapping
            in_use = stats.calls_in_flight + stats.calls_waiting + connected
        dials = min(dials, policy.channel_limit - in_use)
    return max(0, dials)


def dials_to_place(policy: PacingPolicy, stats: PacingStats, now: float) -> int:
    """How many new calls to dial now for this workflow (never negative).

    ``now`` is on the clock of ``stats.recent_dial_times`` (the CPS cap).
    """
    free = stats.seats_free
    match policy.mode:
        case PacingMode.PROGRESSIVE:
            dials = free - stats.calls_in_flight
        case PacingMode.FIXED_RATIO:
            dials = math.floor(policy.ratio * free + 1e-9) - stats.calls_in_flight
        case PacingMode.PREDICTIVE:
            dials = _predictive(policy, stats)
    return _cap(policy, stats, now, dials)


@dataclass(frozen=True, slots=True)
class PacingDecision:
    """What to do now: dial ``dials`` new calls, hang up the calls in ``cancel``.

    ``cancel`` holds indices into the ``in_flight_ages_s`` the pacer was given.
    """

    dials: int
    cancel: tuple[int, ...] = ()


def pace(
    policy: PacingPolicy,
    stats: PacingStats,
    now: float,
    cancellable: Sequence[bool] | None = None,
) -> PacingDecision:
    """The whole decision: which ringing calls to hang up (rule 5), then how many to dial.

    The dials are counted as if the hung-up calls were already gone.
    ``cancellable`` (per call in ``in_flight_ages_s``) rules calls out, such
    as those already asked to hang up.
    """
    cancel = calls_to_cancel(policy, stats, cancellable)
    if cancel:
        ages = stats.in_flight_ages_s or ()
        gone = set(cancel)
        stats = replace(
            stats,
            calls_in_flight=max(0, stats.calls_in_flight - len(cancel)),
            in_flight_ages_s=tuple(a for i, a in enumerate(ages) if i not in gone),
            channels_in_use=(
                None if stats.channels_in_use is None else stats.channels_in_use - len(cancel)
            ),
        )
    return PacingDecision(dials_to_place(policy, stats, now), cancel)


# The marginal-risk threshold moves within these multiples of the target.
_THETA_MIN = 0.02
_THETA_MAX = 5.0
# The controller aims a little under the target so that noise over a day
# does not carry the realised rate over it.
_AIM = 0.98
# See risk_threshold: the budget's opening debt in abandoned calls, and the
# number of calls (base, per square root of the expected count) that moves
# the threshold by a factor e.
_OPENING_DEBT = 1.0
_SCALE = (0.5, 0.4)
# A new dial's answer time is read at this many equally likely quantiles of
# the ring-time law; each is a slot at which its risk is computed exactly.
_SLOTS = 12
_SLOT_SHARE = (np.arange(_SLOTS) + 0.5) / _SLOTS
_SQRT3 = math.sqrt(3.0)
# Roots of unity minus one, per power-of-two length, for the answers' generating
# function; lengths past the table are computed when met.
_ROOTS_MINUS_ONE = {
    1 << b: np.exp(-2j * np.pi * np.arange(1 << b) / (1 << b)) - 1.0 for b in range(1, 11)
}
# Keeps logarithms of probabilities finite; exp() of the results is exact enough.
_TINY = 1e-300
# Bounds on the work behind one answer: complex cells held at once by
# `_answers_law`; rounds of `calls_to_cancel` (calls past them wait for the next
# decision, half a second later in the scheduler); and cells of one round's
# laws, which limit the candidates weighed in it to the longest ringing.
_CELLS = 1 << 20
_CANCEL_ROUNDS = 8
_CANCEL_WORK = 1 << 24


def risk_threshold(stats: PacingStats) -> float:
    """The feedback controller: the abandonment risk one more dial may carry.

    The window's unspent budget of abandoned calls, ``aim * target * live -
    abandoned - debt``, raises the threshold geometrically, an overspent
    budget lowers it: as the realised rate approaches the target the budget
    falls to nothing and the pacer backs off. Because the budget is a count
    over the window rather than a rate, the controller integrates its error
    and the realised rate settles at the target rather than short of it.

    The budget opens in debt (`_OPENING_DEBT` abandoned calls), so the first
    minutes, when the risk model is least calibrated, spend under the target
    until live answers have earned some slack. The budget moves the threshold
    by a factor e per `_SCALE` calls, a number that grows with the square
    root of the abandons expected over the window (the size of their noise).
    Early on it is small, so that a short day or a 1 % target ends close to
    the target; over a day's window it is large enough that one abandon moves
    the threshold by about a sixth (5,000 live answers) rather than nearly
    halving it. A threshold that jumps with every abandon costs occupancy, as
    what a raised threshold buys is less than what an equally lowered one
    loses: 0.004 / 0.004 / 0.003 at 10 / 25 / 50 seats against a slope of 0.1
    calls per root, and about what a fixed threshold reaches at the same
    abandonment. The price is paid on short days: of eight two-hour days at a
    1 % target (25 seats) the worst ends at 1.13 % with this slope, 1.06 % with
    0.1 and 1.32 % with 1.0.
    """
    target = stats.target_abandon_rate
    budget = _AIM * target * stats.window_live - stats.window_abandoned - _OPENING_DEBT
    scale = _SCALE[0] + _SCALE[1] * math.sqrt(target * stats.window_live)
    gain = math.exp(max(-8.0, min(8.0, budget / scale)))
    return target * min(_THETA_MAX, max(_THETA_MIN, gain))


def _bounds(summary: DurationSummary) -> tuple[float, float]:
    """A uniform law with the summary's mean and deviation, as ``(low, width)``."""
    half = _SQRT3 * summary.stdev_s
    lo = max(0.0, summary.mean_s - half)
    return lo, max(1e-9, summary.mean_s + half - lo)


def _uniform_cdf(x: np.ndarray, lo: float, width: float) -> np.ndarray:
    return np.clip((x - lo) / width, 0.0, 1.0)


def _binomial_pmf(n: int, f: np.ndarray) -> np.ndarray:
    """Rows of Binomial(n, f[k]) probabilities, shape ``(len(f), n + 1)``."""
    i = np.arange(n + 1)
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1)))))
    log_comb = log_fact[n] - log_fact - log_fact[::-1]
    f = np.clip(f, _TINY, 1.0 - 1e-16)[:, None]
    return np.exp(log_comb + i * np.log(f) + (n - i) * np.log1p(-f))


def _shift_in(pmf: np.ndarray, q: np.ndarray) -> None:
    """Add one Bernoulli(q[k]) to row k of a count law, in place (last cell absorbs)."""
    moved = pmf * q[:, None]
    pmf -= moved
    pmf[:, 1:] += moved[:, :-1]
    pmf[:, -1] += moved[:, -1]


def _answers_law(waiting: int, q: np.ndarray, size: int) -> np.ndarray:
    """Law of ``waiting`` plus a sum of independent Bernoulli(q[i, k]), per column k.

    Computed through the generating function at roots of unity (one product
    and one FFT instead of a loop over calls); counts of ``size - 1`` and more
    share the last cell.
    """
    calls, slots = q.shape
    span = 1 << max(1, (waiting + calls).bit_length())
    if calls:
        z1 = _ROOTS_MINUS_ONE.get(span)
        if z1 is None:
            z1 = np.exp(-2j * np.pi * np.arange(span) / span) - 1.0
        # A few calls at a time: the product's terms take calls * slots * span cells.
        step = max(1, _CELLS // (slots * span))
        pgf = np.prod(1.0 + q[:step, :, None] * z1, axis=0)
        for first in range(step, calls, step):
            pgf *= np.prod(1.0 + q[first : first + step, :, None] * z1, axis=0)
        if waiting:
            pgf *= (z1 + 1.0) ** waiting
        full = np.clip(np.fft.ifft(pgf, axis=1).real, 0.0, None)
    else:
        full = np.zeros((slots, span))
        full[:, waiting] = 1.0
    pmf = np.zeros((slots, size))
    keep = min(size - 1, span)
    pmf[:, :keep] = full[:, :keep]
    pmf[:, size - 1] += full[:, keep:].sum(axis=1) if keep < span else 0.0
    return pmf


def _predictive(policy: PacingPolicy, stats: PacingStats) -> int:
    """Dial while one more dial's chance of being abandoned stays under the threshold."""
    pmf, seat_cdf, other = _new_dial_model(policy, stats)
    theta = risk_threshold(stats) * _SLOTS
    limit = math.floor(policy.max_dials_per_free_seat * max(1, stats.seats))
    n = 0
    while n < limit and float((pmf * seat_cdf).sum()) <= theta:
        _shift_in(pmf, other)
        n += 1
    return n


def next_dial_risk(policy: PacingPolicy, stats: PacingStats, planned: int = 0) -> float:
    """The chance that one more dial, after ``planned`` new ones, is abandoned if answered.

    The quantity `dials_to_place` holds under `risk_threshold` in predictive mode.
    """
    pmf, seat_cdf, other = _new_dial_model(policy, stats)
    for _ in range(planned):
        _shift_in(pmf, other)
    return float((pmf * seat_cdf).sum()) / _SLOTS


def calls_to_cancel(
    policy: PacingPolicy, stats: PacingStats, cancellable: Sequence[bool] | None = None
) -> tuple[int, ...]:
    """The ringing calls to hang up now (rule 5), as indices into ``in_flight_ages_s``.

    Only in predictive mode, only calls of a known age that have rung at
    least ``cancel_ringing_after_s`` (and are ``cancellable``, when given),
    and only once the ring-time law is known. Riskiest first: each call
    taken back leaves fewer answers ahead of the others, so their risks are
    computed again before the next.
    """
    after = policy.cancel_ringing_after_s
    if policy.mode is not PacingMode.PREDICTIVE or after is None or not stats.in_flight_ages_s:
        return ()
    laws = _laws(policy, stats)
    if not laws.known_ring:
        return ()
    ages = laws.ages
    eligible = ages >= after
    if cancellable is not None:
        eligible &= np.asarray(cancellable, dtype=bool)
    candidates = np.flatnonzero(eligible)
    if not len(candidates):
        return ()
    theta = risk_threshold(stats)
    kept = np.ones(len(ages), dtype=bool)
    cancelled: list[int] = []
    span = 1 << max(1, (stats.calls_waiting + len(ages)).bit_length())
    weighable = max(1, _CANCEL_WORK // (len(ages) * _SLOTS * span))
    if len(candidates) > weighable:
        candidates = np.sort(candidates[np.argsort(-ages[candidates], kind="stable")[:weighable]])
    for _ in range(_CANCEL_ROUNDS):
        if not len(candidates):
            break
        risks = _keeping_risks(policy, stats, replace(laws, ages=ages[kept]), candidates, kept)
        above = risks > theta
        if not above.any():
            break
        worst = int(candidates[int(np.argmax(risks))])
        cancelled.append(worst)
        kept[worst] = False
        # Taking a call back lowers the others' risks: those under now stay under.
        candidates = candidates[above & (candidates != worst)]
    return tuple(sorted(cancelled))


def _keeping_risks(
    policy: PacingPolicy,
    stats: PacingStats,
    laws: _Laws,
    candidates: np.ndarray,
    kept: np.ndarray,
) -> np.ndarray:
    """Each candidate's chance of being abandoned if it answers live (it is still ringing).

    Its answer comes after the rest of the ring-time law past its age, read
    at `_SLOTS` quantiles; the answers ahead of it are the other calls kept.
    """
    hi = laws.ring_lo + laws.ring_w
    age = laws.ages
    # Positions of the candidates among the calls kept.
    rank = np.cumsum(kept) - 1
    mine = rank[candidates]
    start = np.maximum(age[mine], laws.ring_lo)
    stop = np.maximum(start, hi)
    slot_t = (start[:, None] + (stop - start)[:, None] * _SLOT_SHARE - age[mine][:, None]).ravel()
    exclude = np.zeros((len(age), len(slot_t)), dtype=bool)
    for column, row in enumerate(mine):
        exclude[row, column * _SLOTS : (column + 1) * _SLOTS] = True
    pmf = _answers_ahead(laws, stats, slot_t, exclude)
    seat_cdf = _seats_free_cdf(policy, stats, slot_t)
    return (pmf * seat_cdf).sum(axis=1).reshape(len(candidates), _SLOTS).mean(axis=1)


@dataclass(frozen=True, slots=True)
class _Laws:
    """What the risk model takes from the statistics (rule 4 applied)."""

    answer_p: float
    ring_lo: float
    ring_w: float
    hold_lo: float
    hold_w: float
    known_ring: bool
    ages: np.ndarray


def _laws(policy: PacingPolicy, stats: PacingStats) -> _Laws:
    samples = stats.answer_samples
    warm = policy.warmup_samples
    # Rule 4: a prior that everyone answers, worth warmup_samples dials.
    p = (stats.answer_rate * samples + warm) / (samples + warm) if samples + warm else 1.0
    p = min(1.0, max(1e-3, p))
    ring, hold = stats.ring_to_answer, stats.not_answered_hold
    ages = stats.in_flight_ages_s
    # Rule 4 again: until the ring-time law is known, every call in flight may
    # still answer, and at once; until the no-answer hold law is known, a call
    # that has not answered yet may still be a no-answer holding on forever.
    hold_lo, hold_w = _bounds(hold) if hold.samples >= max(1, warm) else (0.0, 1e18)
    known_ring = ring.samples >= max(1, warm)
    if known_ring:
        ring_lo, ring_w = _bounds(ring)
    else:
        ring_lo, ring_w = 0.0, 1e-9
        ages = None
    if ages is None:  # unknown: take them all as fresh dials (more answers to come)
        ages = (0.0,) * stats.calls_in_flight
    return _Laws(p, ring_lo, ring_w, hold_lo, hold_w, known_ring, np.asarray(ages, dtype=float))


def _answers_ahead(
    laws: _Laws, stats: PacingStats, slot_t: np.ndarray, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Per column k, the law of the live answers arriving within ``slot_t[k]`` from now.

    Counts those already waiting and each call in flight with its chance of
    answering live in time given its age; ``exclude[i, k]`` leaves call i out
    of column k (the call whose own risk the column measures). The last cell
    holds ``seats`` or more.
    """
    size = stats.seats + 1
    age = laws.ages
    lo, w = laws.ring_lo, laws.ring_w
    ringing = laws.answer_p * (1.0 - _uniform_cdf(age, lo, w))
    holding = (1.0 - laws.answer_p) * (1.0 - _uniform_cdf(age, laws.hold_lo, laws.hold_w))
    live = ringing > 0.0
    spent = _uniform_cdf(age[live], lo, w)[:, None]
    q = (laws.answer_p / (ringing[live] + holding[live]))[:, None] * (
        _uniform_cdf(age[live][:, None] + slot_t, lo, w) - spent
    )
    q = np.clip(q, 0.0, 1.0)
    if exclude is not None:
        q[exclude[live]] = 0.0
    return _answers_law(min(stats.calls_waiting, stats.seats), q, size)


def _seats_free_cdf(policy: PacingPolicy, stats: PacingStats, slot_t: np.ndarray) -> np.ndarray:
    """Per column k, P(seats free by ``slot_t[k] + max_wait_s`` <= x) for x = 0 .. seats.

    Seats free now, wrap-ups ending, talks ending and then wrapping up: talk
    time memoryless, wrap-up remaining known or uniform over its mean.
    """
    slots = len(slot_t)
    size = stats.seats + 1
    horizon = slot_t + policy.max_wait_s
    handle = stats.handle
    wrap_mean = max(0.0, stats.wrap_mean_s)
    talk_mean = handle.mean_s - wrap_mean if handle.samples else 0.0
    talking = max(0, stats.seats_busy - stats.seats_wrapping)
    wraps = stats.wrap_remaining_s
    sure = np.full(slots, max(0, stats.seats - stats.seats_busy))
    if talk_mean > 0.0:
        f = np.where(horizon > wrap_mean, -np.expm1(-(horizon - wrap_mean) / talk_mean), 0.0)
    else:
        f = np.zeros(slots)
    seat_law = _binomial_pmf(talking, f)
    if wraps is not None:
        sure += np.searchsorted(np.sort(np.asarray(wraps, dtype=float)), horizon, side="right")
    elif wrap_mean > 0.0 and stats.seats_wrapping:
        ending = _binomial_pmf(stats.seats_wrapping, np.minimum(1.0, horizon / wrap_mean))
        seat_law = np.array([np.convolve(a, b) for a, b in zip(seat_law, ending, strict=True)])
    else:
        sure += stats.seats_wrapping
    # P(S <= x) with S = sure + the random part: the random part's cdf shifted by sure.
    cum = np.cumsum(seat_law, axis=1)
    x = np.arange(size)[None, :] - sure[:, None]
    seat_cdf = np.where(
        x < 0, 0.0, np.take_along_axis(cum, np.clip(x, 0, cum.shape[1] - 1), axis=1)
    )
    seat_cdf[:, -1] = 1.0
    return seat_cdf


def _new_dial_model(
    policy: PacingPolicy, stats: PacingStats
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The laws behind a new dial's risk, per answer-time slot.

    A new dial answered live at time t (a quantile of the ring-time law) is
    abandoned when the live answers arriving before it (those already
    waiting, those from calls in flight, those from the other new dials) use
    up every seat free by t + max_wait_s. Both counts are sums of independent
    Bernoulli terms and are computed exactly. The risk is averaged over t.

    Returns ``(pmf, seat_cdf, other)``: per slot, the law of the answers ahead
    of the new one (last cell: ``seats`` or more), P(seats free in time <= x),
    and the chance that each further new dial answers ahead of it. The risk
    summed over slots is ``(pmf * seat_cdf).sum()``.
    """
    laws = _laws(policy, stats)
    slot_t = laws.ring_lo + laws.ring_w * _SLOT_SHARE
    pmf = _answers_ahead(laws, stats, slot_t)
    seat_cdf = _seats_free_cdf(policy, stats, slot_t)
    # The other new dials answer before slot t with the ring law's share;
    # while that law is unknown, take them all to answer first.
    share = _SLOT_SHARE if laws.known_ring else np.ones(_SLOTS)
    return pmf, seat_cdf, laws.answer_p * share


class RollingWindow:
    """A count of events over the last ``span_s`` seconds, in ``buckets`` slots.

    Pure state: the time is passed in. Events older than the span drop out a
    bucket at a time, so the span is exact to ``span_s / buckets``.
    """

    __slots__ = ("_bucket_s", "_buckets", "_total", "span_s")

    def __init__(self, span_s: float, buckets: int = 60) -> None:
        if span_s <= 0 or buckets < 1:
            raise ValueError("span_s must be > 0 and buckets >= 1")
        self.span_s = span_s
        self._bucket_s = span_s / buckets
        self._buckets: deque[list[int]] = deque()  # [bucket index, count]
        self._total = 0

    def _expire(self, now: float) -> None:
        oldest = math.floor(now / self._bucket_s) - math.ceil(self.span_s / self._bucket_s) + 1
        while self._buckets and self._buckets[0][0] < oldest:
            self._total -= self._buckets.popleft()[1]

    def add(self, now: float, count: int = 1) -> None:
        """Record ``count`` events at ``now`` (times must not go backwards)."""
        index = math.floor(now / self._bucket_s)
        if self._buckets and self._buckets[-1][0] == index:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([index, count])
        self._total += count
        self._expire(now)

    def total(self, now: float) -> int:
        """Events within the span ending at ``now``."""
        self._expire(now)
        return self._total


class AbandonmentTracker:
    """Live answers and abandoned calls over a rolling window, for `PacingStats`."""

    __slots__ = ("abandoned", "live")

    def __init__(self, span_s: float = 3600.0, buckets: int = 60) -> None:
        self.live = RollingWindow(span_s, buckets)
        self.abandoned = RollingWindow(span_s, buckets)

    def record_live(self, now: float) -> None:
        """A dial reached a live person (connected or not)."""
        self.live.add(now)

    def record_abandoned(self, now: float) -> None:
        """A live answer found no seat in time (already counted by `record_live`)."""
        self.abandoned.add(now)

    def counts(self, now: float) -> tuple[int, int]:
        """``(live, abandoned)`` within the window ending at ``now``."""
        return self.live.total(now), self.abandoned.total(now)

"""Does a non-myopic pacer move the occupancy-vs-abandonment curve? A rollout experiment.

The model is bench/pacing.py's (scheduler.simulate: p = 0.30 live after U(4,20) s,
others hold U(2,26) s, talk Exp(120 s), wrap-up 10 s, 2 s to find a seat). The
base is the predictive pacer with its threshold fixed (controller off): every
fixed threshold gives one (abandonment, occupancy) point, and those points are the
curve to beat. Each experiment compares at equal realised abandonment, by linear
interpolation in that curve; both sides run the same seeds.

Rollout (`RolloutPacer`, ``--lams``). At each decision the base count n0 and its
neighbours are judged by simulating K futures of H seconds from what the pacer
observes (`Observed`: ages of ringing calls, seats free / in wrap-up with the
remaining wrap-up / talking, answers waiting, and the rates and duration laws
estimated from finished calls; never which calls are live or when talk ends):
each ringing call is live with its posterior given its age, talk is memoryless,
and after the first second every future follows the base rule once a second
(`_batch_base`: the same exact-count risk with 6 answer-time slots, not 12,
vectorised over paths). Candidates n0 - 1, n0, n0 + 1. Score: talk
seconds within the horizon minus lam times abandons. Common random numbers
across candidates, and Q(n + 1) is stratified on the extra dial's liveness.

Fitted rollout (``--collect`` then ``--fitted``). Rollouts with K = 200, H = 40 s
in states of a base day (theta 0.03), talk gained and abandons added apart; least
squares on the marginal dial's risk (and its square), or (``rich``) on risk plus
free seats, calls in flight, talking, wrapping and waiting seats and, in the
second round, timing: expected answers and seats free within 5, 10 and 20 s.
`FittedPacer` then makes the rollout's choice among n0 - 1, n0, n0 + 1 with the
fitted, noiseless Q. Data: round 1 (counts only) 10 seats seed 11, 2 h, 487
marginal dials; 25 seats seed 11, 1 h, 357. Round 2 (counts and timing) 10 seats
seed 12, 2 h, 477; 50 seats seed 12, 1 h, 284.

Measured (2026-12-07, 2 shared cores, load average 1.3-5.4 from other jobs):

10 seats, 2-hour days, seeds 0-7, base curve (abandonment, occupancy):
  theta 0.008 (0.48 %, 0.7522)   0.012 (0.67 %, 0.7603)   0.016 (1.03 %, 0.7673)
  0.02 (1.44 %, 0.7752)   0.025 (1.82 %, 0.7820)   0.03 (2.46 %, 0.7860)
  0.035 (2.95 %, 0.7915)   0.04 (3.27 %, 0.7930)   0.05 (3.83 %, 0.8018)
  0.06 (5.16 %, 0.8078)
Fitted rollout, same seeds (difference from the curve at equal abandonment):
  round 1 risk only lam  60: 5.15 % 0.8028 (-0.0050)  lam  80: 2.99 % 0.7918 (+0.0001)
                    lam 100: 2.00 % 0.7829 (-0.0002)  lam 130: 1.44 % 0.7787 (+0.0035)
  round 1 rich      lam  60: 4.55 % 0.8033 (-0.0017)  lam  80: 3.28 % 0.7951 (+0.0019)
                    lam 100: 2.19 % 0.7839 (-0.0004)  lam 130: 1.47 % 0.7756 (-0.0001)
  round 2 risk only lam  60: 4.82 % 0.8009 (-0.0054)  lam  80: 3.12 % 0.7969 (+0.0046)
                    lam 100: 1.56 % 0.7777 (+0.0004)  lam 130: 0.85 % 0.7694 (+0.0056)
  round 2 rich      lam  60: 4.13 % 0.8000 (-0.0032)  lam  80: 2.55 % 0.7834 (-0.0036)
                    lam 100: 1.53 % 0.7813 (+0.0045)  lam 130: 1.45 % 0.7706 (-0.0048)
25 seats, 2-hour days, seeds 0-3, base curve: theta 0.012 (1.61 %, 0.8310)
  0.02 (2.67 %, 0.8367)   0.03 (3.64 %, 0.8442)   0.04 (4.81 %, 0.8516)
  0.05 (5.85 %, 0.8539)   0.07 (7.67 %, 0.8635)   0.10 (10.47 %, 0.8720)
  0.14 (14.17 %, 0.8774)
Fitted rollout (round 1): risk only lam 40: 7.15 % 0.8626 (+0.0018); lam 60 and
  90 (the same decisions): 2.44 % 0.8374 (+0.0019); rich lam 40: 10.47 % 0.8647
  (-0.0073), lam 60: 4.69 % 0.8467 (-0.0041), lam 90: 2.30 % 0.8381 (+0.0034).
50 seats, 2-hour days, seeds 0-3, base curve: theta 0.01 (1.98 %, 0.8621)
  0.02 (2.88 %, 0.8733)   0.03 (4.05 %, 0.8768)   0.04 (5.53 %, 0.8818)
  0.06 (7.60 %, 0.8868)   0.10 (11.70 %, 0.8916)
Fitted rollout (round 2): risk only lam 30: 6.55 % 0.8835 (-0.0008), lam 50:
  5.50 % 0.8804 (-0.0013), lam 80: 3.61 % 0.8745 (-0.0010); rich lam 30: 6.44 %
  0.8835 (-0.0005), lam 50: 5.86 % 0.8803 (-0.0023), lam 80: 5.06 % 0.8773
  (-0.0029).
Plain rollout, 10 seats 2-hour days: K = 32, H = 60, not stratified, seeds 0-1
  (base curve from seeds 0-3): lam 100: 8.04 % 0.8148 (-0.0072), lam 200:
  8.16 % 0.8081 (-0.0141); K = 128, H = 30, stratified, seed 0 (against the
  seeds 0-7 curve): lam 150: 3.42 % 0.7848 (-0.0106), 1279 s for the day.
  K = 400, H = 30, stratified, lam 100, 1-hour days: seed 0 4.05 % 0.7839, seed 1
  3.66 % 0.7612 (651 s and 773 s; 40 % and 42 % of 1269 / 1487 rollouts changed
  the base count), against the same seeds' 1-hour base points at theta 0.04 /
  0.05 / 0.06: seed 0 1.96 % 0.7731, 3.44 % 0.7829, 4.35 % 0.8086; seed 1
  3.15 % 0.7783, 3.69 % 0.7910, 6.97 % 0.8079: about 0.016 and 0.029 under.

Why. The rollout's signal is small against its noise: Q(n0 + 1) - Q(n0) is a
few talk seconds (the base dials the same call a second later anyway) while one
path's difference has a deviation of 40-80 s (lam 150-200, H 40-60), so K = 32
(0.1-0.3 s a decision) decides by noise, dials too many and lands under the
curve; K = 400 took 2-3 s a decision (both comparisons, H 40, loaded machine).
Measured with K = 400, H = 40 (``--advantage``, seed 7): of 34 states (10 seats,
lam 150) and 25 states (25 seats, lam 60), none had n0 + 1 or n0 - 1 better
than n0 by 2 standard errors. Over the marginal dials, the talk an extra dial
gains and the abandons it adds are mostly functions of its own myopic risk:
chi-squared per degree of freedom of the fit on risk alone, talk / abandons,
then with the other features: round 1, 10 seats 1.26 / 1.14 -> 1.21 / 1.14,
25 seats 0.92 / 1.09 -> 0.91 / 1.09; round 2, 10 seats 1.54 / 1.16 -> 1.19 /
1.08, 50 seats 1.04 / 0.98 -> 1.05 / 0.97. Where counts and timing do explain
some of the rest (10 seats, round 2), a rule that uses them still measures on
the curve: every fitted point above lies within -0.0073 .. +0.0056 of it, the
size of the curve's own noise (one 2-hour day at 10 seats, theta 0.03, seeds
0-7: standard deviation 0.0077 occupancy, 0.65 points of abandonment), against
the +0.01 looked for.
Also on the curve: the threshold tilted by the seats free now (``--tilts``:
x0.5, x2, x4 while a seat is idle; 10 seats 2 h, seeds 0-3, against the seeds
0-3 curve of thetas 0.015-0.12): the eight points inside the curve's range lie
-0.0040 .. +0.0038 from it.
The rollout's own approximations may also cost it: its futures decide once a
second (the real pacer is asked on every event too), dials are binned to whole
seconds, and a waiting answer's deadline is drawn U(0, 2) s. A policy that
trusts such a model where the margin is a second or two of talk can lose to
the exact myopic rule; the fitted rule, which only keeps the part of the
rollout's answer that the features explain, does not lose.
Not tried: a longer horizon or a continuation other than the base rule, a finer
rollout clock, and K in the thousands in a whole day (hours of CPU per simulated
hour).

Re-run (about 20 s to 3 min each on one core, the rollout runs 10-20 min):
  python bench/pacing_rollout.py --seats 10 --hours 2 --seeds 0,1,2,3,4,5,6,7 \
      --thetas 0.02,0.025,0.03,0.035,0.04,0.05,0.06
  python bench/pacing_rollout.py --collect /tmp/col10.npz --advantage 12 --seats 10 \
      --hours 2 --seeds 11 --paths 200 --horizon 40 --band 2
  python bench/pacing_rollout.py --fitted /tmp/col10.npz --seats 10 --hours 2 \
      --seeds 0,1,2,3,4,5,6,7 --lams 60,80,100,130
  (round 1 above was collected before the timing features existed: its fit used
   the first six; the same command now collects round 2's twelve. Round 2 used
   --seeds 12. 25 seats: --collect ... --advantage 15 --seats 25 --hours 1
   --seeds 11; --fitted ... --seats 25 --seeds 0,1,2,3 --lams 40,60,90. 50 seats:
   --collect ... --advantage 30 --seats 50 --hours 1 --seeds 12; --fitted ...
   --seats 50 --seeds 0,1,2,3 --lams 30,50,80. Thetas as listed above.)
  python bench/pacing_rollout.py --advantage 50 --seats 10 --hours 1 --seeds 7 \
      --lams 150 --paths 400 --horizon 40 --band 2
  python bench/pacing_rollout.py --seats 10 --hours 2 --seeds 0 --lams 150 \
      --paths 128 --horizon 30 --band 2
  python bench/pacing_rollout.py --seats 10 --hours 1 --seeds 0 --lams 100 \
      --paths 400 --horizon 30 --band 2       (and --seeds 1)
  python bench/pacing_rollout.py --seats 10 --hours 2 --seeds 0,1,2,3 \
      --thetas 0.02,0.03,0.04,0.06 --tilts 0.5,2,4
With no arguments: three base points, 10 seats, a 1-hour day (seconds).
Figures from earlier states of this file (same model and seeds): the K = 32
rollout at e03daf8 (not stratified); K = 128 and --tilts at ec15c76;
--advantage at 6f43a14; round 1 at 85bbbdf (six features).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import scheduler.simulate as sim
from scheduler.pacing import (
    _SLOTS,
    PacingMode,
    PacingPolicy,
    PacingStats,
    _bounds,
    _risk_model,
    _shift_in,
)
from scheduler.simulate import SimConfig, SimResult

POLICY = PacingPolicy(mode=PacingMode.PREDICTIVE)


def base_dials(stats: PacingStats, theta: float) -> tuple[int, float]:
    """The predictive pacer's count with its threshold fixed at ``theta`` (controller off).

    Also returns the risk of the first dial not placed (how far from dialling one more).
    """
    pmf, seat_cdf, other = _risk_model(POLICY, stats)
    limit = math.floor(POLICY.max_dials_per_free_seat * max(1, stats.seats))
    n = 0
    risk = float((pmf * seat_cdf).sum()) / _SLOTS
    while n < limit and risk <= theta:
        _shift_in(pmf, other)
        n += 1
        risk = float((pmf * seat_cdf).sum()) / _SLOTS
    return n, risk


@dataclasses.dataclass(frozen=True, slots=True)
class Observed:
    """What the rollout may use: the pacer's observations and the laws estimated from them."""

    seats: int
    p: float
    ring_lo: float
    ring_hi: float
    hold_lo: float
    hold_hi: float
    talk_mean: float
    wrap_mean: float
    ages: np.ndarray
    wrap_remaining: np.ndarray
    talking: int
    waiting: int

    @classmethod
    def from_stats(cls, stats: PacingStats) -> Observed:
        samples, warm = stats.answer_samples, POLICY.warmup_samples
        p = (stats.answer_rate * samples + warm) / (samples + warm)
        ring_lo, ring_w = _bounds(stats.ring_to_answer)
        hold_lo, hold_w = _bounds(stats.not_answered_hold)
        wrap = max(0.0, stats.wrap_mean_s)
        talk = max(1.0, stats.handle.mean_s - wrap)
        wraps = np.asarray(stats.wrap_remaining_s or (), dtype=float)
        return cls(
            seats=stats.seats,
            p=min(1.0, max(1e-3, p)),
            ring_lo=ring_lo,
            ring_hi=ring_lo + ring_w,
            hold_lo=hold_lo,
            hold_hi=hold_lo + hold_w,
            talk_mean=talk,
            wrap_mean=wrap,
            ages=np.asarray(stats.in_flight_ages_s or (), dtype=float),
            wrap_remaining=wraps,
            talking=stats.seats_busy - stats.seats_wrapping,
            waiting=stats.calls_waiting,
        )


_NSLOT = 6
_SHARE = (np.arange(_NSLOT) + 0.5) / _NSLOT


def _batch_base(
    obs: Observed,
    t: float,
    dial_t: np.ndarray,
    resolve_t: np.ndarray,
    live: np.ndarray,
    placed: np.ndarray,
    seat_free: np.ndarray,
    waiting: np.ndarray,
    theta: float,
    cap: int,
) -> np.ndarray:
    """The fixed-threshold predictive rule, per simulated path, from what the path shows.

    The same exact-count risk as scheduler.pacing (fewer answer-time slots), computed
    for every path at once. Uses only observable facts of the path: ages of calls
    still in flight, seats free / in wrap-up (remaining known) / talking.
    """
    m, seats = seat_free.shape
    size = seats + 1
    ring_w = max(1e-9, obs.ring_hi - obs.ring_lo)
    hold_w = max(1e-9, obs.hold_hi - obs.hold_lo)
    slot_t = obs.ring_lo + ring_w * _SHARE  # (S,)
    active = placed & (resolve_t > t)
    # Gather each path's calls in flight to the front (fewer columns to shift in).
    counts = active.sum(axis=1)
    width = int(counts.max()) if m else 0
    order = np.argsort(~active, axis=1, kind="stable")[:, :width]
    keep = np.arange(width)[None, :] < counts[:, None]
    age = np.where(keep, t - np.take_along_axis(dial_t, order, 1), 0.0)
    fr = np.minimum(1.0, np.maximum(0.0, (age - obs.ring_lo) / ring_w))
    fh = np.minimum(1.0, np.maximum(0.0, (age - obs.hold_lo) / hold_w))
    ringing = obs.p * (1.0 - fr)
    holding = (1.0 - obs.p) * (1.0 - fh)
    denom = np.maximum(ringing + holding, 1e-12)
    later = np.minimum(1.0, np.maximum(0.0, (age[:, :, None] + slot_t - obs.ring_lo) / ring_w))
    q = (obs.p / denom)[:, :, None] * (later - fr[:, :, None])
    q = np.where((keep & (ringing > 0))[:, :, None], np.minimum(1.0, np.maximum(0.0, q)), 0.0)
    # Answers-ahead law by shifting in each call.
    pmf = np.zeros((m, _NSLOT, size))
    w0 = np.minimum(waiting, seats)
    pmf[np.arange(m), :, w0] = 1.0
    for c in range(width):
        qc = q[:, c, :][:, :, None]
        moved = pmf * qc
        pmf -= moved
        pmf[:, :, 1:] += moved[:, :, :-1]
        pmf[:, :, -1] += moved[:, :, -1]
    # Seats free in time: free now or wrap-up ending (known), talking ones memoryless.
    horizon = t + slot_t + POLICY.max_wait_s  # (S,)
    talking_mask = seat_free - obs.wrap_mean > t
    sure = ((seat_free[:, None, :] <= horizon[None, :, None]) & ~talking_mask[:, None, :]).sum(
        axis=2
    )  # (m, S)
    n_talk = talking_mask.sum(axis=1)  # (m,)
    rel = slot_t + POLICY.max_wait_s
    f = np.where(rel > obs.wrap_mean, -np.expm1(-(rel - obs.wrap_mean) / obs.talk_mean), 0.0)
    f = np.clip(f, 1e-300, 1 - 1e-16)
    i = np.arange(size)
    nt = n_talk[:, None, None]
    valid = i[None, None, :] <= nt
    # log k! for k = 0..size (whole counts only: a table, not a gamma function)
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, size + 1)))))
    logc = log_fact[nt] - log_fact[i] - log_fact[np.maximum(nt - i, 0)]
    law = np.where(
        valid,
        np.exp(logc + i * np.log(f)[None, :, None] + (nt - i) * np.log1p(-f)[None, :, None]),
        0.0,
    )  # (m, S, size): law of talking seats freed
    # P(sure + B <= x) for x = 0..seats.
    cum = np.cumsum(law, axis=2)
    shift = i[None, None, :] - sure[:, :, None]
    seat_cdf = np.where(shift >= 0, np.take_along_axis(cum, np.clip(shift, 0, size - 1), 2), 0.0)
    seat_cdf[:, :, -1] = 1.0
    other = obs.p * _SHARE
    n = np.zeros(m, dtype=int)
    going = np.ones(m, dtype=bool)
    for _ in range(cap):
        risk = (pmf * seat_cdf).sum(axis=(1, 2)) / _NSLOT
        going &= risk <= theta
        if not going.any():
            break
        n += going
        moved = pmf * other[None, :, None]
        pmf -= moved
        pmf[:, :, 1:] += moved[:, :, :-1]
        pmf[:, :, -1] += moved[:, :, -1]
    return n


def rollout_scores(
    obs: Observed,
    rows: Sequence[tuple[int, int]],
    paths: int,
    horizon_s: int,
    lam: float,
    theta: float,
    rng: np.random.Generator,
    with_abandons: bool = False,
) -> Any:
    """Talk seconds within the horizon - lam * abandons, per row and path: ``(rows, paths)``.

    A row is ``(count, force)``: dial ``count`` now; ``force`` 1 or 0 makes the last of
    them live or not (stratified on the one random fact that separates two counts),
    -1 leaves it to chance.

    Every candidate sees the same ``paths`` futures (common random numbers): the
    calls in flight, the seats' talk, and the k-th dial of each second share their
    draws; futures are sampled only from the observations. After the first second
    every path follows the fixed-threshold base rule, asked once a second.
    """
    ncand = len(rows)
    m = ncand * paths
    seats = obs.seats
    grace = POLICY.max_wait_s
    per_step = max(3, seats // 4)
    first = max(1, max(count for count, _ in rows))
    n_old = len(obs.ages)
    cap_slots = n_old + first + (horizon_s - 1) * per_step
    # Calls already in flight: live given their age, answer or end time.
    a = obs.ages
    ring_w = max(1e-9, obs.ring_hi - obs.ring_lo)
    hold_w = max(1e-9, obs.hold_hi - obs.hold_lo)
    fr = np.clip((a - obs.ring_lo) / ring_w, 0.0, 1.0)
    fh = np.clip((a - obs.hold_lo) / hold_w, 0.0, 1.0)
    ringing = obs.p * (1.0 - fr)
    holding = (1.0 - obs.p) * (1.0 - fh)
    q_live = np.where(ringing > 0, ringing / np.maximum(ringing + holding, 1e-12), 0.0)
    u = rng.random((paths, n_old))
    is_live = u < q_live
    ans = np.maximum(a, obs.ring_lo) + rng.random((paths, n_old)) * (
        obs.ring_hi - np.maximum(a, obs.ring_lo)
    )
    end = np.maximum(a, obs.hold_lo) + rng.random((paths, n_old)) * np.maximum(
        0.0, obs.hold_hi - np.maximum(a, obs.hold_lo)
    )
    old_resolve = np.where(is_live, ans, end) - a
    old_talk = rng.exponential(obs.talk_mean, (paths, n_old))
    # New dials: per (second, index) draws.
    nd = first + (horizon_s - 1) * per_step
    new_live = rng.random((paths, nd)) < obs.p
    new_ring = rng.uniform(obs.ring_lo, obs.ring_hi, (paths, nd))
    new_hold = rng.uniform(obs.hold_lo, obs.hold_hi, (paths, nd))
    new_talk = rng.exponential(obs.talk_mean, (paths, nd))
    # Seats: free now, wrap-up remaining (known), talking (memoryless talk then wrap-up).
    busy = len(obs.wrap_remaining) + obs.talking
    seat0 = np.zeros((paths, seats))
    nw = len(obs.wrap_remaining)
    seat0[:, :nw] = obs.wrap_remaining
    seat0[:, nw:busy] = rng.exponential(obs.talk_mean, (paths, obs.talking)) + obs.wrap_mean
    wait_deadline = rng.uniform(0.0, grace, (paths, obs.waiting))

    def tile(x: np.ndarray) -> np.ndarray:
        return np.tile(x, (ncand,) + (1,) * (x.ndim - 1))

    dial_t = np.zeros((m, cap_slots))
    resolve_t = np.full((m, cap_slots), np.inf)
    live = np.zeros((m, cap_slots), dtype=bool)
    talk = np.zeros((m, cap_slots))
    placed = np.zeros((m, cap_slots), dtype=bool)
    dial_t[:, :n_old] = -a[None, :]
    resolve_t[:, :n_old] = tile(old_resolve)
    live[:, :n_old] = tile(is_live)
    talk[:, :n_old] = tile(old_talk)
    placed[:, :n_old] = True
    seat_free = tile(seat0)
    waiting = np.zeros(m, dtype=int)
    score = np.zeros(m)
    lost = np.zeros(m)  # abandoned calls, to report talk and abandons apart
    rows_idx = np.arange(m)
    talk_new = tile(new_talk)
    live_new = tile(new_live)
    ring_new = tile(new_ring)
    hold_new = tile(new_hold)
    # Answers already waiting take the first seats to free, or are abandoned.
    wd = tile(wait_deadline)
    for j in range(obs.waiting):
        k = np.argmin(seat_free, axis=1)
        fk = seat_free[rows_idx, k]
        ok = fk <= wd[:, j]
        c = np.maximum(fk, 0.0)
        tk = rng.exponential(obs.talk_mean, m)
        score += np.where(ok, np.minimum(c + tk, horizon_s) - c, -lam)
        lost += ~ok
        seat_free[rows_idx, k] = np.where(ok, c + tk + obs.wrap_mean, fk)
    nxt = n_old
    cand = np.repeat(np.asarray([count for count, _ in rows]), paths)
    force = np.repeat(np.asarray([f for _, f in rows]), paths)
    src = 0
    for step in range(horizon_s):
        t = float(step)
        if step == 0:
            count = cand
            width = first
        else:
            count = _batch_base(
                obs, t, dial_t, resolve_t, live, placed, seat_free, waiting, theta, per_step
            )
            width = per_step
        idx = np.arange(width)
        put = idx[None, :] < count[:, None]
        cols = slice(nxt, nxt + width)
        placed[:, cols] = put
        dial_t[:, cols] = t
        is_live = live_new[:, src : src + width].copy()
        if step == 0:
            last = np.maximum(cand - 1, 0)
            forced = force >= 0
            is_live[rows_idx[forced], last[forced]] = force[forced] == 1
        drawn = np.where(is_live, ring_new[:, src : src + width], hold_new[:, src : src + width])
        resolve_t[:, cols] = np.where(put, t + drawn, np.inf)
        live[:, cols] = is_live
        talk[:, cols] = talk_new[:, src : src + width]
        nxt += width
        src += width
        # Live answers in [t, t + 1), in time order, take the first seat to free.
        in_step = live & placed & (resolve_t >= t) & (resolve_t < t + 1.0)
        if not in_step.any():
            continue
        times = np.where(in_step, resolve_t, np.inf)
        order = np.argsort(times, axis=1)
        most = int(in_step.sum(axis=1).max())
        for j in range(most):
            col = order[:, j]
            at = times[rows_idx, col]
            has = np.isfinite(at)
            k = np.argmin(seat_free, axis=1)
            fk = seat_free[rows_idx, k]
            ok = has & (fk <= at + grace)
            c = np.maximum(fk, at)
            tk = talk[rows_idx, col]
            gain = np.where(ok, np.minimum(c + tk, horizon_s) - np.minimum(c, horizon_s), 0.0)
            score += gain - lam * (has & ~ok)
            lost += has & ~ok
            seat_free[rows_idx, k] = np.where(ok, c + tk + obs.wrap_mean, fk)
    if with_abandons:
        return score.reshape(ncand, paths), lost.reshape(ncand, paths)
    return score.reshape(ncand, paths)


@dataclasses.dataclass
class RolloutPacer:
    """At each decision: the base count n0 and its neighbours, chosen by rollout."""

    theta: float
    lam: float
    paths: int = 32
    horizon_s: int = 60
    band: float = 4.0
    seed: int = 0
    rollouts: int = 0
    changed: int = 0
    rng: np.random.Generator = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, policy: PacingPolicy, stats: PacingStats, now: float) -> int:
        n0, risk = base_dials(stats, self.theta)
        warm = stats.answer_samples < 2 * POLICY.warmup_samples
        if warm or stats.ring_to_answer.samples < POLICY.warmup_samples:
            return n0
        if stats.handle.samples < 5 or stats.not_answered_hold.samples < POLICY.warmup_samples:
            return n0
        if n0 == 0 and risk > self.band * self.theta:
            return n0
        obs = Observed.from_stats(stats)
        # Q(n + 1) - Q(n), the extra dial's liveness stratified (weights p, 1 - p).
        rows = [(n0, -1), (n0 + 1, 1), (n0 + 1, 0)]
        if n0 >= 1:
            rows += [(n0 - 1, -1), (n0, 1), (n0, 0)]
        q = rollout_scores(
            obs, rows, self.paths, self.horizon_s, self.lam, self.theta, self.rng
        ).mean(axis=1)
        self.rollouts += 1
        best = n0
        if obs.p * q[1] + (1 - obs.p) * q[2] > q[0]:
            best = n0 + 1
        elif n0 >= 1 and obs.p * q[4] + (1 - obs.p) * q[5] < q[3]:
            best = n0 - 1
        self.changed += best != n0
        return best


def _tilted(theta: float, tilt: float) -> Callable[[PacingPolicy, PacingStats, float], int]:
    """The base rule, its threshold times ``tilt`` while a seat is idle now."""

    def decide(policy: PacingPolicy, stats: PacingStats, now: float) -> int:
        return base_dials(stats, theta * tilt if stats.seats_free > 0 else theta)[0]

    return decide


def run(decide: Callable[[PacingPolicy, PacingStats, float], int], config: SimConfig, seed: int):
    saved = sim.dials_to_place
    sim.dials_to_place = decide
    try:
        return sim.simulate(POLICY, config, random.Random(seed))
    finally:
        sim.dials_to_place = saved


def _base_day_states(
    config: SimConfig, seed: int, theta: float, band: float
) -> list[tuple[float, PacingStats, int, float]]:
    """``(now, stats, n0, risk)`` of one base day's decisions worth judging: after the
    first five minutes, with the law of answers known, and not far past the threshold."""
    states: list[tuple[float, PacingStats, int, float]] = []

    def grab(policy: PacingPolicy, stats: PacingStats, now: float) -> int:
        n0, risk = base_dials(stats, theta)
        if now > 300 and stats.answer_samples > 100 and not (n0 == 0 and risk > band * theta):
            states.append((now, stats, n0, risk))
        return n0

    run(grab, config, seed)
    return states


def advantage(
    config: SimConfig,
    seed: int,
    theta: float,
    lam: float,
    paths: int,
    horizon_s: int,
    every: int,
    band: float,
) -> None:
    """Q(n0 + 1) - Q(n0) and Q(n0) - Q(n0 - 1) by rollout, in states a base day visits.

    States come from one day under the fixed threshold ``theta``, after the first
    five minutes, where the next dial's risk is within ``band * theta`` (every
    ``every``-th such state). If the one-step improvement saw value the myopic risk
    does not, Q(n0 + 1) - Q(n0) would scatter around any function of that risk by
    more than its standard error.
    """
    states = _base_day_states(config, seed, theta, band)
    rng = np.random.default_rng(seed + 1000)
    ups: list[tuple[float, float, float]] = []  # (risk, mean, standard error)
    talks: list[tuple[float, float]] = []
    losts: list[tuple[float, float]] = []
    downs: list[tuple[float, float]] = []
    for now, stats, n0, risk in states[::every]:
        obs = Observed.from_stats(stats)
        rows = [(n0, -1), (n0 + 1, 1), (n0 + 1, 0)]
        if n0 >= 1:
            rows += [(n0 - 1, -1), (n0, 1), (n0, 0)]
        s, lost = rollout_scores(obs, rows, paths, horizon_s, 0.0, theta, rng, True)
        # Stratified differences, per path: talk seconds gained, abandons added.
        d_talk = obs.p * s[1] + (1 - obs.p) * s[2] - s[0]
        d_lost = obs.p * lost[1] + (1 - obs.p) * lost[2] - lost[0]
        up = d_talk - lam * d_lost
        se = float(up.std() / math.sqrt(paths))
        ups.append((risk, float(up.mean()), se))
        talks.append((float(d_talk.mean()), float(d_talk.std() / math.sqrt(paths))))
        losts.append((float(d_lost.mean()), float(d_lost.std() / math.sqrt(paths))))
        line = (
            f"t={now:.0f} free={stats.seats_free} in_flight={stats.calls_in_flight} n0={n0}"
            f" next_risk={risk:.3f} d_talk={talks[-1][0]:.2f}+-{talks[-1][1]:.2f}"
            f" d_abandons={losts[-1][0]:.4f}+-{losts[-1][1]:.4f} up={up.mean():.2f}+-{se:.2f}"
        )
        if n0 >= 1:
            dt = obs.p * s[4] + (1 - obs.p) * s[5] - s[3]
            dl = obs.p * lost[4] + (1 - obs.p) * lost[5] - lost[3]
            down = dt - lam * dl
            downs.append((float(down.mean()), float(down.std() / math.sqrt(paths))))
            line += f" down={down.mean():.2f}+-{downs[-1][1]:.2f}"
        print(line, flush=True)
    u = np.asarray(ups)
    fit = np.polyfit(u[:, 0], u[:, 1], 1)
    resid = u[:, 1] - np.polyval(fit, u[:, 0])
    print(
        f"states={len(u)} up: mean={u[:, 1].mean():.2f}"
        f" above_2se={(u[:, 1] > 2 * u[:, 2]).mean():.2f}"
        f" fit up = {fit[1]:.2f} + {fit[0]:.1f} * risk, residual sd={resid.std(ddof=2):.2f}"
        f" vs rms se={math.sqrt((u[:, 2] ** 2).mean()):.2f}"
    )
    # Is the talk an extra dial buys explained by the abandons it adds? A ratio
    # that varies beyond noise is value a risk threshold cannot see.
    t_, l_ = np.asarray(talks), np.asarray(losts)
    fit2 = np.polyfit(l_[:, 0], t_[:, 0], 1)
    resid2 = t_[:, 0] - np.polyval(fit2, l_[:, 0])
    print(
        f"d_talk = {fit2[1]:.2f} + {fit2[0]:.1f} * d_abandons, residual sd={resid2.std(ddof=2):.2f}"
        f" vs rms se={math.sqrt((t_[:, 1] ** 2).mean()):.2f};"
        f" d_abandons vs risk corr={np.corrcoef(l_[:, 0], u[:, 0])[0, 1]:.2f}"
    )
    if downs:
        d = np.asarray(downs)
        print(
            f"down: states={len(d)} mean={d[:, 0].mean():.2f}"
            f" below_-2se={(d[:, 0] < -2 * d[:, 1]).mean():.2f}"
        )


_FEATURES = (
    "risk",
    "free",
    "in_flight",
    "talking",
    "wrapping",
    "waiting",
    # Timing, the lever a non-myopic rule would have: expected answers (from the
    # calls in flight, by age, and the planned dials) and seats free within w s.
    *(f"answers_{w}s" for w in (5, 10, 20)),
    *(f"seats_{w}s" for w in (5, 10, 20)),
)


def _features(stats: PacingStats, planned: int, theta: float) -> list[float]:
    """What a richer rule could see of the marginal dial (the one after ``planned``)."""
    pmf, seat_cdf, other = _risk_model(POLICY, stats)
    for _ in range(planned):
        _shift_in(pmf, other)
    risk = float((pmf * seat_cdf).sum()) / _SLOTS
    obs = Observed.from_stats(stats)
    ring_w = max(1e-9, obs.ring_hi - obs.ring_lo)
    hold_w = max(1e-9, obs.hold_hi - obs.hold_lo)
    a = obs.ages
    fr = np.clip((a - obs.ring_lo) / ring_w, 0.0, 1.0)
    fh = np.clip((a - obs.hold_lo) / hold_w, 0.0, 1.0)
    ringing = obs.p * (1.0 - fr)
    holding = (1.0 - obs.p) * (1.0 - fh)
    timing: list[float] = []
    for w in (5.0, 10.0, 20.0):
        later = np.clip((a + w - obs.ring_lo) / ring_w, 0.0, 1.0)
        mine = obs.p * (later - fr) / np.maximum(ringing + holding, 1e-12)
        planned_share = planned * obs.p * min(1.0, max(0.0, (w - obs.ring_lo) / ring_w))
        timing.append(float(mine.sum()) + planned_share)
    for w in (5.0, 10.0, 20.0):
        freed = obs.talking * (-math.expm1(-max(0.0, w - obs.wrap_mean) / obs.talk_mean))
        wraps = float((obs.wrap_remaining <= w).sum())
        timing.append(stats.seats - stats.seats_busy + wraps + freed)
    return [
        risk,
        float(stats.seats_free),
        float(stats.calls_in_flight + planned),
        float(stats.seats_busy - stats.seats_wrapping),
        float(stats.seats_wrapping),
        float(stats.calls_waiting),
        *timing,
    ]


def collect(
    config: SimConfig,
    seed: int,
    theta: float,
    paths: int,
    horizon_s: int,
    every: int,
    band: float,
    out: str,
) -> None:
    """Marginal dials' features and rollout outcomes (talk gained, abandons added), to .npz."""
    states = _base_day_states(config, seed, theta, band)
    rng = np.random.default_rng(seed + 2000)
    feats: list[list[float]] = []
    outs: list[list[float]] = []
    for i, (_, stats, n0, _) in enumerate(states[::every]):
        obs = Observed.from_stats(stats)
        rows = [(n0, -1), (n0 + 1, 1), (n0 + 1, 0)]
        if n0 >= 1:
            rows += [(n0 - 1, -1), (n0, 1), (n0, 0)]
        s, lost = rollout_scores(obs, rows, paths, horizon_s, 0.0, theta, rng, True)
        for base_row, planned in ((0, n0), (3, n0 - 1)):
            if planned < 0:
                continue
            d_talk = obs.p * s[base_row + 1] + (1 - obs.p) * s[base_row + 2] - s[base_row]
            d_lost = obs.p * lost[base_row + 1] + (1 - obs.p) * lost[base_row + 2] - lost[base_row]
            feats.append(_features(stats, planned, theta))
            root = math.sqrt(paths)
            outs.append([d_talk.mean(), d_lost.mean(), d_talk.std() / root, d_lost.std() / root])
        if i % 20 == 0:
            print(f"state {i} of {len(states[::every])}", file=sys.stderr, flush=True)
            np.savez(out, features=np.asarray(feats), outcomes=np.asarray(outs))
    np.savez(out, features=np.asarray(feats), outcomes=np.asarray(outs))


def _design(f: np.ndarray, seats: int, rich: bool) -> np.ndarray:
    """Regressors: the risk alone (and its square), or with the seat and call counts."""
    cols = [np.ones(len(f)), f[:, 0], f[:, 0] ** 2]
    if rich:
        cols += [f[:, j] / seats for j in range(1, f.shape[1])]
    return np.column_stack(cols)


def fit(path: str, seats: int) -> dict[str, np.ndarray]:
    """Weighted least squares of talk gained and abandons added on the marginal dial's features.

    Prints chi-squared per degree of freedom: about 1 means the model explains all
    but the rollout's noise; if the risk alone already gets there, the counts a
    richer rule could add carry no value the threshold misses.
    """
    data = np.load(path)
    f, o = data["features"], data["outcomes"]
    coefs: dict[str, np.ndarray] = {}
    for name, col in (("talk", 0), ("abandons", 1)):
        y, se = o[:, col], np.maximum(o[:, col + 2], 1e-6)
        for rich in (False, True):
            x = _design(f, seats, rich)
            w = 1.0 / se
            beta, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
            chi2 = float((((y - x @ beta) / se) ** 2).sum() / (len(y) - x.shape[1]))
            label = "risk+counts" if rich else "risk only"
            print(f"fit {name} on {label}: n={len(y)} chi2/dof={chi2:.2f} coef={np.round(beta, 3)}")
            coefs[f"{name}_{'rich' if rich else 'risk'}"] = beta
    return coefs


@dataclasses.dataclass
class FittedPacer:
    """The rollout's choice among n0 - 1, n0, n0 + 1 with fitted, noiseless Q differences.

    The marginal dial after ``k`` planned is worth placing when the fitted talk it
    gains exceeds ``lam`` times the abandons it adds. Used only where the data came
    from (the base count and its neighbours), the base count elsewhere.
    """

    coefs: dict[str, np.ndarray]
    lam: float
    rich: bool = True
    theta: float = 0.03
    band: float = 2.0

    def _worth(self, stats: PacingStats, planned: int) -> float:
        width = len(self.coefs["talk"]) - 2 if self.rich else 1
        f = np.asarray([_features(stats, planned, self.theta)[:width]], dtype=float)
        x = _design(f, stats.seats, self.rich)[0]
        return float(x @ self.coefs["talk"]) - self.lam * float(x @ self.coefs["abandons"])

    def __call__(self, policy: PacingPolicy, stats: PacingStats, now: float) -> int:
        n0, risk = base_dials(stats, self.theta)
        if stats.answer_samples <= 100 or (n0 == 0 and risk > self.band * self.theta):
            return n0
        if self._worth(stats, n0) > 0:
            return n0 + 1
        if n0 >= 1 and self._worth(stats, n0 - 1) <= 0:
            return n0 - 1
        return n0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seats", type=int, default=10)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--thetas", default="", help="base curve: fixed thresholds")
    parser.add_argument("--lams", default="", help="rollout: lambdas (talk s per abandon)")
    parser.add_argument(
        "--tilts", default="", help="base with threshold * tilt while a seat is free now"
    )
    parser.add_argument("--theta", type=float, default=0.03, help="rollout's base threshold")
    parser.add_argument("--paths", type=int, default=32)
    parser.add_argument("--horizon", type=int, default=60)
    parser.add_argument("--band", type=float, default=4.0, help="skip when risk > band * theta")
    parser.add_argument("--advantage", type=int, default=0, help="every n-th state: Q diffs")
    parser.add_argument("--collect", default="", help=".npz: marginal dials for a fitted rule")
    parser.add_argument("--fitted", default="", help=".npz from --collect: fit, run at --lams")
    args = parser.parse_args(argv)
    chosen = (args.thetas, args.lams, args.tilts, args.advantage, args.collect, args.fitted)
    if not any(chosen):
        args.thetas = "0.02,0.03,0.04"
    config = SimConfig(seats=args.seats, hours=args.hours)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.fitted:
        coefs = fit(args.fitted, args.seats)
        for rich in (False, True):
            kind = "rich" if rich else "risk"
            use = {"talk": coefs[f"talk_{kind}"], "abandons": coefs[f"abandons_{kind}"]}
            for lam in [float(x) for x in args.lams.split(",") if x]:
                t0 = time.perf_counter()
                pacer = FittedPacer(use, lam, rich, args.theta, args.band)
                runs = [run(pacer, config, sd) for sd in seeds]
                _report(f"fitted {kind} lam={lam}", runs, time.perf_counter() - t0)
        return 0
    if args.collect:
        collect(
            config,
            seeds[0],
            args.theta,
            args.paths,
            args.horizon,
            args.advantage or 10,
            args.band,
            args.collect,
        )
        return 0
    if args.advantage:
        for sd in seeds:
            advantage(
                config,
                sd,
                args.theta,
                float(args.lams.split(",")[0]) if args.lams else 150.0,
                args.paths,
                args.horizon,
                args.advantage,
                args.band,
            )
        return 0
    for theta in [float(x) for x in args.thetas.split(",") if x] if not args.tilts else []:
        t0 = time.perf_counter()
        runs = [run(lambda p, s, n, th=theta: base_dials(s, th)[0], config, sd) for sd in seeds]
        _report(f"base theta={theta}", runs, time.perf_counter() - t0)
    for tilt in [float(x) for x in args.tilts.split(",") if x]:
        for theta in [float(x) for x in args.thetas.split(",") if x]:
            t0 = time.perf_counter()
            runs = [run(_tilted(theta, tilt), config, sd) for sd in seeds]
            _report(f"tilted theta={theta} tilt={tilt}", runs, time.perf_counter() - t0)
    for lam in [float(x) for x in args.lams.split(",") if x]:
        t0 = time.perf_counter()
        runs = []
        extra = ""
        for sd in seeds:
            pacer = RolloutPacer(args.theta, lam, args.paths, args.horizon, args.band, seed=sd)
            runs.append(run(pacer, config, sd))
            extra += f" rollouts={pacer.rollouts} changed={pacer.changed}"
        _report(f"rollout theta={args.theta} lam={lam}", runs, time.perf_counter() - t0, extra)
    return 0


def _report(name: str, runs: list[SimResult], elapsed: float, extra: str = "") -> None:
    occ = statistics.fmean(r.occupancy for r in runs)
    ab = sum(r.abandoned for r in runs) / max(1, sum(r.live_answers for r in runs))
    each = " ".join(f"{r.occupancy:.4f}/{r.abandonment:.4f}" for r in runs)
    print(f"{name} occupancy={occ:.4f} abandonment={ab:.4f} runs={each} s={elapsed:.0f}{extra}")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())

"""A discrete-event simulation of a calling day, to judge pacing policies.

The model, every figure a field of `SimConfig`: a dial reaches a live person
with probability ``answer_rate`` after ringing U(ring_min_s, ring_max_s);
every other dial holds a line U(hold_min_s, hold_max_s) and ends. A live
answer takes a free seat, or waits up to ``max_wait_s`` for one and is then
abandoned. Talk time is exponential with mean ``talk_mean_s``; each call is
followed by ``wrap_s`` of wrap-up before the seat is free again. The pacer is
asked on every event and on a tick every ``tick_s``; it sees only what a real
scheduler would observe (counts, running means, the abandonment tracker),
never the model's parameters.

Pure: the random source is handed in, and simulated time is a float.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass

from scheduler.pacing import (
    AbandonmentTracker,
    DurationSummary,
    PacingPolicy,
    PacingStats,
    pace,
)

__all__ = ["RunningMean", "SimConfig", "SimResult", "simulate"]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The model of one simulated day (durations in seconds)."""

    seats: int = 25
    answer_rate: float = 0.30
    ring_min_s: float = 4.0
    ring_max_s: float = 20.0
    hold_min_s: float = 2.0
    hold_max_s: float = 26.0
    talk_mean_s: float = 120.0
    wrap_s: float = 10.0
    max_wait_s: float = 2.0
    hours: float = 8.0
    tick_s: float = 1.0
    target_abandon_rate: float = 0.03
    # The rule measures abandonment over 30 days (47 CFR 64.1200(a)(7)(i)):
    # the tracker's window, and so the controller's memory, is as long.
    window_s: float = 30 * 86400.0
    # A bound, not a pacer: show the pacer when every seat will be free again
    # (talk end plus wrap-up), as if talk times were known at connect.
    reveal_seat_times: bool = False
    # From the pacer's decision to take back a ringing call to its CANCEL (the
    # scheduler's tick, the notification, the worker): an answer meanwhile wins.
    take_back_lag_s: float = 0.5

    def __post_init__(self) -> None:
        if self.seats < 1:
            raise ValueError("seats must be >= 1")
        if not 0.0 < self.answer_rate <= 1.0:
            raise ValueError("answer_rate must be in (0, 1]")
        if not 0.0 <= self.ring_min_s <= self.ring_max_s:
            raise ValueError("need 0 <= ring_min_s <= ring_max_s")
        if not 0.0 <= self.hold_min_s <= self.hold_max_s:
            raise ValueError("need 0 <= hold_min_s <= hold_max_s")
        if self.talk_mean_s <= 0 or self.wrap_s < 0 or self.hours <= 0 or self.tick_s <= 0:
            raise ValueError("talk_mean_s, hours and tick_s must be > 0; wrap_s >= 0")
        if self.take_back_lag_s < 0:
            raise ValueError("take_back_lag_s must be >= 0")

    @property
    def occupancy_ceiling(self) -> float:
        """Talk time over seat time if every seat were always talking or wrapping up."""
        return self.talk_mean_s / (self.talk_mean_s + self.wrap_s)


@dataclass(frozen=True, slots=True)
class SimResult:
    """What one simulated day produced."""

    seats: int
    seconds: float
    dials: int
    live_answers: int
    connects: int
    abandoned: int
    talk_s: float
    cancelled: int = 0

    @property
    def occupancy(self) -> float:
        """Talk time over seat time."""
        return self.talk_s / (self.seats * self.seconds)

    @property
    def abandonment(self) -> float:
        """Abandoned over live answers."""
        return self.abandoned / self.live_answers if self.live_answers else 0.0

    @property
    def connects_per_seat_hour(self) -> float:
        return self.connects / (self.seats * self.seconds / 3600.0)

    @property
    def dials_per_seat_hour(self) -> float:
        return self.dials / (self.seats * self.seconds / 3600.0)

    @property
    def cancelled_share(self) -> float:
        """Dials the pacer hung up while ringing, over all dials."""
        return self.cancelled / self.dials if self.dials else 0.0


class RunningMean:
    """Mean and standard deviation of a stream of samples (Welford's method)."""

    __slots__ = ("_m2", "count", "mean")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (value - self.mean)

    def summary(self) -> DurationSummary:
        stdev = math.sqrt(self._m2 / (self.count - 1)) if self.count > 1 else 0.0
        return DurationSummary(self.mean, stdev, self.count)


# Event kinds, ordered so that at equal times seats free up before answers
# arrive and abandonment deadlines are checked last.
_WRAP_END = 0
_TALK_END = 1
_ANSWER = 2
_NO_ANSWER = 3
_TICK = 4
_DEADLINE = 5
_TAKE_BACK = 6


def simulate(policy: PacingPolicy, config: SimConfig, rng: random.Random) -> SimResult:
    """Run one day under ``policy`` and return its totals.

    Talk time is counted up to the end of the day; no dial starts after it.
    """
    end = config.hours * 3600.0
    seats = config.seats
    events: list[tuple[float, int, int, float]] = []  # (time, kind, seq, value)
    seq = 0
    busy = 0
    waiting: deque[float] = deque()  # deadlines of live answers waiting for a seat, in order
    dials = live = connects = abandoned = 0
    talk_s = 0.0
    finished = 0
    ring_stats = RunningMean()
    hold_stats = RunningMean()
    handle_stats = RunningMean()
    wrap_stats = RunningMean()
    dialled_at: dict[int, float] = {}  # calls in flight: event seq -> dial time
    hung_up: set[int] = set()  # calls the pacer hung up, whose answer or end never comes
    asked: set[int] = set()  # calls the pacer decided to take back, until their CANCEL
    cancelled = 0
    wrap_ends: dict[int, float] = {}  # seats in wrap-up: event seq -> end of wrap-up
    free_at: dict[int, float] = {}  # seats talking, when revealed: event seq -> free again
    reveal = config.reveal_seat_times
    tracker = AbandonmentTracker(config.window_s)
    recent: deque[float] = deque()
    uniform = rng.uniform
    expovariate = rng.expovariate
    random_ = rng.random
    talk_rate = 1.0 / config.talk_mean_s
    push = heapq.heappush

    def connect(now: float) -> None:
        nonlocal busy, connects, talk_s, seq
        busy += 1
        connects += 1
        talk = expovariate(talk_rate)
        talk_s += max(0.0, min(now + talk, end) - now)
        seq += 1
        push(events, (now + talk, _TALK_END, seq, talk))
        if reveal:
            free_at[seq] = now + talk + config.wrap_s

    push(events, (0.0, _TICK, 0, 0.0))
    while events:
        now, kind, key, value = heapq.heappop(events)
        if now > end:
            break
        if key in hung_up:
            hung_up.remove(key)
            continue
        if kind == _TAKE_BACK:
            call = int(value)
            asked.discard(call)
            if call not in dialled_at:
                continue  # answered or ended before the CANCEL went out
            del dialled_at[call]
            hung_up.add(call)
            cancelled += 1
        elif kind in (_ANSWER, _NO_ANSWER):
            asked.discard(key)
        if kind == _TAKE_BACK:
            pass
        elif kind == _WRAP_END:
            busy -= 1
            del wrap_ends[key]
            # Handle time is observed when the seat is free again.
            handle_stats.add(value)
            wrap_stats.add(config.wrap_s)
            if waiting:
                waiting.popleft()
                connect(now)
        elif kind == _TALK_END:
            free_at.pop(key, None)
            seq += 1
            wrap_ends[seq] = now + config.wrap_s
            push(events, (now + config.wrap_s, _WRAP_END, seq, value + config.wrap_s))
        elif kind == _ANSWER:
            del dialled_at[key]
            live += 1
            finished += 1
            ring_stats.add(value)
            tracker.record_live(now)
            if busy + len(waiting) < seats:
                connect(now)
            else:
                deadline = now + config.max_wait_s
                waiting.append(deadline)
                seq += 1
                push(events, (deadline, _DEADLINE, seq, deadline))
        elif kind == _NO_ANSWER:
            del dialled_at[key]
            finished += 1
            hold_stats.add(value)
        elif kind == _TICK:
            seq += 1
            push(events, (now + config.tick_s, _TICK, seq, 0.0))
        else:  # _DEADLINE: the oldest waiting answers whose time ran out hang up
            while waiting and waiting[0] <= value:
                waiting.popleft()
                abandoned += 1
                tracker.record_abandoned(now)
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        window_live, window_abandoned = tracker.counts(now)
        stats = PacingStats(
            seats=seats,
            seats_busy=busy,
            calls_in_flight=len(dialled_at),
            answer_rate=live / finished if finished else 0.0,
            answer_samples=finished,
            ring_to_answer=ring_stats.summary(),
            not_answered_hold=hold_stats.summary(),
            handle=handle_stats.summary(),
            window_live=window_live,
            window_abandoned=window_abandoned,
            target_abandon_rate=config.target_abandon_rate,
            calls_waiting=len(waiting),
            # Revealed talking seats pass for seats in wrap-up with a known end.
            seats_wrapping=len(wrap_ends) + len(free_at),
            recent_dial_times=tuple(recent),
            in_flight_ages_s=tuple(now - t for t in dialled_at.values()),
            wrap_remaining_s=tuple(t - now for t in (*wrap_ends.values(), *free_at.values())),
            wrap_mean_s=wrap_stats.mean,
        )
        keys = list(dialled_at)
        decision = pace(policy, stats, now, [k not in asked for k in keys])
        # Like the engine, a call taken back is left out of the answer-rate and
        # hold-time samples (its outcome is not known), and counts as in flight
        # until its CANCEL.
        for index in decision.cancel:
            asked.add(keys[index])
            seq += 1
            push(events, (now + config.take_back_lag_s, _TAKE_BACK, seq, float(keys[index])))
        for _ in range(decision.dials):
            dials += 1
            recent.append(now)
            seq += 1
            dialled_at[seq] = now
            if random_() < config.answer_rate:
                ring = uniform(config.ring_min_s, config.ring_max_s)
                push(events, (now + ring, _ANSWER, seq, ring))
            else:
                hold = uniform(config.hold_min_s, config.hold_max_s)
                push(events, (now + hold, _NO_ANSWER, seq, hold))
    return SimResult(seats, end, dials, live, connects, abandoned, talk_s, cancelled)

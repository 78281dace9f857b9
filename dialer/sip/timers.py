"""SIP timer names and durations (RFC 3261 §17 and Table 4, RFC 6026 §8.4).

Rules of this file:

1. Timers keep their RFC letters. A transaction never starts a real timer: it
   returns ``StartTimer(key, name, at)`` and the edge calls it back when ``at``
   is reached (see ``actions.py``).
2. Every duration derives from T1, T2 and T4 held in one frozen ``TimerConfig``
   handed down by whoever builds the transaction layer; there is no mutable
   global to shrink in tests (a test hands in its own config, or a fake clock).
3. On a reliable transport (TCP, TLS) the request and response retransmission
   timers (A, E, G) never run, and the "wait for stray retransmissions" timers
   (D, I, J, K) are zero: the transaction ends at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["DEFAULT_TIMERS", "TimerConfig", "TimerName"]


class TimerName(StrEnum):
    """The transaction timers, by their RFC 3261 / RFC 6026 letters."""

    # Equal to their values as strings, so hashed as those strings (in C).
    __hash__ = str.__hash__

    A = "A"  # client INVITE: request retransmission (unreliable only)
    B = "B"  # client INVITE: transaction timeout
    D = "D"  # client INVITE: wait for response retransmissions in Completed
    E = "E"  # client non-INVITE: request retransmission (unreliable only)
    F = "F"  # client non-INVITE: transaction timeout
    G = "G"  # server INVITE: final response retransmission (unreliable only)
    H = "H"  # server INVITE: wait for ACK
    I = "I"  # server INVITE: wait for ACK retransmissions in Confirmed  # noqa: E741
    J = "J"  # server non-INVITE: wait for request retransmissions in Completed
    K = "K"  # client non-INVITE: wait for response retransmissions in Completed
    L = "L"  # server INVITE: wait in Accepted for INVITE retransmissions (RFC 6026)
    M = "M"  # client INVITE: wait in Accepted for 2xx retransmissions (RFC 6026)


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """T1, T2, T4 (RFC 3261 §17.1.1.1) and Timer D, in seconds; all others derive.

    ``t1_s`` is the round-trip estimate, ``t2_s`` the cap on non-INVITE request
    and INVITE response retransmission intervals, ``t4_s`` the longest time a
    message may stay in the network. ``timer_d_s`` is "at least 32 seconds"
    for an unreliable transport (Table 4), not a multiple of T1.
    """

    t1_s: float = 0.5
    t2_s: float = 4.0
    t4_s: float = 5.0
    timer_d_s: float = 32.0

    def __post_init__(self) -> None:
        if not 0 < self.t1_s <= self.t2_s:
            raise ValueError("timers need 0 < T1 <= T2")
        if self.t4_s < 0 or self.timer_d_s < 0:
            raise ValueError("T4 and Timer D must not be negative")

    @property
    def transaction_timeout_s(self) -> float:
        """64*T1: Timers B, F, H, J (unreliable), L and M."""
        return 64 * self.t1_s

    def initial(self, name: TimerName, reliable: bool) -> float | None:
        """How long ``name`` first runs for; None when it does not run at all.

        Zero means "the transaction ends at once" (D, I, J, K on a reliable
        transport); callers terminate instead of starting a zero-length timer.
        """
        match name:
            case TimerName.A | TimerName.E | TimerName.G:
                return None if reliable else self.t1_s
            case TimerName.B | TimerName.F | TimerName.H | TimerName.L | TimerName.M:
                return self.transaction_timeout_s
            case TimerName.D:
                return 0.0 if reliable else self.timer_d_s
            case TimerName.I | TimerName.K:
                return 0.0 if reliable else self.t4_s
            case TimerName.J:
                return 0.0 if reliable else self.transaction_timeout_s
        raise ValueError(f"unknown timer {name!r}")  # pragma: no cover - exhaustive above

    def next_interval(self, name: TimerName, previous_s: float) -> float:
        """The retransmission interval after one of ``previous_s``.

        Timer A doubles without a cap (§17.1.1.2: "intervals that double after
        each transmission"; Timer B ends it after 64*T1). Timers E and G double
        up to T2 (§17.1.2.2, §17.2.1).
        """
        if name is TimerName.A:
            return 2 * previous_s
        if name is TimerName.E or name is TimerName.G:
            return min(2 * previous_s, self.t2_s)
        raise ValueError(f"timer {name} does not retransmit")


#: RFC 3261's recommended values: T1 = 500 ms, T2 = 4 s, T4 = 5 s, D = 32 s.
DEFAULT_TIMERS = TimerConfig()

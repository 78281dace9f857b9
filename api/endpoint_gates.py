"""Slow webhook endpoints, and the gate that keeps each from taking every sending slot.

A receiver that hangs holds a sending slot for the whole timeout; with nothing
in the way, one tenant's backlog to such a receiver fills every slot and
everyone else's events wait behind it. So an endpoint whose send has run past
the notifier's stall threshold is *slow* for ``hold_s`` after that: its
attempts then go through a gate of ``cap`` sends at once, and while it has
``cap`` attempts leased no more of its deliveries are leased. Endpoints that
answer in time never meet a gate, so one busy endpoint still gets every slot.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["EndpointGates"]


@dataclass(slots=True)
class EndpointGates:
    cap: int
    hold_s: float
    _slow_until: dict[uuid.UUID, float] = field(default_factory=dict)
    _gates: dict[uuid.UUID, asyncio.Semaphore] = field(default_factory=dict)
    _gated: Counter[uuid.UUID] = field(default_factory=Counter)
    _leased: Counter[uuid.UUID] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.cap < 1:
            raise ValueError(f"cap must be >= 1, got {self.cap}")

    def mark_slow(self, endpoint: uuid.UUID, now: float) -> None:
        self._slow_until[endpoint] = now + self.hold_s
        if endpoint not in self._gates:
            self._gates[endpoint] = asyncio.Semaphore(self.cap)

    def is_slow(self, endpoint: uuid.UUID, now: float) -> bool:
        return self._slow_until.get(endpoint, -1.0) > now

    def leased(self, endpoint: uuid.UUID) -> None:
        self._leased[endpoint] += 1

    def finished(self, endpoint: uuid.UUID) -> None:
        """An attempt leased for ``endpoint`` is done with (sent, lost or cancelled)."""
        left = self._leased[endpoint] - 1
        if left > 0:
            self._leased[endpoint] = left
        else:
            del self._leased[endpoint]

    def enter(self, endpoint: uuid.UUID, now: float) -> asyncio.Semaphore | None:
        """The gate an attempt for ``endpoint`` must pass, or None if it is not slow.

        Once its hold has run out an endpoint meets no gate, even while attempts
        that entered before still hold or await it (they drain). Every gate
        returned is handed back with :meth:`leave`, acquired or not.
        """
        self._forget_if_recovered(endpoint, now)
        if not self.is_slow(endpoint, now):
            return None
        gate = self._gates[endpoint]
        self._gated[endpoint] += 1
        return gate

    def leave(self, endpoint: uuid.UUID) -> None:
        left = self._gated[endpoint] - 1
        if left > 0:
            self._gated[endpoint] = left
        else:
            del self._gated[endpoint]

    def full(self, now: float) -> list[uuid.UUID]:
        """Slow endpoints with ``cap`` attempts leased already: lease none of theirs now."""
        for endpoint in list(self._slow_until):
            self._forget_if_recovered(endpoint, now)
        slow = [e for e, until in self._slow_until.items() if until > now]
        return [e for e in slow if self._leased[e] >= self.cap]

    def _forget_if_recovered(self, endpoint: uuid.UUID, now: float) -> None:
        # A gate is dropped only when no attempt holds or awaits it.
        until = self._slow_until.get(endpoint)
        if until is not None and until <= now and not self._gated[endpoint]:
            del self._slow_until[endpoint]
            self._gates.pop(endpoint, None)

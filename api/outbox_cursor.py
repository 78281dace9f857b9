"""A reader's place in the outbox that never steps over an event still to commit.

Outbox ids come from a sequence: handed out in insert order, not commit
order. A transaction that drew id 244 may commit after another that drew
245, so a reader that has passed on 245 and moved its cursor there would
never see 244. So the cursor moves only over ids it has seen, and stops at
a *hole*, an id it has not seen, until the hole fills or is known to stay
empty (the transaction that drew it rolled back, or the id was never used).

A hole is known to stay empty once every transaction that could hold it has
ended: when the hole is first seen, the ids above it were drawn later and
are already committed, so its holder, if any, was running then and has a
transaction id below that snapshot's ``xmax``; once a later snapshot's
``xmin`` reaches that ``xmax`` (no older transaction still runs) and its
rows still show the hole, the hole stays empty. A short grace covers a
holder between drawing its id and taking its transaction id.

Pure: the caller reads the ids after the cursor with ``pg_current_snapshot()``
from the same statement and passes the time in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["HOLE_GRACE_S", "OutboxCursor"]

HOLE_GRACE_S = 1.0


@dataclass(slots=True)
class OutboxCursor:
    """The last outbox id passed on; ids past it are taken in order, holes waited for."""

    last: int
    grace_s: float = HOLE_GRACE_S
    # The snapshot that first saw the holes below ``_covers``: they stay empty
    # once no transaction older than its ``xmax`` runs.
    _seen_at: float | None = None
    _horizon: int = 0
    _covers: int = 0

    def advance(self, ids: Sequence[int], xmin: int, xmax: int, now: float) -> int:
        """Move ``last`` over as many of ``ids`` as may be passed on now; return it.

        ``ids`` are the outbox ids after ``last`` in ascending order (every
        tenant's: another tenant's event is not a hole), read in the same
        statement as the snapshot's ``xmin`` and ``xmax``.
        """
        for outbox_id in ids:
            if outbox_id <= self.last:
                continue
            if outbox_id > self.last + 1 and not self._hole_settled(xmin, now):
                if self._seen_at is None or self.last + 1 >= self._covers:
                    self._seen_at, self._horizon, self._covers = now, xmax, max(ids)
                break
            self.last = outbox_id
        if self.last >= self._covers:
            self._seen_at = None
        return self.last

    def _hole_settled(self, xmin: int, now: float) -> bool:
        """Whether the hole after ``last`` stays empty (see the module's docstring)."""
        return (
            self._seen_at is not None
            and self.last + 1 < self._covers
            and xmin >= self._horizon
            and now - self._seen_at >= self.grace_s
        )

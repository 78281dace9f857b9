"""Trunk limits shared by every worker: channels and calls per second, in PostgreSQL.

A trunk's ``max_channels`` and ``cps`` are the carrier's limits, whatever
number of worker processes dial through it. Each user agent keeps its own
limiter (``trunk.ChannelLimit`` and ``TokenBucket``: the fast local gate that
keeps call order); on top of it, just before the INVITE, a call takes

1. a *channel lease*: a row in ``trunk_channels`` keyed by the dial's call
   id, granted under the trunk's advisory transaction lock only while fewer
   than ``max_channels`` leases of the trunk count (migration 0013). A lease
   counts while its call is not ended, so a worker that dies leaks nothing:
   the scheduler closes its calls as ``worker_lost`` and their leases stop
   counting. A call that finds no channel asks again every ``poll_s``.
2. a *send slot*: ``trunk_pace.next_at`` is moved on by one interval per
   call in a single statement, whose row lock orders the workers; the call
   sleeps until its slot. Slots are ``(1 + PACE_MARGIN_S) / cps`` apart, so
   that no second-long window holds more than ``cps`` INVITEs even when a
   send is a little late (the reply's way back, the loop's lag).

A call's lease and slot come in one statement (``take_trunk_channels``), and
the calls that ask together share it: one round trip per trunk and batch
(``Batcher``); releases are batched too and never awaited in a call's path.
A trunk with neither limit costs nothing: no database work.

A trunk's key is the same in every process: ``tenant_id:name`` for a tenant's
trunk (an edit keeps it, so calls placed before the edit still count) and
``default:host:port`` for a process's default trunk (``TrunkConfig.shared_key``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

import asyncpg

from dialer.batching import Batcher
from dialer.db import DATABASE_AWAY
from dialer.trunk import TrunkConfig

__all__ = [
    "LIMIT_ERRORS",
    "PACE_MARGIN_S",
    "POLL_S",
    "SharedTrunkLimits",
]

log = logging.getLogger(__name__)

# How often a call that found no free channel asks again.
POLL_S = 0.05
# Slack per second of pace: a send may be this late beside its slot (the slot's
# reply on its way back, a busy loop) and a second still holds at most cps sends.
PACE_MARGIN_S = 0.03
# What a claim, a pace request or a release may raise while the database is away.
LIMIT_ERRORS = (asyncpg.PostgresError, *DATABASE_AWAY)


# A call's request: trunk key, max channels (None: no lease), send interval (None: no
# pace), lease id.
_Take = tuple[str, int | None, float | None, uuid.UUID]


class SharedTrunkLimits:
    """Channel leases and send slots of trunks, in PostgreSQL, for one worker."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        worker_id: str = "",
        poll_s: float = POLL_S,
        linger_s: float = 0.005,
    ) -> None:
        self.pool = pool
        # Written on each lease: a lease without a call row stops counting when
        # this worker stops beating.
        self.worker_id = worker_id
        self.poll_s = poll_s
        # Calls that ask within linger_s share a round trip per trunk (small beside
        # a call's setup; under load batches form by themselves).
        self._takes: Batcher[_Take, float | None] = Batcher(
            self._take_many, max_size=500, linger_s=linger_s
        )
        self._releases: Batcher[uuid.UUID, None] = Batcher(
            self._release_many, max_size=500, linger_s=linger_s
        )
        self._pending: set[asyncio.Task[None]] = set()

    async def acquire(self, config: TrunkConfig, lease: uuid.UUID, *, wait: bool = True) -> bool:
        """A channel lease (``max_channels``) and a send slot (``cps``) of the trunk.

        Waits for a free channel (asking again every ``poll_s``), then sleeps
        until the slot; the caller bounds the whole wait with a timeout, on
        which (or on any other error) a lease granted meanwhile is released.
        With ``wait`` False, False when no channel is free now. While the
        database is away the call goes on under the local limits only (what one
        process knows), and a warning says so.
        """
        key = config.shared_key
        interval = None if config.cps is None else (1.0 + PACE_MARGIN_S) / config.cps
        take = (key, config.max_channels, interval, lease)
        try:
            while (send_in := await self._takes.submit(take)) is None:
                if not wait:
                    return False
                await asyncio.sleep(self.poll_s)
            if send_in > 0:
                await asyncio.sleep(send_in)
        except LIMIT_ERRORS as exc:
            log.warning(
                "shared trunk limits unknown, local limits only: %s",
                exc,
                extra={"call_id": str(lease)},
            )
        except BaseException:
            if config.max_channels is not None:
                self.release(lease)
            raise
        return True

    async def try_claim(self, key: str, max_channels: int, lease: uuid.UUID) -> bool:
        """Take a channel of the trunk for ``lease`` if one is free now (no pace)."""
        return await self._takes.submit((key, max_channels, None, lease)) is not None

    async def _take_many(self, takes: Sequence[_Take]) -> list[float | None]:
        """Leases and slots for a batch: one statement (its own transaction) per trunk,
        so a transaction never holds two trunks' locks and workers cannot deadlock."""
        groups: dict[tuple[str, int | None, float | None], list[uuid.UUID]] = {}
        for key, max_channels, interval, lease in takes:
            groups.setdefault((key, max_channels, interval), []).append(lease)
        send_in: dict[tuple[str, uuid.UUID], float] = {}
        for (key, max_channels, interval), leases in groups.items():
            rows = await self.pool.fetch(
                "SELECT lease, send_in FROM take_trunk_channels($1::uuid[], $2, $3, $4, $5)",
                leases,
                key,
                max_channels,
                self.worker_id,
                interval,
            )
            send_in.update(((key, r["lease"]), r["send_in"]) for r in rows)
        return [send_in.get((key, lease)) for key, _, _, lease in takes]

    def release(self, lease: uuid.UUID) -> None:
        """Free a channel lease in the background (safe for a lease never granted).

        Not awaited by the call's end: a lease whose call has ended counts for
        nothing, so the order does not matter, and a lost release leaks nothing.
        """
        task = asyncio.get_running_loop().create_task(self._release(lease))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release(self, lease: uuid.UUID) -> None:
        try:
            await self._releases.submit(lease)
        except LIMIT_ERRORS as exc:
            log.warning("trunk channel release failed: %s", exc, extra={"call_id": str(lease)})

    async def _release_many(self, leases: Sequence[uuid.UUID]) -> list[None]:
        await self.pool.execute(
            "DELETE FROM trunk_channels WHERE call_id = ANY($1::uuid[])", list(leases)
        )
        return [None] * len(leases)

    async def close(self, timeout_s: float = 2.0) -> None:
        """Let releases on their way finish (for up to ``timeout_s``), then stop."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)
        for batcher in (self._takes, self._releases):
            await batcher.close()

"""Coalescing: many callers' items handled by one call of a batch function.

Database work per call (a claim, a seat, a closing event) is mostly the cost
of the round trip and the transaction, not of the row. A :class:`Batcher`
lets each caller ``await submit(item)`` as if it were alone, while one task
hands everything submitted meanwhile to ``handle_many(items)`` at once: one
statement and one transaction for a batch instead of one per item.

Batches form by themselves under load: while one batch is in the database,
the next one gathers. ``linger_s`` waits a little longer for more items when
a batch would start small (0 by default: never add latency for its own sake).
``concurrency`` lets that many batches be in the database at once (1 by
default): where a batch is several round trips, one batch at a time is bound
by their latency, not by the database's work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Batcher"]

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Items in, one result each out; ``handle_many`` returns results in item order.

    If ``handle_many`` raises, every caller of that batch gets the exception.
    Cancelling a caller's ``submit`` after its batch has started does not stop
    the batch (its item may be handled all the same; callers must tolerate
    that, as they would a commit whose answer was lost).
    """

    def __init__(
        self,
        handle_many: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_size: int = 100,
        linger_s: float = 0.0,
        concurrency: int = 1,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._handle_many = handle_many
        self.max_size = max_size
        self.linger_s = linger_s
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        # Set while a batch lingers: resolved when the linger ends or the batch is full.
        self._full: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        # Batches in the database; a slot is taken before a batch forms, so items
        # keep gathering while every slot is busy.
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task[None]] = set()
        # Batches handled and the items in them: tests and benches read these.
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        full = self._full
        if full is not None and len(self._pending) >= self.max_size and not full.done():
            full.set_result(None)  # a lingering batch is full: no need to wait longer
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return await future

    async def close(self) -> None:
        """Stop the batching task; callers still waiting are cancelled."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()

    async def _run(self) -> None:
        while self._pending:
            await self._slots.acquire()
            loop = asyncio.get_running_loop()
            try:
                if self.linger_s > 0:
                    if len(self._pending) < self.max_size:
                        # Whatever arrives within the linger joins; the batch goes
                        # as soon as it is full. One timer per batch, not a wake
                        # (and a task for wait_for) per item.
                        self._full = full = loop.create_future()
                        timer = loop.call_later(self.linger_s, _settle, full)
                        try:
                            await full
                        finally:
                            timer.cancel()
                            self._full = None
                else:
                    # Let items whose frames have already arrived join this batch.
                    await asyncio.sleep(0)
            except BaseException:
                self._slots.release()
                raise
            batch = self._pending[: self.max_size]
            del self._pending[: self.max_size]
            live = [(item, future) for item, future in batch if not future.cancelled()]
            if not live:
                self._slots.release()
                continue
            task = loop.create_task(self._handle(live))
            self._running.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _handle(self, live: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._handle_many([item for item, _ in live])
        except asyncio.CancelledError:
            for _, future in live:
                future.cancel()
            raise
        except Exception as exc:  # handed to every caller of the batch
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        self.batches += 1
        self.items += len(live)
        if len(results) != len(live):
            error = RuntimeError(f"batch of {len(live)} gave {len(results)} results")
            for _, future in live:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(live, results, strict=True):
            if not future.done():
                future.set_result(result)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

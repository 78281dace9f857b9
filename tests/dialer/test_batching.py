"""The Batcher: concurrent submissions handled together, results and errors fanned back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from dialer.batching import Batcher


class Recorder:
    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [i * 10 for i in items]


async def test_items_submitted_together_form_one_batch_in_order() -> None:
    handler = Recorder()
    batcher: Batcher[int, int] = Batcher(handler)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
    assert results == [i * 10 for i in range(20)]
    assert handler.batches == [list(range(20))]
    await batcher.close()


async def test_max_size_splits_and_items_arriving_meanwhile_gather() -> None:
    handler = Recorder(delay_s=0.02)
    batcher: Batcher[int, int] = Batcher(handler, max_size=4)
    first = [asyncio.ensure_future(batcher.submit(i)) for i in range(6)]
    await asyncio.sleep(0.005)  # the first batch is in its handler now
    later = [asyncio.ensure_future(batcher.submit(i)) for i in range(6, 9)]
    assert await asyncio.gather(*first, *later) == [i * 10 for i in range(9)]
    assert handler.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    await batcher.close()


async def test_linger_waits_for_stragglers() -> None:
    handler = Recorder()
    batcher: Batcher[int, int] = Batcher(handler, linger_s=0.05)

    async def late(i: int, after_s: float) -> int:
        await asyncio.sleep(after_s)
        return await batcher.submit(i)

    await asyncio.gather(late(1, 0), late(2, 0.01), late(3, 0.02))
    assert handler.batches == [[1, 2, 3]]
    await batcher.close()


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_runs() -> None:
    handler = Recorder(fail_on=2)
    batcher: Batcher[int, int] = Batcher(handler)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert await batcher.submit(5) == 50
    await batcher.close()


async def test_a_cancelled_caller_is_left_out_of_its_batch() -> None:
    handler = Recorder(delay_s=0.02)
    batcher: Batcher[int, int] = Batcher(handler, max_size=1)
    first = asyncio.ensure_future(batcher.submit(1))
    second = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.005)
    second.cancel()
    assert await first == 10
    with pytest.raises(asyncio.CancelledError):
        await second
    await asyncio.sleep(0.03)
    assert handler.batches == [[1]]
    await batcher.close()


async def test_a_lingering_batch_goes_as_soon_as_it_is_full() -> None:
    handler = Recorder()
    batcher: Batcher[int, int] = Batcher(handler, max_size=3, linger_s=5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)  # lingering now, with one item of three
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
    assert await asyncio.wait_for(asyncio.gather(first, *rest[:2]), 1.0) == [0, 10, 20]
    assert loop.time() - started < 1.0 and handler.batches == [[0, 1, 2]]
    rest[2].cancel()  # the fourth item lingers alone: not waited for here
    await batcher.close()


class Gate:
    """Holds every batch until released; counts batches in the handler at once."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.inside = 0
        self.most_inside = 0

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            await self.open.wait()
        finally:
            self.inside -= 1
        return [i * 10 for i in items]


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_concurrency_bounds_the_batches_in_the_handler(concurrency: int) -> None:
    handler = Gate()
    batcher: Batcher[int, int] = Batcher(handler, max_size=2, concurrency=concurrency)
    waiting = [asyncio.ensure_future(batcher.submit(i)) for i in range(7)]
    for _ in range(20):
        await asyncio.sleep(0.005)
    assert handler.inside == concurrency  # the others gather meanwhile
    handler.open.set()
    assert await asyncio.gather(*waiting) == [i * 10 for i in range(7)]
    assert handler.most_inside == concurrency and batcher.batches == 4
    await batcher.close()


async def test_close_cancels_batches_in_the_handler() -> None:
    handler = Gate()
    batcher: Batcher[int, int] = Batcher(handler, max_size=1, concurrency=2)
    waiting = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    await batcher.close()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert handler.inside == 0

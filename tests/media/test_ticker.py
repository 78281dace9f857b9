"""The shared frame clock: slots, deadlines from each member's origin, isolation of failures."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from media.clock import FramePacer
from media.ticker import FrameTicker

PERIOD_S = 0.020


class Member:
    """Counts its frames and when they came, on its own pacer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pacer: FramePacer | None = None
        self.calls: list[tuple[int, int, float, float]] = []

    def on_frames(self, skip: int, send: int, now: float, deadline: float) -> None:
        assert self.pacer is not None
        first = self.pacer.next_index
        self.pacer.next_index += skip + send
        # The deadline handed in is this member's own frame deadline.
        assert deadline == pytest.approx(self.pacer.deadline(first), abs=1e-9)
        self.calls.append((skip, send, now, deadline))

    @property
    def frames(self) -> int:
        return sum(skip + send for skip, send, _, _ in self.calls)


class Failing(Member):
    def on_frames(self, skip: int, send: int, now: float, deadline: float) -> None:
        super().on_frames(skip, send, now, deadline)
        raise RuntimeError("a broken call")


async def test_members_spread_over_the_slots_and_each_keeps_its_deadlines():
    loop = asyncio.get_running_loop()
    ticker = FrameTicker(loop, slots=10)
    members = [Member(loop) for _ in range(30)]
    now = loop.time()
    for member in members:
        member.pacer = ticker.join(member, now)
    assert ticker.slot_sizes() == [3] * 10
    origins = sorted({round(m.pacer.origin - now, 6) for m in members})
    # Ten phases, 2 ms apart, within one period from now.
    assert len(origins) == 10
    assert all(0 <= o < PERIOD_S + 1e-6 for o in origins)
    await asyncio.sleep(0.25)
    ticker.close()
    for member in members:
        assert 10 <= member.frames <= 15
        # Woken on or after each deadline (1 ms early at most: uvloop's clock
        # counts whole ms), never by drifting: deadlines are origin + n * 20 ms.
        for _, _, woke, deadline in member.calls:
            assert woke >= deadline - 0.0011
        steps = {round(b[3] - a[3], 6) for a, b in itertools.pairwise(member.calls)}
        assert steps <= {PERIOD_S, 2 * PERIOD_S, 3 * PERIOD_S}
    # One wake-up per slot deadline, not one per member.
    assert ticker.wakeups <= 12.5 * 10 + 10


async def test_a_failing_member_does_not_stop_the_others():
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        ticker = FrameTicker(loop, slots=1)
        good, bad = Member(loop), Failing(loop)
        now = loop.time()
        bad.pacer = ticker.join(bad, now)
        good.pacer = ticker.join(good, now)
        await asyncio.sleep(0.1)
        ticker.close()
    finally:
        loop.set_exception_handler(None)
    assert good.frames >= 4 and bad.frames >= 4
    assert errors and isinstance(errors[0]["exception"], RuntimeError)


async def test_leave_stops_the_frames_and_an_idle_ticker_books_no_timer():
    loop = asyncio.get_running_loop()
    ticker = FrameTicker(loop)
    member = Member(loop)
    member.pacer = ticker.join(member, loop.time())
    await asyncio.sleep(0.05)
    ticker.leave(member)
    count = member.frames
    assert count >= 2
    await asyncio.sleep(0.05)
    assert member.frames == count
    assert ticker.members == 0
    assert ticker._timer is None  # the last wake-up found nobody and booked nothing
    ticker.close()
    with pytest.raises(RuntimeError):
        ticker.join(member, loop.time())

"""One 20 ms clock for every call of a worker: a timer per slot, not per call.

Rules of this file:

- The edge of ``media.clock``: one ``loop.call_at`` chain drives any number of
  RTP sessions. A per-call timer costs a timer handle, a heap push and a
  callback per call every 20 ms; here one wake-up serves every call of a slot.
- The period is cut into ``slots`` phases (1 ms apart by default). A call
  joins the least-loaded slot and its frames fall on that slot's deadlines,
  ``origin + n * period`` (``media.clock.FramePacer``: counted from the
  origin, never by adding to the last wake-up). Spreading the calls over the
  slots spreads the sends over the period, so a thousand calls do not send a
  thousand packets in one burst (which would make the last ones late).
- A member is anything with ``on_frames(skip, send, now, deadline)``: the
  frames to skip and to send, the time read at the wake-up, and the
  deadline of the first frame. A member that raises does not stop the
  others nor the clock: its error goes to the loop's exception handler, as
  a failing timer callback's would.
- Each wake-up first reads the datagrams waiting on the members' RTP
  sockets (``media.receive_poller.ReceivePoller``, the ``receiver``
  attribute), then sends the frames due: the loop wakes for the clock, not
  for each packet. While sockets are watched it wakes at least every
  ``poll_interval_s`` (1 ms), so a datagram waits at most that long.
- The owner closes the ticker (``close()``); with no member left it books
  no timer, so an idle ticker costs nothing.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

from media.clock import FramePacer
from media.receive_poller import ReceivePoller

__all__ = [
    "FrameTicker",
    "TickMember",
]

# uvloop's clock counts whole milliseconds, so a timer may fire with the time
# read just short of its deadline: a frame due within this is sent now rather
# than on one more wake-up.
EARLY_S = 0.001


class TickMember(Protocol):
    """What a ticker drives (``media.session.RtpSession``)."""

    def on_frames(self, skip: int, send: int, now: float, deadline: float) -> None:
        """Skip ``skip`` frames, then send ``send``; the first of them was due at ``deadline``."""
        ...


class _Slot:
    __slots__ = ("members", "pacer", "snapshot")

    def __init__(self, pacer: FramePacer) -> None:
        self.pacer = pacer
        self.members: list[TickMember] = []
        self.snapshot: tuple[TickMember, ...] = ()


class FrameTicker:
    """Wakes up once per slot deadline and hands the frames due to the slot's members."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        period_s: float = 0.020,
        slots: int = 20,
        max_burst: int = 3,
        epoch: float | None = None,
        poll_interval_s: float = 0.001,
    ) -> None:
        if slots < 1:
            raise ValueError("a ticker needs at least one slot")
        self._loop = loop or asyncio.get_running_loop()
        self.period_s = period_s
        self.poll_interval_s = poll_interval_s
        if epoch is None:
            epoch = self._loop.time()
        step = period_s / slots
        self._slots = [
            _Slot(FramePacer(origin=epoch + i * step, period_s=period_s, max_burst=max_burst))
            for i in range(slots)
        ]
        self._timer: asyncio.TimerHandle | None = None
        self._wake_at: float | None = None
        self._closed = False
        self.wakeups = 0
        self.receiver = ReceivePoller(on_error=self._receive_failed)

    @property
    def members(self) -> int:
        """Members joined now."""
        return sum(len(slot.members) for slot in self._slots)

    def slot_sizes(self) -> list[int]:
        """Members per slot (for tests and benchmarks)."""
        return [len(slot.members) for slot in self._slots]

    def join(self, member: TickMember, now: float) -> FramePacer:
        """Add ``member``; return its pacer, whose frame 0 is the slot's next deadline."""
        if self._closed:
            raise RuntimeError("the ticker is closed")
        best: _Slot | None = None
        best_key: tuple[int, float] | None = None
        for slot in self._slots:
            pacer = slot.pacer
            if not slot.members:
                # An idle slot's pacer did not move: bring it to the first deadline from now.
                pacer.next_index = max(0, math.ceil((now - pacer.origin) / pacer.period_s - 1e-9))
            key = (len(slot.members), pacer.deadline())
            if best_key is None or key < best_key:
                best, best_key = slot, key
        assert best is not None
        best.members.append(member)
        best.snapshot = tuple(best.members)
        origin = best.pacer.deadline()
        self._book(origin)
        return FramePacer(origin=origin, period_s=self.period_s, max_burst=best.pacer.max_burst)

    def leave(self, member: TickMember) -> None:
        """Remove ``member`` (no-op when it is not here)."""
        for slot in self._slots:
            if member in slot.members:
                slot.members.remove(member)
                slot.snapshot = tuple(slot.members)
                return

    def close(self) -> None:
        """Stop the clock and forget the members (idempotent)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._wake_at = None
        for slot in self._slots:
            slot.members.clear()
            slot.snapshot = ()
        self.receiver.close()

    def _receive_failed(self, exc: Exception, fd: object) -> None:
        self._loop.call_exception_handler(
            {"message": "RTP datagram handler failed", "exception": exc, "fd": fd}
        )

    def _book(self, when: float) -> None:
        if self._wake_at is not None and self._wake_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._wake_at = when
        self._timer = self._loop.call_at(when, self._wake)

    def _wake(self) -> None:
        self._timer = self._wake_at = None
        self.wakeups += 1
        self.receiver.poll()
        now = self._loop.time()
        horizon = now + EARLY_S
        following: float | None = None
        for slot in self._slots:
            if not slot.snapshot:
                continue
            pacer = slot.pacer
            if pacer.origin + pacer.next_index * pacer.period_s <= horizon:
                deadline = pacer.deadline()
                skip, send = pacer.due(horizon)
                self._run(slot.snapshot, skip, send, now, deadline)
            if slot.members:
                due = pacer.origin + pacer.next_index * pacer.period_s
                if following is None or due < following:
                    following = due
        if len(self.receiver) and not self._closed:
            # Datagrams are read on wake-ups only: wake at least every
            # poll_interval_s while sockets are watched, so that a lone
            # call's packets are not held for a whole period.
            poll_at = now + self.poll_interval_s
            if following is None or poll_at < following:
                following = poll_at
        if following is not None and not self._closed:
            self._book(following)

    def _run(
        self, members: tuple[TickMember, ...], skip: int, send: int, now: float, deadline: float
    ) -> None:
        for member in members:
            try:
                member.on_frames(skip, send, now, deadline)
            except Exception as exc:  # one call's failure must not stop the others
                self._loop.call_exception_handler(
                    {"message": "RTP frame callback failed", "exception": exc, "member": member}
                )

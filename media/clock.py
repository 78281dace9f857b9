"""Frame pacing on deadlines counted from a stream origin, and a lateness histogram.

Rules of this file:

- Pure: the time is handed in. The edge wakes up at ``pacer.deadline()``
  (``loop.call_at``) and asks ``pacer.due(now)`` what to do.
- Frame ``n`` is due at ``origin + n * period_s``, computed afresh from the
  origin every time: never by adding a period to the last wake-up, so a
  late wake-up does not push every later frame back (no drift).
- A wake-up that finds several frames due sends up to ``max_burst`` of them
  at once (catching up after a short stall) and skips the older ones (after
  a long stall the stream moves on: the RTP timestamp of the skipped frames
  is advanced by the caller, so the receiver sees a gap, not a time warp).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "FramePacer",
    "LatenessHistogram",
]


@dataclass(slots=True)
class FramePacer:
    """Decides which frames are due at each wake-up of a 20 ms (by default) stream."""

    origin: float
    period_s: float = 0.020
    max_burst: int = 3
    next_index: int = 0  # the first frame not yet sent or skipped
    frames_sent: int = 0
    frames_skipped: int = 0

    def deadline(self, index: int | None = None) -> float:
        """When frame ``index`` (by default the next one) is due."""
        if index is None:
            index = self.next_index
        return self.origin + index * self.period_s

    def due(self, now: float) -> tuple[int, int]:
        """Return ``(skip, send)``: frames to skip, then frames to send, at ``now``.

        Both counts start at ``next_index``, which moves past them. ``send`` is
        0 when woken early (no frame due yet).
        """
        # The last frame whose deadline has passed; a tiny epsilon keeps a
        # wake-up exactly on a deadline from being read as just before it.
        last_due = int((now - self.origin) / self.period_s + 1e-9)
        count = last_due - self.next_index + 1
        if count <= 0:
            return 0, 0
        skip = max(0, count - self.max_burst)
        send = count - skip
        self.next_index += count
        self.frames_skipped += skip
        self.frames_sent += send
        return skip, send


@dataclass(slots=True)
class LatenessHistogram:
    """Counts of how late frames went out, in buckets of ``bucket_s``.

    Recording one value is an index and an increment (no allocation), so
    every packet can be measured; histograms of many streams merge by adding.
    Values past the last bucket land in it (the percentile then reads as
    "at least" that much).
    """

    bucket_s: float = 0.0001
    buckets: int = 1000
    counts: list[int] = field(default_factory=list)
    total: int = 0
    maximum_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * self.buckets

    def record(self, lateness_s: float) -> None:
        """Count one frame sent ``lateness_s`` after its deadline (negative is 0)."""
        index = int(lateness_s / self.bucket_s)
        if index < 0:
            index = 0
        elif index >= self.buckets:
            index = self.buckets - 1
        self.counts[index] += 1
        self.total += 1
        if lateness_s > self.maximum_s:
            self.maximum_s = lateness_s

    def merge(self, other: LatenessHistogram) -> None:
        """Add another histogram of the same bucketing into this one."""
        if other.bucket_s != self.bucket_s or other.buckets != self.buckets:
            raise ValueError("histograms with different buckets cannot be merged")
        for i, count in enumerate(other.counts):
            self.counts[i] += count
        self.total += other.total
        self.maximum_s = max(self.maximum_s, other.maximum_s)

    def percentile(self, fraction: float) -> float:
        """The upper edge of the bucket holding the ``fraction`` quantile (0.99 for p99)."""
        if self.total == 0:
            return 0.0
        rank = fraction * self.total
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return (i + 1) * self.bucket_s
        return self.buckets * self.bucket_s

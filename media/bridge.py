"""Two calls' RTP sessions joined at the frame level: each leg hears the other.

Rules of this file:

- Each session already runs its own 20 ms clock, jitter buffer and codec;
  the bridge only moves decoded frames across. A leg's ``on_audio`` (its
  played-out frame, every 20 ms once audio has come) is copied into a short
  queue that the other leg's ``source`` reads from at its own deadlines. No
  task and no timer of its own: callbacks only, never awaiting.
- The two clocks are not locked together, so a queue may grow (the reader
  runs a little slow) or run dry (a little fast). It holds at most
  ``max_frames``: past that the oldest frame is dropped, so the delay never
  builds up; dry, the reader sends what it sends with nothing to play
  (comfort silence, by its session's config). Both are counted.
- DTMF a leg receives (RFC 4733 or INFO relayed by the caller) is sent on
  to the other as RFC 4733 events, when that leg agreed to telephone-event.
- ``close()`` gives both sessions back the source and callbacks ``join``
  took. The sessions' recorders are left alone: a leg that records goes on
  recording, now with the other leg's audio as what it sends.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from media.dtmf import DtmfDigit

if TYPE_CHECKING:
    from media.session import RtpSession

__all__ = ["BridgeStats", "FrameBridge", "FrameQueue"]


class FrameQueue:
    """One direction of a bridge: frames in from one leg, read out by the other."""

    __slots__ = ("_frames", "dropped", "empty_reads", "frames_in", "frames_out", "max_frames")

    def __init__(self, max_frames: int = 5) -> None:
        if max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        self.max_frames = max_frames
        self._frames: deque[NDArray[np.int16]] = deque()
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0  # the oldest, when the reader fell behind
        self.empty_reads = 0  # the reader came and nothing was there

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, samples: NDArray[np.int16]) -> None:
        """Take a copy of one frame (the session's array is only valid during its callback)."""
        frames = self._frames
        if len(frames) >= self.max_frames:
            frames.popleft()
            self.dropped += 1
        frames.append(samples.copy())
        self.frames_in += 1

    def read_frame(self) -> NDArray[np.int16] | None:
        """The oldest frame, or None when dry (``AudioSource``)."""
        if not self._frames:
            self.empty_reads += 1
            return None
        self.frames_out += 1
        return self._frames.popleft()

    def clear(self) -> None:
        """Drop what waits."""
        self._frames.clear()


class BridgeStats:
    """What crossed a bridge, per direction (``a_to_b`` is heard by leg B)."""

    __slots__ = ("a_to_b", "b_to_a", "dtmf_relayed")

    def __init__(self, a_to_b: FrameQueue, b_to_a: FrameQueue, dtmf_relayed: int) -> None:
        self.a_to_b = a_to_b
        self.b_to_a = b_to_a
        self.dtmf_relayed = dtmf_relayed

    def as_dict(self) -> dict[str, int]:
        """Counters by name, for the call's event."""
        out: dict[str, int] = {"dtmf_relayed": self.dtmf_relayed}
        for name, queue in (("a_to_b", self.a_to_b), ("b_to_a", self.b_to_a)):
            out[f"{name}_frames"] = queue.frames_out
            out[f"{name}_dropped"] = queue.dropped
        return out


class FrameBridge:
    """Join sessions ``a`` and ``b``: ``join()`` wires them, ``close()`` lets go."""

    def __init__(self, a: RtpSession, b: RtpSession, *, max_frames: int = 5) -> None:
        self.a = a
        self.b = b
        self.a_to_b = FrameQueue(max_frames)
        self.b_to_a = FrameQueue(max_frames)
        self.dtmf_relayed = 0
        self._saved: list[tuple[RtpSession, Any, Any, Any]] = []

    def join(self) -> None:
        """Take over both sessions' ``source``, ``on_audio`` and ``on_dtmf``."""
        if self._saved:
            return
        legs = ((self.a, self.b_to_a, self.a_to_b), (self.b, self.a_to_b, self.b_to_a))
        for session, heard, said in legs:
            self._saved.append((session, session.source, session.on_audio, session.on_dtmf))
            session.source = heard
            session.on_audio = said.push
        self.a.on_dtmf = lambda digit: self._relay(digit, self.b)
        self.b.on_dtmf = lambda digit: self._relay(digit, self.a)

    def close(self) -> None:
        """Give the sessions back what ``join`` took (idempotent)."""
        for session, source, on_audio, on_dtmf in self._saved:
            session.source, session.on_audio, session.on_dtmf = source, on_audio, on_dtmf
        self._saved.clear()
        self.a_to_b.clear()
        self.b_to_a.clear()

    def stats(self) -> BridgeStats:
        """The counters so far."""
        return BridgeStats(self.a_to_b, self.b_to_a, self.dtmf_relayed)

    def _relay(self, digit: DtmfDigit, to: RtpSession) -> None:
        if digit.digit is None or to.closed:
            return
        try:
            to.send_dtmf(digit.digit)
        except ValueError:
            return  # that leg agreed no telephone-event: the digit goes no further
        self.dtmf_relayed += 1

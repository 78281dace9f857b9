"""An adaptive jitter buffer for incoming 20 ms audio frames.

Rules of this file:

- Pure: ``put`` is told when a packet arrived and ``get`` what time it is; the
  caller calls ``get`` once per frame period on its own deadline schedule.
- ``get`` always returns exactly one frame of samples: the next packet's
  audio, or a concealment frame when it is missing (the last frame repeated
  and attenuated, a few times, then silence). The output never stalls.
- Packets are placed by extended sequence number (wrap-around handled) and
  timed by RTP timestamp: a short timestamp gap in the middle of playout
  (silence suppression) is played out as silence, so the output stays on the
  sender's clock.
- The playout delay starts at ``initial_delay_ms`` and adapts: it grows at
  once when the observed jitter calls for more, and shrinks one frame at a
  time only after the lower need has held for ``shrink_after_s``. A new
  talk-spurt after an underrun waits the current target delay again.
- Memory and delay are bounded: at most ``capacity_frames`` packets are held,
  and playout skips ahead rather than fall more than ``max_delay_ms`` behind.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from media.g711 import ulaw_decode
from media.rtp import seq_diff, ts_diff

__all__ = [
    "AudioFrame",
    "FrameKind",
    "JitterBuffer",
    "JitterConfig",
    "JitterStats",
    "PutResult",
]


@dataclass(frozen=True, slots=True)
class JitterConfig:
    """Tuning of a jitter buffer; the defaults suit G.711 at 20 ms over the Internet."""

    clock_rate: int = 8000
    frame_ms: int = 20
    initial_delay_ms: int = 60
    min_delay_ms: int = 40
    max_delay_ms: int = 300
    capacity_frames: int = 50
    # Target delay = one frame + jitter_factor * observed jitter.
    jitter_factor: float = 4.0
    shrink_after_s: float = 5.0
    concealment_frames: int = 3
    concealment_gain: float = 0.5
    # A sequence jump larger than this restarts playout at the new packet.
    max_sequence_jump: int = 500

    @property
    def samples_per_frame(self) -> int:
        """Samples in one frame at the clock rate."""
        return self.clock_rate * self.frame_ms // 1000


class FrameKind(enum.Enum):
    """Where the samples of a frame came from."""

    AUDIO = "audio"  # a received packet
    CONCEALED = "concealed"  # the last audio repeated, attenuated
    SILENCE = "silence"  # nothing to play: zeros


class PutResult(enum.Enum):
    """What ``put`` did with a packet."""

    BUFFERED = "buffered"
    LATE = "late"  # its turn to play has passed: dropped
    DUPLICATE = "duplicate"  # already buffered or played: dropped


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One frame of output: ``samples`` holds exactly one frame of int16 audio."""

    samples: NDArray[np.int16]
    kind: FrameKind
    sequence_number: int | None = None
    timestamp: int | None = None


@dataclass(slots=True)
class JitterStats:
    """Counters of a jitter buffer, lifetime of the call."""

    received: int = 0
    played: int = 0
    concealed: int = 0
    silence: int = 0
    lost: int = 0
    late: int = 0
    duplicates: int = 0
    overflow_drops: int = 0
    shrink_drops: int = 0
    underruns: int = 0
    resets: int = 0


@dataclass(slots=True)
class _Entry:
    timestamp: int
    payload: bytes
    arrival: float


class JitterBuffer:
    """Reorders, times and conceals one incoming audio stream."""

    def __init__(
        self,
        config: JitterConfig | None = None,
        decode: Callable[[bytes], NDArray[np.int16]] = ulaw_decode,
    ) -> None:
        self.config = config or JitterConfig()
        self._decode = decode
        self._samples = self.config.samples_per_frame
        self._silence = np.zeros(self._samples, dtype=np.int16)
        self._silence.flags.writeable = False
        self.stats = JitterStats()
        self.target_delay_ms = float(self.config.initial_delay_ms)
        self.jitter_ms = 0.0
        self._ssrc: int | None = None
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._buffer: dict[int, _Entry] = {}
        self._highest: int | None = None  # highest extended sequence number seen
        self._next: int | None = None  # extended sequence number to play next
        self._next_timestamp: int | None = None
        self._playing = False
        self._played: deque[int] = deque(maxlen=64)
        self._played_set: set[int] = set()
        self._last_samples: NDArray[np.int16] | None = None
        self._concealed_run = 0
        self._last_arrival: float | None = None
        self._last_timestamp = 0
        self._lower_need_since: float | None = None
        self._over_target_since: float | None = None

    # -- input -----------------------------------------------------------------------

    @property
    def depth_frames(self) -> int:
        """Packets held now."""
        return len(self._buffer)

    def put(
        self,
        sequence_number: int,
        timestamp: int,
        payload: bytes,
        arrival: float,
        ssrc: int | None = None,
    ) -> PutResult:
        """Take one packet's payload that arrived at ``arrival`` seconds."""
        config = self.config
        self.stats.received += 1
        if ssrc is not None and ssrc != self._ssrc:
            if self._ssrc is not None:
                # A new source restarts numbering and timing: start over with it.
                self.stats.resets += 1
                self._reset_stream()
            self._ssrc = ssrc

        if self._highest is None:
            extended = sequence_number
        else:
            extended = self._highest + seq_diff(sequence_number, self._highest & 0xFFFF)
            reference = self._next if self._next is not None else self._highest
            if abs(extended - reference) > config.max_sequence_jump:
                self.stats.resets += 1
                self._reset_stream()
                extended = sequence_number

        if self._next is not None and extended < self._next:
            if extended in self._played_set:
                self.stats.duplicates += 1
                return PutResult.DUPLICATE
            self.stats.late += 1
            return PutResult.LATE
        if extended in self._buffer:
            self.stats.duplicates += 1
            return PutResult.DUPLICATE

        if self._highest is None or extended > self._highest:
            self._observe_jitter(timestamp, arrival)
            self._highest = extended
        self._buffer[extended] = _Entry(timestamp, bytes(payload), arrival)

        while len(self._buffer) > config.capacity_frames:
            oldest = min(self._buffer)
            del self._buffer[oldest]
            self.stats.overflow_drops += 1
            if self._next is not None and self._next <= oldest:
                self._next = oldest + 1
        return PutResult.BUFFERED

    def _observe_jitter(self, timestamp: int, arrival: float) -> None:
        config = self.config
        if self._last_arrival is not None:
            # RFC 3550 A.8's estimator, in ms: transit-time change between
            # packets in sequence, smoothed with gain 1/16.
            transit_change_ms = (arrival - self._last_arrival) * 1000 - ts_diff(
                timestamp, self._last_timestamp
            ) * 1000 / config.clock_rate
            self.jitter_ms += (abs(transit_change_ms) - self.jitter_ms) / 16
        self._last_arrival = arrival
        self._last_timestamp = timestamp
        self._adapt(arrival)

    def _adapt(self, now: float) -> None:
        config = self.config
        need = config.frame_ms + config.jitter_factor * self.jitter_ms
        need = math.ceil(need / config.frame_ms) * config.frame_ms
        need = float(min(config.max_delay_ms, max(config.min_delay_ms, need)))
        if need >= self.target_delay_ms:
            self.target_delay_ms = need  # grow at once: underruns are audible
            self._lower_need_since = None
        elif self._lower_need_since is None:
            self._lower_need_since = now
        elif now - self._lower_need_since >= config.shrink_after_s:
            self.target_delay_ms -= config.frame_ms  # shrink by one frame at a time
            self._lower_need_since = now

    # -- output ----------------------------------------------------------------------

    def get(self, now: float) -> AudioFrame:
        """Return the frame to play for the period starting at ``now``."""
        if not self._playing and not self._start_playout(now):
            return self._conceal()
        assert self._next is not None
        self._bound_delay(now)

        entry = self._buffer.get(self._next)
        if entry is None:
            if self._buffer:
                # Later packets are here but this one is not: it is lost.
                self.stats.lost += 1
                self._next += 1
                if self._next_timestamp is not None:
                    self._next_timestamp = (self._next_timestamp + self._samples) & 0xFFFFFFFF
                return self._conceal()
            # Nothing to play: the peer went silent or the network stalled.
            # Keep our place, and wait the target delay once packets come back.
            self.stats.underruns += 1
            self._playing = False
            return self._conceal()

        if self._next_timestamp is not None:
            gap = ts_diff(entry.timestamp, self._next_timestamp)
            if 0 < gap <= self.config.max_delay_ms * self.config.clock_rate // 1000:
                # Suppressed silence inside a talk-spurt: play it out as silence.
                self._next_timestamp = (self._next_timestamp + self._samples) & 0xFFFFFFFF
                return self._silence_frame()

        del self._buffer[self._next]
        sequence = self._next
        self._mark_played(sequence)
        self._next += 1
        self._next_timestamp = (entry.timestamp + self._samples) & 0xFFFFFFFF
        samples = self._samples_of(entry.payload)
        self._last_samples = samples
        self._concealed_run = 0
        self.stats.played += 1
        return AudioFrame(samples, FrameKind.AUDIO, sequence & 0xFFFF, entry.timestamp)

    def _start_playout(self, now: float) -> bool:
        if not self._buffer:
            return False
        oldest = min(self._buffer)
        waited_ms = (now - self._buffer[oldest].arrival) * 1000
        held_ms = len(self._buffer) * self.config.frame_ms
        if waited_ms < self.target_delay_ms and held_ms < self.target_delay_ms:
            return False
        if self._next is None:
            self._next = oldest
        elif self._next < oldest:
            self.stats.lost += oldest - self._next
            self._next = oldest
        self._next_timestamp = None  # a new talk-spurt sets the clock afresh
        self._playing = True
        self._over_target_since = None
        return True

    def _bound_delay(self, now: float) -> None:
        assert self._next is not None and self._highest is not None
        config = self.config
        span_ms = (self._highest - self._next + 1) * config.frame_ms
        if span_ms > config.max_delay_ms:
            # Too far behind: skip ahead to the target delay.
            keep_from = self._highest + 1 - int(self.target_delay_ms // config.frame_ms)
            self._skip_to(keep_from, shrinking=False)
            return
        if span_ms > self.target_delay_ms + 2 * config.frame_ms:
            if self._over_target_since is None:
                self._over_target_since = now
            elif now - self._over_target_since >= config.shrink_after_s:
                self._skip_to(self._next + 1, shrinking=True)
                self._over_target_since = now
        else:
            self._over_target_since = None

    def _skip_to(self, sequence: int, *, shrinking: bool) -> None:
        assert self._next is not None
        while self._next < sequence:
            if self._buffer.pop(self._next, None) is not None:
                if shrinking:
                    self.stats.shrink_drops += 1
                else:
                    self.stats.overflow_drops += 1
            self._next += 1
        self._next_timestamp = None

    def _mark_played(self, sequence: int) -> None:
        if len(self._played) == self._played.maxlen:
            self._played_set.discard(self._played[0])
        self._played.append(sequence)
        self._played_set.add(sequence)

    def _samples_of(self, payload: bytes) -> NDArray[np.int16]:
        samples = self._decode(payload)
        if samples.shape[0] == self._samples:
            return samples
        # A packet of another duration (ptime mismatch): fit it to one frame.
        fitted = np.zeros(self._samples, dtype=np.int16)
        count = min(self._samples, samples.shape[0])
        fitted[:count] = samples[:count]
        return fitted

    def _conceal(self) -> AudioFrame:
        config = self.config
        if self._last_samples is not None and self._concealed_run < config.concealment_frames:
            self._concealed_run += 1
            gain = config.concealment_gain**self._concealed_run
            samples = (self._last_samples * gain).astype(np.int16)
            self.stats.concealed += 1
            return AudioFrame(samples, FrameKind.CONCEALED)
        return self._silence_frame()

    def _silence_frame(self) -> AudioFrame:
        self.stats.silence += 1
        return AudioFrame(self._silence, FrameKind.SILENCE)

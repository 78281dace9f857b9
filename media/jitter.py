"""An adaptive jitter buffer: packets of any duration in, 20 ms frames out.

Rules of this file:

- Pure: ``put`` is told when a packet arrived and ``get`` what time it is; the
  caller calls ``get`` (or ``next_frame``) once per frame period on its own
  deadline schedule.
- ``get`` always returns exactly one frame of samples: the audio due, or a
  concealment frame when it is missing (the last frame repeated and
  attenuated, a few times, then silence). The output never stalls.
- Packets may carry any duration (10, 20, 30, 40, 60 ms of G.711 ...), and a
  peer may change it mid-call: a packet's duration is the sample count its
  payload decodes to. Playout follows a cursor on the RTP timestamp axis, so
  a 30 ms packet fills one frame and a half, and a frame may be cut from two
  packets. Packets are placed by extended sequence number (wrap-around
  handled): reorder, duplicates and loss are judged by sequence, timing by
  timestamp. A short timestamp gap with consecutive sequence numbers
  (silence suppression) plays out as silence; the part of a frame whose
  packet is missing while later ones are here is concealed; a packet whose
  whole span the cursor has passed is late.
- The playout delay starts at ``initial_delay_ms`` and adapts: it grows at
  once when the observed jitter (or the packet duration) calls for more, and
  shrinks one frame at a time only after the lower need has held for
  ``shrink_after_s``. A new talk-spurt after an underrun waits the current
  target delay again.
- Memory and delay are bounded: at most ``capacity_frames`` packets are held,
  and playout skips ahead rather than fall more than ``max_delay_ms`` behind.
- The per-packet and per-frame paths allocate little: entries are tuples, a
  20 ms packet aligned on the cursor is handed out as decoded (no copy), and
  ``next_frame`` returns the samples without building an ``AudioFrame``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from media.g711 import ulaw_decode
from media.rtp import ts_diff

__all__ = [
    "AudioFrame",
    "FrameKind",
    "JitterBuffer",
    "JitterConfig",
    "JitterStats",
    "PutResult",
]

_TS_MASK = 0xFFFFFFFF
# Played sequence numbers remembered (a bitmask) to tell a duplicate from a late packet.
_PLAYED_HISTORY = 64
_PLAYED_MASK = (1 << _PLAYED_HISTORY) - 1


@dataclass(frozen=True, slots=True)
class JitterConfig:
    """Tuning of a jitter buffer; the defaults suit G.711 at 20 ms over the Internet."""

    clock_rate: int = 8000
    frame_ms: int = 20  # the output frame; packets may be of any duration
    initial_delay_ms: int = 60
    min_delay_ms: int = 40
    max_delay_ms: int = 300
    capacity_frames: int = 50  # packets held at most, whatever their duration
    # Target delay = one packet (at least one frame) + jitter_factor * observed jitter.
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

    AUDIO = "audio"  # received audio (a part may be concealed or silent)
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
    """Counters of a jitter buffer, lifetime of the call (``played`` counts packets)."""

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


# A held packet: (RTP timestamp, payload or its decoded samples, arrival time, samples in it).
# With ``samples_in`` given the payload is kept as it came and decoded when played.
_Entry = tuple[int, "bytes | NDArray[np.int16]", float, int]


class JitterBuffer:
    """Reorders, re-frames, times and conceals one incoming audio stream."""

    def __init__(
        self,
        config: JitterConfig | None = None,
        decode: Callable[[bytes], NDArray[np.int16]] = ulaw_decode,
        *,
        samples_in: Callable[[bytes], int] | None = None,
    ) -> None:
        self.config = config or JitterConfig()
        self._decode = decode
        # When a payload's length tells its duration (G.711: one byte a sample),
        # packets are held as they came and decoded only when played as samples.
        self._samples_in = samples_in
        config = self.config
        self._samples = config.samples_per_frame
        self._samples_per_ms = config.clock_rate / 1000
        self._max_gap = config.max_delay_ms * config.clock_rate // 1000
        self._silence = np.zeros(self._samples, dtype=np.int16)
        self._silence.flags.writeable = False
        self.stats = JitterStats()
        self.target_delay_ms = float(config.initial_delay_ms)
        self.jitter_ms = 0.0
        # What the last next_frame() returned (get() wraps them in an AudioFrame).
        self.kind = FrameKind.SILENCE
        self.sequence_number: int | None = None
        self.timestamp: int | None = None
        self._ssrc: int | None = None
        self._packet_samples = self._samples  # duration of the latest packet
        self._over_samples = 0
        self._set_thresholds()
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._buffer: dict[int, _Entry] = {}
        self._highest: int | None = None  # highest extended sequence number seen
        self._highest_end = 0  # timestamp just past the highest packet's audio
        self._next: int | None = None  # extended sequence number to play next
        self._next_ts: int | None = None  # timestamp of the next sample to play
        self._playing = False
        self._played_mask = 0  # bit i: sequence (_next - 1 - i) was played
        # The packet being played out, when a frame ended inside it.
        self._current: NDArray[np.int16] | None = None
        self._current_offset = 0
        self._current_sequence = 0
        self._current_timestamp = 0
        self._last_samples: NDArray[np.int16] | None = None
        self._last_payload: bytes | None = None  # the last frame, not decoded yet
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

    @property
    def ptime_ms(self) -> float:
        """The duration of the latest packet received, in ms."""
        return self._packet_samples / self._samples_per_ms

    def put(
        self,
        sequence_number: int,
        timestamp: int,
        payload: bytes,
        arrival: float,
        ssrc: int | None = None,
    ) -> PutResult:
        """Take one packet's payload that arrived at ``arrival`` seconds."""
        stats = self.stats
        stats.received += 1
        if ssrc is not None and ssrc != self._ssrc:
            if self._ssrc is not None:
                # A new source restarts numbering and timing: start over with it.
                stats.resets += 1
                self._reset_stream()
            self._ssrc = ssrc

        highest = self._highest
        next_ = self._next
        if highest is None:
            extended = sequence_number
        else:
            # seq_diff inline: the nearest extended number to the highest seen.
            extended = highest + (
                ((sequence_number - (highest & 0xFFFF) + 0x8000) & 0xFFFF) - 0x8000
            )
            reference = highest if next_ is None else next_
            if abs(extended - reference) > self.config.max_sequence_jump:
                stats.resets += 1
                self._reset_stream()
                extended = sequence_number
                highest = next_ = None

        buffer = self._buffer
        if next_ is not None and extended < next_:
            behind = next_ - 1 - extended
            if behind < _PLAYED_HISTORY and self._played_mask >> behind & 1:
                stats.duplicates += 1
                return PutResult.DUPLICATE
            stats.late += 1
            return PutResult.LATE
        if extended in buffer:
            stats.duplicates += 1
            return PutResult.DUPLICATE

        samples_in = self._samples_in
        if samples_in is None:
            data: bytes | NDArray[np.int16] = self._decode(payload)
            count = data.shape[0]  # type: ignore[union-attr]
        else:
            data = payload
            count = samples_in(payload)
        next_ts = self._next_ts
        if self._playing and next_ts is not None:
            # Still ahead by sequence, but the cursor is already past all of its audio.
            passed = ((next_ts - timestamp - count + 0x80000000) & _TS_MASK) - 0x80000000
            if 0 <= passed < self._max_gap:
                stats.late += 1
                return PutResult.LATE

        if highest is None or extended > highest:
            # RFC 3550 A.8's estimator, in ms: transit-time change between
            # packets in sequence, smoothed with gain 1/16.
            last_arrival = self._last_arrival
            if last_arrival is not None:
                change_ms = (arrival - last_arrival) * 1000 - (
                    ((timestamp - self._last_timestamp + 0x80000000) & _TS_MASK) - 0x80000000
                ) / self._samples_per_ms
                if change_ms < 0:
                    change_ms = -change_ms
                self.jitter_ms += (change_ms - self.jitter_ms) / 16
            self._last_arrival = arrival
            self._last_timestamp = timestamp
            if count != self._packet_samples and count:
                self._packet_samples = count
                self._set_thresholds()
            jitter_ms = self.jitter_ms
            if not (
                self._steady_low_ms < jitter_ms < self._steady_high_ms
                and self._lower_need_since is None
            ):
                self._adapt(arrival)
            self._highest = extended
            self._highest_end = (timestamp + count) & _TS_MASK
        buffer[extended] = (timestamp, data, arrival, count)

        if len(buffer) > self.config.capacity_frames:
            self._overflow()
        return PutResult.BUFFERED

    def _overflow(self) -> None:
        buffer = self._buffer
        while len(buffer) > self.config.capacity_frames:
            oldest = min(buffer)
            del buffer[oldest]
            self.stats.overflow_drops += 1
            if self._next is not None and self._next <= oldest:
                self._skip_sequences(oldest + 1 - self._next)
                self._current = None
                self._next_ts = None  # the next packet held sets the cursor

    def _adapt(self, now: float) -> None:
        config = self.config
        frame_ms = config.frame_ms
        packet_ms = self._packet_samples / self._samples_per_ms
        need = (packet_ms if packet_ms > frame_ms else frame_ms) + (
            config.jitter_factor * self.jitter_ms
        )
        need = float(math.ceil(need / frame_ms) * frame_ms)
        if need > config.max_delay_ms:
            need = float(config.max_delay_ms)
        if need < config.min_delay_ms:
            need = float(config.min_delay_ms)
        if need >= self.target_delay_ms:
            if need != self.target_delay_ms:
                self.target_delay_ms = need  # grow at once: underruns are audible
                self._set_thresholds()
            self._lower_need_since = None
        elif self._lower_need_since is None:
            self._lower_need_since = now
        elif now - self._lower_need_since >= config.shrink_after_s:
            self.target_delay_ms -= frame_ms  # shrink by one frame at a time
            self._set_thresholds()
            self._lower_need_since = now

    def _set_thresholds(self) -> None:
        # The span ahead of the cursor past which the delay is looked at (in
        # samples): over the target by more than a packet and a frame, or
        # over the maximum delay.
        config = self.config
        packet_ms = max(self.ptime_ms, config.frame_ms)
        over_ms = self.target_delay_ms + packet_ms + config.frame_ms
        self._over_samples = int(min(over_ms, config.max_delay_ms) * self._samples_per_ms)
        self._set_steady_band()

    def _set_steady_band(self) -> None:
        # The jitter estimates for which _adapt would find the need equal to
        # the target and change nothing: put() skips it inside this band
        # (strictly inside, so a boundary case still goes through _adapt).
        config = self.config
        frame_ms = config.frame_ms
        target = self.target_delay_ms
        base = max(self._packet_samples / self._samples_per_ms, frame_ms)
        low = high = math.inf  # empty: always adapt
        whole = target / frame_ms
        if whole == int(whole) and config.min_delay_ms <= target <= config.max_delay_ms:
            factor = config.jitter_factor
            if factor > 0:
                # need = ceil((base + factor * jitter) / frame) * frame equals the
                # target when target - frame < base + factor * jitter <= target;
                # the edges themselves (and float noise near them) are left out.
                low = (target - frame_ms - base) / factor + 1e-6
                high = (target - base) / factor - 1e-6
                if target <= config.min_delay_ms:
                    low = -math.inf
                if target >= config.max_delay_ms:
                    high = math.inf
        self._steady_low_ms = low
        self._steady_high_ms = high

    # -- output ----------------------------------------------------------------------

    def get(self, now: float) -> AudioFrame:
        """Return the frame to play for the period starting at ``now``."""
        samples = self.next_frame(now)
        return AudioFrame(samples, self.kind, self.sequence_number, self.timestamp)

    def next_frame(self, now: float) -> NDArray[np.int16]:
        """Like ``get`` without the ``AudioFrame``: the samples (read-only, not to be kept
        past the next call without a copy); ``kind``, ``sequence_number`` and
        ``timestamp`` tell about them."""
        frame = self.next_payload(now)
        if type(frame) is bytes:
            return self._decode(frame)
        return frame  # type: ignore[return-value]

    def next_payload(self, now: float) -> bytes | NDArray[np.int16]:
        """Like ``next_frame``, but a frame that is one whole packet held undecoded
        (``samples_in`` given) comes as its payload bytes: the caller decodes it
        only if it needs the samples."""
        if not self._playing and not self._start_playout(now):
            return self._conceal()
        next_ts = self._next_ts
        if next_ts is not None and (
            self._over_target_since is not None
            or ((self._highest_end - next_ts + 0x80000000) & _TS_MASK) - 0x80000000
            > self._over_samples
        ):
            self._bound_delay(now)
        if self._current is None:
            # The common case: the next packet is one frame long and starts at the cursor.
            entry = self._buffer.get(self._next)  # type: ignore[arg-type]
            if entry is not None:
                timestamp, data, _, count = entry
                next_ts = self._next_ts
                if count == self._samples and (next_ts is None or timestamp == next_ts):
                    sequence = self._next
                    assert sequence is not None
                    del self._buffer[sequence]
                    self._played_mask = ((self._played_mask << 1) | 1) & _PLAYED_MASK
                    self._next = sequence + 1
                    self._next_ts = (timestamp + self._samples) & _TS_MASK
                    if type(data) is bytes:
                        self._last_payload = data
                        self._last_samples = None
                    else:
                        self._last_samples = data  # type: ignore[assignment]
                    self._concealed_run = 0
                    self.stats.played += 1
                    self.kind = FrameKind.AUDIO
                    self.sequence_number = sequence & 0xFFFF
                    self.timestamp = timestamp
                    return data
        return self._assemble()

    def _assemble(self) -> NDArray[np.int16]:
        """Cut one frame from the cursor on: packet parts, concealment, silence."""
        frame = self._samples
        buffer = self._buffer
        stats = self.stats
        pieces: list[NDArray[np.int16]] = []
        filled = 0
        audio = concealed = False
        first_sequence: int | None = None
        first_timestamp: int | None = None
        while filled < frame:
            need = frame - filled
            current = self._current
            if current is not None:
                offset = self._current_offset
                count = min(need, current.shape[0] - offset)
                pieces.append(current[offset : offset + count])
                if first_sequence is None:
                    first_sequence = self._current_sequence & 0xFFFF
                    first_timestamp = (self._current_timestamp + offset) & _TS_MASK
                audio = True
                filled += count
                offset += count
                if offset >= current.shape[0]:
                    self._current = None
                else:
                    self._current_offset = offset
                assert self._next_ts is not None
                self._next_ts = (self._next_ts + count) & _TS_MASK
                continue

            next_ = self._next
            assert next_ is not None
            entry = buffer.get(next_)
            if entry is None:
                if not buffer:
                    # Nothing to play: the peer went silent or the network stalled.
                    # Keep our place, and wait the target delay once packets come back.
                    stats.underruns += 1
                    self._playing = False
                    if not filled:
                        return self._conceal()
                    pieces.append(self._silence[:need])
                    filled = frame
                    break
                # Later packets are here but this one is not.
                oldest = min(buffer)
                next_ts = self._next_ts
                gap = 0 if next_ts is None else ts_diff(buffer[oldest][0], next_ts)
                if gap <= 0 or gap > self._max_gap:
                    # The cursor has reached the next packet held: the missing ones are lost.
                    stats.lost += oldest - next_
                    self._skip_sequences(oldest - next_)
                    continue
                # Conceal up to where the next packet held starts; the missing
                # one may still come and fill the rest of its time.
                count = min(need, gap)
                pieces.append(self._concealment(filled, count))
                concealed = True
                filled += count
                assert next_ts is not None
                self._next_ts = (next_ts + count) & _TS_MASK
                continue

            timestamp, data, _, length = entry
            # type() is, not isinstance: the cheaper test; mypy does not narrow on it.
            samples: NDArray[np.int16] = self._decode(data) if type(data) is bytes else data  # type: ignore[assignment]
            next_ts = self._next_ts
            gap = 0 if next_ts is None else ts_diff(timestamp, next_ts)
            if 0 < gap <= self._max_gap:
                # Suppressed silence inside a talk-spurt: play it out as silence.
                count = min(need, gap)
                pieces.append(self._silence[:count])
                filled += count
                assert next_ts is not None
                self._next_ts = (next_ts + count) & _TS_MASK
                continue
            del buffer[next_]
            self._played_mask = ((self._played_mask << 1) | 1) & _PLAYED_MASK
            self._next = next_ + 1
            offset = 0
            if -self._max_gap <= gap < 0:
                offset = -gap  # the cursor is inside this packet already
                if offset >= length:
                    stats.late += 1  # all of it is in the past
                    continue
            else:
                # No gap, or a timestamp jump (the sender's clock moved): play on from here.
                self._next_ts = timestamp
            stats.played += 1
            self._current = samples
            self._current_offset = offset
            self._current_sequence = next_
            self._current_timestamp = timestamp

        samples = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        if audio:
            self.kind = FrameKind.AUDIO
            self.sequence_number = first_sequence
            self.timestamp = first_timestamp
            self._last_samples = samples
            self._last_payload = None
            if concealed:
                self._concealed_run += 1
                stats.concealed += 1
            else:
                self._concealed_run = 0
            return samples
        self.sequence_number = self.timestamp = None
        if concealed:
            self._concealed_run += 1
            stats.concealed += 1
            self.kind = FrameKind.CONCEALED
        else:
            stats.silence += 1
            self.kind = FrameKind.SILENCE
        return samples

    def _skip_sequences(self, count: int) -> None:
        assert self._next is not None
        self._next += count
        self._played_mask = (self._played_mask << count) & _PLAYED_MASK

    def _start_playout(self, now: float) -> bool:
        buffer = self._buffer
        if not buffer:
            return False
        oldest = min(buffer)
        timestamp, _, arrival, _ = buffer[oldest]
        waited_ms = (now - arrival) * 1000
        held_ms = sum(entry[3] for entry in buffer.values()) / self._samples_per_ms
        # Beyond one frame, the packet being played does not cushion jitter:
        # a 60 ms packet alone is no reason to start.
        cushion_ms = held_ms - max(0.0, self.ptime_ms - self.config.frame_ms)
        if waited_ms < self.target_delay_ms and cushion_ms < self.target_delay_ms:
            return False
        if self._next is None:
            self._next = oldest
        elif self._next < oldest:
            self.stats.lost += oldest - self._next
            self._skip_sequences(oldest - self._next)
        self._next_ts = timestamp  # a new talk-spurt sets the clock afresh
        self._current = None
        self._playing = True
        self._over_target_since = None
        return True

    def _bound_delay(self, now: float) -> None:
        next_ts = self._next_ts
        if next_ts is None:
            return
        config = self.config
        span_ms = ts_diff(self._highest_end, next_ts) / self._samples_per_ms
        if span_ms > config.max_delay_ms:
            # Too far behind: skip ahead to the target delay.
            self._skip_ahead()
            return
        if span_ms > self.target_delay_ms + max(self.ptime_ms, config.frame_ms) + config.frame_ms:
            if self._over_target_since is None:
                self._over_target_since = now
            elif now - self._over_target_since >= config.shrink_after_s:
                self._drop_one()
                self._over_target_since = now
        else:
            self._over_target_since = None

    def _skip_ahead(self) -> None:
        buffer = self._buffer
        keep_samples = self.target_delay_ms * self._samples_per_ms
        if self._current is not None:
            self._current = None
            self.stats.overflow_drops += 1
        self._next_ts = None
        while buffer:
            oldest = min(buffer)
            assert self._next is not None
            if oldest > self._next:
                self._skip_sequences(oldest - self._next)
            if ts_diff(self._highest_end, buffer[oldest][0]) <= keep_samples:
                break
            del buffer[oldest]
            self._skip_sequences(1)
            self.stats.overflow_drops += 1

    def _drop_one(self) -> None:
        # Shrink the delay by dropping one packet's worth of audio.
        if self._current is not None:
            assert self._next_ts is not None
            remaining = self._current.shape[0] - self._current_offset
            self._next_ts = (self._next_ts + remaining) & _TS_MASK
            self._current = None
            self.stats.shrink_drops += 1
            return
        assert self._next is not None
        entry = self._buffer.pop(self._next, None)
        if entry is not None:
            self.stats.shrink_drops += 1
            self._next_ts = (entry[0] + entry[3]) & _TS_MASK
        self._skip_sequences(1)

    def _concealment(self, offset: int, count: int) -> NDArray[np.int16]:
        config = self.config
        last = self._last_played()
        run = self._concealed_run + 1
        if last is None or run > config.concealment_frames:
            return self._silence[:count]
        gain = config.concealment_gain**run
        return (last[offset : offset + count] * gain).astype(np.int16)

    def _last_played(self) -> NDArray[np.int16] | None:
        if self._last_samples is None and self._last_payload is not None:
            self._last_samples = self._decode(self._last_payload)
            self._last_payload = None
        return self._last_samples

    def _conceal(self) -> NDArray[np.int16]:
        config = self.config
        self.sequence_number = self.timestamp = None
        last = self._last_played()
        if last is not None and self._concealed_run < config.concealment_frames:
            self._concealed_run += 1
            gain = config.concealment_gain**self._concealed_run
            self.stats.concealed += 1
            self.kind = FrameKind.CONCEALED
            return (last * gain).astype(np.int16)
        self.stats.silence += 1
        self.kind = FrameKind.SILENCE
        return self._silence

"""Call recording: an incremental stereo WAV writer and a two-leg time aligner.

Rules of this file:

- ``WavWriter`` writes 16-bit PCM WAV to a binary file object the caller
  opened (``"w+b"``: it must seek, and read back for the checksum) and
  closes. The header goes first with the sizes known so far, and the sizes
  are patched every ``patch_every_s`` of audio and on ``close()``, so a
  writer that dies leaves a file every WAV reader opens, missing at most
  the last seconds.
- ``StereoAligner`` puts the two legs of a call side by side: left is the
  callee (what we receive), right is our side (what we send). Each leg hands
  in samples with their position on a common sample clock; the aligner
  emits interleaved blocks in order, zeros wherever a leg had nothing (loss,
  silence suppression, no packets yet), so both channels always have the
  same length and stay in sync. It holds at most ``max_lag_ms`` of audio:
  past that, a leg that has not caught up is taken as silent, and what it
  sends later for that time is dropped (and counted).
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
from numpy.typing import NDArray

from media.rtp import ts_diff

__all__ = [
    "Leg",
    "StereoAligner",
    "WavSummary",
    "WavWriter",
]

_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_HEADER_SIZE = _HEADER.size  # 44
_MAX_DATA_BYTES = 0xFFFFFFFF - (_HEADER_SIZE - 8)  # the RIFF size field is 32 bits
_PCM = 1


class Leg(enum.IntEnum):
    """Channel of each call leg in the recording."""

    CALLEE = 0  # left: the far end, as received
    OURS = 1  # right: our prompts or voicebot, as sent


@dataclass(frozen=True, slots=True)
class WavSummary:
    """What ``WavWriter.close`` reports about the finished file."""

    frames: int
    duration_s: float
    size_bytes: int
    sha256: str


class WavWriter:
    """Appends 16-bit PCM frames to a WAV file, keeping its header valid as it goes."""

    def __init__(
        self,
        fileobj: BinaryIO,
        *,
        sample_rate: int = 8000,
        channels: int = 2,
        patch_every_s: float = 1.0,
    ) -> None:
        self._file = fileobj
        self.sample_rate = sample_rate
        self.channels = channels
        self.frames = 0
        self._patch_every_frames = max(1, int(patch_every_s * sample_rate))
        self._patched_frames = 0
        self._closed = False
        self._file.write(self._header(0))

    def _header(self, data_bytes: int) -> bytes:
        block_align = self.channels * 2
        return _HEADER.pack(
            b"RIFF",
            _HEADER_SIZE - 8 + data_bytes,
            b"WAVE",
            b"fmt ",
            16,
            _PCM,
            self.channels,
            self.sample_rate,
            self.sample_rate * block_align,
            block_align,
            16,
            b"data",
            data_bytes,
        )

    @property
    def data_bytes(self) -> int:
        """Octets of audio written so far."""
        return self.frames * self.channels * 2

    def write(self, frames: NDArray[np.int16]) -> None:
        """Append frames: shape (n, channels), or a flat interleaved array."""
        if self._closed:
            raise ValueError("write to a closed WavWriter")
        if frames.dtype != np.int16:
            raise TypeError(f"expected int16 samples, got {frames.dtype}")
        if frames.size % self.channels or (frames.ndim == 2 and frames.shape[1] != self.channels):
            raise ValueError(f"frames must have {self.channels} channels")
        count = frames.size // self.channels
        if self.data_bytes + frames.size * 2 > _MAX_DATA_BYTES:
            raise ValueError("a WAV file holds at most 4 GiB of audio")
        self._file.write(frames.astype("<i2", copy=False).tobytes())
        self.frames += count
        if self.frames - self._patched_frames >= self._patch_every_frames:
            self._patch()

    def _patch(self) -> None:
        # Rewrite the two size fields in place, then go back to the end.
        end = self._file.tell()
        self._file.seek(0)
        self._file.write(self._header(self.data_bytes)[:8])
        self._file.seek(_HEADER_SIZE - 4)
        self._file.write(struct.pack("<I", self.data_bytes))
        self._file.seek(end)
        self._file.flush()
        self._patched_frames = self.frames

    def close(self) -> WavSummary:
        """Patch the final sizes and return the file's duration and SHA-256.

        The file object stays open: whoever opened it closes it.
        """
        if not self._closed:
            self._patch()
            self._closed = True
        self._file.seek(0)
        digest = hashlib.sha256()
        size = 0
        while chunk := self._file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        return WavSummary(
            frames=self.frames,
            duration_s=self.frames / self.sample_rate,
            size_bytes=size,
            sha256=digest.hexdigest(),
        )


@dataclass(slots=True)
class _LegClock:
    ssrc: int | None
    last_timestamp: int
    last_index: int


@dataclass(slots=True)
class _LegState:
    segments: list[tuple[int, NDArray[np.int16]]] = field(default_factory=list)
    known_until: int = 0  # end of the latest audio handed in


_EMPTY = np.zeros((0, 2), dtype=np.int16)
_EMPTY.flags.writeable = False


class StereoAligner:
    """Aligns the two legs of a call on one sample clock and interleaves them."""

    def __init__(
        self, *, sample_rate: int = 8000, max_lag_ms: int = 500, resync_ms: int = 1000
    ) -> None:
        self.sample_rate = sample_rate
        self.max_lag = sample_rate * max_lag_ms // 1000
        self.resync = sample_rate * resync_ms // 1000
        self.position = 0  # frames emitted so far
        self.dropped_samples = 0  # arrived for time already emitted
        self.resyncs = 0
        self._legs = (_LegState(), _LegState())
        self._clocks: list[_LegClock | None] = [None, None]

    @property
    def pending_samples(self) -> int:
        """Samples held waiting for the other leg (bounded by the maximum lag)."""
        return sum(seg.shape[0] for leg in self._legs for _, seg in leg.segments)

    def push(self, leg: Leg | int, start: int, samples: NDArray[np.int16]) -> NDArray[np.int16]:
        """Hand in ``samples`` of one leg starting at sample index ``start``.

        Returns the stereo frames (shape (n, 2)) that became ready; often none.
        """
        state = self._legs[leg]
        end = start + samples.shape[0]
        if end <= self.position:
            self.dropped_samples += samples.shape[0]
            return _EMPTY
        if start < self.position:
            self.dropped_samples += self.position - start
            samples = samples[self.position - start :]
            start = self.position
        state.segments.append((start, samples))
        state.known_until = max(state.known_until, end)
        return self._emit(flush=False)

    def push_rtp(
        self,
        leg: Leg | int,
        rtp_timestamp: int,
        samples: NDArray[np.int16],
        *,
        arrival_index: int,
        ssrc: int | None = None,
    ) -> NDArray[np.int16]:
        """Hand in samples positioned by their RTP timestamp.

        The first packet of a leg (and of a new SSRC) is placed at
        ``arrival_index`` (the sample clock when it arrived); later ones by
        their timestamp distance from the previous one, across the 32-bit wrap.
        A position that strays more than ``resync_ms`` from the arrival clock
        (a timestamp jump) is placed at the arrival clock again.
        """
        clock = self._clocks[leg]
        if clock is None or clock.ssrc != ssrc:
            index = arrival_index
        else:
            index = clock.last_index + ts_diff(rtp_timestamp, clock.last_timestamp)
            if abs(index - arrival_index) > self.resync:
                self.resyncs += 1
                index = arrival_index
        self._clocks[leg] = _LegClock(ssrc, rtp_timestamp, index)
        return self.push(leg, index, samples)

    def flush(self) -> NDArray[np.int16]:
        """Emit everything held, the shorter leg padded with zeros (end of call)."""
        return self._emit(flush=True)

    def _emit(self, *, flush: bool) -> NDArray[np.int16]:
        callee, ours = self._legs
        lead = max(callee.known_until, ours.known_until)
        ready = lead if flush else min(callee.known_until, ours.known_until)
        # Hold no more than max_lag: a leg that far behind is silent there.
        ready = max(ready, lead - self.max_lag)
        if ready <= self.position:
            return _EMPTY
        out = np.zeros((ready - self.position, 2), dtype=np.int16)
        for channel, state in enumerate(self._legs):
            kept = []
            for start, samples in state.segments:
                end = start + samples.shape[0]
                lo, hi = max(start, self.position), min(end, ready)
                if hi > lo:
                    out[lo - self.position : hi - self.position, channel] = samples[
                        lo - start : hi - start
                    ]
                if end > ready:
                    kept.append(
                        (ready, samples[ready - start :]) if start < ready else (start, samples)
                    )
            state.segments = kept
        self.position = ready
        return out

"""Call recording: both legs of a call into one stereo WAV, written as the call goes.

Rules of this file:

- Left is the callee (what we received, as played out by the jitter
  buffer), right is our side (what we sent): ``media.wav.Leg``.
- The session hands in one 20 ms frame at a time with its frame index on the
  session's clock: as samples (``frame``) or as the G.711 payload that went
  on the wire (``frame_payload``), kept as bytes and decoded a run at a
  time, which spares a numpy call per frame. Frames are gathered per leg into runs of consecutive
  indexes within one chunk (``chunk_s``, by frame index); at each chunk
  boundary both runs go to ``media.wav.StereoAligner`` whole, at their sample
  positions: a few aligner calls per second of audio, not one per packet,
  and one file write per chunk. A missing frame (loss that was not concealed, silence
  suppression, DTMF, a leg that has not started) ends a run, and the aligner
  fills the hole with zeros, so the two channels stay in step.
- Memory is bounded whatever the call length: one run per leg plus what the
  aligner holds (its lag bound), and the file is written through
  ``media.wav.WavWriter`` a chunk at a time.
- Disk writes are chunks of ``chunk_s`` of stereo audio (32 KiB per second)
  into the page cache: tens of microseconds, cheaper than one packet's
  processing, so they run on the event loop. Only ``close()``, which reads
  the whole file back for its SHA-256, goes to a thread.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import BinaryIO

import numpy as np
from numpy.typing import NDArray

from media.wav import Leg, StereoAligner, WavWriter

__all__ = [
    "CallRecorder",
    "Leg",
    "RecordingResult",
]


@dataclass(frozen=True, slots=True)
class RecordingResult:
    """The finished recording."""

    path: Path
    duration_s: float
    size_bytes: int
    sha256: str
    frames: int  # stereo sample frames
    dropped_samples: int  # arrived for a time already written (see StereoAligner)


@dataclass(slots=True)
class _Run:
    buffer: NDArray[np.int16]
    parts: list[bytes]  # G.711 frames of the run, when it is made of payloads
    start: int = 0  # frame index of the first frame in the run
    count: int = 0  # frames in the run
    table: NDArray[np.int16] | None = None  # the decode table of an encoded run
    next_index: int = -1  # the index that continues an encoded run (-1: none)


class CallRecorder:
    """Writes a two-leg call into a stereo WAV file, incrementally."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sample_rate: int = 8000,
        frame_samples: int = 160,
        chunk_s: float = 1.0,
        chunk_phase: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples
        self.chunk_frames = max(1, round(chunk_s * sample_rate / frame_samples))
        chunk_ms = self.chunk_frames * frame_samples * 1000 // sample_rate
        # Both runs are flushed together, so the legs are never more than one
        # chunk apart when they reach the aligner; twice that is ample.
        self._aligner = StereoAligner(sample_rate=sample_rate, max_lag_ms=2 * chunk_ms + 100)
        self._file: BinaryIO = open(self.path, "w+b")  # noqa: SIM115 - closed in close()
        self._writer = WavWriter(self._file, sample_rate=sample_rate, channels=2)
        self._runs = (self._new_run(), self._new_run())
        self._ready: list[NDArray[np.int16]] = []
        # Where in the frame count this recording's chunks end. Spread over the
        # chunk (by default from the path) so that calls started together do
        # not all flush in the same 20 ms and delay everyone's packets.
        if chunk_phase is None:
            chunk_phase = zlib.crc32(str(self.path).encode())
        self._phase = chunk_phase % self.chunk_frames
        self._chunk = 0  # (index + phase) // chunk_frames of the latest frame
        self._chunk_end = self.chunk_frames - self._phase  # first index of the next chunk
        self._closed = False
        self._result: RecordingResult | None = None
        self.chunks_written = 0
        self.write_seconds = 0.0

    def _new_run(self) -> _Run:
        return _Run(np.empty(self.chunk_frames * self.frame_samples, dtype=np.int16), [])

    @property
    def closed(self) -> bool:
        """True once ``close`` has started."""
        return self._closed

    @property
    def frames_written(self) -> int:
        """Stereo sample frames written to the file so far."""
        return self._writer.frames

    def frame(self, leg: Leg | int, index: int, samples: NDArray[np.int16]) -> None:
        """Record one frame of ``leg`` at frame index ``index`` (copied: the caller may reuse it).

        Frames of a leg come in increasing index order; an index that skips
        ahead leaves a silent hole. Must not be called after ``close``.
        """
        if self._closed:
            return
        self._enter_chunk(index)
        run = self._runs[leg]
        if run.count and (
            index != run.start + run.count
            or run.count == self.chunk_frames
            or run.table is not None
        ):
            self._flush_leg(leg)
        if not run.count:
            run.start = index
            run.table = None
        n = self.frame_samples
        offset = run.count * n
        run.buffer[offset : offset + n] = samples
        run.count += 1

    def frame_payload(
        self, leg: Leg | int, index: int, payload: bytes, decode_table: NDArray[np.int16]
    ) -> None:
        """Record one frame of ``leg`` as the G.711 payload that was sent or received.

        The bytes are kept as they are and decoded a run at a time (one table
        look-up per chunk instead of one per frame); ``decode_table`` maps a
        code to its sample (``media.g711.ULAW_DECODE_TABLE`` or the A-law one).
        The payload must be one frame long (``ValueError`` otherwise).
        """
        run = self._runs[leg]
        if (
            index == run.next_index
            and index < self._chunk_end
            and run.table is decode_table
            and len(payload) == self.frame_samples
        ):
            # The common case: the next frame of the run, inside the chunk.
            run.parts.append(payload)
            run.count += 1
            run.next_index = index + 1
            return
        if self._closed:
            return
        n = self.frame_samples
        if len(payload) != n:
            raise ValueError(f"a {len(payload)}-byte payload is not one {n}-sample frame")
        self._enter_chunk(index)
        if run.count and (index != run.start + run.count or run.table is not decode_table):
            self._flush_leg(leg)
        if not run.count:
            run.start = index
            run.table = decode_table
        run.parts.append(payload)
        run.count += 1
        run.next_index = index + 1

    def _enter_chunk(self, index: int) -> None:
        chunk = (index + self._phase) // self.chunk_frames
        if chunk > self._chunk:
            # A chunk boundary: both legs' runs go out, whatever their holes.
            self._chunk = chunk
            self._chunk_end = (chunk + 1) * self.chunk_frames - self._phase
            self._flush_all()

    def _flush_leg(self, leg: Leg | int) -> None:
        run = self._runs[leg]
        if not run.count:
            return
        n = self.frame_samples
        table = run.table
        if table is not None:
            # One look-up for the whole run; the result is a new array.
            samples = table.take(np.frombuffer(b"".join(run.parts), dtype=np.uint8))
            run.parts = []
            run.next_index = -1
        else:
            # The aligner keeps the array until it is written: hand it this
            # run's buffer and start the next run in a fresh one.
            samples = run.buffer[: run.count * n]
            run.buffer = np.empty_like(run.buffer)
        ready = self._aligner.push(leg, run.start * n, samples)
        run.count = 0
        run.table = None
        if ready.shape[0]:
            self._ready.append(ready)

    def _flush_all(self) -> None:
        # Both legs go to the aligner together, and what it lets out goes to
        # the file in one write per chunk.
        self._flush_leg(Leg.CALLEE)
        self._flush_leg(Leg.OURS)
        self._write()

    def _write(self) -> None:
        if self._ready:
            ready = self._ready
            stereo = ready[0] if len(ready) == 1 else np.concatenate(ready)
            ready.clear()
            started = perf_counter()
            self._writer.write(stereo)
            # Disk time, for benchmarks and metrics: a write that stalls delays every call.
            self.write_seconds += perf_counter() - started
            self.chunks_written += 1

    def _finish(self) -> RecordingResult:
        try:
            summary = self._writer.close()
        finally:
            self._file.close()
        return RecordingResult(
            path=self.path,
            duration_s=summary.duration_s,
            size_bytes=summary.size_bytes,
            sha256=summary.sha256,
            frames=summary.frames,
            dropped_samples=self._aligner.dropped_samples,
        )

    def _drain(self) -> None:
        self._closed = True
        self._chunk_end = -1  # no frame takes the fast path any more
        self._flush_all()
        self._ready.append(self._aligner.flush())
        self._write()

    def close_sync(self) -> RecordingResult:
        """Write what is held, close the file and return its summary (blocking)."""
        if self._result is None:
            self._drain()
            self._result = self._finish()
        return self._result

    async def close(self) -> RecordingResult:
        """Like ``close_sync``; the read-back for the checksum runs in a thread."""
        if self._result is None:
            if not self._closed:
                self._drain()
            self._result = await asyncio.to_thread(self._finish)
        return self._result

"""In-band DTMF detection with the Goertzel algorithm on 8 kHz int16 audio.

Rules of this file:

- Audio is analysed in 20 ms blocks (160 samples at 8 kHz) every 10 ms, so
  a 40 ms key always fills at least two whole blocks whatever its alignment
  (arbitrary input lengths are buffered). In each block the power at the
  eight DTMF frequencies is measured; ``goertzel_power`` is the textbook recurrence,
  and the detector computes the same quantity for all eight frequencies at
  once as a product with precomputed cosine/sine tables (Goertzel's output
  is exactly the squared magnitude of that single-frequency DFT).
- A block holds a key when one row tone and one column tone stand out:
  each above a minimum level, each well above the other tones of its group
  (relative peak), within the twist limits between the groups, and together
  carrying most of the block's energy (which rejects speech and noise, whose
  energy is spread over many frequencies).
- A key is reported once, when it ends: it must be held for ``min_on_ms``
  and followed by ``min_off_ms`` without it; a dropout of 10 ms inside a
  key does not split it (ITU-T Q.24). Durations are measured to the block hop (10 ms).
  Time is the count of samples seen: nothing here reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from media.dtmf import DtmfDigit, event_for_digit

__all__ = [
    "COLUMN_FREQUENCIES_HZ",
    "KEYPAD",
    "ROW_FREQUENCIES_HZ",
    "DetectorConfig",
    "DtmfDetector",
    "goertzel_power",
]

ROW_FREQUENCIES_HZ = (697.0, 770.0, 852.0, 941.0)
COLUMN_FREQUENCIES_HZ = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD = ("123A", "456B", "789C", "*0#D")


def goertzel_power(
    samples: NDArray[np.floating] | NDArray[np.integer],
    frequency_hz: float,
    sample_rate: int = 8000,
) -> float:
    """Return |X(f)|^2 of ``samples`` at ``frequency_hz`` by the Goertzel recurrence."""
    coefficient = 2 * math.cos(2 * math.pi * frequency_hz / sample_rate)
    s_prev = s_prev2 = 0.0
    for sample in samples.tolist():
        s = sample + coefficient * s_prev - s_prev2
        s_prev2, s_prev = s_prev, s
    return s_prev * s_prev + s_prev2 * s_prev2 - coefficient * s_prev * s_prev2


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Thresholds of the detector; the defaults follow common ITU-T Q.24 practice."""

    sample_rate: int = 8000
    block_ms: int = 20
    hop_ms: int = 10
    min_on_ms: int = 40
    min_off_ms: int = 40
    # Minimum amplitude of each tone (full scale 32767): about -38 dBFS.
    min_tone_amplitude: float = 400.0
    # Column tone stronger than row tone ("normal twist"), and the reverse.
    max_normal_twist_db: float = 8.0
    max_reverse_twist_db: float = 4.0
    # Each tone must exceed the other tones of its group by this much.
    min_relative_peak_db: float = 8.0
    # The two tones must carry this share of the block's energy.
    min_tone_energy_fraction: float = 0.6

    @property
    def block_size(self) -> int:
        """Samples per analysis block."""
        return self.sample_rate * self.block_ms // 1000

    @property
    def hop_size(self) -> int:
        """Samples from one block's start to the next."""
        return self.sample_rate * self.hop_ms // 1000


class DtmfDetector:
    """Finds DTMF key presses in a stream of audio; feed it with ``process``."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        n = self.config.block_size
        frequencies = np.array(ROW_FREQUENCIES_HZ + COLUMN_FREQUENCIES_HZ)
        phase = 2 * np.pi * np.outer(np.arange(n), frequencies) / self.config.sample_rate
        # One matrix product gives the real and imaginary parts at all 8 frequencies.
        self._basis = np.concatenate([np.cos(phase), np.sin(phase)], axis=1)
        self._pending = np.zeros(0, dtype=np.int16)
        self._block_index = 0
        # A tone of amplitude A gives |X|^2 = (A n / 2)^2.
        self._min_power = (self.config.min_tone_amplitude * n / 2) ** 2
        self._normal_twist = 10 ** (self.config.max_normal_twist_db / 10)
        self._reverse_twist = 10 ** (self.config.max_reverse_twist_db / 10)
        self._relative_peak = 10 ** (self.config.min_relative_peak_db / 10)
        config = self.config
        # Blocks wholly inside a key held min_on_ms (or a pause of min_off_ms),
        # at the worst alignment: 3 for 40 ms. A dropout of 10 ms spoils only
        # the 2 blocks that overlap it, so it does not end a key.
        self._min_on = max(1, (config.min_on_ms - config.block_ms) // config.hop_ms + 1)
        self._min_off = max(1, (config.min_off_ms - config.block_ms) // config.hop_ms + 1)
        self._candidate: str | None = None
        self._candidate_run = 0
        self._active: str | None = None
        self._active_start = 0
        self._active_last = 0
        self._off_run = 0

    def process(self, samples: NDArray[np.int16]) -> list[DtmfDigit]:
        """Analyse more audio; return the key presses that ended within it."""
        if self._pending.size:
            samples = np.concatenate([self._pending, samples])
        n = self.config.block_size
        hop = self.config.hop_size
        digits: list[DtmfDigit] = []
        start = 0
        while start + n <= samples.shape[0]:
            finished = self._step(self.classify(samples[start : start + n]))
            if finished is not None:
                digits.append(finished)
            start += hop
        self._pending = samples[start:].copy()
        return digits

    def flush(self) -> list[DtmfDigit]:
        """End of audio: report a key still held."""
        if self._active is None:
            return []
        return [self._report()]

    def classify(self, block: NDArray[np.int16]) -> str | None:
        """Return the key one block holds, or ``None``."""
        x = block.astype(np.float64)
        energy = float(np.dot(x, x))
        if energy == 0.0:
            return None
        parts = x @ self._basis
        power = parts[:8] ** 2 + parts[8:] ** 2
        rows, columns = power[:4], power[4:]
        row = int(np.argmax(rows))
        column = int(np.argmax(columns))
        row_power, column_power = float(rows[row]), float(columns[column])
        if row_power < self._min_power or column_power < self._min_power:
            return None
        if column_power > row_power * self._normal_twist:
            return None
        if row_power > column_power * self._reverse_twist:
            return None
        for group, peak, index in ((rows, row_power, row), (columns, column_power, column)):
            others = np.delete(group, index)
            if float(others.max()) * self._relative_peak > peak:
                return None
        # |X|^2 of a tone is (A n / 2)^2 and its energy A^2 n / 2, so the tones'
        # energy is 2 |X|^2 / n.
        n = block.shape[0]
        tone_energy = 2 * (row_power + column_power) / n
        if tone_energy < self.config.min_tone_energy_fraction * energy:
            return None
        return KEYPAD[row][column]

    def _step(self, digit: str | None) -> DtmfDigit | None:
        index = self._block_index
        self._block_index += 1
        if digit == self._candidate:
            self._candidate_run += 1
        else:
            self._candidate, self._candidate_run = digit, 1

        finished = None
        if self._active is not None:
            if digit == self._active:
                self._active_last = index
                self._off_run = 0
                return None
            self._off_run += 1
            if self._off_run < self._min_off:
                return None
            finished = self._report()
        if digit is not None and self._candidate_run >= self._min_on:
            self._active = digit
            self._active_start = index - self._candidate_run + 1
            self._active_last = index
            self._off_run = 0
        return finished

    def _report(self) -> DtmfDigit:
        assert self._active is not None
        config = self.config
        digit = DtmfDigit(
            digit=self._active,
            event=event_for_digit(self._active),
            duration_ms=float(
                (self._active_last - self._active_start) * config.hop_ms + config.block_ms
            ),
            timestamp=self._active_start * config.hop_size,
            volume=None,
            ended=True,
        )
        self._active = None
        self._off_run = 0
        return digit

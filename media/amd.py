"""Answering-machine detection (AMD): who picked up, a person or a voicemail?

Rules of this file:

- Pure and streaming: the caller feeds 8 kHz int16 frames (20 ms, 160
  samples, is what RTP brings; other lengths work) with ``now_ms``, the
  frame's start in milliseconds since the call was answered. Nothing here
  reads a clock; every duration comes from ``now_ms`` and the frame length.
- The verdicts and parameters follow Twilio's answering-machine detection:
  ``human``, ``machine_start``, ``machine_end_beep``,
  ``machine_end_silence``, ``machine_end_other``, ``unknown``;
  ``speech_threshold_ms``, ``speech_end_threshold_ms``,
  ``silence_timeout_ms`` and a total timeout. One verdict per call:
  ``feed`` returns it once, then ``None``.
- The rule is the classic one: people answer with a short greeting and
  wait ("Hello?", then silence); machines talk on ("Hi, you've reached
  ..."). So: a greeting longer than ``speech_threshold_ms`` is a machine;
  a shorter greeting followed by ``speech_end_threshold_ms`` of silence is
  a person; no speech within ``silence_timeout_ms`` is unknown.
- With ``detect_beep`` (Twilio's "DetectMessageEnd") a machine is not
  reported at once: the detector listens on until the greeting ends with
  a beep (``machine_end_beep``, when the tone stops, the moment to start
  speaking) or with ``message_end_silence_ms`` of silence
  (``machine_end_silence``), else ``machine_end_other`` at the total
  timeout. A beep heard before the greeting was judged long is a machine
  as well.
- Speech is found by energy against an adaptive noise floor. A frame is
  loud when it stands ``speech_margin_db`` above the floor (more where the
  line's noise swings more: three times its mean deviation), and above
  ``min_speech_dbfs``; inside a segment ``speech_hysteresis_db`` less will
  do. The floor falls quickly to quiet frames, rises slowly through frames
  that are not loud, and is never below the quietest frame of the last
  1.5 s (speech pauses at least that often, so that frame is the line's
  noise). A loud run whose level, smoothed over 60 ms, stays within
  ``steady_noise_range_db`` for ``steady_noise_ms`` is steady noise (speech
  moves by syllables): the floor jumps to it and the run is taken back.
  Segments end after ``hangover_ms`` without a loud frame; a segment of at
  least ``min_word_ms`` is a word, and words separated by
  ``utterance_gap_ms`` or more are separate utterances.
- A beep is a steady single tone: over the last 40 ms (two frames) one
  spectral peak between ``beep_min_hz`` and ``beep_max_hz`` carries
  ``beep_min_concentration`` of the energy (the noise floor's share left
  out), at the same frequency (within ``beep_tolerance_hz`` of the run's
  mean) for ``beep_min_ms``. Voices spread their energy
  over many harmonics and glide in pitch, so they do not pass. A tone is
  not speech: it neither lengthens the greeting nor, while it sounds, counts
  as the silence after it.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "AmdConfig",
    "AmdVerdict",
    "AnsweredBy",
    "AnsweringMachineDetector",
]

SAMPLE_RATE = 8000
_ANALYSIS_SAMPLES = 320  # 40 ms at 8 kHz: 25 Hz resolution, enough to split voice harmonics
_FFT_SIZE = 1024  # zero-padded: 7.8 Hz bins for the frequency estimate
_BIN_HZ = SAMPLE_RATE / _FFT_SIZE
# A Hann window's main lobe spans +-2 bins of the unpadded length (+-50 Hz over
# 40 ms); the peak's energy is summed over that lobe, in padded bins.
_LOBE_BINS = math.ceil(2 * _FFT_SIZE / _ANALYSIS_SAMPLES)
_WINDOW = np.hanning(_ANALYSIS_SAMPLES)
_WINDOW.flags.writeable = False
_WINDOW_ENERGY = float(np.dot(_WINDOW, _WINDOW))
_FULL_SCALE_POWER = 32768.0**2
_QUIET_DBFS = -100.0  # what digital silence counts as
# Noise-floor tracking, per 20 ms frame: fall fast (a pause in speech shows
# the floor within ~100 ms), rise slowly through frames that are not loud.
_FLOOR_FALL = 0.3
_FLOOR_RISE = 0.05
# Levels for the floor's minimum and the steady-noise test are smoothed over
# 3 frames (60 ms): noise rich in low frequencies swings several dB from one
# 20 ms frame to the next, much less over 60 ms.
_SMOOTH_FRAMES = 3
_MIN_WINDOW_FRAMES = 75  # 1.5 s of 20 ms frames
# How fast the spread of the noise's level is learnt (~1 s), and where it
# starts: cautious, as if the noise swung 3 dB, until the line has been heard.
_SPREAD_RATE = 0.05
_SPREAD_START_DB = 3.0
_SPREAD_MAX_DB = 5.0


def _dbfs(power: float) -> float:
    """Mean square power of int16 samples in dB relative to full scale."""
    if power <= 0.0:
        return _QUIET_DBFS
    return max(_QUIET_DBFS, 10 * math.log10(power / _FULL_SCALE_POWER))


class AnsweredBy(enum.StrEnum):
    """The verdict, named as Twilio's ``AnsweredBy`` values."""

    HUMAN = "human"
    MACHINE_START = "machine_start"
    MACHINE_END_BEEP = "machine_end_beep"
    MACHINE_END_SILENCE = "machine_end_silence"
    MACHINE_END_OTHER = "machine_end_other"
    UNKNOWN = "unknown"

    @property
    def is_machine(self) -> bool:
        """True for every ``machine_*`` verdict."""
        return self.value.startswith("machine")


@dataclass(frozen=True, slots=True)
class AmdConfig:
    """Parameters of the detector; defaults are Twilio's where Twilio has one.

    ``fast()`` is the quick verdict a dialer wants before connecting an agent
    or a bot; ``wait_for_beep()`` listens to the end of a voicemail greeting
    so a message can be left after the tone.
    """

    # A greeting longer than this is a machine (Twilio: MachineDetectionSpeechThreshold).
    speech_threshold_ms: int = 2400
    # Silence after a shorter greeting that makes it a person's
    # (Twilio: MachineDetectionSpeechEndThreshold).
    speech_end_threshold_ms: int = 1200
    # No speech at all for this long: unknown (Twilio: MachineDetectionSilenceTimeout).
    silence_timeout_ms: int = 5000
    # No verdict by then: unknown, or machine_end_other when waiting for a
    # machine's beep (Twilio: MachineDetectionTimeout).
    total_timeout_s: float = 30.0
    # Listen past a machine's greeting for the beep or the silence that ends it.
    detect_beep: bool = False
    # Silence after a machine's greeting that ends it when no beep came.
    message_end_silence_ms: int = 2000
    # Voice activity.
    # A frame is loud when it stands this far above the noise floor, or more
    # where the noise's own level swings more (3 x its mean deviation), and
    # stays in speech down to speech_hysteresis_db less.
    speech_margin_db: float = 7.0
    speech_hysteresis_db: float = 3.0
    min_speech_dbfs: float = -55.0
    hangover_ms: int = 100
    min_word_ms: int = 100
    utterance_gap_ms: int = 400
    steady_noise_ms: int = 300
    steady_noise_range_db: float = 3.0
    # Beep.
    beep_min_hz: float = 350.0
    beep_max_hz: float = 2600.0
    beep_min_ms: int = 140
    beep_max_ms: int = 2000
    beep_min_concentration: float = 0.9
    # Beeps hold their pitch within a hertz or two; a voice's harmonics drift
    # by 4-30 Hz over the same 100-200 ms, even a synthetic voice's.
    beep_tolerance_hz: float = 6.0

    def __post_init__(self) -> None:
        positive = {
            "speech_threshold_ms": self.speech_threshold_ms,
            "speech_end_threshold_ms": self.speech_end_threshold_ms,
            "silence_timeout_ms": self.silence_timeout_ms,
            "total_timeout_s": self.total_timeout_s,
            "message_end_silence_ms": self.message_end_silence_ms,
            "hangover_ms": self.hangover_ms,
            "steady_noise_ms": self.steady_noise_ms,
            "beep_min_ms": self.beep_min_ms,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 < self.beep_min_hz < self.beep_max_hz < SAMPLE_RATE / 2:
            raise ValueError("beep band must satisfy 0 < beep_min_hz < beep_max_hz < 4000")
        if not 0 < self.beep_min_concentration <= 1:
            raise ValueError("beep_min_concentration must be in (0, 1]")
        if self.beep_max_ms < self.beep_min_ms:
            raise ValueError("beep_max_ms must be at least beep_min_ms")

    @classmethod
    def fast(cls, **overrides: Any) -> AmdConfig:
        """A verdict within ~6 s: human, machine_start or unknown."""
        return replace(cls(total_timeout_s=6.0, detect_beep=False), **overrides)

    @classmethod
    def wait_for_beep(cls, **overrides: Any) -> AmdConfig:
        """Machines are reported at the end of their greeting (beep or silence), up to 30 s."""
        return replace(cls(total_timeout_s=30.0, detect_beep=True), **overrides)


@dataclass(frozen=True, slots=True)
class AmdVerdict:
    """A verdict with the measurements that decided it (times in ms since answer)."""

    answered_by: AnsweredBy
    # Why, in a word or three: "long_greeting", "short_greeting", "beep", ...
    reason: str
    decision_ms: int
    # Silence before the first word (the whole wait when there was no word).
    initial_silence_ms: int
    # First word's start to the last word's end (pauses shorter than
    # speech_end_threshold_ms included); 0 without a word.
    greeting_ms: int
    words: int
    utterances: int
    # Silence since the last word at the decision (0 while speaking or before speech).
    silence_after_greeting_ms: int
    # When the greeting was judged a machine's (detect_beep only); else None.
    machine_detected_ms: int | None = None
    beep_hz: float | None = None
    beep_start_ms: int | None = None
    beep_ms: int | None = None
    noise_floor_dbfs: float = _QUIET_DBFS

    @property
    def is_machine(self) -> bool:
        """True for every ``machine_*`` verdict."""
        return self.answered_by.is_machine


@dataclass(frozen=True, slots=True)
class _Beep:
    start_ms: int
    duration_ms: int
    frequency_hz: float


class _BeepTracker:
    """Finds steady tones; ``step`` returns a beep when one ends (or runs too long)."""

    def __init__(self, config: AmdConfig) -> None:
        self._config = config
        self._history = np.zeros(_ANALYSIS_SAMPLES, dtype=np.float64)
        self._windowed = np.empty(_ANALYSIS_SAMPLES, dtype=np.float64)
        self._low_bin = math.ceil(config.beep_min_hz / _BIN_HZ)
        self._high_bin = math.floor(config.beep_max_hz / _BIN_HZ)
        self._run_start_ms = -1
        self._run_end_ms = 0
        self._run_hz_sum = 0.0
        self._run_frames = 0
        self._reported = False

    def push(self, samples: NDArray[np.float64]) -> None:
        """Slide the 40 ms analysis window over new samples."""
        n = samples.shape[0]
        if n >= _ANALYSIS_SAMPLES:
            self._history[:] = samples[-_ANALYSIS_SAMPLES:]
        else:
            self._history[:-n] = self._history[n:]
            self._history[-n:] = samples

    def tone_hz(self, noise_power: float) -> float | None:
        """The frequency of the single tone the window holds, or None.

        ``noise_power`` is the line's noise (mean square per sample): its
        share of the window's energy is left out of the total, so a beep in
        broadband noise still counts as one tone.
        """
        windowed = self._windowed
        np.multiply(self._history, _WINDOW, out=windowed)
        power = np.abs(np.fft.rfft(windowed, _FFT_SIZE)) ** 2
        # Leave out DC and the window's leakage of it.
        total = float(power[4:].sum())
        if total <= 0.0:
            return None
        energy = float(np.dot(windowed, windowed))
        # At most half the total is taken for noise, so a floor estimated too
        # high cannot make any sound look like a tone.
        total *= 1.0 - min(0.5, noise_power * _WINDOW_ENERGY / energy)
        band = power[self._low_bin : self._high_bin + 1]
        peak = int(np.argmax(band)) + self._low_bin
        lobe = float(power[peak - _LOBE_BINS : peak + _LOBE_BINS + 1].sum())
        if lobe < self._config.beep_min_concentration * total:
            return None
        # Parabolic interpolation on the log spectrum puts the peak between bins.
        left, centre, right = np.log(power[peak - 1 : peak + 2] + 1e-12)
        curvature = left - 2 * centre + right
        offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
        return (peak + offset) * _BIN_HZ

    def step(self, tone_hz: float | None, start_ms: int, end_ms: int) -> _Beep | None:
        """Account one frame (``tone_hz`` None: no tone); return a finished beep."""
        config = self._config
        if (
            tone_hz is not None
            and self._run_frames
            and abs(tone_hz - self._run_hz_sum / self._run_frames) <= config.beep_tolerance_hz
        ):
            self._run_frames += 1
            self._run_hz_sum += tone_hz
            self._run_end_ms = end_ms
            if not self._reported and end_ms - self._run_start_ms >= config.beep_max_ms:
                # A tone this long is reported without waiting for its end.
                self._reported = True
                return self._beep()
            return None
        finished = None
        long_enough = self._run_end_ms - self._run_start_ms >= config.beep_min_ms
        if self._run_frames and not self._reported and long_enough:
            finished = self._beep()
        self._run_frames = 0
        self._reported = False
        if tone_hz is not None:
            self._run_start_ms, self._run_end_ms = start_ms, end_ms
            self._run_hz_sum = tone_hz
            self._run_frames = 1
        return finished

    @property
    def in_tone(self) -> bool:
        """A tone is sounding (it may yet turn out to be a beep)."""
        return self._run_frames > 0

    def _beep(self) -> _Beep:
        return _Beep(
            start_ms=self._run_start_ms,
            duration_ms=self._run_end_ms - self._run_start_ms,
            frequency_hz=round(float(self._run_hz_sum / self._run_frames), 1),
        )


class AnsweringMachineDetector:
    """Streaming AMD for one call: ``feed`` frames until it returns a verdict.

    >>> detector = AnsweringMachineDetector(AmdConfig.fast())
    >>> for i, frame in enumerate(frames):          # doctest: +SKIP
    ...     verdict = detector.feed(frame, now_ms=20 * i)
    ...     if verdict is not None:
    ...         break
    """

    def __init__(self, config: AmdConfig | None = None) -> None:
        self.config = config or AmdConfig()
        self._verdict: AmdVerdict | None = None
        self._samples = np.empty(SAMPLE_RATE // 50, dtype=np.float64)
        self._beeps = _BeepTracker(self.config)
        self._floor_db: float | None = None
        self._powers: deque[float] = deque(maxlen=_SMOOTH_FRAMES)
        # Sliding minimum of the frame level: (frame index, dBFS), increasing.
        self._minima: deque[tuple[int, float]] = deque()
        self._frame_index = 0
        # Mean absolute deviation of quiet frames from the floor, in dB.
        self._spread_db = _SPREAD_START_DB
        # The current segment of loud frames (with hangover).
        self._in_segment = False
        self._segment_start_ms = 0
        self._segment_end_ms = 0  # end of its last loud frame
        self._segment_counted = False
        self._segment_opened_greeting = False
        # (start_ms, end_ms, dBFS) of the segment's recent loud frames, for
        # the steady-noise test.
        self._recent: deque[tuple[int, int, float]] = deque()
        # Words and the greeting they make.
        self._words = 0
        self._utterances = 0
        self._greeting_start_ms: int | None = None
        self._last_word_end_ms: int | None = None
        self._machine_ms: int | None = None
        self._beep: _Beep | None = None

    @property
    def verdict(self) -> AmdVerdict | None:
        """The verdict once given, else None."""
        return self._verdict

    def feed(self, frame: NDArray[np.int16], now_ms: int) -> AmdVerdict | None:
        """Analyse a frame starting at ``now_ms``; return the verdict the first time it is known."""
        if self._verdict is not None:
            return None
        n = frame.shape[0]
        if n == 0:
            return None
        if n > self._samples.shape[0]:
            self._samples = np.empty(n, dtype=np.float64)
        samples = self._samples[:n]
        np.copyto(samples, frame, casting="unsafe")
        end_ms = now_ms + n * 1000 // SAMPLE_RATE
        config = self.config

        power = float(np.dot(samples, samples)) / n
        powers = self._powers
        powers.append(power)
        level_db = _dbfs(power)
        smooth_db = _dbfs(sum(powers) / len(powers))
        floor_db = self._track_floor(level_db)
        self._frame_index += 1
        margin_db = max(config.speech_margin_db, 3.0 * self._spread_db)
        if self._in_segment:
            margin_db -= config.speech_hysteresis_db
        loud = level_db >= max(floor_db + margin_db, config.min_speech_dbfs)
        if not self._in_segment and level_db < floor_db + margin_db:
            # Only the line's own noise teaches the spread, not quiet speech.
            spread = min(abs(level_db - floor_db), _SPREAD_MAX_DB)
            self._spread_db += (spread - self._spread_db) * _SPREAD_RATE

        self._beeps.push(samples)
        tone_hz = self._beeps.tone_hz(_FULL_SCALE_POWER * 10 ** (floor_db / 10)) if loud else None
        beep = self._beeps.step(tone_hz, now_ms, end_ms)
        if beep is not None and self._beep is None:
            self._beep = beep

        # A tone is not speech: it neither extends the greeting nor breaks
        # the silence after it.
        if loud and tone_hz is None:
            self._loud_frame(now_ms, end_ms, smooth_db)
        elif self._in_segment and end_ms - self._segment_end_ms >= config.hangover_ms:
            self._close_segment()
        if self._in_segment:
            self._count_segment()

        return self._decide(end_ms)

    def finish(self, now_ms: int) -> AmdVerdict:
        """The audio ended at ``now_ms`` (hang-up): the verdict given, else one from what was heard.

        Undecided, that is ``machine_end_other`` for a greeting already judged a
        machine's (``detect_beep``), else ``unknown``.
        """
        if self._verdict is not None:
            return self._verdict
        if self._machine_ms is not None:
            return self._give(AnsweredBy.MACHINE_END_OTHER, "audio_ended", now_ms)
        return self._give(AnsweredBy.UNKNOWN, "audio_ended", now_ms)

    # -- voice activity ------------------------------------------------------------

    def _track_floor(self, level_db: float) -> float:
        floor = self._floor_db
        if floor is None:
            floor = level_db
        elif level_db < floor:
            floor += (level_db - floor) * _FLOOR_FALL
        elif level_db < floor + self.config.speech_margin_db:
            floor += (level_db - floor) * _FLOOR_RISE
        # Minimum statistics: speech pauses within any 1.5 s, so the floor is
        # at least the quietest level of the last 1.5 s.
        minima = self._minima
        index = self._frame_index
        while minima and minima[-1][1] >= level_db:
            minima.pop()
        minima.append((index, level_db))
        if minima[0][0] <= index - _MIN_WINDOW_FRAMES:
            minima.popleft()
        floor = max(floor, minima[0][1])
        self._floor_db = floor
        return floor

    def _open_segment(self, start_ms: int) -> None:
        self._in_segment = True
        self._segment_start_ms = start_ms
        self._segment_counted = False
        self._segment_opened_greeting = False
        self._recent.clear()

    def _loud_frame(self, start_ms: int, end_ms: int, level_db: float) -> None:
        config = self.config
        if not self._in_segment:
            self._open_segment(start_ms)
        self._segment_end_ms = end_ms
        recent = self._recent
        recent.append((start_ms, end_ms, level_db))
        while recent and end_ms - recent[0][0] > config.steady_noise_ms:
            recent.popleft()
        if end_ms - recent[0][0] < config.steady_noise_ms:
            return
        levels = [level for _, _, level in recent]
        if max(levels) - min(levels) > config.steady_noise_range_db:
            return
        # Steady noise: it becomes the floor, and the segment is taken back to
        # where the noise began.
        self._floor_db = max(levels)
        noise_start_ms = recent[0][0]
        recent.clear()
        if noise_start_ms - self._segment_start_ms >= config.min_word_ms:
            self._segment_end_ms = noise_start_ms
            self._close_segment()
        else:
            self._cancel_segment()

    def _count_segment(self) -> None:
        """Count the open segment as a word once it is long enough."""
        if self._segment_counted:
            return
        if self._segment_end_ms - self._segment_start_ms < self.config.min_word_ms:
            return
        self._segment_counted = True
        self._words += 1
        previous_end = self._last_word_end_ms
        if previous_end is None or self._segment_start_ms - previous_end >= (
            self.config.utterance_gap_ms
        ):
            self._utterances += 1
        if self._greeting_start_ms is None:
            self._greeting_start_ms = self._segment_start_ms
            self._segment_opened_greeting = True

    def _close_segment(self) -> None:
        self._count_segment()
        if self._segment_counted:
            self._last_word_end_ms = self._segment_end_ms
        self._in_segment = False
        self._recent.clear()

    def _cancel_segment(self) -> None:
        if self._segment_counted:
            self._words -= 1
            # The utterance it opened goes too unless it continued one.
            previous_end = self._last_word_end_ms
            if previous_end is None or self._segment_start_ms - previous_end >= (
                self.config.utterance_gap_ms
            ):
                self._utterances -= 1
            if self._segment_opened_greeting:
                self._greeting_start_ms = None
        self._in_segment = False
        self._segment_counted = False
        self._recent.clear()

    # -- decisions -----------------------------------------------------------------

    def _speech_end_ms(self) -> int | None:
        if self._in_segment and self._segment_counted:
            return self._segment_end_ms
        return self._last_word_end_ms

    def _decide(self, now_ms: int) -> AmdVerdict | None:
        config = self.config
        beep = self._beep
        if beep is not None and beep.start_ms + beep.duration_ms <= now_ms:
            if config.detect_beep:
                return self._give(AnsweredBy.MACHINE_END_BEEP, "beep", now_ms)
            return self._give(AnsweredBy.MACHINE_START, "beep", now_ms)
        speaking = self._in_segment and self._segment_counted
        speech_end = self._speech_end_ms()
        silence_ms = 0 if speaking or speech_end is None else now_ms - speech_end
        if self._beeps.in_tone:
            # Silence is not judged while a tone sounds: it may be the beep.
            silence_ms = 0

        if self._machine_ms is not None:
            if silence_ms >= config.message_end_silence_ms:
                return self._give(AnsweredBy.MACHINE_END_SILENCE, "silence_after_greeting", now_ms)
            if now_ms >= config.total_timeout_s * 1000:
                return self._give(AnsweredBy.MACHINE_END_OTHER, "timeout", now_ms)
            return None

        greeting_start = self._greeting_start_ms
        if greeting_start is None:
            if now_ms >= config.silence_timeout_ms:
                return self._give(AnsweredBy.UNKNOWN, "initial_silence", now_ms)
        else:
            assert speech_end is not None
            if speech_end - greeting_start > config.speech_threshold_ms:
                if not config.detect_beep:
                    return self._give(AnsweredBy.MACHINE_START, "long_greeting", now_ms)
                self._machine_ms = now_ms
                return None
            if silence_ms >= config.speech_end_threshold_ms:
                return self._give(AnsweredBy.HUMAN, "short_greeting", now_ms)
        if now_ms >= config.total_timeout_s * 1000:
            return self._give(AnsweredBy.UNKNOWN, "timeout", now_ms)
        return None

    def _give(self, answered_by: AnsweredBy, reason: str, now_ms: int) -> AmdVerdict:
        greeting_start = self._greeting_start_ms
        speech_end = self._speech_end_ms()
        if greeting_start is None or speech_end is None:
            initial_silence_ms, greeting_ms, silence_after_ms = now_ms, 0, 0
        else:
            initial_silence_ms = greeting_start
            greeting_ms = speech_end - greeting_start
            speaking = self._in_segment and self._segment_counted
            silence_after_ms = 0 if speaking else now_ms - speech_end
        beep = self._beep
        verdict = AmdVerdict(
            answered_by=answered_by,
            reason=reason,
            decision_ms=now_ms,
            initial_silence_ms=initial_silence_ms,
            greeting_ms=greeting_ms,
            words=self._words,
            utterances=self._utterances,
            silence_after_greeting_ms=silence_after_ms,
            machine_detected_ms=self._machine_ms,
            beep_hz=beep.frequency_hz if beep else None,
            beep_start_ms=beep.start_ms if beep else None,
            beep_ms=beep.duration_ms if beep else None,
            noise_floor_dbfs=round(
                self._floor_db if self._floor_db is not None else _QUIET_DBFS, 1
            ),
        )
        self._verdict = verdict
        return verdict

"""Answering-machine detection on synthetic signals, and on a few espeak-ng clips."""

from __future__ import annotations

import ast
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from media import g711
from media.amd import AmdConfig, AmdVerdict, AnsweredBy, AnsweringMachineDetector

RATE = 8000
FRAME = 160
FAST = AmdConfig.fast()
WAIT = AmdConfig.wait_for_beep()

# -- signals ------------------------------------------------------------------------


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE))


def syllable(seconds: float, f0_hz: float = 140.0, amplitude: float = 6000.0) -> np.ndarray:
    """A voiced syllable: 12 harmonics of a gliding pitch under a raised-sine envelope."""
    n = round(seconds * RATE)
    t = np.arange(n) / RATE
    # The pitch falls 15 % over the syllable, as it does at the end of a word.
    phase = 2 * np.pi * f0_hz * (t - 0.075 * t**2 / seconds)
    voice = sum(np.sin(h * phase) / h for h in range(1, 13))
    envelope = np.sin(np.pi * np.arange(n) / n) ** 0.5
    return amplitude / 2 * envelope * voice


def words(
    count: int,
    word_s: float = 0.25,
    gap_s: float = 0.06,
    f0_hz: float = 140.0,
    amplitude: float = 6000.0,
) -> np.ndarray:
    """``count`` syllables ``gap_s`` apart: continuous speech when the gaps are short."""
    parts = []
    for index in range(count):
        # Alternate the pitch a little so no two syllables are alike.
        f0 = f0_hz * (1 + 0.05 * (index % 3))
        parts += [syllable(word_s, f0, amplitude), silence(gap_s)]
    return np.concatenate(parts[:-1])


def tone(seconds: float, frequency_hz: float = 1000.0, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return amplitude * np.sin(2 * np.pi * frequency_hz * t)


def noise(seconds: float, rms: float, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, rms, round(seconds * RATE))


def with_noise(signal: np.ndarray, rms: float, seed: int = 7) -> np.ndarray:
    return signal + np.random.default_rng(seed).normal(0.0, rms, signal.size)


def join(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts)


def pcm(signal: np.ndarray) -> np.ndarray:
    """As it arrives over a PCMU call: clipped to 16 bits, mu-law encoded and decoded."""
    return g711.ulaw_decode(g711.ulaw_encode(np.clip(signal, -32768, 32767).astype(np.int16)))


def detect(signal: np.ndarray, config: AmdConfig, frame: int = FRAME) -> AmdVerdict:
    samples = pcm(signal)
    detector = AnsweringMachineDetector(config)
    frame_ms = frame * 1000 // RATE
    frames = samples.shape[0] // frame
    for index in range(frames):
        verdict = detector.feed(samples[index * frame : (index + 1) * frame], index * frame_ms)
        if verdict is not None:
            return verdict
    return detector.finish(frames * frame_ms)


# A voicemail greeting: 7.4 s of continuous speech (24 syllables of 0.25 s, 60 ms apart).
GREETING = words(24)
GREETING_S = GREETING.size / RATE

# -- verdicts -----------------------------------------------------------------------

CASES = [
    # name, signal, config, verdict, reason, decision time (ms) and tolerance
    ("dead air", silence(8), FAST, AnsweredBy.UNKNOWN, "initial_silence", 5000, 0),
    ("dead air, waiting", silence(8), WAIT, AnsweredBy.UNKNOWN, "initial_silence", 5000, 0),
    ("steady noise", noise(8, 300), FAST, AnsweredBy.UNKNOWN, "initial_silence", 5000, 0),
    (
        "hello then silence",
        join(silence(1.0), words(2), silence(4)),
        FAST,
        AnsweredBy.HUMAN,
        "short_greeting",
        1000 + 560 + 1200,
        60,
    ),
    (
        "hello then silence, waiting",
        join(silence(0.5), words(3), silence(4)),
        WAIT,
        AnsweredBy.HUMAN,
        "short_greeting",
        500 + 870 + 1200,
        60,
    ),
    (
        "long greeting",
        join(silence(0.5), GREETING, silence(3)),
        FAST,
        AnsweredBy.MACHINE_START,
        "long_greeting",
        500 + 2400,
        60,
    ),
    (
        "long greeting then beep",
        join(silence(0.5), GREETING, silence(0.4), tone(0.3), silence(4)),
        WAIT,
        AnsweredBy.MACHINE_END_BEEP,
        "beep",
        round((0.5 + GREETING_S + 0.4 + 0.3) * 1000),
        40,
    ),
    (
        "long greeting then silence",
        join(silence(0.5), GREETING, silence(4)),
        WAIT,
        AnsweredBy.MACHINE_END_SILENCE,
        "silence_after_greeting",
        round((0.5 + GREETING_S) * 1000) + 2000,
        60,
    ),
    (
        "short greeting then beep",
        join(silence(0.5), words(3), silence(0.3), tone(0.4), silence(3)),
        FAST,
        AnsweredBy.MACHINE_START,
        "beep",
        round((0.5 + 0.87 + 0.3 + 0.4) * 1000),
        40,
    ),
    (
        "hello in noise",
        with_noise(join(silence(1.0), words(2), silence(4)), 300),
        FAST,
        AnsweredBy.HUMAN,
        "short_greeting",
        1000 + 560 + 1200,
        100,
    ),
    (
        "hello, then a fan starts",
        join(silence(1.0), words(2), silence(4)) + join(silence(2.0), noise(3.56, 500)),
        FAST,
        AnsweredBy.HUMAN,
        "short_greeting",
        1000 + 560 + 1200,
        100,
    ),
    (
        "noise starts after silence",
        join(silence(1.0), noise(7, 600)),
        FAST,
        AnsweredBy.UNKNOWN,
        "initial_silence",
        5000,
        0,
    ),
]


@pytest.mark.parametrize(
    ("signal", "config", "answered_by", "reason", "decision_ms", "tolerance_ms"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_verdicts(signal, config, answered_by, reason, decision_ms, tolerance_ms):
    verdict = detect(signal, config)
    assert (verdict.answered_by, verdict.reason) == (answered_by, reason)
    assert abs(verdict.decision_ms - decision_ms) <= tolerance_ms, verdict


@pytest.mark.parametrize("frequency_hz", [440.0, 800.0, 1000.0, 1400.0, 2000.0])
@pytest.mark.parametrize("beep_s", [0.2, 0.5])
def test_beep_frequency_and_duration(frequency_hz, beep_s):
    start_s = 0.5 + GREETING_S + 0.6
    signal = join(silence(0.5), GREETING, silence(0.6), tone(beep_s, frequency_hz), silence(3))
    verdict = detect(signal, WAIT)
    assert verdict.answered_by is AnsweredBy.MACHINE_END_BEEP
    assert verdict.beep_hz == pytest.approx(frequency_hz, abs=5)
    assert verdict.beep_start_ms == pytest.approx(start_s * 1000, abs=40)
    assert verdict.beep_ms == pytest.approx(beep_s * 1000, abs=40)
    # The beep is not speech: the greeting ends where the voice does.
    assert verdict.greeting_ms == pytest.approx(GREETING_S * 1000, abs=60)
    assert verdict.machine_detected_ms == pytest.approx(500 + 2400, abs=60)


@pytest.mark.parametrize("noise_rms", [0.0, 300.0, 500.0])
def test_beep_in_noise(noise_rms):
    # A 2000-amplitude beep (RMS 1414) over white noise of RMS 500: 9 dB above
    # the noise, with 11 % of the energy outside the tone.
    signal = join(silence(0.5), GREETING, silence(0.6), tone(0.3, 1000.0, 2000.0), silence(3))
    verdict = detect(with_noise(signal, noise_rms), WAIT)
    assert verdict.answered_by is AnsweredBy.MACHINE_END_BEEP
    assert verdict.beep_hz == pytest.approx(1000, abs=5)


def chirp(seconds: float, start_hz: float, end_hz: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    sweep = start_hz * t + (end_hz - start_hz) * t**2 / (2 * seconds)
    return 8000 * np.sin(2 * np.pi * sweep)


@pytest.mark.parametrize(
    ("signal", "reason"),
    [
        pytest.param(tone(0.1), "too short", id="100 ms tone"),
        pytest.param(chirp(0.4, 1000.0, 1100.0), "not steady", id="gliding tone"),
        pytest.param(tone(0.4, 200.0), "below the band", id="200 Hz tone"),
        pytest.param(tone(0.4, 1000.0) + tone(0.4, 1300.0), "two tones", id="dual tone"),
        pytest.param(syllable(0.4, 400.0), "a voice", id="high voice"),
    ],
)
def test_not_a_beep(signal, reason):
    verdict = detect(join(silence(0.5), GREETING, silence(0.5), signal, silence(4)), WAIT)
    assert verdict.answered_by is AnsweredBy.MACHINE_END_SILENCE, reason
    assert verdict.beep_hz is None


def test_features_of_a_human_verdict():
    # "Hello? ... Anna speaking": two utterances 0.6 s apart, three words.
    signal = join(silence(1.5), words(1, 0.4), silence(0.6), words(2, 0.3, 0.15), silence(4))
    verdict = detect(signal, FAST)
    assert verdict.answered_by is AnsweredBy.HUMAN
    assert verdict.initial_silence_ms == pytest.approx(1500, abs=40)
    assert verdict.greeting_ms == pytest.approx(400 + 600 + 750, abs=80)
    assert (verdict.words, verdict.utterances) == (3, 2)
    assert verdict.silence_after_greeting_ms == 1200
    assert verdict.beep_hz is None and verdict.machine_detected_ms is None


@pytest.mark.parametrize(("amplitude", "dbfs"), [(6000.0, -24), (750.0, -42), (300.0, -50)])
def test_speech_level_does_not_matter(amplitude, dbfs):
    signal = join(silence(0.5), words(2, amplitude=amplitude), silence(3))
    level = 20 * np.log10(np.sqrt(np.mean(words(2, amplitude=amplitude) ** 2)) / 32768)
    assert level == pytest.approx(dbfs, abs=1.5)
    assert detect(signal, FAST).answered_by is AnsweredBy.HUMAN
    long_signal = join(silence(0.5), words(24, amplitude=amplitude), silence(3))
    assert detect(long_signal, FAST).answered_by is AnsweredBy.MACHINE_START


def test_total_timeout():
    never_long = AmdConfig.fast(speech_threshold_ms=60_000, total_timeout_s=4.0)
    verdict = detect(join(silence(0.3), GREETING), never_long)
    assert (verdict.answered_by, verdict.reason, verdict.decision_ms) == (
        AnsweredBy.UNKNOWN,
        "timeout",
        4000,
    )
    waiting = AmdConfig.wait_for_beep(total_timeout_s=4.0)
    verdict = detect(join(silence(0.3), GREETING), waiting)
    assert (verdict.answered_by, verdict.reason) == (AnsweredBy.MACHINE_END_OTHER, "timeout")


def test_one_verdict_then_none_and_finish_repeats_it():
    samples = pcm(join(silence(0.5), words(2), silence(3)))
    detector = AnsweringMachineDetector(FAST)
    given = []
    for index in range(samples.size // FRAME):
        verdict = detector.feed(samples[index * FRAME : (index + 1) * FRAME], index * 20)
        if verdict is not None:
            given.append(verdict)
    assert len(given) == 1
    assert detector.verdict is given[0]
    assert detector.finish(10_000) is given[0]


@pytest.mark.parametrize(
    ("config", "greeting_s", "answered_by"),
    [
        pytest.param(FAST, 1.0, AnsweredBy.UNKNOWN, id="mid-greeting"),
        pytest.param(WAIT, 1.0, AnsweredBy.UNKNOWN, id="mid-greeting, waiting"),
        pytest.param(WAIT, 3.0, AnsweredBy.MACHINE_END_OTHER, id="machine found, waiting"),
    ],
)
def test_audio_ends_before_a_verdict(config, greeting_s, answered_by):
    # The line drops in the middle of the greeting: finish() decides.
    verdict = detect(join(silence(0.3), GREETING[: round(greeting_s * RATE)]), config)
    assert (verdict.answered_by, verdict.reason) == (answered_by, "audio_ended")
    assert verdict.decision_ms == pytest.approx((0.3 + greeting_s) * 1000, abs=20)


@pytest.mark.parametrize("frame", [80, 160, 240])
def test_frame_length_does_not_change_the_verdict(frame):
    signal = join(silence(0.5), GREETING, silence(0.4), tone(0.3), silence(3))
    verdict = detect(signal, WAIT, frame=frame)
    assert verdict.answered_by is AnsweredBy.MACHINE_END_BEEP
    assert verdict.beep_hz == pytest.approx(1000, abs=5)


@pytest.mark.parametrize(
    "overrides",
    [
        {"speech_threshold_ms": 0},
        {"total_timeout_s": -1.0},
        {"beep_min_hz": 2000.0, "beep_max_hz": 1000.0},
        {"beep_max_hz": 4500.0},
        {"beep_min_concentration": 1.5},
        {"beep_min_ms": 500, "beep_max_ms": 200},
    ],
)
def test_config_rejects_nonsense(overrides):
    with pytest.raises(ValueError):
        AmdConfig(**overrides)


def test_presets():
    assert (FAST.detect_beep, FAST.total_timeout_s) == (False, 6.0)
    assert (WAIT.detect_beep, WAIT.total_timeout_s) == (True, 30.0)
    assert AmdConfig.fast(speech_threshold_ms=3000).speech_threshold_ms == 3000


def test_pure_module_imports_no_io():
    source = (Path(__file__).resolve().parents[2] / "media" / "amd.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {
        "__future__",
        "enum",
        "math",
        "collections",
        "dataclasses",
        "typing",
        "numpy",
    }


# -- real speech --------------------------------------------------------------------

HAVE_TOOLS = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None

SPOKEN = [
    ("Hello?", 0.8, None, AnsweredBy.HUMAN),
    ("Yes, this is Anna.", 0.4, None, AnsweredBy.HUMAN),
    (
        "Hi, you've reached John Smith. I can't take your call right now. "
        "Please leave a message after the tone.",
        0.5,
        1000.0,
        AnsweredBy.MACHINE_END_BEEP,
    ),
    (
        "The person you are calling is not available. Please leave a message.",
        1.0,
        None,
        AnsweredBy.MACHINE_END_SILENCE,
    ),
]


LINE_EFFECTS = ["sinc", "300-3400", "gain", "-n", "-6"]


def _speak(text: str, directory: Path, name: str) -> np.ndarray:
    raw, line = directory / f"{name}_raw.wav", directory / f"{name}.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en-us+f3", "-s", "165", "-w", str(raw), text],
        check=True,
        capture_output=True,
    )
    # 8 kHz mono 16-bit through a 300-3400 Hz line filter, peak at -6 dBFS.
    subprocess.run(
        ["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16", str(line), *LINE_EFFECTS],
        check=True,
        capture_output=True,
    )
    with wave.open(str(line), "rb") as f:
        return np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float64)


@pytest.mark.skipif(not HAVE_TOOLS, reason="needs the espeak-ng and sox commands")
def test_espeak_clips(tmp_path):
    for index, (text, lead_s, beep_hz, expected) in enumerate(SPOKEN):
        parts = [silence(lead_s), _speak(text, tmp_path, f"clip{index}")]
        if beep_hz is not None:
            parts += [silence(0.5), tone(0.4, beep_hz, 6000)]
        signal = join(*parts, silence(4))
        verdict = detect(signal, WAIT)
        assert verdict.answered_by is expected, (text, verdict)
        fast = detect(signal, FAST).answered_by
        assert fast is (
            AnsweredBy.HUMAN if expected is AnsweredBy.HUMAN else AnsweredBy.MACHINE_START
        )

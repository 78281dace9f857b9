"""Prompts converted from WAVs of every common format, the playback queue, espeak-ng."""

from __future__ import annotations

import asyncio
import os
import wave
from pathlib import Path

import numpy as np
import pytest

from media.g711 import ALAW_ENCODE_TABLE, ULAW_ENCODE_TABLE, alaw_encode, ulaw_encode
from media.playback import (
    FRAME_SAMPLES,
    PlaybackQueue,
    Prompt,
    PromptCache,
    PromptError,
    SpeechRenderer,
    espeak_available,
    prompt_from_samples,
    read_wav,
    resample,
    silence,
)


def write_test_wav(
    path: Path,
    *,
    rate: int,
    width: int,
    channels: int,
    frequency_hz: float,
    seconds: float,
    amplitude: float = 0.5,
) -> None:
    t = np.arange(int(rate * seconds)) / rate
    signal = amplitude * np.sin(2 * np.pi * frequency_hz * t)
    # Every channel but the first is silent, to show channels are mixed down.
    columns = [signal] + [np.zeros_like(signal)] * (channels - 1)
    data = np.stack(columns, axis=1).reshape(-1)
    if width == 1:
        raw = np.clip(np.rint(data * 127 + 128), 0, 255).astype(np.uint8).tobytes()
    elif width == 2:
        raw = np.rint(data * 32767).astype("<i2").tobytes()
    elif width == 3:
        value = np.rint(data * 8388607).astype("<i4")
        raw = value.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = np.rint(data * 2147483647).astype("<i4").tobytes()
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(raw)


def peak_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.shape[0])))
    return float(np.argmax(spectrum)) * 8000 / samples.shape[0]


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 32000, 44100, 48000])
@pytest.mark.parametrize(("width", "channels"), [(1, 1), (2, 1), (2, 2), (1, 2), (3, 1), (4, 2)])
def test_wav_formats_convert_to_8k_mono_int16(tmp_path, rate, width, channels):
    path = tmp_path / "prompt.wav"
    write_test_wav(path, rate=rate, width=width, channels=channels, frequency_hz=1000, seconds=0.5)
    prompt = read_wav(path)
    samples = prompt.samples
    assert samples.dtype == np.int16 and samples.ndim == 1
    assert not samples.flags.writeable
    assert samples.shape[0] % FRAME_SAMPLES == 0
    assert samples.shape[0] == 4000  # 0.5 s at 8 kHz is exactly 25 frames
    assert prompt.duration_s == 0.5 and prompt.frames == 25
    body = samples[400:3600]  # away from the edges
    assert peak_frequency(body) == pytest.approx(1000.0, abs=10.0)
    # A sine of amplitude 0.5 full scale, mixed down with silent channels.
    expected_rms = 0.5 * 32767 / np.sqrt(2) / channels
    assert rms(body) == pytest.approx(expected_rms, rel=0.03)


@pytest.mark.parametrize(
    ("rate", "frequency_hz"), [(48000, 6000.0), (44100, 5000.0), (16000, 4500.0)]
)
def test_resampling_removes_what_8k_cannot_carry(tmp_path, rate, frequency_hz):
    path = tmp_path / "high.wav"
    write_test_wav(path, rate=rate, width=2, channels=1, frequency_hz=frequency_hz, seconds=0.5)
    samples = read_wav(path).samples
    # Folded back it would be as loud as the original (about 11,600 RMS).
    assert rms(samples[400:3600]) < 50


def test_resample_round_trip_keeps_a_tone():
    t = np.arange(8000) / 8000
    tone = 10000 * np.sin(2 * np.pi * 440 * t)
    up = resample(tone, 8000, 44100)
    assert up.shape[0] == 44100
    back = resample(up, 44100, 8000)
    assert back.shape[0] == 8000
    assert np.max(np.abs(back[400:-400] - tone[400:-400])) < 30


def test_prompts_are_padded_to_whole_frames():
    prompt = prompt_from_samples(np.ones(161, dtype=np.int16) * 100)
    assert prompt.samples.shape[0] == 320
    assert np.all(prompt.samples[:161] == 100) and np.all(prompt.samples[161:] == 0)


@pytest.mark.parametrize(("duration_ms", "samples"), [(0, 0), (20, 160), (30, 320), (1000, 8000)])
def test_silence(duration_ms, samples):
    prompt = silence(duration_ms)
    assert prompt.samples.shape[0] == samples
    assert not prompt.samples.any()


def test_not_a_wav_is_a_prompt_error(tmp_path):
    path = tmp_path / "bad.wav"
    path.write_bytes(b"RIFF....not really")
    with pytest.raises(PromptError, match="not a PCM WAV"):
        read_wav(path)


async def test_cache_converts_each_file_once(tmp_path):
    path = tmp_path / "a.wav"
    write_test_wav(path, rate=16000, width=2, channels=1, frequency_hz=500, seconds=0.2)
    cache = PromptCache()
    first = cache.get(path)
    assert await cache.load(path) is first
    assert cache.loads == 1
    write_test_wav(path, rate=16000, width=2, channels=1, frequency_hz=500, seconds=0.4)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert (await cache.load(path)).duration_s == 0.4
    assert cache.loads == 2


# -- the queue --------------------------------------------------------------------------


def ramp(count: int, start: int = 0) -> np.ndarray:
    return np.arange(start, start + count, dtype=np.int16)


def test_queue_plays_frames_in_order_and_reports_marks():
    marks: list[tuple[str, bool]] = []
    queue = PlaybackQueue(on_mark=lambda name, played: marks.append((name, played)))
    queue.mark("start")
    queue.enqueue(Prompt(ramp(320)))
    queue.mark("after-first")
    queue.enqueue(Prompt(ramp(160, 1000)))
    queue.mark("end")
    assert queue.queued_ms == 60.0

    first = queue.read_frame()
    assert marks == [("start", True)]
    assert np.array_equal(first, ramp(160))
    second = queue.read_frame()
    assert np.array_equal(second, ramp(160, 160))
    assert marks[-1] == ("after-first", True)  # its audio has all been pulled
    third = queue.read_frame()
    assert np.array_equal(third, ramp(160, 1000))
    assert marks == [("start", True), ("after-first", True), ("end", True)]
    assert queue.read_frame() is None
    assert queue.idle and queue.queued_samples == 0


def test_clear_drops_audio_and_reports_marks_not_played():
    marks: list[tuple[str, bool]] = []
    queue = PlaybackQueue(on_mark=lambda name, played: marks.append((name, played)))
    queue.enqueue(Prompt(ramp(1600)))
    queue.mark("a")
    queue.enqueue(Prompt(ramp(1600)))
    queue.mark("b")
    queue.read_frame()
    assert queue.clear() == ["a", "b"]
    assert marks == [("a", False), ("b", False)]
    assert queue.read_frame() is None
    assert queue.queued_samples == 0


@pytest.mark.parametrize("sizes", [[100, 100, 120], [1, 159, 160], [50], [400, 7]])
def test_raw_audio_of_any_length_is_framed_contiguously(sizes):
    queue = PlaybackQueue()
    chunks = []
    start = 0
    for size in sizes:
        chunk = ramp(size, start)
        chunks.append(chunk)
        queue.enqueue(chunk)
        start += size
    total = np.concatenate(chunks)
    out = []
    while (frame := queue.read_frame()) is not None:
        assert frame.shape == (FRAME_SAMPLES,)
        out.append(frame.copy())
    played = np.concatenate(out)
    assert np.array_equal(played[: total.shape[0]], total)
    assert not played[total.shape[0] :].any()  # the last frame padded with zeros
    assert played.shape[0] == -(-total.shape[0] // FRAME_SAMPLES) * FRAME_SAMPLES


def test_queue_refuses_audio_that_is_not_8k_int16_mono():
    queue = PlaybackQueue()
    with pytest.raises(PromptError):
        queue.enqueue(np.zeros(160, dtype=np.float32))
    with pytest.raises(PromptError):
        queue.enqueue(np.zeros((160, 2), dtype=np.int16))


# -- text to speech ------------------------------------------------------------------------


needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is not installed (Debian package espeak-ng)"
)


@needs_espeak
async def test_speech_is_rendered_once_per_text(tmp_path):
    renderer = SpeechRenderer(tmp_path / "tts")
    hello, again = await asyncio.gather(
        renderer.render("Hello, this is a test call."),
        renderer.render("Hello, this is a test call."),
    )
    assert hello is again
    assert renderer.renders == 1
    assert hello.samples.dtype == np.int16 and hello.samples.shape[0] % FRAME_SAMPLES == 0
    assert 0.8 < hello.duration_s < 5.0
    assert rms(hello.samples) > 300  # speech, not silence
    assert await renderer.render("Hello, this is a test call.") is hello
    other = await renderer.render("-v not an option")  # text is never read as arguments
    assert other.duration_s > 0.3
    assert renderer.renders == 2

    # A new renderer (a restarted worker) finds the rendering on disk.
    restarted = SpeechRenderer(tmp_path / "tts")
    again_from_disk = await restarted.render("Hello, this is a test call.")
    assert restarted.renders == 0
    assert np.array_equal(again_from_disk.samples, hello.samples)
    assert sorted(p.name for p in (tmp_path / "tts").iterdir()) == sorted(
        [
            renderer.path_for("Hello, this is a test call.").name,
            renderer.path_for("-v not an option").name,
        ]
    )


async def test_a_failing_speech_program_is_a_prompt_error(tmp_path):
    renderer = SpeechRenderer(tmp_path, executable="false")
    with pytest.raises(PromptError, match="exited with 1"):
        await renderer.render("anything")
    assert renderer.renders == 0


def test_read_payload_hands_out_what_read_frame_would_encode():
    """Prompts encoded once, raw pieces gathered across boundaries, marks in their place."""
    rng = np.random.default_rng(5)
    prompt = prompt_from_samples(rng.normal(0, 4000, 8000).astype(np.int16))
    odd = rng.normal(0, 4000, 250).astype(np.int16)  # not a whole number of frames

    def fill(queue: PlaybackQueue) -> None:
        queue.enqueue(prompt)
        queue.mark("one")
        queue.enqueue(odd)
        queue.enqueue(odd[:90].copy())
        queue.mark("two")

    marks_a: list[tuple[str, bool]] = []
    marks_b: list[tuple[str, bool]] = []
    by_frame = PlaybackQueue(lambda name, played: marks_a.append((name, played)))
    by_payload = PlaybackQueue(lambda name, played: marks_b.append((name, played)))
    fill(by_frame)
    fill(by_payload)
    expected, got = [], []
    while (frame := by_frame.read_frame()) is not None:
        expected.append(ulaw_encode(frame).tobytes())
        payload = by_payload.read_payload(ULAW_ENCODE_TABLE)
        assert payload is not None
        got.append(payload)
        assert marks_b == marks_a
        assert by_payload.queued_samples == by_frame.queued_samples
    assert by_payload.read_payload(ULAW_ENCODE_TABLE) is None
    assert got == expected
    assert marks_b == [("one", True), ("two", True)]
    # The same queue read with another codec's table encodes afresh.
    by_payload.enqueue(prompt)
    assert by_payload.read_payload(ALAW_ENCODE_TABLE) == alaw_encode(prompt.samples[:160]).tobytes()
    second = ulaw_encode(prompt.samples[160:320]).tobytes()
    assert by_payload.read_payload(ULAW_ENCODE_TABLE) == second

"""Call recording: legs aligned across holes, bounded memory, and a real two-way call."""

from __future__ import annotations

import asyncio
import hashlib
import wave
from pathlib import Path

import numpy as np
import pytest

from media.g711 import (
    ALAW_DECODE_TABLE,
    ULAW_DECODE_TABLE,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)
from media.playback import PlaybackQueue, prompt_from_samples
from media.ports import PortAllocator, bind_pair
from media.recording import CallRecorder, Leg
from media.session import MediaParams, RtpSession

HOST = "127.0.0.1"


def read_stereo(path: Path) -> tuple[int, int, np.ndarray]:
    with wave.open(str(path), "rb") as reader:
        rate, channels = reader.getframerate(), reader.getnchannels()
        frames = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    return rate, channels, frames.reshape(-1, channels)


def frame_of(value: int) -> np.ndarray:
    return np.full(160, value, dtype=np.int16)


# Frame indexes each leg hands in; the recording must put every frame at its
# index and leave zeros elsewhere, both channels as long as the longer leg.
@pytest.mark.parametrize(
    ("callee", "ours"),
    [
        (range(0, 120), range(0, 120)),  # both legs all along
        (list(range(10, 60)) + list(range(70, 120)), range(0, 100)),  # loss, late start
        (range(0, 30), range(50, 130)),  # one leg ends, the other starts later
        ([], range(0, 75)),  # a callee who never sent
        (range(5, 6), []),  # a single frame
    ],
    ids=["both", "holes", "disjoint", "silent-callee", "one-frame"],
)
async def test_legs_land_at_their_frame_index(tmp_path, callee, ours):
    recorder = CallRecorder(tmp_path / "call.wav")
    callee_set, ours_set = set(callee), set(ours)
    for index in range(0, 200):
        # The legs interleave in time as they do in a session.
        if index in callee_set:
            recorder.frame(Leg.CALLEE, index, frame_of(1000 + index))
        if index in ours_set:
            recorder.frame(Leg.OURS, index, frame_of(-1000 - index))
    result = await recorder.close()

    rate, channels, stereo = read_stereo(result.path)
    last = max(callee_set | ours_set) + 1
    assert (rate, channels) == (8000, 2)
    assert stereo.shape == (last * 160, 2)
    expected = np.zeros((last * 160, 2), dtype=np.int16)
    for index in callee_set:
        expected[index * 160 : (index + 1) * 160, 0] = 1000 + index
    for index in ours_set:
        expected[index * 160 : (index + 1) * 160, 1] = -1000 - index
    assert np.array_equal(stereo, expected)
    assert result.duration_s == pytest.approx(last * 0.020)
    assert result.frames == last * 160
    data = result.path.read_bytes()
    assert result.size_bytes == len(data) == 44 + last * 160 * 4
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.dropped_samples == 0


def test_memory_stays_bounded_over_a_long_call(tmp_path):
    recorder = CallRecorder(tmp_path / "long.wav", chunk_s=1.0)
    frames = 3 * 60 * 50  # three minutes
    frame = frame_of(7)
    held = []
    for index in range(frames):
        recorder.frame(Leg.CALLEE, index, frame)
        if index % 50 != 13:  # our side with a hole every second
            recorder.frame(Leg.OURS, index, frame)
        if index % 500 == 0:
            held.append(recorder._aligner.pending_samples)
    # Whatever is held never exceeds a couple of chunks per leg.
    assert max(held) <= 2 * 2 * 8000
    assert recorder.frames_written >= (frames - 100) * 160
    result = recorder.close_sync()
    assert result.frames == frames * 160
    assert recorder.chunks_written == pytest.approx(frames / 50, rel=0.2)
    assert recorder.close_sync() is result  # idempotent


def test_frames_after_close_are_ignored(tmp_path):
    recorder = CallRecorder(tmp_path / "c.wav")
    recorder.frame(Leg.OURS, 0, frame_of(1))
    result = recorder.close_sync()
    recorder.frame(Leg.OURS, 1, frame_of(1))
    assert result.frames == 160
    assert read_stereo(result.path)[2].shape == (160, 2)


def tone(frequency_hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 8000)) / 8000
    return (8000 * np.sin(2 * np.pi * frequency_hz * t)).astype(np.int16)


def peak_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.shape[0])))
    return float(np.argmax(spectrum)) * 8000 / samples.shape[0]


async def test_a_two_way_call_is_recorded_in_stereo(tmp_path):
    allocator = PortAllocator(43000, 43999)
    done = asyncio.Event()
    ours_queue = PlaybackQueue(on_mark=lambda name, played: done.set())
    ours_queue.enqueue(prompt_from_samples(tone(440.0, 0.5)))
    ours_queue.mark("prompt")
    callee_queue = PlaybackQueue()
    callee_queue.enqueue(prompt_from_samples(tone(1000.0, 0.8)))
    recorder = CallRecorder(tmp_path / "two-way.wav")

    callee_heard = asyncio.Event()
    frames_heard = 0

    def on_audio(samples: np.ndarray) -> None:
        nonlocal frames_heard
        frames_heard += 1
        if frames_heard >= 50:
            callee_heard.set()

    ours = await RtpSession.create(
        bind_pair(allocator, HOST), source=ours_queue, recorder=recorder, on_audio=on_audio
    )
    callee = await RtpSession.create(bind_pair(allocator, HOST), source=callee_queue)
    try:
        ours.start(MediaParams(remote_rtp=(HOST, callee.local_rtp_port)))
        callee.start(MediaParams(remote_rtp=(HOST, ours.local_rtp_port)))
        await asyncio.wait_for(done.wait(), 5)
        await asyncio.wait_for(callee_heard.wait(), 5)
    finally:
        ours.close()
        callee.close()
    frames_at_close = ours.frame_index
    result = await recorder.close()

    _, channels, stereo = read_stereo(result.path)
    assert channels == 2
    # As long as the call, give or take the jitter buffer's delay.
    assert result.duration_s == pytest.approx(frames_at_close * 0.020, abs=0.1)
    left, right = stereo[:, 0], stereo[:, 1]
    loud_left = np.flatnonzero(np.abs(left) > 2000)
    loud_right = np.flatnonzero(np.abs(right) > 2000)
    assert peak_frequency(left[loud_left[0] : loud_left[-1]]) == pytest.approx(1000, abs=10)
    assert peak_frequency(right[loud_right[0] : loud_right[-1]]) == pytest.approx(440, abs=10)
    # Our prompt starts the call; the callee's audio comes a jitter-buffer delay later.
    assert loud_right[0] < 160
    assert 0 < loud_left[0] < 160 * 10
    assert (loud_right[-1] - loud_right[0]) / 8000 == pytest.approx(0.5, abs=0.03)
    assert (loud_left[-1] - loud_left[0]) / 8000 == pytest.approx(0.8, abs=0.03)


def test_legs_full_of_holes_still_reach_the_file_chunk_by_chunk(tmp_path):
    recorder = CallRecorder(tmp_path / "dtx.wav", chunk_s=1.0, chunk_phase=0)
    for index in range(0, 500):
        # Each leg sends every other frame (silence suppression on both sides).
        leg = Leg.CALLEE if index % 2 else Leg.OURS
        recorder.frame(leg, index, frame_of(index))
    assert recorder.chunks_written == 9  # chunks 0-8 closed; the 10th is still open
    assert sum(piece.shape[0] for piece in recorder._ready) <= 8000  # under one chunk held
    result = recorder.close_sync()
    _, _, stereo = read_stereo(result.path)
    assert stereo.shape == (500 * 160, 2)
    assert np.array_equal(stereo[::160, 0], [i if i % 2 else 0 for i in range(500)])
    assert np.array_equal(stereo[::160, 1], [0 if i % 2 else i for i in range(500)])


def test_payload_frames_are_recorded_as_their_decoded_samples(tmp_path):
    """frame_payload keeps G.711 bytes and decodes a run at a time: the same file as frame()."""
    rng = np.random.default_rng(3)
    pcm = (rng.normal(0, 3000, 160 * 230)).astype(np.int16)
    frames = [pcm[i * 160 : (i + 1) * 160] for i in range(230)]
    by_samples = CallRecorder(tmp_path / "samples.wav", chunk_phase=0)
    by_payload = CallRecorder(tmp_path / "payload.wav", chunk_phase=0)
    for index, frame in enumerate(frames):
        if index % 37 == 5:
            continue  # a hole in both legs of both files
        payload = ulaw_encode(frame).tobytes()
        decoded = ulaw_decode(payload)
        leg = Leg.CALLEE if index % 2 else Leg.OURS
        by_samples.frame(leg, index, decoded)
        by_payload.frame_payload(leg, index, payload, ULAW_DECODE_TABLE)
        if index == 100:
            # A-law and samples mid-run: each change of kind starts a new run.
            alaw = alaw_encode(frame).tobytes()
            by_samples.frame(Leg.OURS, 101, alaw_decode(alaw))
            by_payload.frame_payload(Leg.OURS, 101, alaw, ALAW_DECODE_TABLE)
        if index == 150:
            by_samples.frame(Leg.CALLEE, 151, decoded)
            by_payload.frame(Leg.CALLEE, 151, decoded)
    # A payload that is not one frame long is refused, not recorded at a wrong length.
    with pytest.raises(ValueError, match="80-byte"):
        by_payload.frame_payload(Leg.CALLEE, 240, bytes(80), ULAW_DECODE_TABLE)
    a = by_samples.close_sync()
    b = by_payload.close_sync()
    _, _, left = read_stereo(a.path)
    _, _, right = read_stereo(b.path)
    assert left.shape == right.shape and left.shape[0] >= 229 * 160
    assert np.array_equal(left, right)
    assert np.any(left != 0)

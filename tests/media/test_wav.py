"""The WAV writer read back by the standard library, and the two-leg aligner."""

from __future__ import annotations

import hashlib
import io
import wave

import numpy as np
import pytest

from media.wav import Leg, StereoAligner, WavWriter


def read_wav(data: bytes) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(io.BytesIO(data), "rb") as reader:
        params = reader.getparams()
        frames = np.frombuffer(reader.readframes(params.nframes), dtype="<i2")
    return params, frames.reshape(-1, params.nchannels)


def ramp(count: int, start: int = 0) -> np.ndarray:
    return (np.arange(start, start + count) % 30000).astype(np.int16)


def test_writer_output_reads_back_with_the_stdlib():
    buffer = io.BytesIO()
    writer = WavWriter(buffer)
    stereo = np.stack([ramp(800), -ramp(800)], axis=1)
    writer.write(stereo[:300])
    writer.write(stereo[300:].reshape(-1))  # flat interleaved is accepted too
    summary = writer.close()

    params, frames = read_wav(buffer.getvalue())
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 8000)
    assert params.nframes == 800
    assert np.array_equal(frames, stereo)
    assert summary.frames == 800
    assert summary.duration_s == pytest.approx(0.1)
    assert summary.size_bytes == 44 + 800 * 4 == len(buffer.getvalue())
    assert summary.sha256 == hashlib.sha256(buffer.getvalue()).hexdigest()


def test_header_fields_byte_by_byte():
    buffer = io.BytesIO()
    writer = WavWriter(buffer)
    writer.write(np.zeros((2, 2), dtype=np.int16))
    writer.close()
    assert buffer.getvalue()[:44] == (
        b"RIFF"
        + (36 + 8).to_bytes(4, "little")
        + b"WAVE"
        + b"fmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")  # PCM
        + (2).to_bytes(2, "little")  # channels
        + (8000).to_bytes(4, "little")  # sample rate
        + (32000).to_bytes(4, "little")  # byte rate
        + (4).to_bytes(2, "little")  # block align
        + (16).to_bytes(2, "little")  # bits per sample
        + b"data"
        + (8).to_bytes(4, "little")
    )


def test_a_writer_that_dies_leaves_a_readable_file():
    buffer = io.BytesIO()
    writer = WavWriter(buffer, patch_every_s=0.5)
    for _ in range(60):  # 1.2 s in 20 ms frames, never closed
        writer.write(np.ones((160, 2), dtype=np.int16))
    params, frames = read_wav(buffer.getvalue())
    # Sizes were patched at 0.5 s and 1.0 s: the reader sees at least 1 s.
    assert params.nframes == 8000
    assert frames.shape == (8000, 2)


def test_close_twice_gives_the_same_summary():
    buffer = io.BytesIO()
    writer = WavWriter(buffer)
    writer.write(np.ones((10, 2), dtype=np.int16))
    assert writer.close() == writer.close()
    with pytest.raises(ValueError):
        writer.write(np.ones((10, 2), dtype=np.int16))


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        (np.ones((10, 2), dtype=np.int32), TypeError),
        (np.ones((10, 3), dtype=np.int16), ValueError),
        (np.ones(7, dtype=np.int16), ValueError),
    ],
)
def test_writer_rejects_wrong_frames(frames, error):
    with pytest.raises(error):
        WavWriter(io.BytesIO()).write(frames)


def test_mono_writer():
    buffer = io.BytesIO()
    writer = WavWriter(buffer, channels=1)
    writer.write(ramp(160))
    writer.close()
    params, frames = read_wav(buffer.getvalue())
    assert params.nchannels == 1
    assert np.array_equal(frames[:, 0], ramp(160))


# -- aligner ------------------------------------------------------------------------


def collect(blocks):
    blocks = [b for b in blocks if b.size]
    return np.concatenate(blocks) if blocks else np.zeros((0, 2), dtype=np.int16)


def test_legs_in_step_come_out_interleaved():
    aligner = StereoAligner()
    out = []
    for k in range(10):
        out.append(aligner.push(Leg.CALLEE, 160 * k, ramp(160, 160 * k)))
        out.append(aligner.push(Leg.OURS, 160 * k, -ramp(160, 160 * k)))
    stereo = collect(out)
    assert stereo.shape == (1600, 2)
    assert np.array_equal(stereo[:, 0], ramp(1600))
    assert np.array_equal(stereo[:, 1], -ramp(1600))
    assert aligner.pending_samples == 0


def test_gaps_in_a_leg_are_zeros_and_channels_stay_equal():
    aligner = StereoAligner()
    out = []
    for k in range(10):
        if k not in (3, 4):  # two frames lost on the callee leg
            out.append(aligner.push(Leg.CALLEE, 160 * k, np.full(160, 100, np.int16)))
        out.append(aligner.push(Leg.OURS, 160 * k, np.full(160, 200, np.int16)))
    stereo = collect([*out, aligner.flush()])
    assert stereo.shape == (1600, 2)
    assert not stereo[480:800, 0].any()
    assert (stereo[:480, 0] == 100).all() and (stereo[800:, 0] == 100).all()
    assert (stereo[:, 1] == 200).all()


def test_a_leg_that_starts_late_is_silent_before():
    aligner = StereoAligner()
    out = [aligner.push(Leg.OURS, 160 * k, np.full(160, 7, np.int16)) for k in range(3)]
    out.append(aligner.push(Leg.CALLEE, 400, np.full(80, 9, np.int16)))
    stereo = collect([*out, aligner.flush()])
    assert stereo.shape == (480, 2)
    assert not stereo[:400, 0].any()
    assert (stereo[400:, 0] == 9).all()


def test_memory_is_bounded_when_one_leg_never_sends():
    aligner = StereoAligner(max_lag_ms=200)
    out = []
    for k in range(100):  # 2 s of our side only
        out.append(aligner.push(Leg.OURS, 160 * k, np.full(160, 5, np.int16)))
        assert aligner.pending_samples <= 1600 + 160
    stereo = collect(out)
    assert stereo.shape[0] == 16000 - 1600  # all but the last 200 ms emitted
    assert not stereo[:, 0].any()
    assert (stereo[:, 1] == 5).all()


def test_audio_arriving_after_its_time_was_emitted_is_dropped_and_counted():
    aligner = StereoAligner(max_lag_ms=100)
    for k in range(20):
        aligner.push(Leg.OURS, 160 * k, np.ones(160, np.int16))
    assert aligner.position == 3200 - 800
    aligner.push(Leg.CALLEE, 0, np.ones(160, np.int16))  # wholly too late
    aligner.push(Leg.CALLEE, 2300, np.ones(200, np.int16))  # partly too late
    assert aligner.dropped_samples == 160 + 100


def test_flush_pads_the_shorter_leg():
    aligner = StereoAligner()
    aligner.push(Leg.CALLEE, 0, np.ones(300, np.int16))
    aligner.push(Leg.OURS, 0, np.ones(100, np.int16))
    stereo = aligner.flush()
    assert stereo.shape == (200, 2)  # 100 were emitted when both legs had them
    assert (stereo[:, 0] == 1).all() and not stereo[:, 1].any()
    assert aligner.flush().shape == (0, 2)


def test_rtp_timestamps_with_different_offsets_and_a_wrap():
    aligner = StereoAligner()
    out = []
    callee_ts, ours_ts = 0xFFFFFE00, 1234  # independent random origins
    for k in range(10):
        arrival = 160 * k + 8  # a little network delay
        out.append(
            aligner.push_rtp(
                Leg.CALLEE,
                (callee_ts + 160 * k) & 0xFFFFFFFF,
                ramp(160, 160 * k),
                arrival_index=arrival,
                ssrc=1,
            )
        )
        out.append(
            aligner.push_rtp(
                Leg.OURS, ours_ts + 160 * k, -ramp(160, 160 * k), arrival_index=160 * k, ssrc=2
            )
        )
    stereo = collect([*out, aligner.flush()])
    # The callee leg is anchored at its first arrival (8 samples in) and then
    # follows its timestamps exactly, across the wrap.
    assert np.array_equal(stereo[8:1608, 0], ramp(1600))
    assert np.array_equal(stereo[:1600, 1], -ramp(1600))
    assert aligner.resyncs == 0


def test_rtp_timestamp_jump_and_new_ssrc_resync_to_arrival():
    aligner = StereoAligner(resync_ms=1000)
    aligner.push_rtp(Leg.CALLEE, 1000, np.ones(160, np.int16), arrival_index=0, ssrc=1)
    aligner.push_rtp(Leg.CALLEE, 1000 + 10**6, np.ones(160, np.int16), arrival_index=160, ssrc=1)
    assert aligner.resyncs == 1
    aligner.push_rtp(Leg.CALLEE, 5, np.ones(160, np.int16), arrival_index=320, ssrc=2)
    stereo = aligner.push(Leg.OURS, 0, np.ones(480, np.int16))
    # Three packets placed back to back by arrival: no hole, no overlap.
    assert stereo.shape == (480, 2)
    assert (stereo == 1).all()

"""The jitter buffer driven with a fake clock: reorder, loss, late, duplicates, wrap, adapt."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from media.g711 import ulaw_decode, ulaw_encode
from media.jitter import AudioFrame, FrameKind, JitterBuffer, JitterConfig, PutResult

FRAME_S = 0.020


def tagged(payload: bytes) -> np.ndarray:
    """Test decoder: every sample of the frame carries the tag in the payload."""
    return np.full(160, int.from_bytes(payload[:2], "big", signed=True), dtype=np.int16)


def payload(tag: int) -> bytes:
    return tag.to_bytes(2, "big", signed=True)


def run(buffer, arrivals, *, ticks, start_seq=0, start_ts=0, ssrc=None, t0=0.0):
    """arrivals: (arrival time, frame index) pairs; get() every 20 ms from t0.

    Frame index n has sequence number start_seq + n and timestamp start_ts + 160 n,
    and is tagged n + 1 (0 means silence).
    """
    pending = sorted(arrivals)
    frames: list[AudioFrame] = []
    results = []
    for tick in range(ticks):
        now = t0 + tick * FRAME_S
        while pending and pending[0][0] <= now:
            arrival, n = pending.pop(0)
            results.append(
                buffer.put(
                    (start_seq + n) & 0xFFFF,
                    (start_ts + 160 * n) & 0xFFFFFFFF,
                    payload(n + 1),
                    arrival,
                    ssrc=ssrc,
                )
            )
        frames.append(buffer.get(now))
    return frames, results


def tags(frames):
    return [int(frame.samples[0]) for frame in frames]


def kinds(frames):
    return "".join(
        {FrameKind.AUDIO: "A", FrameKind.CONCEALED: "C", FrameKind.SILENCE: "."}[f.kind]
        for f in frames
    )


def steady(count, *, delay=0.001):
    return [(n * FRAME_S + delay, n) for n in range(count)]


def test_steady_stream_plays_in_order_after_the_initial_delay():
    buffer = JitterBuffer(decode=tagged)
    frames, results = run(buffer, steady(10), ticks=14)
    assert set(results) == {PutResult.BUFFERED}
    # 60 ms initial delay: three ticks of silence, then every frame in order.
    assert kinds(frames) == "...AAAAAAAAAACC"[:14]
    assert tags(frames)[3:13] == list(range(1, 11))
    assert [f.sequence_number for f in frames[3:6]] == [0, 1, 2]
    assert buffer.stats.played == 10


def test_reordered_packets_within_the_depth_play_in_order():
    buffer = JitterBuffer(decode=tagged)
    arrivals = steady(8)
    arrivals[2], arrivals[3] = (3 * FRAME_S + 0.002, 2), (2 * FRAME_S + 0.001, 3)
    frames, _ = run(buffer, arrivals, ticks=12)
    assert tags(frames)[3:11] == list(range(1, 9))
    assert buffer.stats.lost == 0


def test_a_lost_packet_is_concealed_with_the_last_frame_attenuated():
    buffer = JitterBuffer(decode=tagged)
    arrivals = [a for a in steady(8) if a[1] != 3]
    frames, _ = run(buffer, arrivals, ticks=11)
    assert kinds(frames)[3:11] == "AAACAAAA"
    assert int(frames[6].samples[0]) == 3 // 2  # frame 3's tag, halved
    assert frames[6].sequence_number is None
    assert tags(frames)[7:11] == [5, 6, 7, 8]
    assert buffer.stats.lost == 1


def test_concealment_fades_to_silence():
    buffer = JitterBuffer(JitterConfig(concealment_frames=3, concealment_gain=0.5), decode=tagged)
    frames, _ = run(buffer, [(0.0, 0)], ticks=9)
    assert kinds(frames) == "...ACCC.."


def test_concealment_levels():
    buffer = JitterBuffer(decode=tagged)
    frames, _ = run(buffer, [(0.0, 999)], ticks=8)
    assert tags(frames)[3:8] == [1000, 500, 250, 125, 0]


def test_late_and_duplicate_packets_are_dropped_and_counted():
    buffer = JitterBuffer(decode=tagged)
    arrivals = [a for a in steady(10) if a[1] != 4]
    arrivals += [(0.2, 4)]  # long after its turn
    arrivals += [(0.05, 1)]  # a copy while still buffered
    arrivals += [(0.15, 2)]  # a copy after it was played
    frames, results = run(buffer, arrivals, ticks=14)
    assert results.count(PutResult.LATE) == 1
    assert results.count(PutResult.DUPLICATE) == 2
    assert (buffer.stats.late, buffer.stats.duplicates, buffer.stats.lost) == (1, 2, 1)
    assert tags(frames)[3:13] == [1, 2, 3, 4, 2, 6, 7, 8, 9, 10]


def test_sequence_wrap_around():
    buffer = JitterBuffer(decode=tagged)
    arrivals = steady(10)
    arrivals[3], arrivals[4] = (4 * FRAME_S, 3), (3 * FRAME_S, 4)  # reorder across the wrap
    frames, _ = run(buffer, arrivals, ticks=13, start_seq=65533, start_ts=0xFFFFFF00)
    assert tags(frames)[3:13] == list(range(1, 11))
    assert [f.sequence_number for f in frames[3:8]] == [65533, 65534, 65535, 0, 1]
    assert buffer.stats.lost == 0


def test_ssrc_change_resets_the_stream():
    buffer = JitterBuffer(decode=tagged)
    frames_a, _ = run(buffer, steady(5), ticks=8, ssrc=1)
    assert tags(frames_a)[3:8] == [1, 2, 3, 4, 5]
    # The new source numbers from elsewhere; its packets must not count as late.
    arrivals = [(0.16 + a, n) for a, n in steady(5)]
    frames_b, results = run(buffer, arrivals, ticks=8, start_seq=40000, ssrc=2, t0=0.16)
    assert set(results) == {PutResult.BUFFERED}
    assert buffer.stats.resets == 1
    assert [f for f in tags(frames_b) if f > 0][-5:] == [1, 2, 3, 4, 5]


def test_silence_suppression_gap_inside_the_buffer_plays_as_silence():
    buffer = JitterBuffer(decode=tagged)
    # Frames 0-2 sent, then two frames not sent, then frames 5-7: sequence
    # numbers stay consecutive, timestamps jump by the gap.
    sent = [0, 1, 2, 5, 6, 7]
    frames = []
    for tick in range(12):
        now = tick * FRAME_S
        for i, n in enumerate(sent):
            if tick == 0:
                buffer.put(i, n * 160, payload(n + 1), 0.0)
        frames.append(buffer.get(now))
    assert tags(frames)[0:8] == [1, 2, 3, 0, 0, 6, 7, 8]
    assert kinds(frames)[0:8] == "AAA..AAA"


def test_underrun_waits_the_target_delay_for_the_next_talkspurt():
    buffer = JitterBuffer(decode=tagged)
    talk = steady(5)
    # After 5 frames the sender stops for a second (DTX), then resumes with the
    # next sequence number and a timestamp a second later.
    resume = [(1.1 + k * FRAME_S, 55 + k) for k in range(5)]
    pending = sorted(talk + resume)
    frames = []
    for tick in range(70):
        now = tick * FRAME_S
        while pending and pending[0][0] <= now:
            arrival, n = pending.pop(0)
            seq = n if n < 5 else 5 + (n - 55)
            assert buffer.put(seq, n * 160, payload(n + 1), arrival) is PutResult.BUFFERED
        frames.append(buffer.get(now))
    played = [(i, int(f.samples[0])) for i, f in enumerate(frames) if f.kind is FrameKind.AUDIO]
    assert [tag for _, tag in played] == [1, 2, 3, 4, 5, 56, 57, 58, 59, 60]
    first_after = next(i for i, tag in played if tag == 56)
    assert first_after * FRAME_S >= 1.1 + 0.040  # waited again (target at least 40 ms)
    assert buffer.stats.lost == 0
    assert buffer.stats.underruns == 2  # the end of each talk-spurt


def test_target_delay_grows_with_jitter_and_shrinks_slowly():
    config = JitterConfig(shrink_after_s=2.0)
    buffer = JitterBuffer(config, decode=tagged)
    rng = np.random.default_rng(7)
    jittery = [(n * FRAME_S + float(rng.uniform(0, 0.060)), n) for n in range(250)]
    run(buffer, jittery, ticks=260)
    grown = buffer.target_delay_ms
    assert grown > config.initial_delay_ms
    assert grown <= config.max_delay_ms

    # Then a clean network: the target comes down, one frame at a time, after a while.
    targets = []
    for n in range(250, 750):
        buffer.put(n & 0xFFFF, n * 160, payload(1), n * FRAME_S + 0.001)
        buffer.get(n * FRAME_S)
        targets.append(buffer.target_delay_ms)
    steps = [a - b for a, b in itertools.pairwise(targets) if a != b]
    assert targets[50] == grown  # 1 s later: not yet
    assert targets[-1] < grown
    assert targets[-1] >= config.min_delay_ms
    assert set(steps) == {config.frame_ms}


def test_delay_is_bounded_when_a_stall_releases_a_burst():
    config = JitterConfig(max_delay_ms=200)
    buffer = JitterBuffer(config, decode=tagged)
    arrivals = steady(5) + [(0.1 + 0.5, n) for n in range(5, 30)]  # 500 ms stall, then a burst
    arrivals += [(n * FRAME_S + 0.001, n) for n in range(30, 60)]
    frames, _ = run(buffer, arrivals, ticks=65)
    assert buffer.stats.overflow_drops > 0
    last = next(f for f in reversed(frames) if f.kind is FrameKind.AUDIO)
    # Near the end, what plays is no more than max_delay behind what arrives.
    assert (64 - (int(last.samples[0]) - 1)) * FRAME_S <= 0.200 + FRAME_S


def test_capacity_bounds_memory():
    buffer = JitterBuffer(JitterConfig(capacity_frames=10), decode=tagged)
    for n in range(30):
        buffer.put(n, n * 160, payload(n + 1), 0.0)
    assert buffer.depth_frames == 10
    assert buffer.stats.overflow_drops == 20
    assert int(buffer.get(1.0).samples[0]) == 21


@pytest.mark.parametrize("size", [80, 160, 240])
def test_g711_payloads_of_other_sizes_fit_one_frame(size):
    buffer = JitterBuffer(JitterConfig(initial_delay_ms=40, min_delay_ms=20))
    pcm = np.full(size, 1000, dtype=np.int16)
    buffer.put(0, 0, ulaw_encode(pcm).tobytes(), 0.0)
    frame = buffer.get(1.0)
    assert frame.kind is FrameKind.AUDIO
    assert frame.samples.shape == (160,)
    expected = ulaw_decode(ulaw_encode(pcm))[0]
    assert int(frame.samples[min(size, 160) - 1]) == expected
    if size < 160:
        assert not frame.samples[size:].any()


def test_get_before_any_packet_is_silence():
    buffer = JitterBuffer()
    frame = buffer.get(0.0)
    assert frame.kind is FrameKind.SILENCE
    assert frame.samples.shape == (160,) and not frame.samples.any()


# -- packets of other durations: 20 ms frames out, on the sender's clock -------------------


def ramp(payload: bytes) -> np.ndarray:
    """Test decoder: a packet's samples count on from the index in its first 4 octets."""
    start = int.from_bytes(payload[:4], "big")
    return (np.arange(start, start + len(payload)) % 30000).astype(np.int16)


def ramp_packets(ptimes_ms, *, delay=0.001, start_seq=0, start_ts=0):
    """(arrival, seq, timestamp, payload) of a stream cut into packets of ``ptimes_ms``.

    A packet leaves when its last sample is captured and arrives ``delay`` later.
    """
    packets = []
    sample = 0
    for k, ptime in enumerate(ptimes_ms):
        count = ptime * 8
        payload = sample.to_bytes(4, "big") + bytes(count - 4)
        arrival = (sample + count) / 8000 + delay
        packets.append(
            (arrival, (start_seq + k) & 0xFFFF, (start_ts + sample) & 0xFFFFFFFF, payload)
        )
        sample += count
    return packets


def play(buffer, packets, *, ticks, concealed=None):
    """put() each packet when it arrives, get() every 20 ms; return the frames.

    ``concealed``, a list, gets the count of frames with concealment after each tick.
    """
    pending = sorted(packets, key=lambda p: p[0])
    frames = []
    for tick in range(ticks):
        now = tick * FRAME_S
        while pending and pending[0][0] <= now:
            arrival, seq, timestamp, data = pending.pop(0)
            buffer.put(seq, timestamp, data, arrival)
        frames.append(buffer.get(now))
        if concealed is not None:
            concealed.append(buffer.stats.concealed)
    return frames


def first_audio_tick(ptime_ms: int) -> int:
    """When a clean stream of ``ptime_ms`` packets starts playing (the reference for timing)."""
    frames = play(JitterBuffer(decode=ramp), ramp_packets([ptime_ms] * 10), ticks=20)
    return next(i for i, f in enumerate(frames) if f.kind is FrameKind.AUDIO)


def audio_of(frames) -> np.ndarray:
    return np.concatenate([f.samples for f in frames if f.kind is FrameKind.AUDIO])


@pytest.mark.parametrize("ptime_ms", [10, 20, 30, 40, 60])
def test_every_ptime_plays_out_whole_and_in_order_as_20_ms_frames(ptime_ms):
    buffer = JitterBuffer(decode=ramp)
    seconds = 1.2
    packets = ramp_packets([ptime_ms] * int(seconds * 1000 / ptime_ms))
    frames = play(buffer, packets, ticks=int(seconds / FRAME_S) + 20)
    assert all(f.samples.shape == (160,) for f in frames)
    played = audio_of(frames)
    # Every sample the peer sent, once, in order, with nothing concealed or lost.
    assert np.array_equal(played, np.arange(int(seconds * 8000)).astype(np.int16))
    assert buffer.stats.lost == 0 and buffer.stats.underruns == 1  # only at the end
    assert buffer.stats.played == len(packets)
    assert buffer.ptime_ms == ptime_ms
    # One frame per tick once started: the audio frames are consecutive.
    audio_ticks = [i for i, f in enumerate(frames) if f.kind is FrameKind.AUDIO]
    assert audio_ticks == list(range(audio_ticks[0], audio_ticks[0] + round(seconds / FRAME_S)))
    # Started no later than the target delay (one packet or more) after the first arrival.
    first_arrival = packets[0][0]
    assert audio_ticks[0] * FRAME_S <= first_arrival + buffer.target_delay_ms / 1000 + FRAME_S


@pytest.mark.parametrize("ptime_ms", [10, 30, 60])
def test_the_frame_timestamps_follow_the_senders_clock(ptime_ms):
    buffer = JitterBuffer(decode=ramp)
    packets = ramp_packets([ptime_ms] * (600 // ptime_ms), start_ts=0xFFFFFF00, start_seq=65530)
    frames = [f for f in play(buffer, packets, ticks=45) if f.kind is FrameKind.AUDIO]
    assert len(frames) == 30
    stamps = [f.timestamp for f in frames]
    assert all((b - a) & 0xFFFFFFFF == 160 for a, b in itertools.pairwise(stamps))
    assert stamps[0] == 0xFFFFFF00


def test_a_peer_that_changes_ptime_mid_call_plays_on_without_a_gap():
    buffer = JitterBuffer(decode=ramp)
    ptimes = [20] * 20 + [30] * 20 + [60] * 10 + [10] * 20 + [20] * 10  # 2.3 s
    packets = ramp_packets(ptimes)
    frames = play(buffer, packets, ticks=140)
    total = sum(ptimes) * 8
    assert np.array_equal(audio_of(frames), np.arange(total).astype(np.int16))
    assert buffer.stats.lost == 0 and buffer.stats.underruns == 1  # only at the end
    assert buffer.ptime_ms == 20


def test_reordered_30_ms_packets_play_in_order():
    buffer = JitterBuffer(decode=ramp)
    packets = ramp_packets([30] * 30)
    # Swap packets 5 and 6, and 12 and 14, in arrival time (each a few ms apart).
    for a, b in ((5, 6), (12, 14)):
        packets[a], packets[b] = (
            (packets[b][0], *packets[a][1:]),
            (packets[a][0], *packets[b][1:]),
        )
    frames = play(buffer, packets, ticks=60)
    assert np.array_equal(audio_of(frames), np.arange(30 * 240).astype(np.int16))
    assert buffer.stats.lost == 0 and buffer.stats.late == 0


def test_a_lost_30_ms_packet_is_concealed_for_its_time_only():
    buffer = JitterBuffer(decode=ramp)
    packets = ramp_packets([30] * 30)
    lost = 10  # samples 2400-2639: frame 15 (2400-2559) and half of frame 16
    del packets[lost]
    started = first_audio_tick(30)
    concealed: list[int] = []
    frames = play(buffer, packets, ticks=60, concealed=concealed)
    assert frames[started - 1].kind is not FrameKind.AUDIO
    out = np.concatenate([f.samples for f in frames[started : started + 45]])
    expected = np.arange(45 * 160).astype(np.int16)
    hole = slice(2400, 2640)
    # Everything but the lost packet's time is the peer's audio, in place.
    assert np.array_equal(out[:2400], expected[:2400])
    assert np.array_equal(out[2640:], expected[2640:])
    # Its time is the previous audio, attenuated, not the peer's samples nor a shift.
    assert not np.array_equal(out[hole], expected[hole])
    last_heard = expected[2240:2400]  # frame 14, the last whole audio
    assert np.array_equal(out[2400:2560], (last_heard * 0.5).astype(np.int16))
    assert np.array_equal(out[2560:2640], (last_heard[:80] * 0.25).astype(np.int16))
    assert [frames[started + n].kind for n in (15, 16)] == [FrameKind.CONCEALED, FrameKind.AUDIO]
    assert buffer.stats.lost == 1
    assert concealed[started + 20] == 2  # one whole frame and one half frame
    assert len(out) == 45 * 160  # the output kept its pace


def test_a_30_ms_packet_that_comes_late_fills_what_is_left_of_its_time():
    buffer = JitterBuffer(decode=ramp)
    packets = ramp_packets([30] * 30)
    late = 10  # samples 2400-2639, due from frame 15 on
    _, seq, timestamp, data = packets[late]
    started = first_audio_tick(30)
    packets[late] = ((started + 15) * FRAME_S + 0.005, seq, timestamp, data)  # after frame 15
    frames = play(buffer, packets, ticks=60)
    assert frames[started - 1].kind is not FrameKind.AUDIO
    out = np.concatenate([f.samples for f in frames[started : started + 45]])
    expected = np.arange(45 * 160).astype(np.int16)
    assert frames[started + 15].kind is FrameKind.CONCEALED
    # Frame 16 starts inside the late packet: its second half is played, in place.
    assert np.array_equal(out[2560:], expected[2560:])
    assert buffer.stats.lost == 0 and buffer.stats.late == 0


def test_a_30_ms_packet_later_than_its_whole_time_is_dropped_as_late():
    buffer = JitterBuffer(decode=ramp)
    packets = ramp_packets([30] * 30)
    _, seq, timestamp, data = packets[10]
    started = first_audio_tick(30)
    packets[10] = ((started + 18) * FRAME_S, seq, timestamp, data)  # its 30 ms are long played
    frames = play(buffer, packets, ticks=60)
    assert buffer.stats.late == 1
    assert buffer.stats.lost == 1
    assert sum(f.kind is not FrameKind.SILENCE for f in frames) >= 44


def test_duplicate_30_ms_packets_are_dropped():
    buffer = JitterBuffer(decode=ramp)
    packets = ramp_packets([30] * 20)
    packets += [(packets[3][0] + 0.002, *packets[3][1:])]  # while buffered
    packets += [(0.5, *packets[4][1:])]  # after it played
    frames = play(buffer, packets, ticks=40)
    assert np.array_equal(audio_of(frames), np.arange(20 * 240).astype(np.int16))
    assert buffer.stats.duplicates == 2


def test_payloads_held_undecoded_play_out_the_same():
    """samples_in=len (G.711) keeps payloads as bytes: the same frames, kinds and stats."""
    rng = np.random.default_rng(11)
    pcm = rng.normal(0, 3000, 160 * 60).astype(np.int16)
    payloads = [ulaw_encode(pcm[n * 160 : (n + 1) * 160]).tobytes() for n in range(60)]
    # Loss (7, 30-31), reorder (12 after 13), a duplicate (20), a late packet (40).
    order = [n for n in range(60) if n not in (7, 12, 30, 31, 40)]
    order.insert(order.index(13) + 1, 12)
    order.insert(order.index(20) + 1, 20)
    order.insert(order.index(45) + 1, 40)
    eager = JitterBuffer()
    lazy = JitterBuffer(samples_in=len)
    out_eager, out_lazy, raw_bytes = [], [], 0
    for step in range(80):
        now = step * FRAME_S
        if step < len(order):
            n = order[step]
            for buffer in (eager, lazy):
                buffer.put(n, n * 160, payloads[n], now + 0.001, ssrc=1)
        out_eager.append((eager.next_frame(now + 0.002).copy(), eager.kind))
        frame = lazy.next_payload(now + 0.002)
        if type(frame) is bytes:
            raw_bytes += 1
            frame = ulaw_decode(frame)
        out_lazy.append((np.array(frame), lazy.kind))
    assert raw_bytes > 40  # the steady case hands out the payload itself
    for (a, kind_a), (b, kind_b) in zip(out_eager, out_lazy, strict=True):
        assert kind_a is kind_b
        assert np.array_equal(a, b)
    assert eager.stats == lazy.stats
    assert lazy.stats.concealed > 0 and lazy.stats.lost > 0 and lazy.stats.late > 0


def _without_steady_band(buffer: JitterBuffer) -> JitterBuffer:
    """The reference: _adapt on every packet (an empty steady band; set before each put,
    since _adapt sets it again). Not a subclass: compiled, the class has no interpreted
    subclasses."""
    buffer._steady_low_ms = buffer._steady_high_ms = float("inf")
    return buffer


@pytest.mark.parametrize("seed", range(6))
def test_skipping_adapt_in_the_steady_band_changes_nothing(seed):
    """put() skips _adapt while the need equals the target: same targets, same frames."""
    rng = np.random.default_rng(seed)
    config = JitterConfig(shrink_after_s=0.5)
    fast, reference = JitterBuffer(config, decode=tagged), JitterBuffer(config, decode=tagged)
    targets_fast, targets_reference = [], []
    for n in range(900):
        # Calm stretches and bursts of jitter, so the target grows and shrinks.
        spread = 0.045 if (n // 150) % 2 else 0.002
        arrival = n * FRAME_S + abs(rng.normal(0, spread))
        for buffer in (fast, _without_steady_band(reference)):
            buffer.put(n & 0xFFFF, (n * 160) & 0xFFFFFFFF, payload(n % 30000), arrival)
            buffer.next_frame(n * FRAME_S + 0.001)
        targets_fast.append(fast.target_delay_ms)
        targets_reference.append(reference.target_delay_ms)
        assert fast.kind is reference.kind
    assert targets_fast == targets_reference
    assert len(set(targets_reference)) > 2  # the target did move both ways
    assert fast.stats == reference.stats

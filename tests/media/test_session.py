"""Two RTP sessions over loopback: audio, latching, RFC 4733 DTMF, timeouts, RTCP.

Real sockets and the real clock: each test waits on events its callbacks set
(with a timeout), never on a sleep. The frame pacer and the lateness
histogram are pure and tested with handed-in times.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Callable

import numpy as np
import pytest

from media.clock import FramePacer, LatenessHistogram
from media.dtmf import DtmfDigit
from media.g711 import PCMA, PCMU, G711Codec, alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from media.playback import PlaybackQueue, prompt_from_samples
from media.ports import PortAllocator, bind_pair
from media.rtp import pack_rtp
from media.session import MEDIA_TIMEOUT, MediaParams, RtpSession, SessionConfig
from media.ticker import FrameTicker

HOST = "127.0.0.1"
WAIT_S = 5.0


def tone(frequency_hz: float, seconds: float, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(int(seconds * 8000)) / 8000
    return (amplitude * np.sin(2 * np.pi * frequency_hz * t)).astype(np.int16)


def peak_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.shape[0])))
    return float(np.argmax(spectrum)) * 8000 / samples.shape[0]


class Collector:
    """Gathers what a session reports and lets a test wait for it."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.digits: list[DtmfDigit] = []
        self.timeouts: list[str] = []
        self.marks: list[tuple[str, bool]] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def _check(self) -> None:
        for condition, future in self._waiters:
            if not future.done() and condition():
                future.set_result(None)

    def on_audio(self, samples: np.ndarray) -> None:
        self.frames.append(samples.copy())
        self._check()

    def on_dtmf(self, digit: DtmfDigit) -> None:
        self.digits.append(digit)
        self._check()

    def on_timeout(self, cause: str) -> None:
        self.timeouts.append(cause)
        self._check()

    def on_mark(self, name: str, played: bool) -> None:
        self.marks.append((name, played))
        self._check()

    async def until(self, condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
        if condition():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((condition, future))
        await asyncio.wait_for(future, timeout)

    async def frames_more(self, count: int) -> None:
        target = len(self.frames) + count
        await self.until(lambda: len(self.frames) >= target)

    def audio(self) -> np.ndarray:
        return np.concatenate(self.frames) if self.frames else np.zeros(0, dtype=np.int16)


@pytest.fixture
def allocator() -> PortAllocator:
    return PortAllocator(41000, 41999)


async def until_frame(session: RtpSession, index: int) -> None:
    """Wait for the session's own clock to reach frame ``index`` (its deadline, not a guess)."""
    loop = asyncio.get_running_loop()
    reached: asyncio.Future[None] = loop.create_future()
    assert session._pacer is not None
    loop.call_at(session._pacer.deadline(index) + 0.001, reached.set_result, None)
    await reached


async def make_session(
    allocator: PortAllocator,
    collector: Collector | None = None,
    config: SessionConfig | None = None,
    **kwargs,
) -> RtpSession:
    collector = collector or Collector()
    return await RtpSession.create(
        bind_pair(allocator, HOST),
        config,
        on_audio=collector.on_audio,
        on_dtmf=collector.on_dtmf,
        on_timeout=collector.on_timeout,
        **kwargs,
    )


class Sink(asyncio.DatagramProtocol):
    """A plain UDP socket that keeps what arrives."""

    def __init__(self) -> None:
        self.packets: list[tuple[bytes, tuple[str, int]]] = []
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append((data, addr))
        self.arrived.set()

    async def until_count(self, count: int) -> None:
        async def wait() -> None:
            while len(self.packets) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(wait(), WAIT_S)


async def open_sink() -> tuple[asyncio.DatagramTransport, Sink]:
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_datagram_endpoint(Sink, local_addr=(HOST, 0))
    return transport, sink  # type: ignore[return-value]


# -- pure pacing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wakeups", "expected"),
    [
        ([0.0, 0.020, 0.040], [(0, 1), (0, 1), (0, 1)]),  # on time
        ([0.0, 0.0195], [(0, 1), (0, 0)]),  # woken early: nothing due
        ([0.0, 0.0201, 0.041], [(0, 1), (0, 1), (0, 1)]),  # late, yet no drift
        ([0.0, 0.061], [(0, 1), (0, 3)]),  # a short stall: catch up
        ([0.0, 0.200], [(0, 1), (7, 3)]),  # a long stall: skip the oldest
    ],
)
def test_pacer_sends_on_deadlines_from_the_origin(wakeups, expected):
    pacer = FramePacer(origin=100.0, max_burst=3)
    assert [pacer.due(100.0 + t) for t in wakeups] == expected
    assert pacer.deadline() == pytest.approx(100.0 + pacer.next_index * 0.020)


def test_pacer_deadline_does_not_accumulate_error_over_an_hour():
    pacer = FramePacer(origin=5.0)
    frames = 180_000  # one hour
    for n in range(frames):
        pacer.due(pacer.deadline(n) + 0.003)  # every wake-up 3 ms late
    assert pacer.next_index == frames
    assert pacer.frames_skipped == 0
    assert pacer.deadline() == pytest.approx(5.0 + 3600.0, abs=1e-6)


@pytest.mark.parametrize(
    ("values_ms", "p50_ms", "p99_ms"),
    [
        ([1.0] * 99 + [30.0], 1.1, 1.1),
        ([0.05] * 50 + [4.0] * 50, 0.1, 4.1),
        ([-2.0] * 10, 0.1, 0.1),  # early counts as on time
        ([500.0], 100.0, 100.0),  # past the last bucket: "at least"
    ],
)
def test_lateness_histogram_percentiles(values_ms, p50_ms, p99_ms):
    histogram = LatenessHistogram()
    for value in values_ms:
        histogram.record(value / 1000)
    assert histogram.percentile(0.5) * 1000 == pytest.approx(p50_ms)
    assert histogram.percentile(0.99) * 1000 == pytest.approx(p99_ms)


def test_lateness_histograms_merge():
    a, b = LatenessHistogram(), LatenessHistogram()
    a.record(0.001)
    b.record(0.004)
    a.merge(b)
    assert a.total == 2
    assert a.maximum_s == 0.004
    with pytest.raises(ValueError):
        a.merge(LatenessHistogram(bucket_s=0.001))


# -- two sessions over loopback -------------------------------------------------------------


@pytest.mark.parametrize("codec", [PCMU, PCMA], ids=["PCMU", "PCMA"])
async def test_a_tone_arrives_with_its_frequency(allocator, codec: G711Codec):
    sent, heard = Collector(), Collector()
    queue = PlaybackQueue(on_mark=sent.on_mark)
    queue.enqueue(prompt_from_samples(tone(1000.0, 0.6)))
    queue.mark("tone")
    a = await make_session(allocator, sent, source=queue)
    b = await make_session(allocator, heard)
    try:
        a.start(MediaParams(remote_rtp=(HOST, b.local_rtp_port), codec=codec))
        b.start(MediaParams(remote_rtp=(HOST, a.local_rtp_port), codec=codec))
        await sent.until(lambda: ("tone", True) in sent.marks)
        await heard.frames_more(10)  # the jitter buffer's delay, and some
    finally:
        a.close()
        b.close()
    audio = heard.audio()
    loud = np.flatnonzero(np.abs(audio) > 2000)
    assert loud.size, "no audio arrived"
    heard_tone = audio[loud[0] : loud[-1] + 1]
    assert heard_tone.shape[0] == pytest.approx(0.6 * 8000, abs=160 * 3)
    assert peak_frequency(heard_tone) == pytest.approx(1000.0, abs=10.0)
    stats = b.stats()
    assert stats.packets_received >= 30
    assert stats.packets_lost == 0
    assert stats.dropped_foreign == stats.dropped_invalid == 0
    # None skipped, but for a stall of this process over 60 ms (a loaded machine).
    assert a.stats().frames_skipped <= 3


async def test_sessions_on_one_shared_clock_exchange_audio(allocator):
    ticker = FrameTicker(slots=20)
    sent, heard = Collector(), Collector()
    queue = PlaybackQueue(on_mark=sent.on_mark)
    queue.enqueue(prompt_from_samples(tone(700.0, 0.4)))
    queue.mark("tone")
    a = await make_session(allocator, sent, source=queue, ticker=ticker)
    b = await make_session(allocator, heard, ticker=ticker)
    try:
        a.start(MediaParams(remote_rtp=(HOST, b.local_rtp_port)))
        b.start(MediaParams(remote_rtp=(HOST, a.local_rtp_port)))
        assert ticker.members == 2
        assert sorted(ticker.slot_sizes())[-2:] == [1, 1]  # two slots, not one
        await sent.until(lambda: ("tone", True) in sent.marks)
        await heard.frames_more(10)
    finally:
        a.close()
        b.close()
    assert ticker.members == 0
    ticker.close()
    audio = heard.audio()
    loud = np.flatnonzero(np.abs(audio) > 2000)
    assert peak_frequency(audio[loud[0] : loud[-1] + 1]) == pytest.approx(700.0, abs=10.0)
    assert (loud[-1] - loud[0]) / 8000 == pytest.approx(0.4, abs=0.03)
    assert b.stats().packets_lost == 0


def test_the_same_exchange_on_uvloop(allocator):
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed on this platform")

    async def exchange() -> tuple[np.ndarray, str]:
        heard = Collector()
        queue = PlaybackQueue()
        queue.enqueue(prompt_from_samples(tone(700.0, 0.3)))
        a = await make_session(allocator, source=queue)
        b = await make_session(allocator, heard)
        try:
            a.start(MediaParams(remote_rtp=(HOST, b.local_rtp_port)))
            b.start(MediaParams(remote_rtp=(HOST, a.local_rtp_port)))
            await heard.frames_more(25)
        finally:
            a.close()
            b.close()
        return heard.audio(), type(asyncio.get_running_loop()).__module__

    audio, loop_module = uvloop.run(exchange())
    assert loop_module.startswith("uvloop")
    loud = np.flatnonzero(np.abs(audio) > 2000)
    assert peak_frequency(audio[loud[0] : loud[-1] + 1]) == pytest.approx(700.0, abs=15.0)


@pytest.mark.parametrize("associate", [False, True], ids=["filtered_here", "by_the_kernel"])
async def test_symmetric_rtp_latches_and_drops_a_third_source(allocator, associate):
    heard = Collector()
    third_transport, third = await open_sink()
    third_port = third_transport.get_extra_info("sockname")[1]
    config = SessionConfig(associate=associate)
    a = await make_session(allocator)
    b = await make_session(allocator, heard, config)
    try:
        # B's SDP names the third socket: B sends there until A's packets arrive.
        b.start(MediaParams(remote_rtp=(HOST, third_port)))
        await asyncio.wait_for(third.arrived.wait(), WAIT_S)
        a.start(MediaParams(remote_rtp=(HOST, b.local_rtp_port)))
        await heard.frames_more(5)
        assert b.latched == (HOST, a.local_rtp_port)
        received_before = b.stats().packets_received
        if associate:
            assert b.ports.rtp_socket.getpeername() == (HOST, a.local_rtp_port)
        else:
            with pytest.raises(OSError):
                b.ports.rtp_socket.getpeername()

        # The third socket now sends well-formed RTP to B: dropped (counted
        # when B filters; the kernel drops them silently for an associated socket).
        third_payload = bytes([0x11]) * 160
        for seq in range(10):
            third_transport.sendto(
                pack_rtp(0, seq, seq * 160, 0x1234, third_payload), (HOST, b.local_rtp_port)
            )
        if not associate:
            await heard.until(lambda: b.dropped_foreign >= 10)
        await heard.frames_more(3)
        assert b.stats().dropped_foreign == (0 if associate else 10)
        # All B counted since is A's stream, whose SSRC never changed.
        assert b.receive_stats.ssrc == a.sender.ssrc
        assert b.receive_stats.ssrc_changes == 0
        assert b.stats().packets_received > received_before
    finally:
        a.close()
        b.close()
        third_transport.close()


async def test_a_new_answer_dissolves_the_association_and_latches_again(allocator):
    """A re-INVITE's new address: the socket takes anyone's packets again, and the
    new peer's latch it (and associate it) anew."""
    heard = Collector()
    a = await make_session(allocator)
    c = await make_session(allocator)
    b = await make_session(allocator, heard)
    try:
        a.start(MediaParams(remote_rtp=(HOST, b.local_rtp_port)))
        b.start(MediaParams(remote_rtp=(HOST, a.local_rtp_port)))
        await heard.frames_more(5)
        assert b.ports.rtp_socket.getpeername() == (HOST, a.local_rtp_port)

        a.close()
        await heard.frames_more(3)  # A's last packets are read while B is still A's
        b.update(MediaParams(remote_rtp=(HOST, c.local_rtp_port)))
        with pytest.raises(OSError):
            b.ports.rtp_socket.getpeername()  # dissolved at once
        c.start(MediaParams(remote_rtp=(HOST, b.local_rtp_port)))
        await heard.until(lambda: b.latched == (HOST, c.local_rtp_port))
        await heard.frames_more(3)
        assert b.ports.rtp_socket.getpeername() == (HOST, c.local_rtp_port)
        assert b.receive_stats.ssrc == c.sender.ssrc
        assert b.send_errors == 0
    finally:
        a.close()
        b.close()
        c.close()


async def test_rfc4733_digits_are_reported_once_each(allocator):
    heard = Collector()
    a = await make_session(allocator)
    b = await make_session(allocator, heard)
    try:
        a.start(MediaParams(remote_rtp=(HOST, b.local_rtp_port), dtmf_payload_type=101))
        b.start(MediaParams(remote_rtp=(HOST, a.local_rtp_port), dtmf_payload_type=101))
        a.send_dtmf("12#", duration_ms=80)
        a.send_dtmf("9")
        await heard.until(lambda: len(heard.digits) >= 4)
        await heard.frames_more(10)  # retransmitted end packets come and go
    finally:
        a.close()
        b.close()
    assert [d.digit for d in heard.digits] == ["1", "2", "#", "9"]
    assert [d.duration_ms for d in heard.digits] == [80.0, 80.0, 80.0, 100.0]
    assert all(d.ended for d in heard.digits)
    assert a.stats().dtmf_sent == b.stats().dtmf_received == 4


async def test_dtmf_needs_a_negotiated_event_type(allocator):
    a = await make_session(allocator)
    try:
        a.start(MediaParams(remote_rtp=(HOST, 9), dtmf_payload_type=None))
        with pytest.raises(ValueError, match="telephone-event"):
            a.send_dtmf("1")
        with pytest.raises(ValueError):
            a.update(MediaParams(remote_rtp=(HOST, 9)))
            a.send_dtmf("x")
    finally:
        a.close()


async def test_inband_dtmf_is_detected_in_the_audio(allocator):
    heard = Collector()
    rows, columns = (697.0, 770.0, 852.0, 941.0), (1209.0, 1336.0, 1477.0)
    keypad = {"1": (0, 0), "5": (1, 1), "9": (2, 2)}
    queue = PlaybackQueue()
    for key in "159":
        row, column = keypad[key]
        queue.enqueue(
            prompt_from_samples(tone(rows[row], 0.1, 6000) + tone(columns[column], 0.1, 6000))
        )
        queue.enqueue(np.zeros(800, dtype=np.int16))
    a = await make_session(allocator, source=queue)
    b = await make_session(allocator, heard, SessionConfig(inband_dtmf=True))
    try:
        a.start(MediaParams(remote_rtp=(HOST, b.local_rtp_port)))
        b.start(MediaParams(remote_rtp=(HOST, a.local_rtp_port)))
        await heard.until(lambda: len(heard.digits) >= 3)
    finally:
        a.close()
        b.close()
    assert [d.digit for d in heard.digits] == ["1", "5", "9"]


async def test_media_timeout_fires_once_with_its_cause(allocator):
    seen = Collector()
    sink_transport, _ = await open_sink()
    a = await make_session(allocator, seen, SessionConfig(media_timeout_s=0.1, rtcp=False))
    try:
        a.start(MediaParams(remote_rtp=sink_transport.get_extra_info("sockname")))
        await seen.until(lambda: bool(seen.timeouts))
        frames_at_timeout = a.frame_index
        await until_frame(a, frames_at_timeout + 5)
    finally:
        a.close()
        sink_transport.close()
    assert seen.timeouts == [MEDIA_TIMEOUT]
    assert frames_at_timeout * 0.020 == pytest.approx(0.1, abs=0.045)


async def test_stopping_when_idle_marks_the_next_talkspurt(allocator):
    sink_transport, sink = await open_sink()
    queue = PlaybackQueue()
    queue.enqueue(prompt_from_samples(tone(500.0, 0.06)))
    queue.mark("first")
    marks = Collector()
    queue.on_mark = marks.on_mark
    a = await make_session(
        allocator, config=SessionConfig(send_silence=False, rtcp=False), source=queue
    )
    try:
        a.start(MediaParams(remote_rtp=sink_transport.get_extra_info("sockname")))
        await marks.until(lambda: bool(marks.marks))
        gap_from = a.frame_index
        await until_frame(a, gap_from + 4)
        queue.enqueue(prompt_from_samples(tone(500.0, 0.04)))
        queue.mark("second")
        await marks.until(lambda: len(marks.marks) == 2)
        await sink.until_count(5)
    finally:
        a.close()
        sink_transport.close()
    headers = [struct.unpack_from("!BBHI", data) for data, _ in sink.packets]
    markers = [second >> 7 for _, second, _, _ in headers]
    sequences = [seq for _, _, seq, _ in headers]
    timestamps = [ts for _, _, _, ts in headers]
    assert len(headers) == 5  # 3 frames, a pause with nothing sent, 2 frames
    assert markers == [1, 0, 0, 1, 0]
    assert [(s - sequences[0]) & 0xFFFF for s in sequences] == [0, 1, 2, 3, 4]
    steps = [(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(timestamps)]
    assert steps[:2] == [160, 160] and steps[3] == 160
    assert steps[2] >= 160 * 5  # the RTP clock ran on through the pause


async def test_comfort_silence_keeps_packets_flowing(allocator):
    sink_transport, sink = await open_sink()
    a = await make_session(allocator, config=SessionConfig(rtcp=False))
    try:
        a.start(MediaParams(remote_rtp=sink_transport.get_extra_info("sockname")))
        await sink.until_count(4)
    finally:
        a.close()
        sink_transport.close()
    payloads = {data[12:] for data, _ in sink.packets}
    assert payloads == {ulaw_encode(np.zeros(160, dtype=np.int16)).tobytes()}


async def test_rtcp_reports_give_a_round_trip_time(allocator):
    config = SessionConfig(rtcp_interval_s=0.05)
    heard = Collector()
    a = await make_session(allocator, heard, config)
    b = await make_session(allocator, Collector(), config)
    try:
        a.start(MediaParams(remote_rtp=(HOST, b.local_rtp_port)))
        b.start(MediaParams(remote_rtp=(HOST, a.local_rtp_port)))
        await heard.until(lambda: a.rtt_s is not None and b.rtt_s is not None)
    finally:
        a.close()
        b.close()
    stats = a.stats()
    assert stats.rtt_ms is not None and 0 <= stats.rtt_ms < 100
    assert stats.remote_loss_fraction == 0.0
    assert 4.0 < stats.mos <= 4.5
    assert a.rtcp_latched == (HOST, b.local_rtcp_port)


async def test_close_cancels_timers_and_frees_the_ports(allocator):
    a = await make_session(allocator)
    pair = a.ports.pair
    a.start(MediaParams(remote_rtp=(HOST, 9)))
    assert allocator.is_held(pair)
    a.close()
    a.close()  # idempotent
    assert not allocator.is_held(pair)
    assert not a.ticking and a._rtcp_timer is None
    with pytest.raises(RuntimeError):
        a.start(MediaParams(remote_rtp=(HOST, 9)))


async def test_start_before_open_is_refused(allocator):
    session = RtpSession(bind_pair(allocator, HOST))
    with pytest.raises(RuntimeError, match="open"):
        session.start(MediaParams(remote_rtp=(HOST, 9)))
    session.close()


async def test_packets_before_the_answer_are_dropped_and_counted(allocator):
    """On a running shared clock, what arrives before start() is read, not played, counted."""
    heard = Collector()
    sink_transport, _ = await open_sink()
    ticker = FrameTicker()
    other = await make_session(allocator, ticker=ticker)
    other.start(MediaParams(remote_rtp=sink_transport.get_extra_info("sockname")))
    b = await make_session(allocator, heard, ticker=ticker)
    try:
        for seq in range(4):
            sink_transport.sendto(
                pack_rtp(0, seq, seq * 160, 0x4321, bytes(160)), (HOST, b.local_rtp_port)
            )
        await asyncio.sleep(0.05)  # let loopback deliver them before the answer
        b.start(MediaParams(remote_rtp=sink_transport.get_extra_info("sockname")))
        assert b.dropped_early == 4
        sink_transport.sendto(
            pack_rtp(0, 100, 100 * 160, 0x4321, bytes(160)), (HOST, b.local_rtp_port)
        )
        await heard.until(lambda: b.stats().packets_received == 1)
        assert b.latched == sink_transport.get_extra_info("sockname")
    finally:
        b.close()
        other.close()
        ticker.close()
        sink_transport.close()


async def test_a_lone_call_is_read_within_a_few_ms(allocator):
    """The clock reads the RTP sockets: for one call it still wakes every 1 ms, not 20."""
    sink_transport, _ = await open_sink()
    b = await make_session(allocator)
    loop = asyncio.get_running_loop()
    arrived: list[float] = []
    b.on_audio = None
    original = b._on_rtp

    def timed(data: bytes, address: tuple[str, int]) -> None:
        arrived.append(loop.time())
        original(data, address)

    try:
        b.start(MediaParams(remote_rtp=sink_transport.get_extra_info("sockname")))
        b._receiver.remove(b.ports.rtp_socket)  # re-register with the timing wrapper
        b._receiver.add(b.ports.rtp_socket, timed)
        delays = []
        for seq in range(20):
            await asyncio.sleep(0.0037)  # any phase against the 20 ms frame clock
            sent = loop.time()
            sink_transport.sendto(
                pack_rtp(0, seq, seq * 160, 0x4321, bytes(160)), (HOST, b.local_rtp_port)
            )
            while len(arrived) <= seq:
                await asyncio.sleep(0.0005)
            delays.append(arrived[seq] - sent)
        # Held for a whole 20 ms period, the median would be about 10 ms.
        assert sorted(delays)[len(delays) // 2] < 0.004, delays
    finally:
        b.close()
        sink_transport.close()


@pytest.mark.parametrize("codec", [PCMU, PCMA], ids=["pcmu", "pcma"])
async def test_on_payload_hands_over_the_wire_bytes(allocator, codec: G711Codec):
    """Every played frame as G.711 in the call's codec: the sender's bytes where whole."""
    sent, heard = Collector(), Collector()
    payloads: list[bytes] = []
    queue = PlaybackQueue(on_mark=sent.on_mark)
    queue.enqueue(prompt_from_samples(tone(700.0, 0.4)))
    queue.mark("tone")
    a = await make_session(allocator, sent, source=queue)
    b = await make_session(allocator, heard, on_payload=payloads.append)
    try:
        a.start(MediaParams(remote_rtp=(HOST, b.local_rtp_port), codec=codec))
        b.start(MediaParams(remote_rtp=(HOST, a.local_rtp_port), codec=codec))
        assert b.codec is codec
        await sent.until(lambda: ("tone", True) in sent.marks)
        await heard.frames_more(10)
    finally:
        a.close()
        b.close()
    # One payload per frame on_audio saw, each decoding to exactly those samples.
    assert len(payloads) == len(heard.frames) and len(payloads) >= 20
    decode = ulaw_decode if codec is PCMU else alaw_decode
    encode = ulaw_encode if codec is PCMU else alaw_encode
    for payload, samples in zip(payloads, heard.frames, strict=True):
        assert len(payload) == 160
        if samples.any():
            assert np.array_equal(decode(payload), samples)
        else:  # silence: A-law has no code for 0, its silence decodes to +-8
            assert np.abs(decode(payload).astype(int)).max() <= 8
    # The tone's frames are the bytes the sender put on the wire, unchanged.
    wire = encode(prompt_from_samples(tone(700.0, 0.4)).samples).tobytes()
    joined = b"".join(payloads)
    assert wire[160 * 2 : 160 * 18] in joined

"""Concurrent voicebot calls per core: N calls streamed to an echo bot, the audio checked for gaps.

Three kinds of process on loopback:

- the worker (the measured one, pinned to core 0 with ``MEDIA_BENCH_PIN=1``):
  N calls, each an ``RtpSession`` with a ``VoicebotStream`` attached, on uvloop;
- the callee: one uvloop UDP socket playing the N phones. Every 20 ms it
  sends each call a frame of tone whose first three octets stamp the frame
  number (mu-law codes that survive decode and re-encode unchanged), and it
  checks what each call sends back: after the echo has started, a frame of
  silence, or an RTP timestamp jump (a frame our session had to skip), is
  a gap in the audio sent to the callee. It reads its socket every 1 ms, as
  a phone across a network costs the worker nothing to wake (one on loopback
  sleeping on its socket is woken inside each of the worker's ``sendto``
  calls; ``--callee-wakeups`` measures that way);
- the bot: ``media.bots.EchoBot`` in its own process (``--bots`` of them),
  sending back every ``media`` payload.

Only the worker's CPU is the figure: the bot and the phones run in their
own processes (on the other core when pinned), and the worker reports its
own CPU time (``time.process_time``) over the measured interval, as a
fraction of a core and as milliseconds of CPU per call-second. The worker's
calls share one 20 ms clock (``media.ticker.FrameTicker``, one timer per
1 ms slot) as a worker's calls do; ``--own-clocks`` gives each session its
own instead.

A run passes when, after the warm-up, no call has a gap, no callee frame
was dropped on the way to the bot, and the echo came back on every call.
The search steps N up by ``--step`` until a run fails, then tries half a
step past the last pass once. Figures per run: the latency the voicebot
path adds in each direction (median and p99, measured in the worker:
callee frame out of the jitter buffer -> its message written to the bot's
socket; bot message in -> its first frame sent, beyond the audio queued
ahead of it), the callee's round trip (frame sent -> its echo back, which
also holds both jitter buffers and the bot), and CPU use of each process.

    python bench/voicebot.py [--start 100] [--step 100] [--max 1500]
        [--duration 5] [--warmup 2] [--bots 1] [--calls N] [--own-clocks]
        [--frames-per-write 1] [--callee-wakeups] [--realtime] [--json]

``--frames-per-write n`` writes the callee's frames to the bot n at a time
(each its own ``media`` message; one write and one wake-up of the bot per n),
adding up to (n - 1) x 20 ms of latency to the bot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HOST = "127.0.0.1"
WORKER_CORE = 0
PEER_CORE = 1
LATENCY_LIMIT_MS = 40.0
PIN = os.environ.get("MEDIA_BENCH_PIN") == "1"

_RTP = struct.Struct("!BBHII")
_SEQ_TS = struct.Struct("!HI")
_STAMP_BASE = 0x10  # codes 0x10-0x4F: six bits each, all kept exactly by mu-law round trips
_RING = 1 << 18


def _realtime() -> None:
    # As `dialer worker` runs with DIALER_REALTIME_PRIORITY=1: round-robin
    # real-time priority, so other programs on the machine cannot hold the
    # frame clock. Needs root or CAP_SYS_NICE.
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))
    except PermissionError:
        print("--realtime: not permitted here; running at normal priority", flush=True)


def _pin(core: int) -> None:
    if PIN:
        available = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {core} & available or available)


def _new_loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


def _raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))


def _cpu_s() -> float:
    # This process's CPU time, user and system, all threads.
    return time.process_time()


def _shared_clock(loop: asyncio.AbstractEventLoop, own_clocks: bool):
    """One 20 ms clock for the worker's calls (None: each call its own)."""
    if own_clocks:
        return None
    from media.ticker import FrameTicker

    return FrameTicker(loop)


# -- the bot ---------------------------------------------------------------------------------


def _bot_main(ready: mp.Queue, stop: mp.Event, results: mp.Queue) -> None:
    _pin(PEER_CORE)
    _raise_file_limit(4096)
    loop = _new_loop()
    asyncio.set_event_loop(loop)

    async def serve() -> None:
        from media.bots import EchoBot, serve_bot

        server = await serve_bot(EchoBot(keep_sessions=False))
        ready.put(server.url)
        cpu0, wall0 = _cpu_s(), time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.1)  # the bot's own shutdown poll, not a measurement
        results.put((_cpu_s() - cpu0) / (time.perf_counter() - wall0))
        await server.close()

    loop.run_until_complete(serve())
    loop.close()


# -- the callee ------------------------------------------------------------------------------


class _Callees(asyncio.DatagramProtocol):
    """N phones on one socket: sends each call a stamped frame per 20 ms, checks what returns."""

    def __init__(self, ports: list[int], window: tuple[float, float]) -> None:
        from media.g711 import ulaw_encode

        self.ports = ports
        self.index = {port: i for i, port in enumerate(ports)}
        self.window = window
        n = len(ports)
        t = np.arange(160 * 50) / 8000
        tone = ulaw_encode((6000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)).tobytes()
        self.tone = [bytearray(tone[i * 160 : (i + 1) * 160]) for i in range(50)]
        self.silence = b"\xff" * 160
        self.headers = [bytearray(_RTP.pack(0x80, 0, 0, 0, 0xC0DE0000 + i)) for i in range(n)]
        self.sent_at = [0.0] * _RING
        self.frame = 0
        self.started = [False] * n
        self.last = [(-1, 0)] * n  # (sequence number, timestamp) of the last packet
        self.gaps = [0] * n
        self.skips = [0] * n
        self.lost = 0
        self.received = 0
        self.round_trips: list[float] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def tick(self, now: float) -> None:
        k = self.frame
        self.frame += 1
        self.sent_at[k % _RING] = now
        payload = self.tone[k % 50]
        payload[0] = _STAMP_BASE + (k >> 12 & 63)
        payload[1] = _STAMP_BASE + (k >> 6 & 63)
        payload[2] = _STAMP_BASE + (k & 63)
        data = bytes(payload)
        sendto = self.transport.sendto  # type: ignore[union-attr]
        for i, port in enumerate(self.ports):
            header = self.headers[i]
            _SEQ_TS.pack_into(header, 2, k & 0xFFFF, (k * 160) & 0xFFFFFFFF)
            sendto(bytes(header) + data, (HOST, port))

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        i = self.index.get(addr[1])
        if i is None or len(data) != 172:
            return
        self.received += 1
        sequence_number, timestamp = _SEQ_TS.unpack_from(data, 2)
        now = time.monotonic()
        measuring = self.window[0] <= now < self.window[1]
        last_seq, last_ts = self.last[i]
        self.last[i] = (sequence_number, timestamp)
        if last_seq >= 0 and measuring:
            self.lost += (sequence_number - last_seq - 1) & 0xFFFF
            if (timestamp - last_ts) & 0xFFFFFFFF != 160 and self.started[i]:
                self.skips[i] += 1
        if data[12:] == self.silence:
            if self.started[i] and measuring:
                self.gaps[i] += 1
            return
        self.started[i] = True
        a, b, c = data[12] - _STAMP_BASE, data[13] - _STAMP_BASE, data[14] - _STAMP_BASE
        if measuring and 0 <= a < 64 and 0 <= b < 64 and 0 <= c < 64:
            k = a << 12 | b << 6 | c
            if k < self.frame:
                self.round_trips.append(now - self.sent_at[k % _RING])


def _callee_main(conn, warmup_s: float, duration_s: float, woken: bool = False) -> None:
    _pin(PEER_CORE)
    loop = _new_loop()
    asyncio.set_event_loop(loop)

    async def run() -> dict:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, 8 * 1024 * 1024)
        sock.bind((HOST, 0))
        conn.send(sock.getsockname()[1])
        ports = await loop.run_in_executor(None, conn.recv)
        begin = time.monotonic()
        window = (begin + warmup_s, begin + warmup_s + duration_s)
        done = loop.create_future()
        if woken:
            transport, callees = await loop.create_datagram_endpoint(
                lambda: _Callees(ports, window), sock=sock
            )
        else:
            # The phones read their socket every 1 ms instead of sleeping on
            # it: a phone across a network costs the worker nothing to wake,
            # but one on loopback sleeping on its socket is woken inside each
            # of the worker's sendto calls (--callee-wakeups measures so).
            sock.setblocking(False)
            callees = _Callees(ports, window)
            callees.transport = sock  # type: ignore[assignment]  # sendto(data, address)
            transport = sock

            def drain() -> None:
                if done.done():
                    return  # the socket may be closed already: a drain booked before the end
                while True:
                    try:
                        data, address = sock.recvfrom(2048)
                    except (BlockingIOError, InterruptedError):
                        break
                    callees.datagram_received(data, address)
                if not done.done():
                    loop.call_later(0.001, drain)

            loop.call_soon(drain)
        origin = loop.time()
        cpu = [0.0, 0.0]

        def tick() -> None:
            now = loop.time()
            n = callees.frame + 1
            if time.monotonic() >= window[0] and not cpu[0]:
                cpu[0], cpu[1] = _cpu_s(), time.perf_counter()
            if time.monotonic() >= window[1] + 0.2:
                done.set_result(None)
                return
            callees.tick(time.monotonic())
            loop.call_at(max(now, origin + n * 0.020), tick)

        loop.call_at(origin, tick)
        await done
        cpu_fraction = (_cpu_s() - cpu[0]) / (time.perf_counter() - cpu[1])
        transport.close()
        trips = np.array(callees.round_trips or [0.0]) * 1000
        return {
            "calls_with_echo": sum(callees.started),
            "gaps": sum(callees.gaps),
            "skips": sum(callees.skips),
            "calls_with_gaps": sum(
                1 for g, s in zip(callees.gaps, callees.skips, strict=True) if g or s
            ),
            "lost": callees.lost,
            "received": callees.received,
            "round_trip_median_ms": float(np.median(trips)),
            "round_trip_p99_ms": float(np.percentile(trips, 99)),
            "cpu_fraction": cpu_fraction,
        }

    conn.send(loop.run_until_complete(run()))
    loop.close()


# -- the worker ------------------------------------------------------------------------------


def _worker_main(
    calls: int,
    callee_port: int,
    bot_urls: list[str],
    conn,
    warmup_s: float,
    duration_s: float,
    own_clocks: bool = False,
    frames_per_write: int = 1,
) -> None:
    _pin(WORKER_CORE)
    if os.environ.get("VOICEBOT_BENCH_REALTIME") == "1":
        _realtime()
    _raise_file_limit(4 * calls + 256)
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    if bot_urls:
        run = _run_calls(
            calls, callee_port, bot_urls, conn, warmup_s, duration_s, own_clocks, frames_per_write
        )
    else:
        run = _run_local_echo(calls, callee_port, conn, warmup_s, duration_s, own_clocks)
    conn.send(loop.run_until_complete(run))
    loop.close()


def _histogram_delta(after, before_counts: list[int]):
    from media.clock import LatenessHistogram

    delta = LatenessHistogram()
    delta.counts = [a - b for a, b in zip(after.counts, before_counts, strict=True)]
    delta.total = sum(delta.counts)
    delta.maximum_s = after.maximum_s
    return delta


async def _run_calls(
    calls: int,
    callee_port: int,
    bot_urls: list[str],
    conn,
    warmup_s: float,
    duration_s: float,
    own_clocks: bool,
    frames_per_write: int = 1,
) -> dict:
    import aiohttp

    from dialer.gc_policy import tune_collector
    from media.clock import LatenessHistogram
    from media.playback import PlaybackQueue
    from media.ports import PortAllocator, bind_pair
    from media.session import MediaParams, RtpSession, SessionConfig
    from media.voicebot import VoicebotCall, VoicebotConfig, VoicebotStream

    loop = asyncio.get_running_loop()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    # As `dialer worker` does once it is set up, before its first call (dialer.gc_policy).
    tune_collector()
    allocator = PortAllocator(20000, 39999, start_port=20000 + 2 * (os.getpid() % 9000))
    config = SessionConfig(media_timeout_s=None, rtcp=False)
    clock = _shared_clock(loop, own_clocks)
    clocked = {} if clock is None else {"ticker": clock}
    sessions: list[RtpSession] = []
    streams: list[VoicebotStream] = []
    for i in range(calls):
        playback = PlaybackQueue()
        session = await RtpSession.create(
            bind_pair(allocator, HOST), config, source=playback, **clocked
        )
        call = VoicebotCall(f"CA{i:032x}", "AC" + "0" * 32, f"MZ{i:032x}", {"call": i})
        # Passed only when asked for, so the bench still runs on a checkout
        # that predates the setting.
        extra = {"frames_per_write": frames_per_write} if frames_per_write > 1 else {}
        bot_config = VoicebotConfig(bot_urls[i % len(bot_urls)], **extra)
        stream = VoicebotStream(bot_config, call, playback, http=http)
        stream.attach(session)
        sessions.append(session)
        streams.append(stream)
    tasks = [asyncio.ensure_future(stream.run()) for stream in streams]
    # Calls start spread over one frame period, as calls answered at random do.
    for i, session in enumerate(sessions):
        loop.call_later(0.020 * i / calls, session.start, MediaParams((HOST, callee_port)))
    conn.send([session.local_rtp_port for session in sessions])

    await asyncio.sleep(warmup_s)  # the load runs meanwhile; this only waits out the warm-up
    to_before = [list(s.latency_histograms[0].counts) for s in streams]
    from_before = [list(s.latency_histograms[1].counts) for s in streams]
    dropped_before = sum(s.frames_dropped for s in streams)
    underruns_before = sum(s.result().underrun_frames for s in streams)
    inbound_before = [(s.stats().concealed_frames, s.stats().late) for s in sessions]
    sent_before = sum(s.frames_sent for s in streams)
    packets_before = _packets_sent(sessions)
    for session in sessions:
        session.lateness = LatenessHistogram()
    cpu0, wall0 = _cpu_s(), time.perf_counter()
    await asyncio.sleep(duration_s)  # the measured interval
    cpu_s = _cpu_s() - cpu0
    cpu_fraction = cpu_s / (time.perf_counter() - wall0)
    packets = _packets_sent(sessions) - packets_before

    to_bot, from_bot, lateness = LatenessHistogram(), LatenessHistogram(), LatenessHistogram()
    for stream, before_to, before_from in zip(streams, to_before, from_before, strict=True):
        to_bot.merge(_histogram_delta(stream.latency_histograms[0], before_to))
        from_bot.merge(_histogram_delta(stream.latency_histograms[1], before_from))
    for session in sessions:
        lateness.merge(session.lateness)
    failed = [
        s.result().reason for s in streams if s.outcome is not None and s.outcome != "completed"
    ]
    dropped = sum(s.frames_dropped for s in streams) - dropped_before
    underruns = sum(s.result().underrun_frames for s in streams) - underruns_before
    concealed = late = 0
    for session, (concealed_before, late_before) in zip(sessions, inbound_before, strict=True):
        stats = session.stats()
        concealed += stats.concealed_frames - concealed_before
        late += stats.late - late_before
    sent = sum(s.frames_sent for s in streams) - sent_before
    # The phones' window closes on their own clock, a little after ours: the
    # streams go on past it, so their end is not taken for a gap.
    await asyncio.sleep(0.5)
    for stream in streams:
        stream.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    for session in sessions:
        session.close()
    if clock is not None:
        clock.close()
    await http.close()
    return {
        "frames_to_bot": sent,
        "frames_dropped": dropped,
        "underruns": underruns,
        "inbound_concealed": concealed,
        "inbound_late": late,
        "bot_failures": len(failed),
        "first_failure": failed[0] if failed else None,
        "to_bot_median_ms": to_bot.percentile(0.5) * 1000,
        "to_bot_p99_ms": to_bot.percentile(0.99) * 1000,
        "from_bot_median_ms": from_bot.percentile(0.5) * 1000,
        "from_bot_p99_ms": from_bot.percentile(0.99) * 1000,
        "send_lateness_p99_ms": lateness.percentile(0.99) * 1000,
        "cpu_fraction": cpu_fraction,
        "cpu_us_per_frame": cpu_s / max(1, packets) * 1e6,
    }


def _packets_sent(sessions) -> int:
    return sum(session.send_stats.packets_sent for session in sessions)


class _LocalEcho:
    """The peer run: the callee's audio played straight back inside the worker, no bot."""

    def __init__(self, playback) -> None:
        self.playback = playback

    def on_audio(self, samples: np.ndarray) -> None:
        self.playback.enqueue(samples.copy())


async def _run_local_echo(
    calls: int, callee_port: int, conn, warmup_s: float, duration_s: float, own_clocks: bool
) -> dict:
    from media.clock import LatenessHistogram
    from media.playback import PlaybackQueue
    from media.ports import PortAllocator, bind_pair
    from media.session import MediaParams, RtpSession, SessionConfig

    loop = asyncio.get_running_loop()
    allocator = PortAllocator(20000, 39999, start_port=20000 + 2 * (os.getpid() % 9000))
    config = SessionConfig(media_timeout_s=None, rtcp=False)
    clock = _shared_clock(loop, own_clocks)
    clocked = {} if clock is None else {"ticker": clock}
    sessions: list[RtpSession] = []
    for _ in range(calls):
        playback = PlaybackQueue()
        session = await RtpSession.create(
            bind_pair(allocator, HOST), config, source=playback, **clocked
        )
        session.on_audio = _LocalEcho(playback).on_audio
        sessions.append(session)
    for i, session in enumerate(sessions):
        loop.call_later(0.020 * i / calls, session.start, MediaParams((HOST, callee_port)))
    conn.send([session.local_rtp_port for session in sessions])
    await asyncio.sleep(warmup_s)  # the load runs meanwhile; this only waits out the warm-up
    packets_before = _packets_sent(sessions)
    for session in sessions:
        session.lateness = LatenessHistogram()
    cpu0, wall0 = _cpu_s(), time.perf_counter()
    await asyncio.sleep(duration_s)  # the measured interval
    cpu_s = _cpu_s() - cpu0
    cpu_fraction = cpu_s / (time.perf_counter() - wall0)
    packets = _packets_sent(sessions) - packets_before
    lateness = LatenessHistogram()
    for session in sessions:
        lateness.merge(session.lateness)
    await asyncio.sleep(0.5)  # past the phones' window, as in _run_calls
    for session in sessions:
        session.close()
    if clock is not None:
        clock.close()
    return {
        "frames_to_bot": 0,
        "frames_dropped": 0,
        "underruns": 0,
        "inbound_concealed": 0,
        "inbound_late": 0,
        "bot_failures": 0,
        "first_failure": None,
        "to_bot_median_ms": 0.0,
        "to_bot_p99_ms": 0.0,
        "from_bot_median_ms": 0.0,
        "from_bot_p99_ms": 0.0,
        "send_lateness_p99_ms": lateness.percentile(0.99) * 1000,
        "cpu_fraction": cpu_fraction,
        "cpu_us_per_frame": cpu_s / max(1, packets) * 1e6,
    }


# -- one run, and the search -----------------------------------------------------------------


@dataclass
class RunResult:
    kind: str  # "voicebot", or "local echo" for the peer run
    calls: int
    gaps: int
    skips: int
    calls_with_gaps: int
    calls_with_echo: int
    lost: int
    frames_to_bot: int
    frames_dropped: int
    underruns: int
    inbound_concealed: int
    inbound_late: int
    bot_failures: int
    to_bot_median_ms: float
    to_bot_p99_ms: float
    from_bot_median_ms: float
    from_bot_p99_ms: float
    round_trip_median_ms: float
    round_trip_p99_ms: float
    send_lateness_p99_ms: float
    worker_cpu: float
    # The worker's CPU per 20 ms frame sent to a callee (each frame also
    # carries one frame the other way): unlike the per call-second figure,
    # it does not shrink when a loaded machine makes the worker skip frames.
    worker_us_per_frame: float
    callee_cpu: float
    bot_cpu: float

    @property
    def passed(self) -> bool:
        return (
            self.gaps == 0
            and self.skips == 0
            and self.frames_dropped == 0
            and self.bot_failures == 0
            and self.calls_with_echo == self.calls
        )

    @property
    def worker_ms_per_call_s(self) -> float:
        """The worker's CPU time per second of one call's streaming, in ms."""
        return self.worker_cpu / self.calls * 1000

    @property
    def latency_ok(self) -> bool:
        return self.to_bot_p99_ms < LATENCY_LIMIT_MS and self.from_bot_p99_ms < LATENCY_LIMIT_MS


def run_once(calls: int, args: argparse.Namespace, *, baseline: bool = False) -> RunResult:
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    ready: mp.Queue = ctx.Queue()
    bot_results: mp.Queue = ctx.Queue()
    bots = [
        ctx.Process(target=_bot_main, args=(ready, stop, bot_results))
        for _ in range(0 if baseline else args.bots)
    ]
    for process in bots:
        process.start()
    urls = [ready.get(timeout=30) for _ in bots]
    callee_conn, callee_child = ctx.Pipe()
    worker_conn, worker_child = ctx.Pipe()
    callee = ctx.Process(
        target=_callee_main,
        args=(callee_child, args.warmup, args.duration, args.callee_wakeups),
    )
    callee.start()
    callee_port = callee_conn.recv()
    worker = ctx.Process(
        target=_worker_main,
        args=(
            calls,
            callee_port,
            urls,
            worker_child,
            args.warmup,
            args.duration,
            args.own_clocks,
            args.frames_per_write,
        ),
    )
    worker.start()
    try:
        callee_conn.send(worker_conn.recv())  # our sessions' ports, to the phones
        timeout = args.warmup + args.duration + 60
        if not callee_conn.poll(timeout) or not worker_conn.poll(timeout):
            raise RuntimeError("a benchmark process did not report")
        phones = callee_conn.recv()
        ours = worker_conn.recv()
    finally:
        stop.set()
        bot_cpu = max((bot_results.get(timeout=10) for _ in bots), default=0.0)
        for process in (*bots, callee, worker):
            process.join(10)
            if process.is_alive():
                process.terminate()
    return RunResult(
        kind="local echo" if baseline else "voicebot",
        calls=calls,
        gaps=phones["gaps"],
        skips=phones["skips"],
        calls_with_gaps=phones["calls_with_gaps"],
        calls_with_echo=phones["calls_with_echo"],
        lost=phones["lost"],
        frames_to_bot=ours["frames_to_bot"],
        frames_dropped=ours["frames_dropped"],
        underruns=ours["underruns"],
        inbound_concealed=ours["inbound_concealed"],
        inbound_late=ours["inbound_late"],
        bot_failures=ours["bot_failures"],
        to_bot_median_ms=ours["to_bot_median_ms"],
        to_bot_p99_ms=ours["to_bot_p99_ms"],
        from_bot_median_ms=ours["from_bot_median_ms"],
        from_bot_p99_ms=ours["from_bot_p99_ms"],
        round_trip_median_ms=phones["round_trip_median_ms"],
        round_trip_p99_ms=phones["round_trip_p99_ms"],
        send_lateness_p99_ms=ours["send_lateness_p99_ms"],
        worker_cpu=ours["cpu_fraction"],
        worker_us_per_frame=ours["cpu_us_per_frame"],
        callee_cpu=phones["cpu_fraction"],
        bot_cpu=bot_cpu,
    )


def _line(r: RunResult) -> str:
    verdict = "pass" if r.passed else "FAIL"
    return (
        f"  {r.kind:10} N={r.calls:5}  gaps {r.gaps:5} skips {r.skips:4} "
        f"(calls {r.calls_with_gaps:4}) "
        f"underruns {r.underruns:4} in-jb conceal/late {r.inbound_concealed}/{r.inbound_late}  "
        f"dropped {r.frames_dropped:5}  echo {r.calls_with_echo:5}  "
        f"to bot {r.to_bot_median_ms:5.1f}/{r.to_bot_p99_ms:5.1f} ms  "
        f"from bot {r.from_bot_median_ms:5.1f}/{r.from_bot_p99_ms:5.1f} ms  "
        f"round trip {r.round_trip_median_ms:5.1f}/{r.round_trip_p99_ms:5.1f} ms  "
        f"cpu worker {r.worker_cpu * 100:3.0f} % ({r.worker_ms_per_call_s:.2f} ms/call-s, "
        f"{r.worker_us_per_frame:.0f} us/frame) "
        f"callee {r.callee_cpu * 100:3.0f} % "
        f"bot {r.bot_cpu * 100:3.0f} %  {verdict}"
    )


def search(args: argparse.Namespace) -> tuple[RunResult | None, list[RunResult]]:
    runs: list[RunResult] = []
    best: RunResult | None = None
    calls = args.start
    while calls <= args.max:
        result = run_once(calls, args)
        runs.append(result)
        print(_line(result), flush=True)
        if not result.passed:
            break
        best = result
        calls += args.step
    if best is not None and best.calls + args.step // 2 < calls and args.step >= 20:
        result = run_once(best.calls + args.step // 2, args)
        runs.append(result)
        print(_line(result), flush=True)
        if result.passed:
            best = result
    return best, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=100)
    parser.add_argument("--step", type=int, default=100)
    parser.add_argument("--max", type=int, default=1500)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--bots", type=int, default=1)
    parser.add_argument("--calls", type=int, help="one run at this N, no search")
    parser.add_argument(
        "--peer", action="store_true", help="with --calls: the local-echo peer run as well"
    )
    parser.add_argument(
        "--own-clocks", action="store_true", help="a 20 ms clock per session, not one shared"
    )
    parser.add_argument(
        "--frames-per-write",
        type=int,
        default=1,
        help="callee frames written to the bot together (latency to the bot: +(n-1) x 20 ms)",
    )
    parser.add_argument(
        "--callee-wakeups",
        action="store_true",
        help="phones that sleep on their socket (woken by each of our packets, inside our "
        "sendto) instead of reading it every 1 ms",
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="the worker at SCHED_RR priority, as DIALER_REALTIME_PRIORITY=1 runs workers",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.realtime:
        os.environ["VOICEBOT_BENCH_REALTIME"] = "1"  # read by the worker process
    print(
        f"voicebot calls per worker process (uvloop), echo bot x{args.bots}, "
        f"{'SCHED_RR worker, ' if args.realtime else ''}"
        f"pinned: {PIN}, cores: {os.cpu_count()}, "
        f"clock: {'one per session' if args.own_clocks else 'shared'}, "
        f"frames per write: {args.frames_per_write}, "
        f"callee {'woken per packet' if args.callee_wakeups else 'reading every 1 ms'}, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    if args.calls:
        runs = [run_once(args.calls, args)]
        print(_line(runs[0]), flush=True)
        best = runs[0] if runs[0].passed or args.peer else None
    else:
        best, runs = search(args)
    if best is None:
        print("no N passed")
        peer = None
    else:
        # The peer run, same N, same phones: the audio echoed inside the
        # worker instead of through a bot. The CPU ratio is what the
        # voicebot path costs over plain RTP on this machine, now.
        peer = run_once(best.calls, args, baseline=True)
        runs.append(peer)
        print(_line(peer), flush=True)
        latency = "within" if best.latency_ok else "OVER"
        per_call = best.worker_cpu / best.calls * 100
        verdict = "largest N with no gap" if best.passed else "N (a run with gaps)"
        print(
            f"{verdict}: {best.calls} (worker cpu {best.worker_cpu * 100:.0f} %, "
            f"{per_call:.3f} % of a core per call, {best.worker_ms_per_call_s:.2f} ms CPU per "
            f"call-second; {peer.worker_cpu / best.worker_cpu:.2f}x as "
            f"much without the bot); added latency to bot {best.to_bot_median_ms:.1f} ms median, "
            f"{best.to_bot_p99_ms:.1f} ms p99; from bot {best.from_bot_median_ms:.1f} ms median, "
            f"{best.from_bot_p99_ms:.1f} ms p99 ({latency} the {LATENCY_LIMIT_MS:.0f} ms target)"
        )
    if args.json:
        report = {
            "best": asdict(best) if best else None,
            "peer": asdict(peer) if peer else None,
            "runs": [asdict(r) for r in runs],
        }
        print(json.dumps(report))


if __name__ == "__main__":
    main()

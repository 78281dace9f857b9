"""Concurrent recorded calls per core: RtpSession x N against an echo peer in another process.

One worker process, pinned to one core, runs N calls: each an ``RtpSession``
sending a prompt at 50 packets/s, receiving the echo of it (50 packets/s),
playing it out through the jitter buffer and recording both legs to a WAV.
The peer is a UDP echo in other processes (on the other core when pinned)
that reads its socket every 1 ms and sends each packet back: a peer across a
network costs the sender nothing to wake, while one on loopback sleeping on
its socket is woken inside each of our ``sendto`` calls (``--peer-wakeups``
measures that way too; it adds about a third to the worker's CPU).
A run passes when, after a warm-up, packet loss is under 0.1 % (gaps in the
echoed sequence numbers, so loss either way counts) and the p99 send
lateness (actual send time minus the frame's deadline) is under 5 ms.

The search steps N up by ``--step`` until a run fails, then halves the step
once between the last pass and the first failure. Each N is run
``--repeats`` times and judged on the medians. It is done with uvloop and
with the default loop, beside the ceiling: the packets per second one
Python process reaches in a tight send/receive loop against the same peer
(expressed as calls: packets per second in each direction / 50).

    python bench/media_concurrency.py [--loops uvloop,asyncio] [--start 100]
        [--step 100] [--max 3000] [--duration 4] [--warmup 1] [--repeats 3]
        [--profile] [--realtime] [--peer-wakeups] [--json]

``--profile`` samples the worker with py-spy (when installed) at the largest
N that passed with uvloop and prints where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"
LOSS_LIMIT = 0.001
LATENESS_LIMIT_MS = 5.0
WORKER_CORE = 0


PIN = os.environ.get("MEDIA_BENCH_PIN") == "1"


def _pin(cores: set[int]) -> None:
    if os.environ.get("MEDIA_BENCH_REALTIME") == "1":
        # Round-robin real-time priority, as media servers are run (Asterisk
        # -p, FreeSWITCH -rp): other programs on the machine cannot delay the
        # frame clock. Needs root or CAP_SYS_NICE.
        try:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))
        except PermissionError:
            print("--realtime: not permitted here; running at normal priority", flush=True)
    if not PIN:
        return
    available = os.sched_getaffinity(0)
    chosen = cores & available or available
    os.sched_setaffinity(0, chosen)


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


# -- the peer: a UDP echo ------------------------------------------------------------------


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.packets = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets += 1
        self.transport.sendto(data, addr)  # type: ignore[union-attr]


def _timed_echo(port: int, ready: mp.Event, stop: mp.Event) -> None:
    # Reads its socket every 1 ms instead of sleeping on it: a peer across a
    # network costs the sender nothing to wake, but one on loopback that
    # sleeps on its socket is woken inside each of our sendto calls, which
    # would charge the worker about half its kernel time for the peer.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, 8 * 1024 * 1024)
    sock.bind((HOST, port))
    sock.setblocking(False)
    ready.set()
    recvfrom, sendto = sock.recvfrom, sock.sendto
    checked = 0
    while True:
        time.sleep(0.001)
        while True:
            try:
                data, addr = recvfrom(2048)
            except BlockingIOError:
                break
            sendto(data, addr)
        checked += 1
        if checked % 100 == 0 and stop.is_set():
            break
    sock.close()


def _peer_main(
    port: int, ready: mp.Event, stop: mp.Event, cores: set[int], timed: bool = False
) -> None:
    _pin(cores)
    if timed:
        _timed_echo(port, ready, stop)
        return
    loop = _new_loop("uvloop")
    asyncio.set_event_loop(loop)

    async def serve() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, 8 * 1024 * 1024)
        sock.bind((HOST, port))
        transport, _ = await loop.create_datagram_endpoint(_Echo, sock=sock)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)  # the peer's own shutdown poll, not a measurement
        transport.close()

    loop.run_until_complete(serve())
    loop.close()


@contextlib.contextmanager
def echo_peers(count: int, cores: set[int], *, timed: bool = False) -> Iterator[list[int]]:
    """Start ``count`` echo processes (``timed``: reading every 1 ms); yield their ports."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    peers = []
    ports = []
    for _ in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        ready = ctx.Event()
        process = ctx.Process(
            target=_peer_main, args=(port, ready, stop, cores, timed), daemon=True
        )
        process.start()
        if not ready.wait(10):
            raise RuntimeError("an echo peer did not start")
        peers.append(process)
        ports.append(port)
    try:
        yield ports
    finally:
        stop.set()
        for process in peers:
            process.join(5)
            if process.is_alive():
                process.terminate()


# -- the worker: N recorded calls --------------------------------------------------------------


class _LoopSource:
    """A prompt played over and over (what the calls send).

    Like ``media.playback.PlaybackQueue`` it offers the frames encoded
    (``read_payload``), the prompt encoded once per codec, as a worker's
    prompts are.
    """

    def __init__(self, samples: np.ndarray, offset_frames: int) -> None:
        self.samples = samples
        self.frames = samples.shape[0] // 160
        self.position = offset_frames % self.frames
        self._encoded: dict[int, bytes] = {}

    def read_frame(self) -> np.ndarray:
        start = self.position * 160
        self.position = (self.position + 1) % self.frames
        return self.samples[start : start + 160]

    def read_payload(self, encode_table: np.ndarray) -> bytes:
        encoded = self._encoded.get(id(encode_table))
        if encoded is None:
            encoded = encode_table.take(self.samples.view(np.uint16)).tobytes()
            self._encoded[id(encode_table)] = encoded
        start = self.position * 160
        self.position = (self.position + 1) % self.frames
        return encoded[start : start + 160]


@dataclass
class RunResult:
    loop: str
    calls: int
    loss: float
    lateness_p99_ms: float
    lateness_max_ms: float
    packets_sent: int
    packets_received: int
    cpu_fraction: float
    cpu_us_per_packet: float  # worker CPU per packet sent or received: the load-free figure
    kernel_fraction: float  # the part of that CPU spent in the kernel (system time)
    frames_skipped: int
    record_write_us: float  # mean time of one chunk write to disk
    recorded_mib: float

    @property
    def passed(self) -> bool:
        return self.loss < LOSS_LIMIT and self.lateness_p99_ms < LATENESS_LIMIT_MS


def _worker_main(
    loop_kind: str,
    calls: int,
    peer_ports: list[int],
    duration_s: float,
    warmup_s: float,
    record_dir: str,
    result_queue: mp.Queue,
    shared_clock: bool = True,
) -> None:
    _pin({WORKER_CORE})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 4 * calls + 256
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))
    loop = _new_loop(loop_kind)
    asyncio.set_event_loop(loop)
    try:
        result = loop.run_until_complete(
            _run_calls(
                loop_kind, calls, peer_ports, duration_s, warmup_s, Path(record_dir), shared_clock
            )
        )
        result_queue.put(asdict(result))
    finally:
        loop.close()


async def _run_calls(
    loop_kind: str,
    calls: int,
    peer_ports: list[int],
    duration_s: float,
    warmup_s: float,
    record_dir: Path,
    shared_clock: bool = True,
) -> RunResult:
    from dialer.gc_policy import tune_collector
    from media import recording
    from media.clock import LatenessHistogram
    from media.playback import prompt_from_samples
    from media.ports import PortAllocator, bind_pair
    from media.session import MediaParams, RtpSession, SessionConfig
    from media.ticker import FrameTicker

    loop = asyncio.get_running_loop()
    # As `dialer worker` does once it is set up, before its first call (dialer.gc_policy).
    tune_collector()
    rng = random.Random(7)
    t = np.arange(8000 * 2) / 8000
    prompt = prompt_from_samples(
        (6000 * np.sin(2 * np.pi * 440 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 1.3 * t))).astype(
            np.int16
        )
    ).samples

    allocator = PortAllocator(20000, 39999, start_port=20000 + 2 * rng.randrange(5000))
    config = SessionConfig(media_timeout_s=None)
    # One clock for all the calls, as a worker runs them; or a timer per call.
    ticker = FrameTicker(loop) if shared_clock else None
    sessions: list[RtpSession] = []
    recorders = []
    for i in range(calls):
        recorder = recording.CallRecorder(record_dir / f"call-{i}.wav")
        session = await RtpSession.create(
            bind_pair(allocator, HOST),
            config,
            source=_LoopSource(prompt, rng.randrange(100)),
            recorder=recorder,
            rng=rng,
            ticker=ticker,
        )
        sessions.append(session)
        recorders.append(recorder)
    # Calls start spread over one frame period, as calls answered at random do.
    started = loop.create_future()
    remaining = [calls]

    def start(session: RtpSession, port: int) -> None:
        session.start(MediaParams(remote_rtp=(HOST, port)))
        remaining[0] -= 1
        if not remaining[0]:
            started.set_result(None)

    for i, session in enumerate(sessions):
        loop.call_later(0.020 * i / calls, start, session, peer_ports[i % len(peer_ports)])
    await started

    await asyncio.sleep(warmup_s)  # the load runs meanwhile; this only waits for the warm-up
    for session in sessions:
        session.lateness = LatenessHistogram()
    before = [(s.receive_stats.expected, s.receive_stats.cumulative_lost) for s in sessions]
    sent_before = sum(s.send_stats.packets_sent for s in sessions)
    received_before = sum(s.receive_stats.packets_received for s in sessions)
    skipped_before = sum(s.stats().frames_skipped for s in sessions)
    # Every chunk write the recorders make is timed by them, to show they are cheap.
    writes_before = sum(r.chunks_written for r in recorders)
    write_s_before = sum(r.write_seconds for r in recorders)
    times_start, wall_start = os.times(), time.perf_counter()
    await asyncio.sleep(duration_s)  # the measured interval
    times_end = os.times()
    wall = time.perf_counter() - wall_start
    system = times_end.system - times_start.system
    cpu = times_end.user - times_start.user + system

    expected = lost = 0
    lateness = LatenessHistogram()
    for session, (expected_before, lost_before) in zip(sessions, before, strict=True):
        expected += session.receive_stats.expected - expected_before
        lost += session.receive_stats.cumulative_lost - lost_before
        lateness.merge(session.lateness)
    sent = sum(s.send_stats.packets_sent for s in sessions) - sent_before
    received = sum(s.receive_stats.packets_received for s in sessions) - received_before
    skipped = sum(s.stats().frames_skipped for s in sessions) - skipped_before
    writes = sum(r.chunks_written for r in recorders) - writes_before
    write_s = sum(r.write_seconds for r in recorders) - write_s_before
    for session in sessions:
        session.close()
    if ticker is not None:
        ticker.close()
    recorded = 0
    for recorder in recorders:
        recorded += recorder.close_sync().size_bytes
    return RunResult(
        loop=loop_kind,
        calls=calls,
        loss=max(0, lost) / expected if expected else 1.0,
        lateness_p99_ms=lateness.percentile(0.99) * 1000,
        lateness_max_ms=lateness.maximum_s * 1000,
        packets_sent=sent,
        packets_received=received,
        cpu_fraction=cpu / wall,
        cpu_us_per_packet=cpu / max(1, sent + received) * 1e6,
        kernel_fraction=system / cpu if cpu else 0.0,
        frames_skipped=skipped,
        record_write_us=write_s / writes * 1e6 if writes else 0.0,
        recorded_mib=recorded / 2**20,
    )


def run_once(
    loop_kind: str,
    calls: int,
    peer_ports: list[int],
    duration_s: float,
    warmup_s: float,
    shared_clock: bool = True,
) -> RunResult:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="media-bench-") as record_dir:
        process = ctx.Process(
            target=_worker_main,
            args=(
                loop_kind,
                calls,
                peer_ports,
                duration_s,
                warmup_s,
                record_dir,
                queue,
                shared_clock,
            ),
        )
        process.start()
        try:
            result = queue.get(timeout=duration_s + warmup_s + 60 + calls * 0.05)
        finally:
            process.join(30)
    return RunResult(**result)


def run_median(
    loop_kind: str, calls: int, peer_ports: list[int], args: argparse.Namespace
) -> RunResult:
    runs = [
        run_once(loop_kind, calls, peer_ports, args.duration, args.warmup, not args.per_call_timers)
        for _ in range(args.repeats)
    ]
    by_lateness = sorted(runs, key=lambda r: r.lateness_p99_ms)
    median = by_lateness[len(runs) // 2]
    median.loss = statistics.median(r.loss for r in runs)
    median.cpu_fraction = statistics.median(r.cpu_fraction for r in runs)
    median.cpu_us_per_packet = statistics.median(r.cpu_us_per_packet for r in runs)
    median.lateness_max_ms = statistics.median(r.lateness_max_ms for r in runs)
    return median


def _line(result: RunResult) -> str:
    verdict = "pass" if result.passed else "FAIL"
    return (
        f"  {result.loop:8} N={result.calls:5}  loss {result.loss * 100:7.3f} %  "
        f"p99 late {result.lateness_p99_ms:6.1f} ms (max {result.lateness_max_ms:6.1f})  "
        f"cpu {result.cpu_fraction * 100:5.1f} % ({result.cpu_us_per_packet:4.1f} us/packet, "
        f"{result.kernel_fraction * 100:2.0f} % kernel)  "
        f"skipped {result.frames_skipped:6}  "
        f"chunk write {result.record_write_us:5.0f} us  {verdict}"
    )


def search(loop_kind: str, peer_ports: list[int], args: argparse.Namespace) -> RunResult | None:
    best: RunResult | None = None
    calls = args.start
    step = args.step
    while calls <= args.max:
        result = run_median(loop_kind, calls, peer_ports, args)
        print(_line(result), flush=True)
        if not result.passed:
            break
        best = result
        calls += step
    if best is not None and best.calls + args.step // 2 < calls and args.step >= 20:
        middle = best.calls + args.step // 2
        result = run_median(loop_kind, middle, peer_ports, args)
        print(_line(result), flush=True)
        if result.passed:
            best = result
    return best


# -- the ceiling: a tight send/receive loop ------------------------------------------------------


class _Pump(asyncio.DatagramProtocol):
    """Keeps ``window`` packets in flight: each echo that comes back sends one more."""

    def __init__(self, destination: tuple[str, int], window: int, packet: bytes) -> None:
        self.destination = destination
        self.window = window
        self.packet = packet
        self.received = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        for _ in range(self.window):
            self.transport.sendto(self.packet, self.destination)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        self.transport.sendto(self.packet, self.destination)  # type: ignore[union-attr]

    def error_received(self, exc: Exception) -> None:
        return


def _ceiling_main(loop_kind: str, port: int, duration_s: float, queue: mp.Queue) -> None:
    _pin({WORKER_CORE})
    loop = _new_loop(loop_kind)
    asyncio.set_event_loop(loop)

    async def pump() -> float:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
        sock.bind((HOST, 0))
        packet = bytes(172)  # a G.711 20 ms RTP packet
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Pump((HOST, port), 64, packet), sock=sock
        )
        await asyncio.sleep(0.5)  # warm-up, with the pump running
        start_count, start = protocol.received, time.perf_counter()
        await asyncio.sleep(duration_s)  # the measured interval
        rate = (protocol.received - start_count) / (time.perf_counter() - start)
        transport.close()
        return rate

    queue.put(loop.run_until_complete(pump()))
    loop.close()


def ceiling(loop_kind: str, port: int, duration_s: float, repeats: int) -> float:
    """Median packets per second received (and as many sent) by one process."""
    ctx = mp.get_context("spawn")
    rates = []
    for _ in range(repeats):
        queue = ctx.Queue()
        process = ctx.Process(target=_ceiling_main, args=(loop_kind, port, duration_s, queue))
        process.start()
        rates.append(queue.get(timeout=duration_s + 30))
        process.join(10)
    return statistics.median(rates)


# -- profiling -------------------------------------------------------------------------------------


_MEDIA_MODULES = ("session", "jitter", "recording", "wav", "stats", "rtp", "g711", "clock")


def _frame_name(frame: str) -> str:
    # py-spy raw frames read "function (path/to/file.py:line)": keep function and file.
    function, _, where = frame.partition(" (")
    return f"{function} ({where.split(':')[0].rsplit('/', 1)[-1]})"


def profile(peer_ports: list[int], calls: int, args: argparse.Namespace) -> None:
    if shutil.which("py-spy") is None:
        print("\nprofile: py-spy is not installed")
        return
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    duration = args.warmup + args.duration + 2
    with tempfile.TemporaryDirectory(prefix="media-bench-") as record_dir:
        process = ctx.Process(
            target=_worker_main,
            args=("uvloop", calls, peer_ports, duration, 1.0, record_dir, queue),
        )
        process.start()
        out = Path(record_dir) / "profile.txt"
        time.sleep(2.0 + calls * 0.002)  # let the calls be set up before sampling
        subprocess.run(
            [
                "py-spy", "record", "--pid", str(process.pid),
                "--duration", str(int(args.duration)), "--rate", "500",
                "--format", "raw", "--nonblocking", "--output", str(out),
            ],
            check=False,
            capture_output=True,
        )  # fmt: skip
        queue.get(timeout=duration + 60)
        process.join(30)
        if not out.exists():
            print("\nprofile: py-spy produced nothing (ptrace not permitted?)")
            return
        self_time: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        total = 0
        for line in out.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            count = int(count_text)
            frames = [_frame_name(frame) for frame in stack.split(";")]
            total += count
            self_time[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    print(f"\nwhere the time goes (py-spy, uvloop, N={calls}, {total} samples)")
    print("  self time:")
    for name, count in self_time.most_common(15):
        print(f"    {count / total * 100:5.1f} %  {name}")
    print("  inclusive (the session's parts):")
    for name, count in inclusive.most_common(60):
        if any(name.endswith(f"({module}.py)") for module in _MEDIA_MODULES):
            print(f"    {count / total * 100:5.1f} %  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", default="uvloop,asyncio")
    parser.add_argument("--start", type=int, default=100)
    parser.add_argument("--step", type=int, default=100)
    parser.add_argument("--max", type=int, default=3000)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", type=int, default=1, help="echo processes")
    parser.add_argument("--calls", type=int, default=0, help="run this N only (no search)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--per-call-timers",
        action="store_true",
        help="a timer per call instead of one shared FrameTicker (for comparison)",
    )
    parser.add_argument(
        "--peer-wakeups",
        action="store_true",
        help="echo peers that sleep on their socket (woken by each of our packets, inside "
        "our sendto) instead of reading it every 1 ms",
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="run the worker, the peers and the ceiling loop at SCHED_RR priority (needs root)",
    )
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    if args.realtime:
        os.environ["MEDIA_BENCH_REALTIME"] = "1"  # the spawned processes read it

    cores = os.sched_getaffinity(0)
    peer_cores = (cores - {WORKER_CORE}) or cores
    peer_mode = "woken per packet" if args.peer_wakeups else "reading every 1 ms"
    print(
        f"media concurrency: worker on core {WORKER_CORE}, {args.peers} echo peer(s) on "
        f"{sorted(peer_cores)} ({peer_mode})"
        f"; pass = loss < {LOSS_LIMIT * 100} % and p99 lateness < "
        f"{LATENESS_LIMIT_MS} ms; {args.duration} s measured after {args.warmup} s, "
        f"median of {args.repeats}; {'SCHED_RR' if args.realtime else 'normal'} priority; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    summary: dict[str, dict[str, object]] = {}
    with (
        echo_peers(1, peer_cores) as ceiling_ports,
        echo_peers(args.peers, peer_cores, timed=not args.peer_wakeups) as ports,
    ):
        for loop_kind in args.loops.split(","):
            rate = ceiling(loop_kind, ceiling_ports[0], min(args.duration, 2.0), args.repeats)
            print(
                f"ceiling {loop_kind}: {rate:,.0f} packets/s each way in a tight loop "
                f"= {rate / 50:,.0f} calls at 50 packets/s"
            )
            if args.calls:
                best = run_median(loop_kind, args.calls, ports, args)
                print(_line(best), flush=True)
            else:
                best = search(loop_kind, ports, args)
            summary[loop_kind] = {
                "ceiling_pps": rate,
                "ceiling_calls": rate / 50,
                "max_calls": best.calls if best and best.passed else 0,
                "ratio_to_ceiling": (best.calls / (rate / 50)) if best and best.passed else 0.0,
                "result": asdict(best) if best else None,
            }
            if best and best.passed:
                print(
                    f"=> {loop_kind}: {best.calls} concurrent recorded calls on one core "
                    f"({best.calls / (rate / 50) * 100:.0f} % of the tight-loop ceiling)"
                )
            else:
                print(f"=> {loop_kind}: no N passed")
        if args.profile and "uvloop" in summary:
            calls = args.calls or int(summary["uvloop"]["max_calls"]) or args.start
            profile(ports, calls, args)
    if args.json:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.exit(main())

"""SIP call attempts per second and concurrent dialogs, against a SIPp UAS on loopback.

For each rate in the ramp, our user agent (one process, uvloop) places calls
for ``--duration`` seconds: INVITE, answer, hold ``--hold-s``, BYE. Then SIPp's
own UAC does the same against the same kind of UAS (SIPp's built-in ``uas``).
A rate is sustained when fewer than ``--max-failed`` of its calls failed and
the calls really started at that rate (within 5 %). Prints one line per rate
and side, the highest sustained rate of each and their ratio, then holds
``--dialogs`` established dialogs at once and reports whether any timed out::

    ours rate=1000/s attempts=30000 failed=0 (0.000%) achieved=999.8/s
    sipp rate=1000/s attempts=30000 failed=0 (0.000%) achieved=1000.0/s
    sustained: ours=1000/s sipp=4000/s ratio=0.25
    dialogs: 10000 established at once, 0 failed, ramp 10.1 s, teardown 1.2 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import gc
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dialer.sip.dialog import LocalMedia
from dialer.transport import TransportConfig
from dialer.trunk import TrunkConfig
from dialer.user_agent import LOOPBACK, RequestPolicy, UserAgent, UserAgentOptions

MEDIA = LocalMedia("127.0.0.1", 40000)


@dataclass
class RunResult:
    side: str
    rate: float
    attempts: int
    failed: int
    achieved: float
    why: str = ""
    cpu_ms_per_call: float | None = None  # this process's CPU time (ours only)

    @property
    def failed_fraction(self) -> float:
        return self.failed / self.attempts if self.attempts else 1.0

    def sustained(self, max_failed: float) -> bool:
        return self.failed_fraction < max_failed and self.achieved >= 0.95 * self.rate

    def line(self) -> str:
        return (
            f"{self.side} rate={self.rate:g}/s attempts={self.attempts} failed={self.failed} "
            f"({100 * self.failed_fraction:.3f}%) achieved={self.achieved:.1f}/s"
            + (f" cpu={self.cpu_ms_per_call:.3f}ms/call" if self.cpu_ms_per_call else "")
            + (f" notes: {self.why}" if self.why else "")
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SippUas:
    """SIPp's built-in UAS (answers, waits for BYE) in a process of its own."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.process = subprocess.Popen(
            [
                "sipp",
                "-sn",
                "uas",
                "-i",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-nostdin",
                "-nd",
                "-buff_size",
                str(4 * 1024 * 1024),
                "-max_recv_loops",
                "10000",
            ],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


async def _wait_bound(port: int) -> None:
    for _ in range(250):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def _agent_options() -> UserAgentOptions:
    return UserAgentOptions(
        transport=TransportConfig("127.0.0.1", 0, tcp=False),
        policy=RequestPolicy(trusted=LOOPBACK),
        session_expires_s=None,
        user_agent="dialer-bench",
    )


async def run_ours(uas_port: int, rate: float, duration_s: float, hold_s: float) -> RunResult:
    """Place calls at ``rate`` for ``duration_s``; count those not answered and ended cleanly."""
    loop = asyncio.get_running_loop()
    trunk = TrunkConfig.from_uri(f"sip:127.0.0.1:{uas_port}")
    total = int(rate * duration_s)
    failed = 0
    done = asyncio.Event()
    finished = 0
    starts: list[float] = []
    reasons: dict[str, int] = {}
    cpu_started = time.process_time()
    async with UserAgent(_agent_options(), [trunk]) as agent:

        def one_done(ok: bool, why: str = "") -> None:
            nonlocal failed, finished
            finished += 1
            if not ok:
                failed += 1
                reasons[why] = reasons.get(why, 0) + 1
            if finished == total:
                done.set()

        async def one_call() -> None:
            try:
                handle = await agent.place_call("1000", media=MEDIA, ring_timeout_s=10)
                # The INVITE is out now: a call held back by admission control
                # counts when it really starts, so an overloaded agent shows a
                # lower achieved rate instead of a higher one.
                starts.append(loop.time())
                media = await handle.answered()
                if media is not None:
                    loop.call_later(hold_s, handle.hangup)
                result = await handle.ended()
                ok = result.disposition == "answered" and result.hangup_by == "caller"
                one_done(ok, f"{result.disposition}/{result.sip_status}/{result.end_reason}")
            except (OSError, ValueError, RuntimeError) as error:
                one_done(False, type(error).__name__)

        tasks: set[asyncio.Task[None]] = set()
        origin = loop.time() + 0.05
        for n in range(total):
            # Start call n at origin + n / rate; a late loop starts it at once.
            delay = origin + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = loop.create_task(one_call())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        try:
            await asyncio.wait_for(done.wait(), hold_s + 40)
        except TimeoutError:
            failed += total - finished
        await agent.drain(5.0)
        held_back = agent.stats.calls_held_back
    cpu_ms = 1000 * (time.process_time() - cpu_started) / max(total, 1)
    span = (starts[-1] - starts[0]) if len(starts) > 1 else 1.0
    achieved = (len(starts) - 1) / span if span > 0 else float(len(starts))
    why = ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:4])
    if held_back:
        why = ", ".join(filter(None, [why, f"held back by admission control x{held_back}"]))
    return RunResult("ours", rate, total, failed, achieved, why, cpu_ms)


async def run_sipp(
    uas_port: int, rate: float, duration_s: float, hold_s: float, workdir: Path
) -> RunResult:
    """SIPp's UAC against the same kind of UAS; figures from its statistics file."""
    total = int(rate * duration_s)
    stats = workdir / f"uac_{int(rate)}.csv"
    command = [
        "sipp",
        "-sn",
        "uac",
        f"127.0.0.1:{uas_port}",
        "-i",
        "127.0.0.1",
        "-p",
        str(_free_port()),
        "-r",
        f"{rate:g}",
        "-m",
        str(total),
        "-d",
        str(int(hold_s * 1000)),
        "-l",
        str(int(rate * (hold_s + 5)) + 100),
        "-nostdin",
        "-nd",
        "-buff_size",
        str(4 * 1024 * 1024),
        "-max_recv_loops",
        "10000",
        "-timeout",
        f"{int(duration_s + hold_s + 60)}s",
        "-trace_stat",
        "-stf",
        str(stats),
        "-fd",
        "1",
    ]
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    await process.wait()
    elapsed = time.perf_counter() - started
    successful, failed = _sipp_counts(stats)
    attempts = max(total, successful + failed)
    failed += total - (successful + failed)  # never finished
    # SIPp starts call n at n / rate: the run lasts the ramp plus one hold.
    ramp_s = max(elapsed - hold_s, 1e-9)
    achieved = min(rate, total / ramp_s) if ramp_s > duration_s * 1.05 else rate
    return RunResult("sipp", rate, attempts, failed, achieved)


def _sipp_counts(path: Path) -> tuple[int, int]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle, delimiter=";"))
    header, last = rows[0], rows[-1]
    values = dict(zip(header, last, strict=False))
    return int(values["SuccessfulCall(C)"]), int(values["FailedCall(C)"])


async def hold_dialogs(uas_port: int, count: int, rate: float) -> str:
    """Establish ``count`` dialogs, keep them all up at once, then hang them all up."""
    loop = asyncio.get_running_loop()
    trunk = TrunkConfig.from_uri(f"sip:127.0.0.1:{uas_port}")
    async with UserAgent(_agent_options(), [trunk]) as agent:
        handles = []
        started = loop.time()
        origin = started
        for n in range(count):
            delay = origin + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            handles.append(await agent.place_call("1000", media=MEDIA, ring_timeout_s=30))
        answers = await asyncio.gather(*(h.answered() for h in handles))
        ramp_s = loop.time() - started
        established = sum(a is not None for a in answers)
        up_at_once = sum(h.result is None for h in handles)
        teardown = loop.time()
        for handle in handles:
            handle.hangup()
        results = await asyncio.gather(*(h.ended() for h in handles))
        clean = await agent.drain(60.0)
        teardown_s = loop.time() - teardown
    failed = sum(r.disposition != "answered" for r in results)
    return (
        f"dialogs: {up_at_once} established at once of {count} "
        f"(answered {established}), {failed} failed, ramp {ramp_s:.1f} s, "
        f"teardown {teardown_s:.1f} s{'' if clean else ', BYEs unanswered'}"
    )


async def main_async(args: argparse.Namespace) -> int:
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        best: dict[str, float] = {"ours": 0.0, "sipp": 0.0}
        for side in ("ours", "sipp"):
            if side not in args.sides:
                continue
            for rate in rates:
                uas = SippUas(workdir)
                try:
                    await _wait_bound(uas.port)
                    if side == "ours":
                        result = await run_ours(uas.port, rate, args.duration, args.hold_s)
                    else:
                        result = await run_sipp(uas.port, rate, args.duration, args.hold_s, workdir)
                finally:
                    uas.stop()
                print(result.line(), flush=True)
                if not result.sustained(args.max_failed):
                    break
                best[side] = rate
        ratio = best["ours"] / best["sipp"] if best["sipp"] else float("nan")
        print(
            f"sustained: ours={best['ours']:g}/s sipp={best['sipp']:g}/s ratio={ratio:.2f}",
            flush=True,
        )
        if args.dialogs:
            uas = SippUas(workdir)
            try:
                await _wait_bound(uas.port)
                print(await hold_dialogs(uas.port, args.dialogs, args.dialog_rate), flush=True)
            finally:
                uas.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="250,500,750,1000,1250,1500,2000,3000,4000,6000,8000")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per rate")
    parser.add_argument("--hold-s", type=float, default=1.0, help="talk time per call")
    parser.add_argument("--max-failed", type=float, default=0.001, help="0.001 = 0.1 %%")
    parser.add_argument("--sides", default="ours,sipp", help="ours, sipp or both")
    parser.add_argument("--dialogs", type=int, default=10000, help="0: skip the dialog test")
    parser.add_argument("--dialog-rate", type=float, default=1000.0, help="calls/s to reach them")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default event loop")
    parser.add_argument(
        "--gc-threshold",
        default="",
        help="gc.set_threshold for this process, e.g. 20000,20,10 (default: Python's own)",
    )
    args = parser.parse_args(argv)
    if args.gc_threshold:
        # Most of what a call allocates dies within its hold time; a larger young
        # generation lets it die there instead of being walked by full collections.
        gc.set_threshold(*(int(part) for part in args.gc_threshold.split(",")))
        print(f"gc thresholds: {gc.get_threshold()}", flush=True)
    if shutil.which("sipp") is None:
        print("sipp is not installed (Debian package sip-tester)", file=sys.stderr)
        return 2
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            print("event loop: uvloop", flush=True)
            return uvloop.run(main_async(args))
    print("event loop: asyncio default", flush=True)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())

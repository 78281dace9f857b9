"""Helpers for tests against SIPp and other real peers: free ports, a SIPp UAS process."""

from __future__ import annotations

import asyncio
import errno
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SIPP = shutil.which("sipp")


def require(binary: str) -> str:
    """The binary's path; skip the test with a reason when it is not installed."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian package of the same name)")
    return path


def free_port(kind: int = socket.SOCK_DGRAM, both: bool = True) -> int:
    """A port free for UDP (and TCP, when ``both``) on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if not both:
                return port
            other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
            with socket.socket(socket.AF_INET, other) as second:
                try:
                    second.bind(("127.0.0.1", port))
                except OSError as error:
                    if error.errno == errno.EADDRINUSE:
                        continue
                    raise
                return port
    raise RuntimeError("no free port pair")


async def wait_bound(
    port: int,
    kind: int = socket.SOCK_DGRAM,
    timeout: float = 5.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Wait until some process has bound ``port`` on 127.0.0.1 (a peer is ready).

    With ``process``, fail at once if it exits first (a bad configuration).
    """
    async with asyncio.timeout(timeout):
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"peer exited with status {process.returncode} before listening")
            with socket.socket(socket.AF_INET, kind) as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    return
            await asyncio.sleep(0.02)


@dataclass
class Sipp:
    """A SIPp process running one scenario (as UAS unless the scenario starts with send)."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: Path

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{self.port}"

    async def finish(self, timeout: float = 20.0) -> int:
        """Wait for SIPp to exit; its status (0: every call of the scenario passed)."""
        return await asyncio.wait_for(asyncio.to_thread(self.process.wait), timeout)

    def errors(self) -> str:
        """SIPp's error log, for assertion messages."""
        logs = sorted(self.workdir.glob("*errors.log")) + sorted(self.workdir.glob("*.err"))
        text = "\n".join(p.read_text(errors="replace")[-3000:] for p in logs)
        return text or "(no SIPp error log)"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def start_sipp(
    scenario: str,
    workdir: Path,
    *,
    transport: str = "u1",
    calls: int = 1,
    extra: tuple[str, ...] = (),
    timeout_s: int = 20,
) -> Sipp:
    """Start SIPp on a free loopback port with ``scenario`` and wait until it listens."""
    binary = require("sipp")
    port = free_port()
    kind = socket.SOCK_STREAM if transport.startswith("t") else socket.SOCK_DGRAM
    command = [
        binary,
        "-sf",
        str(SCENARIOS / scenario),
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-t",
        transport,
        "-m",
        str(calls),
        "-nostdin",
        "-nd",
        "-trace_err",
        "-timeout",
        f"{timeout_s}s",
        "-timeout_error",
        "-max_recv_loops",
        "1000",
        *extra,
    ]
    log = (workdir / "sipp.err").open("wb")
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    sipp = Sipp(process, port, workdir)
    try:
        await wait_bound(port, kind, process=process)
    except (TimeoutError, RuntimeError) as error:
        sipp.kill()
        raise RuntimeError(f"SIPp did not start: {sipp.errors()}") from error
    return sipp

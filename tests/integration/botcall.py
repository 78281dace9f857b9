"""Helpers for calls streamed to a voicebot: ``dialer call --bot`` as a subprocess, SIPp as
the callee, a probe bot, an RTP receiver standing in for the callee's phone, and tone checks.

The dialer runs in its own process so that what is timed here (a bot's
``clear``, a closed socket) crosses real sockets between two processes, as
it does in production: the test's event loop (the bot, the receiver) never
shares a scheduler with the dialer's RTP clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiohttp import WSMsgType, web
from numpy.typing import NDArray

from media.bots import BotSession
from media.g711 import ulaw_decode, ulaw_encode
from media.streams import CallMedia
from tests.integration.peers import Sipp, free_port, start_sipp
from tests.media.test_sipp_rtp import udp_frame, write_pcap

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
FRAME_S = 0.020
FRAME_SAMPLES = 160
PCMU_SILENCE = 0xFF  # mu-law code of 0
# Linux's SO_TIMESTAMPNS (asm-generic/socket.h), which the socket module does not export.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


# -- tones ---------------------------------------------------------------------------------


def tone_samples(frequency_hz: float, duration_ms: int, amplitude: float = 8000.0) -> NDArray:
    count = duration_ms * 8
    t = np.arange(count) / 8000
    return (amplitude * np.sin(2 * np.pi * frequency_hz * t)).astype(np.int16)


def tone_ulaw(frequency_hz: float, duration_ms: int) -> bytes:
    """A sine tone as mu-law bytes (8 kHz)."""
    return ulaw_encode(tone_samples(frequency_hz, duration_ms)).tobytes()


def tone_frames(samples: NDArray, frequency_hz: float, min_rms: float = 1000.0) -> NDArray:
    """A boolean per 20 ms frame: the frame is loud and its spectrum peaks at ``frequency_hz``.

    A 160-sample FFT has 50 Hz bins, so tones on a multiple of 50 Hz fall on one bin.
    """
    count = samples.shape[0] // FRAME_SAMPLES
    frames = samples[: count * FRAME_SAMPLES].astype(np.float64).reshape(count, FRAME_SAMPLES)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    peak_hz = np.argmax(np.abs(np.fft.rfft(frames, axis=1)), axis=1) * (8000 / FRAME_SAMPLES)
    return (rms >= min_rms) & (np.abs(peak_hz - frequency_hz) <= 25)


def longest_run(flags: NDArray) -> int:
    """The longest run of consecutive True values."""
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


# -- pcaps SIPp plays ----------------------------------------------------------------------


def tone_pcap(target: Path, frequency_hz: float, duration_ms: int) -> None:
    """A PCMU tone as 20 ms RTP packets 20 ms apart, for SIPp's ``play_pcap_audio``."""
    audio = tone_ulaw(frequency_hz, duration_ms)
    packets = []
    for k in range(len(audio) // FRAME_SAMPLES):
        rtp = struct.pack("!BBHII", 0x80, 0, 3000 + k, FRAME_SAMPLES * k, 0x7171)
        packets.append((FRAME_S * k, udp_frame(rtp + audio[160 * k : 160 * (k + 1)])))
    write_pcap(target, packets)


# -- the callee's phone as an RTP receiver -------------------------------------------------


@dataclass(frozen=True, slots=True)
class RtpPacket:
    at: float  # the kernel's receive time (Unix seconds)
    sequence: int
    payload_type: int
    payload: bytes

    @property
    def samples(self) -> NDArray:
        return ulaw_decode(np.frombuffer(self.payload, dtype=np.uint8))


class RtpReceiver:
    """A UDP socket that keeps every RTP packet with the kernel's time of arrival.

    It reads in a thread of its own and takes its times from ``SO_TIMESTAMPNS``,
    so neither the GIL nor the test's event loop moves them.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.packets: list[RtpPacket] = []
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._read, name="rtp-receiver", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._running:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(2048, 64)
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanos = struct.unpack("qq", value[:16])
                    at = seconds + nanos / 1e9
            if len(data) < 12 or data[0] >> 6 != 2:
                continue
            packet = RtpPacket(at, struct.unpack_from("!H", data, 2)[0], data[1] & 0x7F, data[12:])
            with self._lock:
                self.packets.append(packet)

    def snapshot(self) -> list[RtpPacket]:
        with self._lock:
            return list(self.packets)

    def loud(self, frequency_hz: float) -> list[RtpPacket]:
        """The PCMU packets carrying the tone."""
        return [
            p
            for p in self.snapshot()
            if p.payload_type == 0
            and len(p.payload) == FRAME_SAMPLES
            and tone_frames(p.samples, frequency_hz)[0]
        ]

    def close(self) -> None:
        self._running = False
        self._thread.join(1.0)
        self.sock.close()


# -- a bot that records what it hears, driven by a script ----------------------------------


@dataclass
class Heard:
    """What the probe bot saw on its one connection."""

    session: BotSession = field(default_factory=BotSession)
    media: list[bytes] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    started_at: float | None = None  # Unix time of ``start``
    transport: Any = None  # the connection, for a test that cuts it

    def audio(self) -> NDArray:
        return ulaw_decode(np.frombuffer(b"".join(self.media), dtype=np.uint8))


Script = Callable[[web.WebSocketResponse, Heard], Awaitable[None]]


class ProbeBot:
    """A WebSocket bot that records every frame and runs ``script`` once the stream starts.

    It speaks the stream format through ``media.streams`` only (as a customer's
    bot would), never through ``media.voicebot``.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.heard = Heard()
        self.done = asyncio.Event()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        heard = self.heard
        heard.headers = dict(request.headers)
        heard.transport = request.transport
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        started = asyncio.Event()

        async def read() -> None:
            async for message in ws:
                if message.type is not WSMsgType.TEXT:
                    continue
                event = heard.session.observe(message.data)
                if heard.session.start is not None and not started.is_set():
                    heard.started_at = time.time()
                    started.set()
                if type(event) is CallMedia:
                    heard.media.append(event.payload)

        reader = asyncio.ensure_future(read())
        try:
            await asyncio.wait(
                [reader, asyncio.ensure_future(started.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
            if started.is_set():
                await self.script(ws, heard)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await reader  # until our side closes: the stop arrives
        except ConnectionError:
            pass
        finally:
            reader.cancel()
            if not ws.closed:
                await ws.close()
            self.done.set()
        return ws


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` every 5 ms (the receiver thread is not the loop's to wake)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


# -- the dialer, and SIPp as the callee ----------------------------------------------------


@dataclass
class CallOutput:
    returncode: int
    lines: list[dict[str, Any]]
    stderr: str

    def events(self) -> list[str]:
        return [line["event"] for line in self.lines]

    def first(self, event: str) -> dict[str, Any]:
        return next(line for line in self.lines if line["event"] == event)

    def all(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["event"] == event]


async def dialer_call(*argv: str, timeout_s: float = 30.0) -> CallOutput:
    """Run ``dialer call`` (``python -m dialer.call_cli``) and read its JSON lines."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dialer.call_cli",
        *argv,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    lines = [orjson.loads(line) for line in stdout.splitlines() if line.startswith(b"{")]
    return CallOutput(process.returncode or 0, lines, stderr.decode(errors="replace"))


async def start_callee(scenario: str, workdir: Path, *keys: tuple[str, str]) -> Sipp:
    """SIPp as the callee, with its own media port (never the shared default 6000)."""
    extra: list[str] = ["-mp", str(free_port(both=False)), "-trace_msg"]
    for name, value in keys:
        extra += ["-key", name, value]
    return await start_sipp(scenario, workdir, extra=tuple(extra))


def sipp_received_at(workdir: Path, method: str) -> list[float]:
    """Unix times at which SIPp's message trace (``-trace_msg``) logs a ``method`` received."""
    times: list[float] = []
    for log in workdir.glob("*_messages.log"):
        stamp: float | None = None
        received = False
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("-----") and line.count(" ") >= 2:
                text = " ".join(line.split()[-2:])
                stamp = datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()
                received = False
            elif "message received" in line:
                received = True
            elif received and line.startswith(f"{method} ") and stamp is not None:
                times.append(stamp)
                received = False
    return sorted(times)

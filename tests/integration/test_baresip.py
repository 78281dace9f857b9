"""Calls to baresip, a real softphone, running headless and answering on its own.

baresip gets a configuration directory of its own: it listens on a free
loopback port, answers every call (``answermode=auto``), plays a WAV file
into the call and hangs up when the file ends. We check that our call is
answered, that its RTP reaches the port our SDP offered, and that the call
ends cleanly from either side.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import struct
import subprocess
import sys
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from dialer.sip.dialog import LocalMedia
from dialer.transport import TransportConfig
from dialer.trunk import TrunkConfig
from dialer.user_agent import LOOPBACK, RequestPolicy, UserAgent, UserAgentOptions
from tests.integration.peers import free_port, require, wait_bound

pytestmark = pytest.mark.integration

MODULES = Path("/usr/lib/baresip/modules")
CONFIG = """\
poll_method     epoll
sip_listen      127.0.0.1:{port}
audio_source    aufile,{wav}
audio_player    aubridge,nil
audio_alert     aubridge,nil
module_path     {modules}
module          g711.so
module          aufile.so
module          aubridge.so
module_app      account.so
module_app      menu.so
rtp_timeout     0
"""


@dataclass
class Phone:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def uri(self) -> str:
        return f"sip:callee@127.0.0.1:{self.port}"


def write_tone(path: Path, seconds: float) -> None:
    frames = int(8000 * seconds)
    samples = (int(8000 * math.sin(2 * math.pi * 440 * n / 8000)) for n in range(frames))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"".join(struct.pack("<h", s) for s in samples))


async def start_phone(tmp_path: Path, tone_s: float) -> Phone:
    # baresip also binds its TLS transport on the port above its SIP port, which a
    # free-port probe cannot reserve: another process may take it first. Retry.
    for attempt in range(3):
        try:
            return await _start_phone(tmp_path / f"try{attempt}", tone_s)
        except RuntimeError as error:
            if "Address already in use" not in str(error) or attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _start_phone(tmp_path: Path, tone_s: float) -> Phone:
    binary = require("baresip")
    if not (MODULES / "aubridge.so").exists():
        pytest.skip("baresip's modules (g711, aufile, aubridge) are not installed")
    tmp_path.mkdir(parents=True)
    port = free_port()
    config = tmp_path / "baresip"
    config.mkdir()
    wav = tmp_path / "tone.wav"
    write_tone(wav, tone_s)
    (config / "config").write_text(CONFIG.format(port=port, wav=wav, modules=MODULES))
    # regint=0: no registration; answermode=auto: pick up at once.
    (config / "accounts").write_text(
        f"<sip:callee@127.0.0.1:{port}>;regint=0;answermode=auto;audio_codecs=PCMU\n"
    )
    log = tmp_path / "baresip.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-f", str(config)], stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        await wait_bound(port, process=process)
    except (TimeoutError, RuntimeError) as error:
        process.kill()
        raise RuntimeError(f"baresip did not start:\n{log.read_text()[-2000:]}") from error
    return Phone(process, port, log)


@pytest.fixture
def rtp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def place(phone: Phone, rtp: socket.socket, *, hang_up_after_rtp: bool):
    options = UserAgentOptions(
        transport=TransportConfig("127.0.0.1", 0), policy=RequestPolicy(trusted=LOOPBACK)
    )
    trunk = TrunkConfig.from_uri(f"sip:127.0.0.1:{phone.port}")
    media = LocalMedia("127.0.0.1", rtp.getsockname()[1])
    loop = asyncio.get_running_loop()
    async with UserAgent(options, [trunk]) as agent:
        handle = await agent.place_call(phone.uri, media=media)
        answer = await asyncio.wait_for(handle.answered(), 10)
        assert answer is not None, phone.log.read_text()[-2000:]
        packet = await asyncio.wait_for(loop.sock_recv(rtp, 2048), 5)
        assert packet[0] >> 6 == 2 and packet[1] & 0x7F == 0  # RTP version 2, PCMU
        if hang_up_after_rtp:
            handle.hangup()
        result = await asyncio.wait_for(handle.ended(), 10)
        assert await agent.drain(5.0)
    return answer, result


async def test_answered_and_we_hang_up(tmp_path: Path, rtp: socket.socket) -> None:
    phone = await start_phone(tmp_path, tone_s=20.0)
    try:
        answer, result = await place(phone, rtp, hang_up_after_rtp=True)
        assert answer.codec.name == "PCMU" and not answer.on_hold
        assert (result.disposition, result.sip_status, result.hangup_by) == (
            "answered",
            200,
            "caller",
        )
    finally:
        phone.process.terminate()
        phone.process.wait(5)
    assert "terminated" in phone.log.read_text()


async def test_answered_and_phone_hangs_up(tmp_path: Path, rtp: socket.socket) -> None:
    # baresip ends the call when its audio file runs out (after 0.5 s).
    phone = await start_phone(tmp_path, tone_s=0.5)
    try:
        _, result = await place(phone, rtp, hang_up_after_rtp=False)
        assert (result.disposition, result.hangup_by, result.end_reason) == (
            "answered",
            "callee",
            "remote_bye",
        )
        assert 0.3 < result.talk_time_s < 5.0
    finally:
        phone.process.terminate()
        phone.process.wait(5)


async def test_cli_plays_and_records_a_call(tmp_path: Path) -> None:
    phone = await start_phone(tmp_path, tone_s=20.0)
    prompt = tmp_path / "prompt.wav"
    write_tone(prompt, 0.5)
    recording = tmp_path / "call.wav"
    env = {**os.environ, "DIALER_RTP_PORT_MIN": "32000", "DIALER_RTP_PORT_MAX": "32999"}
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dialer.call_cli",
            phone.uri,
            "--trunk",
            f"sip:127.0.0.1:{phone.port}",
            "--listen",
            "127.0.0.1:0",
            "--play",
            str(prompt),
            "--record",
            str(recording),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    finally:
        phone.process.terminate()
        phone.process.wait(5)
    assert process.returncode == 0, stderr.decode()
    events = {line["event"]: line for line in map(orjson.loads, stdout.splitlines())}
    assert events["ended"]["disposition"] == "answered"
    # Without --duration the call lasts as long as the prompt (plus a margin).
    assert 0.4 < events["ended"]["talk_time_s"] < 3.0
    assert events["recording"]["duration_s"] > 0.3 and recording.stat().st_size > 8000

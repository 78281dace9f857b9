"""Calls through kamailio as an authenticating proxy, to SIPp as the callee.

kamailio challenges every INVITE with 407 (RFC 3261 §22.3) and checks the
digest against a fixed password with the ``auth`` module; it then relays the
call to SIPp, recording the route. With the right credentials the call is
answered and ended through the proxy; with wrong ones it fails as
``auth_failed`` after exactly one retry.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dialer.sip.dialog import LocalMedia
from dialer.transport import TransportConfig
from dialer.trunk import TrunkConfig
from dialer.user_agent import LOOPBACK, RequestPolicy, UserAgent, UserAgentOptions
from tests.integration.peers import Sipp, free_port, require, start_sipp, wait_bound

pytestmark = pytest.mark.integration

MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
CONFIG = Path(__file__).resolve().parent / "kamailio.cfg.in"


@dataclass
class Kamailio:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{self.port}"


def _modules_dir() -> Path:
    if (MODULES / "auth.so").exists():
        return MODULES
    found = sorted(Path("/usr/lib").glob("*/kamailio/modules/auth.so"))
    if not found:
        pytest.skip("kamailio's modules (auth, tm, rr ...) are not installed")
    return found[0].parent


@pytest.fixture
async def callee(tmp_path: Path) -> AsyncIterator[Sipp]:
    workdir = tmp_path / "sipp"
    workdir.mkdir()
    sipp = await start_sipp("uas_answer_wait_bye.xml", workdir)
    yield sipp
    sipp.kill()


@pytest.fixture
async def proxy(tmp_path: Path, callee: Sipp) -> AsyncIterator[Kamailio]:
    binary = require("kamailio")
    port = free_port()
    config = CONFIG.read_text()
    for key, value in {
        "@MODULES@": str(_modules_dir()),
        "@LISTEN@": f"127.0.0.1:{port}",
        "@CALLEE@": callee.uri,
        "@REALM@": "kamailio.test",
        "@USERNAME@": "alice",
        "@PASSWORD@": "wonderland",
    }.items():
        config = config.replace(key, value)
    path = tmp_path / "kamailio.cfg"
    path.write_text(config)
    runtime = tmp_path / "run"
    runtime.mkdir()
    log = tmp_path / "kamailio.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-DD", "-E", "-f", str(path), "-Y", str(runtime), "-w", str(tmp_path)],
            stdout=out,
            stderr=out,
        )
    try:
        await wait_bound(port, process=process)
    except (TimeoutError, RuntimeError) as error:
        process.kill()
        raise RuntimeError(f"kamailio did not start:\n{log.read_text()[-3000:]}") from error
    yield Kamailio(process, port, log)
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def options() -> UserAgentOptions:
    return UserAgentOptions(
        transport=TransportConfig("127.0.0.1", 0), policy=RequestPolicy(trusted=LOOPBACK)
    )


async def test_right_credentials_get_through(proxy: Kamailio, callee: Sipp) -> None:
    trunk = TrunkConfig.from_uri(proxy.uri, username="alice", password="wonderland")
    async with UserAgent(options(), [trunk]) as agent:
        handle = await agent.place_call("1000", media=LocalMedia("127.0.0.1", 40000))
        media = await asyncio.wait_for(handle.answered(), 10)
        assert media is not None, proxy.log.read_text()[-2000:]
        # The proxy recorded the route: our BYE goes through it too.
        assert handle.call.dialog is not None and handle.call.dialog.route_set
        handle.hangup()
        result = await handle.ended()
        assert await agent.drain(5.0)
    assert (result.disposition, result.sip_status, result.hangup_by) == ("answered", 200, "caller")
    assert await callee.finish() == 0, callee.errors()


async def test_wrong_credentials_fail_after_one_retry(proxy: Kamailio) -> None:
    trunk = TrunkConfig.from_uri(proxy.uri, username="alice", password="not-the-password")
    async with UserAgent(options(), [trunk]) as agent:
        handle = await agent.place_call("1000", media=LocalMedia("127.0.0.1", 40000))
        result = await asyncio.wait_for(handle.ended(), 10)
        assert (result.disposition, result.sip_status) == ("auth_failed", 407)
        # INVITE, ACK, INVITE with credentials, ACK: then we give up (no loop).
        await agent.drain(2.0)
        assert agent.stats.responses_received == 2
        assert agent.transport.stats.datagrams_sent == 4

"""``dialer call NUMBER --bot URL``: one call streamed to a bot, run as a user runs it.

The command runs as a subprocess against SIPp as the callee and the
reference bots of ``media.bots`` served on loopback; each test reads the
JSON lines it prints and its exit status, and SIPp's own verdict.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from media.bots import EchoBot, Script, ScriptedBot, serve_bot
from media.streams import BotTransfer
from tests.integration.botcall import ROOT, Heard, ProbeBot, dialer_call, start_callee
from tests.integration.peers import free_port, require
from tests.media.test_sipp_rtp import PCAP_DIR, dtmf_pcap

pytestmark = pytest.mark.integration

LISTEN = ("--listen", "127.0.0.1:0")


@pytest.fixture(autouse=True)
def _sipp_installed() -> None:
    require("sipp")


async def test_scripted_bot_hears_a_key_reports_it_and_hangs_up(tmp_path: Path) -> None:
    if not (PCAP_DIR / "dtmf_2833_7.pcap").is_file():
        pytest.skip("sip-tester's RFC 4733 pcaps are not installed")
    dtmf_pcap(tmp_path / "callee.pcap", ["7"])  # pressed during the bot's prompt
    bot = ScriptedBot(Script(tone_ms=2000, wait_digit_s=5))
    headers: list[str | None] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        headers.append(request.headers.get("Authorization"))
        return await bot.handle(request)

    server = await serve_bot(handle)
    sipp = await start_callee("uas_bot_play_pcap.xml", tmp_path)
    try:
        output = await dialer_call(
            "1000",
            "--trunk",
            sipp.uri,
            *LISTEN,
            "--bot",
            server.url,
            "--bot-header",
            "Authorization: Bearer s3cret",
        )
        assert await sipp.finish() == 0, sipp.errors()
    finally:
        sipp.kill()
        await server.close()
    assert output.returncode == 0, output.stderr
    assert headers == ["Bearer s3cret"]
    assert output.events() == [
        "invite_sent",
        "ringing",
        "answered",
        "bot_connecting",
        "dtmf",
        "hangup_sent",
        "bot_ended",
        "ended",
    ]
    assert output.first("bot_connecting")["url"] == server.url
    assert (output.first("dtmf")["digit"], output.first("dtmf")["via"]) == ("7", "rtp")
    assert output.first("hangup_sent") | {"t": 0} == {
        "event": "hangup_sent",
        "t": 0,
        "by": "bot",
        "outcome": "bot_hangup",
    }
    ended = output.first("ended")
    assert (ended["disposition"], ended["sip_status"], ended["hangup_by"]) == (
        "answered",
        200,
        "caller",
    )
    bot_result = ended["bot_result"]
    bot_ended = output.first("bot_ended")
    assert {k: v for k, v in bot_ended.items() if k not in ("event", "t")} == bot_result
    assert (bot_result["outcome"], bot_result["reason"]) == ("bot_hangup", "script done")
    assert (bot_result["values"], bot_result["tags"]) == ({"digit": "7"}, ["dtmf"])
    assert bot_result["clears"] == 1  # the key cut the prompt short
    assert bot_result["dtmf_to_bot"] == 1
    session = bot.sessions[0]
    assert session.digits == ["7"] and session.stopped
    assert session.start is not None
    assert session.start.custom_parameters["call_id"] == ended["call_id"]


async def test_callee_hangs_up_on_an_echo_bot(tmp_path: Path) -> None:
    bot = EchoBot()
    server = await serve_bot(bot)
    sipp = await start_callee("uas_answer_callee_bye.xml", tmp_path)
    try:
        output = await dialer_call("1000", "--trunk", sipp.uri, *LISTEN, "--bot", server.url)
        assert await sipp.finish() == 0, sipp.errors()
    finally:
        sipp.kill()
        await server.close()
    assert output.returncode == 0, output.stderr
    assert "hangup_sent" not in output.events()
    ended = output.first("ended")
    assert (ended["disposition"], ended["hangup_by"]) == ("answered", "callee")
    assert ended["bot_result"]["outcome"] == "completed"
    assert bot.sessions[0].stopped  # the bot was told: stop, then the socket closed


async def test_duration_ends_a_call_no_one_hangs_up(tmp_path: Path) -> None:
    server = await serve_bot(EchoBot())
    sipp = await start_callee("uas_answer_wait_bye.xml", tmp_path)
    try:
        output = await dialer_call(
            "1000", "--trunk", sipp.uri, *LISTEN, "--bot", server.url, "--duration", "0.6"
        )
        assert await sipp.finish() == 0, sipp.errors()
    finally:
        sipp.kill()
        await server.close()
    assert output.returncode == 0, output.stderr
    hangup = output.first("hangup_sent")
    assert hangup["by"] == "duration"
    assert 0.55 < hangup["t"] - output.first("answered")["t"] < 1.5
    ended = output.first("ended")
    assert (ended["disposition"], ended["hangup_by"]) == ("answered", "caller")
    assert ended["bot_result"]["outcome"] == "completed"


async def test_interrupt_hangs_up_first(tmp_path: Path) -> None:
    """Through the ``dialer`` command itself: Ctrl-C during a bot call sends BYE, then exits."""
    bot = EchoBot()
    server = await serve_bot(bot)
    sipp = await start_callee("uas_answer_wait_bye.xml", tmp_path)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dialer.cli",
        "call",
        "1000",
        "--trunk",
        sipp.uri,
        *LISTEN,
        "--bot",
        server.url,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        lines = []
        async with asyncio.timeout(20):
            while not lines or lines[-1]["event"] != "bot_connecting":
                lines.append(orjson.loads(await process.stdout.readline()))
            while not bot.sessions or bot.sessions[0].start is None:
                await asyncio.sleep(0.02)  # the stream has started
        process.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
        assert await sipp.finish() == 0, sipp.errors()
    finally:
        if process.returncode is None:
            process.kill()
        sipp.kill()
        await server.close()
    assert process.returncode == 0, stderr.decode()
    lines += [orjson.loads(line) for line in stdout.splitlines()]
    assert [line["event"] for line in lines][-3:] == ["hangup_sent", "bot_ended", "ended"]
    assert lines[-3]["by"] == "signal"
    assert lines[-1]["bot_result"]["outcome"] == "completed"
    assert bot.sessions[0].stopped


async def test_bot_transfer_is_carried_out_by_refer(tmp_path: Path) -> None:
    target = f"sip:agent@127.0.0.1:{free_port()}"

    async def script(ws: web.WebSocketResponse, heard: Heard) -> None:
        await ws.send_str(BotTransfer(target).serialize(heard.session.stream_sid).decode())

    bot = ProbeBot(script)
    server = await serve_bot(bot.handle)
    sipp = await start_callee("uas_refer_accept.xml", tmp_path)
    try:
        output = await dialer_call("1000", "--trunk", sipp.uri, *LISTEN, "--bot", server.url)
        assert await sipp.finish() == 0, sipp.errors()
    finally:
        sipp.kill()
        await server.close()
    assert output.returncode == 0, output.stderr
    assert output.events()[-4:] == ["bot_ended", "transfer_started", "transfer", "ended"]
    assert output.first("bot_ended")["outcome"] == "transferred"
    transfer = output.first("transfer")
    assert (transfer["target"], transfer["outcome"], transfer["refer_status"]) == (
        target,
        "referred",
        200,
    )
    ended = output.first("ended")
    assert ended["disposition"] == "transferred"
    assert ended["transfer"]["outcome"] == "referred"
    assert bot.heard.session.stopped


async def test_unreachable_bot_ends_the_call_as_bot_failed(tmp_path: Path) -> None:
    nobody = f"ws://127.0.0.1:{free_port(both=False)}/"  # nothing listens there
    sipp = await start_callee("uas_answer_wait_bye.xml", tmp_path)
    try:
        output = await dialer_call("1000", "--trunk", sipp.uri, *LISTEN, "--bot", nobody)
        assert await sipp.finish() == 0, sipp.errors()  # and it got its BYE
    finally:
        sipp.kill()
    assert output.returncode == 1
    assert output.first("hangup_sent") | {"t": 0} == {
        "event": "hangup_sent",
        "t": 0,
        "by": "us",
        "outcome": "bot_failed",
    }
    ended = output.first("ended")
    assert (ended["disposition"], ended["sip_status"]) == ("bot_failed", 200)
    assert ended["bot_result"]["outcome"] == "bot_failed"
    assert "cannot reach the bot" in ended["bot_result"]["reason"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bot", "http://bot.example/"], "ws:// or wss://"),
        (["--bot", "ws://bot.example/", "--bot-header", "Authorization"], "Name: value"),
        (["--bot-header", "X-Key: 1"], "--bot-header needs a --bot"),
        (["--bot", "ws://bot.example/", "--no-media"], "neither --no-media nor --play"),
        (["--bot", "ws://bot.example/", "--bot-connect-timeout", "0"], "must be above 0"),
    ],
)
async def test_bad_bot_options(argv: list[str], message: str) -> None:
    output = await dialer_call("1000", "--trunk", "sip:127.0.0.1:9", *argv)
    assert output.returncode == 2 and message in output.stderr, output.stderr

"""Our stream against a bot we did not write: pipecat's Twilio serializer.

A small aiohttp WebSocket server runs pipecat's own pieces the way a
pipecat bot does: ``parse_telephony_websocket`` reads our ``connected`` and
``start`` and must recognise a Twilio stream; ``TwilioFrameSerializer``
turns our messages into pipecat frames (16 kHz PCM, DTMF keys) and pipecat
frames back into messages (audio, ``clear`` on an interruption). Its
automatic hang-up, a Twilio REST call, is pointed at our ``CallControl``
endpoint. The call itself is the loopback harness of ``test_voicebot``.

The bot runs in its own process, as a customer's bot would: pipecat is
never imported into the test process (importing it patches
``asyncio.wait_for`` process-wide and brings a heap whose garbage
collection pauses would disturb the other tests' 20 ms clocks). Each
connection's settings travel in ``customParameters``, and what the bot
saw comes back over a queue.
"""

# The harness's fixtures are imported by name, so pytest finds them here;
# the tests' parameters then shadow those imports by design.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing as mp
import queue
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from media.bots import tone
from media.voicebot import CALLS_ROUTE, CallControl, VoicebotOutcome, calls_handler
from tests.media.test_voicebot import (
    CALL,
    Call,
    allocator,  # noqa: F401
    call,  # noqa: F401
    peak_frequency,
)

PIN = "pipecat-ai==1.14.0"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pipecat") is None,
    reason=f"{PIN} is not installed (pip install '{PIN}')",
)

PIPELINE_RATE = 16000  # pipecat resamples our 8 kHz to its pipeline's rate and back
AUTH_TOKEN = "pipecat-test-token"
HOST = "127.0.0.1"


# -- the bot, in its own process -----------------------------------------------------------


class _TextSocket:
    """What ``parse_telephony_websocket`` reads from: ``iter_text()`` over aiohttp."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def iter_text(self) -> AsyncIterator[str]:
        while True:
            message = await self.ws.receive()
            if message.type is not WSMsgType.TEXT:
                return
            yield message.data


async def _pipecat_connection(ws: web.WebSocketResponse, reports: Any) -> None:
    """One call, as a pipecat bot handles it.

    It echoes the callee's audio through pipecat's frames, greets with a
    tone first when asked to; ``*`` interrupts (``InterruptionFrame``: our
    ``clear``), ``#`` ends the call (``EndFrame``: a REST hang-up).
    """
    from pipecat.frames import frames
    from pipecat.runner.utils import parse_telephony_websocket
    from pipecat.serializers.twilio import TwilioFrameSerializer

    transport_type, call_data = await parse_telephony_websocket(_TextSocket(ws))
    body = call_data["body"]
    seen: dict[str, Any] = {
        "transport_type": transport_type,
        "stream_id": call_data["stream_id"],
        "call_id": call_data["call_id"],
        "body": dict(body),
        "audio_samples": 0,
        "digits": [],
    }
    base_url = body.get("hangup_base_url")
    serializer = TwilioFrameSerializer(
        stream_sid=call_data["stream_id"],
        call_sid=call_data["call_id"],
        account_sid=body.get("account_sid"),
        auth_token=AUTH_TOKEN,
        base_url=base_url,
        params=TwilioFrameSerializer.InputParams(
            sample_rate=PIPELINE_RATE, auto_hang_up=base_url is not None
        ),
    )
    # With the pipeline rate in the params, setup reads nothing else of its argument.
    await serializer.setup(None)  # type: ignore[arg-type]
    greeting_ms = int(body.get("greeting_ms", 0))
    if greeting_ms:
        greeting = np.repeat(tone(300, greeting_ms).samples, 2)  # held at 16 kHz
        out = frames.OutputAudioRawFrame(greeting.tobytes(), PIPELINE_RATE, 1)
        await ws.send_str(await serializer.serialize(out))
    async for message in ws:
        frame = await serializer.deserialize(message.data)
        if isinstance(frame, frames.InputAudioRawFrame):
            seen["audio_samples"] += len(frame.audio) // 2
            out = frames.OutputAudioRawFrame(frame.audio, frame.sample_rate, 1)
            data = await serializer.serialize(out)
            if data:
                await ws.send_str(data)
        elif isinstance(frame, frames.InputDTMFFrame):
            key = frame.button.value
            seen["digits"].append(key)
            if key == "*":
                await ws.send_str(await serializer.serialize(frames.InterruptionFrame()))
            elif key == "#":
                await serializer.serialize(frames.EndFrame())
    reports.put(seen)


def _pipecat_bot_main(ports: Any, reports: Any) -> None:
    """The child process: serve the pipecat bot until the parent ends it."""
    from importlib.metadata import version

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await _pipecat_connection(ws, reports)
        return ws

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, 0).start()
        import pipecat.serializers.twilio  # noqa: F401  (loaded before the first call)

        ports.put((runner.addresses[0][1], version("pipecat-ai")))
        await asyncio.Event().wait()

    asyncio.run(serve())


class PipecatBot:
    """The bot process, seen from the tests."""

    def __init__(self, url: str, version: str, reports: Any) -> None:
        self.url = url
        self.version = version
        self._reports = reports

    async def report(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """What the bot saw on its last connection (it reports when the socket closes)."""
        return await asyncio.to_thread(self._reports.get, True, timeout_s)


@pytest.fixture(scope="module")
def pipecat_bot() -> Iterator[PipecatBot]:
    ctx = mp.get_context("spawn")
    ports, reports = ctx.Queue(), ctx.Queue()
    process = ctx.Process(target=_pipecat_bot_main, args=(ports, reports), daemon=True)
    process.start()
    try:
        port, version = ports.get(timeout=30)
    except queue.Empty:
        process.terminate()
        pytest.fail("the pipecat bot process did not start")
    yield PipecatBot(f"ws://{HOST}:{port}/", version, reports)
    process.terminate()
    process.join(5)


def with_parameters(**parameters: Any):
    return replace(CALL, custom_parameters={**CALL.custom_parameters, **parameters})


# -- the tests ------------------------------------------------------------------------------


async def test_pipecat_reads_our_start_and_echoes_audio_back(
    call: Call, pipecat_bot: PipecatBot
) -> None:
    assert pipecat_bot.version == PIN.split("==")[1]
    stream = call.stream(pipecat_bot.url)
    task = asyncio.ensure_future(stream.run())
    call.callee_playback.enqueue(tone(700, 600).samples)
    await call.watch.until(lambda: len(call.loud_frames()) >= 27)
    await call.frames_later(10)
    stream.stop()
    result = await task
    seen = await pipecat_bot.report()

    assert seen["transport_type"] == "twilio"
    assert (seen["stream_id"], seen["call_id"]) == (CALL.stream_sid, CALL.call_sid)
    assert seen["body"] == dict(CALL.custom_parameters)
    # pipecat's stream resampler hands audio on in chunks of about 100 ms.
    assert seen["audio_samples"] >= 0.6 * PIPELINE_RATE
    assert result.invalid_frames == 0 and result.unknown_events == 0
    # The tone went 8 kHz mu-law -> 16 kHz PCM -> 8 kHz mu-law (odd-sized
    # chunks) and back to the callee at its pitch.
    loud = call.loud_frames()
    heard = np.concatenate([call.heard[i] for i in loud])
    assert 27 <= len(loud) <= 31
    assert abs(peak_frequency(heard) - 700) < 10


async def test_pipecat_interruption_clears_our_playback(
    call: Call, pipecat_bot: PipecatBot
) -> None:
    stream = call.stream(pipecat_bot.url, call=with_parameters(greeting_ms=3000))
    task = asyncio.ensure_future(stream.run())
    await call.watch.until(lambda: len(call.loud_frames()) >= 5)
    call.callee.send_dtmf("*")
    await call.watch.until(lambda: stream.clears == 1)
    await call.frames_later(10)
    stream.stop()
    result = await task
    seen = await pipecat_bot.report()
    assert seen["digits"] == ["*"]
    assert result.clears == 1
    assert len(call.loud_frames()) < 60  # of a 150-frame greeting


async def test_pipecat_hangs_up_through_our_twilio_style_endpoint(
    call: Call, pipecat_bot: PipecatBot
) -> None:
    control = CallControl()
    logins: list[tuple[str, str]] = []

    def check_auth(account_sid: str, login: str, password: str) -> bool:
        logins.append((login, password))
        return login == account_sid and password == AUTH_TOKEN

    api = web.Application()
    api.router.add_post(CALLS_ROUTE, calls_handler(control, check_auth=check_auth))
    async with TestServer(api, host=HOST) as rest:
        bot_call = with_parameters(
            hangup_base_url=str(rest.make_url("")).rstrip("/"), account_sid=CALL.account_sid
        )
        stream = call.stream(pipecat_bot.url, call=bot_call)
        control.register(CALL.call_sid, CALL.account_sid, stream.request_hangup)
        task = asyncio.ensure_future(stream.run())
        await call.watch.until(lambda: stream.frames_sent > 5)
        call.callee.send_dtmf("#")
        result = await asyncio.wait_for(task, 5)
    seen = await pipecat_bot.report()
    assert seen["digits"] == ["#"]
    assert result.outcome is VoicebotOutcome.BOT_HANGUP
    assert stream.hangup.is_set()
    assert logins == [(CALL.account_sid, AUTH_TOKEN)]
    assert len(control) == 0

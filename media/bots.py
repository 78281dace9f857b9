"""Reference voicebots: small aiohttp WebSocket servers that speak the stream format.

Rules of this file:

- These are bots as a customer would write them, against the Twilio Media
  Streams format and our extensions: they use ``media.streams`` to read and
  write messages and nothing of ``media.voicebot``, so a test through them
  checks our side against the format, not against itself.
- ``EchoBot`` sends back every ``media`` payload it receives, as it
  arrives; ``ScriptedBot`` speaks a prompt in real time (20 ms frames on
  deadlines from ``AudioPacer``), waits for one DTMF key (a key pressed
  during the prompt cuts it short with ``clear``), reports the key in a
  ``result`` message and hangs up.
- Each connection's observations are kept in a ``BotSession`` so tests and
  benchmarks can check what the bot saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from aiohttp import WSMsgType, web

from media.g711 import ulaw_encode
from media.playback import SAMPLE_RATE, Prompt, SpeechRenderer
from media.streams import (
    AudioPacer,
    BotClear,
    BotHangup,
    BotMark,
    BotMedia,
    BotResult,
    CallDtmf,
    CallMark,
    CallMedia,
    CallStart,
    CallStop,
    StreamError,
    parse_call_event,
)

__all__ = [
    "BotServer",
    "BotSession",
    "EchoBot",
    "Script",
    "ScriptedBot",
    "serve_bot",
    "tone",
]

_TEXT = WSMsgType.TEXT
PROMPT_MARK = "prompt-end"


@dataclass(slots=True)
class BotSession:
    """What one connection to a bot saw."""

    start: CallStart | None = None
    media_messages: int = 0
    payload_bytes: int = 0
    chunk_gaps: int = 0  # chunk numbers skipped (frames the caller dropped)
    sequence_errors: int = 0  # sequenceNumber not one more than the last
    last_chunk: int = 0
    last_sequence_number: int = 1
    last_timestamp_ms: int = -1
    digits: list[str] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)
    stopped: bool = False
    invalid: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    # Called after each frame is counted (tests wait on what the bot saw).
    listener: Callable[[BotSession], None] | None = None

    def observe(self, data: str | bytes) -> CallMedia | CallDtmf | CallMark | CallStop | None:
        """Parse and count one frame; return the event (``None`` for others)."""
        try:
            event = parse_call_event(data)
        except StreamError:
            self.invalid += 1
            return None
        if type(event) is CallMedia:
            self.media_messages += 1
            self.payload_bytes += len(event.payload)
            self.chunk_gaps += event.chunk - self.last_chunk - 1
            self.last_chunk = event.chunk
            self.last_timestamp_ms = event.timestamp_ms
        elif type(event) is CallStart:
            self.start = event
            self.last_sequence_number = event.sequence_number - 1
        elif type(event) is CallDtmf:
            self.digits.append(event.digit)
        elif type(event) is CallMark:
            self.marks.append(event.name)
        elif type(event) is CallStop:
            self.stopped = True
        sequence_number = getattr(event, "sequence_number", None)
        if sequence_number is not None:
            if type(event) is not CallStart and sequence_number != self.last_sequence_number + 1:
                self.sequence_errors += 1
            self.last_sequence_number = sequence_number
        if self.listener is not None:
            self.listener(self)
        if isinstance(event, CallMedia | CallDtmf | CallMark | CallStop):
            return event
        return None

    @property
    def stream_sid(self) -> str:
        """The stream's id, from ``start`` (empty before it)."""
        return self.start.stream_sid if self.start is not None else ""


class BotServer:
    """A bot listening on a local port; ``url`` is its WebSocket address."""

    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self.runner = runner
        self.url = url

    async def close(self) -> None:
        """Stop listening and close every open socket."""
        await self.runner.cleanup()


async def serve_bot(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | EchoBot | ScriptedBot,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    shutdown_timeout_s: float = 1.0,
    ssl_context: ssl.SSLContext | None = None,
) -> BotServer:
    """Serve a bot's WebSocket handler at ``/`` on ``host:port`` (0: any free port).

    ``close()`` gives open connections ``shutdown_timeout_s`` to finish. With
    ``ssl_context`` the bot speaks TLS and its ``url`` is ``wss://``.
    """
    app = web.Application()
    app.router.add_get(
        "/", handler.handle if isinstance(handler, EchoBot | ScriptedBot) else handler
    )
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout_s
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound = runner.addresses[0]
    scheme = "ws" if ssl_context is None else "wss"
    return BotServer(runner, f"{scheme}://{bound[0]}:{bound[1]}/")


async def _accept(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, decode_text=False)
    await ws.prepare(request)
    return ws


class EchoBot:
    """Sends back each ``media`` payload as soon as it arrives."""

    def __init__(
        self,
        *,
        keep_sessions: bool = True,
        listener: Callable[[BotSession], None] | None = None,
    ) -> None:
        self.keep_sessions = keep_sessions
        self.listener = listener
        self.sessions: list[BotSession] = []
        self.connections = 0

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The aiohttp handler of one connection."""
        ws = await _accept(request)
        self.connections += 1
        session = BotSession(listener=self.listener)
        if self.keep_sessions:
            self.sessions.append(session)
        try:
            async for message in ws:
                if message.type is not _TEXT:
                    continue
                event = session.observe(message.data)
                if type(event) is CallMedia:
                    await ws.send_frame(
                        BotMedia(event.payload).serialize(session.stream_sid), _TEXT
                    )
        except ConnectionError:
            pass  # the call went away while we answered: nothing to do
        finally:
            session.closed.set()
        return ws


def tone(frequency_hz: float, duration_ms: int, amplitude: float = 8000.0) -> Prompt:
    """A sine tone as a prompt (8 kHz, whole 20 ms frames)."""
    count = duration_ms * SAMPLE_RATE // 1000
    t = np.arange(count) / SAMPLE_RATE
    samples = (amplitude * np.sin(2 * np.pi * frequency_hz * t)).astype(np.int16)
    samples.flags.writeable = False
    return Prompt(samples, f"tone:{frequency_hz:g}Hz:{duration_ms}ms")


@dataclass(frozen=True, slots=True)
class Script:
    """What ``ScriptedBot`` says and waits for."""

    text: str | None = None  # spoken through the renderer when one is given
    prompt: Prompt | None = None  # else this audio
    tone_hz: float = 440.0  # else a tone of this pitch
    tone_ms: int = 1000
    wait_digit_s: float = 10.0
    result_key: str = "digit"


class ScriptedBot:
    """Speaks, waits for a key, reports it as its result, hangs up."""

    def __init__(
        self,
        script: Script | None = None,
        renderer: SpeechRenderer | None = None,
        *,
        listener: Callable[[BotSession], None] | None = None,
    ) -> None:
        self.script = script or Script()
        self.renderer = renderer
        self.listener = listener
        self.sessions: list[BotSession] = []

    async def _prompt(self, session: BotSession) -> Prompt:
        """What to say to this call (subclasses may use its ``start``)."""
        script = self.script
        if script.text is not None and self.renderer is not None:
            return await self.renderer.render(script.text)
        if script.prompt is not None:
            return script.prompt
        return tone(script.tone_hz, script.tone_ms)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The aiohttp handler of one connection."""
        ws = await _accept(request)
        session = BotSession(listener=self.listener)
        self.sessions.append(session)
        digits: asyncio.Queue[str] = asyncio.Queue()
        started = asyncio.Event()

        async def read() -> None:
            async for message in ws:
                if message.type is not _TEXT:
                    continue
                event = session.observe(message.data)
                if session.start is not None:
                    started.set()
                if type(event) is CallDtmf:
                    digits.put_nowait(event.digit)

        reader = asyncio.ensure_future(read())
        try:
            await asyncio.wait(
                [reader, asyncio.ensure_future(started.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
            if started.is_set():
                await self._converse(ws, session, digits)
                # Let the call's stop arrive before the socket closes.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await reader
        except ConnectionError:
            pass  # the call hung up first
        finally:
            reader.cancel()
            await ws.close()
            session.closed.set()
        return ws

    def _result(self, digit: str | None) -> BotResult:
        tags = ("dtmf",) if digit is not None else ("no_input",)
        return BotResult({self.script.result_key: digit}, tags)

    async def _converse(
        self, ws: web.WebSocketResponse, session: BotSession, digits: asyncio.Queue[str]
    ) -> None:
        loop = asyncio.get_running_loop()
        sid = session.stream_sid
        prompt = await self._prompt(session)
        pacer = AudioPacer()
        pacer.push(ulaw_encode(prompt.samples).tobytes(), loop.time())
        pacer.flush()
        digit: str | None = None
        # Speak in real time, as a streaming TTS would, listening all along.
        while pacer.queued_frames and digit is None:
            for frame in pacer.pull(loop.time()):
                await ws.send_frame(BotMedia(frame).serialize(sid), _TEXT)
            deadline = pacer.next_deadline()
            if deadline is None:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    digit = await digits.get()
        if digit is not None:
            await ws.send_frame(BotClear().serialize(sid), _TEXT)  # barge-in
        else:
            await ws.send_frame(BotMark(PROMPT_MARK).serialize(sid), _TEXT)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.script.wait_digit_s):
                    digit = await digits.get()
        await ws.send_frame(self._result(digit).serialize(sid), _TEXT)
        await ws.send_frame(BotHangup("script done").serialize(sid), _TEXT)

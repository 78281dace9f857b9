"""``dialer call NUMBER_OR_URI``: place one call through a trunk and narrate it.

Every phase is printed as one JSON object per line on stdout, ``t`` in
seconds since the command started::

    {"event": "invite_sent", "t": 0.0, "call_id": "...", "target": "sip:1000@..."}
    {"event": "ringing", "t": 0.41, "status": 180}
    {"event": "answered", "t": 2.03, "codec": "PCMU", "remote": "192.0.2.9:40002"}
    {"event": "hangup_sent", "t": 12.03, "by": "duration"}
    {"event": "ended", "t": 12.03, "disposition": "answered", "sip_status": 200, ...}

With ``--bot ws://...`` the answered call is streamed to that voicebot (the
Twilio Media Streams format, as a workflow's voicebot handler does) until
the bot or the callee hangs up; the lines then also say when the bot is
being reached, each key the callee pressed, who asked for the hang-up, the
bot's outcome and result, and a transfer the bot asked for (carried out as a
worker does: REFER, else a bridged call)::

    {"event": "bot_connecting", "t": 2.03, "url": "ws://127.0.0.1:8765/"}
    {"event": "dtmf", "t": 5.12, "digit": "1", "via": "rtp"}
    {"event": "hangup_sent", "t": 5.31, "by": "bot", "outcome": "bot_hangup"}
    {"event": "bot_ended", "t": 5.32, "outcome": "bot_hangup", "values": {"digit": "1"}, ...}
    {"event": "ended", "t": 5.33, "disposition": "answered", "hangup_by": "caller", ...}

Exit status: 0 when the call was answered (and, with ``--bot``, the bot
was reached), 1 when it was not, 2 for a bad option or configuration (with
a message on stderr). SIGINT or SIGTERM during an answered call hangs it
up first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib
import secrets
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from dialer.settings import HostPort, Settings
from dialer.sip.auth import Credentials
from dialer.sip.call import (
    Answered,
    CallEvent,
    CallResult,
    Dtmf,
    EarlyMedia,
    Ended,
    Held,
    MediaUpdated,
    Resumed,
    Ringing,
)
from dialer.sip.dialog import LocalMedia
from dialer.sip.sdp import MediaAnswer
from dialer.sip.timers import DEFAULT_TIMERS, TimerConfig
from dialer.transport import TransportConfig
from dialer.trunk import TrunkConfig, parse_trunk_uri
from dialer.user_agent import LOOPBACK, CallHandle, RequestPolicy, UserAgent, UserAgentOptions

if TYPE_CHECKING:
    from dialer.transfer import TransferReport
    from media.voicebot import VoicebotResult

__all__ = ["add_parser", "main", "run"]


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
    return value


def _host_port(text: str) -> HostPort:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return HostPort(host.strip("[]"), int(port))


def _trunk_uri(text: str) -> str:
    try:
        parse_trunk_uri(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _wav_in(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def _wav_out(text: str) -> Path:
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {path.parent}")
    return path


def _bot_url(text: str) -> str:
    if not text.lower().startswith(("ws://", "wss://")):
        raise argparse.ArgumentTypeError(f"expected a ws:// or wss:// URL, got {text!r}")
    return text


def _bot_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``call`` subcommand to a ``subparsers`` object of argparse."""
    parser = subparsers.add_parser(
        "call",
        help="place one call through a SIP trunk and print its phases as JSON lines",
        description="Place one call through a SIP trunk; print every phase as a JSON line.",
    )
    _arguments(parser)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="a number (sent to the trunk's host) or a sip:/tel: URI")
    parser.add_argument(
        "--trunk", type=_trunk_uri, help="trunk URI, e.g. sip:carrier.example:5060;transport=tcp"
    )
    parser.add_argument("--username", help="digest username for the trunk")
    parser.add_argument("--password", help="digest password (default: DIALER_TRUNK_PASSWORD)")
    parser.add_argument("--listen", type=_host_port, help="SIP listen HOST:PORT (0: any port)")
    parser.add_argument(
        "--ring-timeout", type=_positive, default=45.0, help="seconds to ring (default 45)"
    )
    parser.add_argument(
        "--duration",
        type=_positive,
        help="seconds to stay on the line after the answer (default 30, or the --play "
        "length; with --bot, until the bot or the callee hangs up)",
    )
    parser.add_argument("--play", type=_wav_in, metavar="WAV", help="play this WAV file")
    parser.add_argument(
        "--record", type=_wav_out, metavar="WAV", help="record both legs to this WAV"
    )
    parser.add_argument(
        "--no-media", action="store_true", help="signalling only: no RTP (offers a dummy port)"
    )
    parser.add_argument(
        "--bot",
        type=_bot_url,
        metavar="URL",
        help="stream the answered call to this voicebot (ws:// or wss://, Twilio Media "
        "Streams format) until either side hangs up",
    )
    parser.add_argument(
        "--bot-header",
        type=_bot_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header for the bot's WebSocket handshake, e.g. 'Authorization: Bearer ...' "
        "(repeatable)",
    )
    parser.add_argument(
        "--bot-connect-timeout",
        type=_positive,
        default=3.0,
        metavar="S",
        help="seconds to reach the bot before the call ends as bot_failed (default 3)",
    )
    parser.add_argument("--t1", type=_positive, help=argparse.SUPPRESS)  # tests: short timers


class _Narrator:
    """Prints events as JSON lines, times relative to the start."""

    def __init__(self, origin: float, out: Any = None, *, hold_end: bool = False) -> None:
        self.origin = origin
        self.out = out or sys.stdout
        # With a bot, the end is printed once the bot's result is in (``end``).
        self.hold_end = hold_end
        self.printed_end = False

    def emit(self, event: str, t: float, **fields: object) -> None:
        record = {"event": event, "t": round(t - self.origin, 4), **fields}
        self.out.write(orjson.dumps(record, default=str).decode() + "\n")
        self.out.flush()

    def call_event(self, event: CallEvent, now: float) -> None:
        match event:
            case Ringing(status=status):
                self.emit("ringing", now, status=status)
            case EarlyMedia(media=media):
                self.emit("early_media", now, **_media(media))
            case Answered(media=media):
                self.emit("answered", now, **_media(media))
            case Held(media=media):
                self.emit("held", now, **_media(media))
            case Resumed(media=media):
                self.emit("resumed", now, **_media(media))
            case MediaUpdated(media=media):
                self.emit("media_updated", now, **_media(media))
            case Dtmf(digit=digit, duration_ms=duration_ms):
                self.emit("dtmf", now, digit=digit, duration_ms=duration_ms)
            case Ended(result=result) if not self.hold_end:
                self.end(result)

    def end(self, result: CallResult, **extra: object) -> None:
        """Print the ``ended`` line (once), ``extra`` fields added or replacing."""
        if not self.printed_end:
            self.printed_end = True
            self.emit("ended", result.ended_at, **{**_result(result, self.origin), **extra})


def _media(media: MediaAnswer) -> dict[str, object]:
    return {
        "codec": media.codec.name,
        "remote": f"{media.remote_address}:{media.remote_port}",
        "direction": media.direction,
        "on_hold": media.on_hold,
        "telephone_event_pt": media.telephone_event_pt,
    }


def _result(result: CallResult, origin: float) -> dict[str, object]:
    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - origin, 4)

    return {
        "call_id": result.call_id,
        "disposition": str(result.disposition),
        "sip_status": result.sip_status,
        "sip_reason": result.sip_reason,
        "hangup_by": result.hangup_by,
        "end_reason": result.end_reason,
        "detail": result.detail,
        "invite_sent_at": rel(result.invite_sent_at),
        "provisional_at": rel(result.provisional_at),
        "ringing_at": rel(result.ringing_at),
        "early_media_at": rel(result.early_media_at),
        "answered_at": rel(result.answered_at),
        "ended_at": rel(result.ended_at),
        "talk_time_s": round(result.talk_time_s, 4),
    }


def _fail(message: str) -> int:
    print(f"dialer call: error: {message}", file=sys.stderr)
    return 2


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Place the call described by ``args``; the exit status (see the module doc)."""
    trunk_text = args.trunk or settings.trunk_uri
    if not trunk_text:
        return _fail("no trunk: give --trunk or set DIALER_TRUNK_URI")
    username = args.username or settings.trunk_username
    password = args.password if args.password is not None else settings.trunk_password.value
    if password and not username:
        return _fail("a password needs a --username")
    try:
        credentials = Credentials(username, password or "") if username else None
        trunk = TrunkConfig("cli", parse_trunk_uri(trunk_text), credentials=credentials)
    except ValueError as error:
        return _fail(str(error))
    if args.bot is not None and (args.no_media or args.play is not None):
        return _fail("--bot streams the call's audio: it goes with neither --no-media nor --play")
    if args.bot_header and args.bot is None:
        return _fail("--bot-header needs a --bot")
    listen: HostPort = args.listen or settings.sip_listen
    timers = TimerConfig(t1_s=args.t1, t2_s=max(args.t1, 4.0)) if args.t1 else DEFAULT_TIMERS
    options = UserAgentOptions(
        transport=TransportConfig(listen.host, listen.port),
        policy=RequestPolicy(trusted=LOOPBACK),
        timers=timers,
        ring_timeout_s=args.ring_timeout,
    )
    loop = asyncio.get_running_loop()
    narrator = _Narrator(loop.time(), hold_end=args.bot is not None)
    try:
        agent = UserAgent(options, [trunk])
        await agent.start()
    except OSError as error:
        hint = ""
        if error.errno == errno.EADDRINUSE:
            hint = f" (another process, `dialer up` say, holds it: --listen {listen.host}:0)"
        return _fail(f"cannot start the user agent on {listen}: {error}{hint}")
    try:
        return await _call(agent, args, settings, narrator)
    finally:
        await agent.close(grace_s=2.0)


async def _call(
    agent: UserAgent, args: argparse.Namespace, settings: Settings, narrator: _Narrator
) -> int:
    loop = asyncio.get_running_loop()
    media = _Media(args, settings) if not args.no_media else None
    if args.bot is not None:
        # Imported before the call, not on its answer: aiohttp takes a while to load.
        importlib.import_module("media.voicebot")
    host = agent.trunks["cli"].ua_config.via_host  # type: ignore[union-attr]
    try:
        local = await media.open(host) if media else LocalMedia(host, 9)
    except (OSError, RuntimeError, ValueError) as error:
        return _fail(f"cannot open media: {error}")
    try:

        def on_event(event: CallEvent) -> None:
            narrator.call_event(event, loop.time())
            if media is not None:
                media.on_event(event)

        try:
            handle = await agent.place_call(args.target, media=local, on_event=on_event)
        except ValueError as error:
            return _fail(str(error))
        narrator.emit(
            "invite_sent",
            handle.call.record.invite_sent_at or loop.time(),
            call_id=handle.call_id,
            target=handle.call.dial.target.serialize(),
        )
        answered = await handle.answered()
        bot: Any = None
        transfer: Any = None
        if answered is not None:
            with _on_signals(lambda: _hang_up(handle, narrator, "signal")):
                if args.bot is not None and media is not None:
                    bot, transfer = await _converse(agent, handle, media, args, narrator)
                else:
                    await _stay(handle, media, args, narrator)
        result = await handle.ended()
        failed = bot is not None and bot.outcome == "bot_failed"
        extra: dict[str, object] = {}
        if args.bot is not None:
            extra["bot_result"] = None if bot is None else _bot_result(bot)
            # As a workflow's call node reports them.
            if failed and result.answered_at is not None:
                extra["disposition"] = "bot_failed"
            if transfer is not None:
                extra["transfer"] = transfer.as_dict()
                if transfer.outcome in ("referred", "bridged"):
                    extra["disposition"] = "transferred"
        narrator.end(result, **extra)
        return 0 if result.answered_at is not None and not failed else 1
    finally:
        if media is not None:
            recording = await media.close()
            if recording is not None:
                narrator.emit("recording", loop.time(), **recording)


@contextlib.contextmanager
def _on_signals(action: Any) -> Any:
    """Run ``action`` on SIGINT or SIGTERM while the block runs (where the loop allows)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, action)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _hang_up(handle: CallHandle, narrator: _Narrator, by: str, **fields: object) -> None:
    if handle.result is None:
        narrator.emit("hangup_sent", asyncio.get_running_loop().time(), by=by, **fields)
        handle.hangup()


async def _stay(
    handle: CallHandle, media: _Media | None, args: argparse.Namespace, narrator: _Narrator
) -> None:
    """Hold the line for ``--duration`` (or the prompt), then hang up."""
    hold = args.duration
    if hold is None and media is not None and media.play_s is not None:
        hold = media.play_s + 0.3
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(handle.ended(), hold or 30.0)
        return
    _hang_up(handle, narrator, "duration")
    await handle.ended()


async def _converse(
    agent: UserAgent,
    handle: CallHandle,
    media: _Media,
    args: argparse.Namespace,
    narrator: _Narrator,
) -> tuple[VoicebotResult, TransferReport | None]:
    """Stream the answered call to ``--bot`` until the bot, the callee or ``--duration`` ends it."""
    from media.voicebot import VoicebotCall, VoicebotConfig, VoicebotStream, new_sid, run_voicebot

    loop = asyncio.get_running_loop()
    config = VoicebotConfig(
        url=args.bot,
        headers=dict(args.bot_header),
        connect_timeout_s=args.bot_connect_timeout,
    )
    call = VoicebotCall(
        call_sid=new_sid("CA", secrets.randbits),
        account_sid=new_sid("AC", secrets.randbits),
        stream_sid=new_sid("MZ", secrets.randbits),
        custom_parameters={"call_id": handle.call_id, "to": handle.call.dial.target.serialize()},
    )
    streams: list[VoicebotStream] = []

    def started(stream: VoicebotStream) -> None:
        streams.append(stream)
        # The stream now owns the session's key callback: narrate each key on its way.
        session = media.session
        to_bot = session.on_dtmf

        def on_dtmf(digit: Any) -> None:
            if digit.digit is not None:
                narrator.emit("dtmf", loop.time(), digit=digit.digit, via="rtp")
            to_bot(digit)

        session.on_dtmf = on_dtmf

    def on_hangup(outcome: str) -> None:
        # Called from the stream's receive loop: the BYE leaves in this turn.
        _hang_up(handle, narrator, "bot", outcome=str(outcome))

    ended = asyncio.ensure_future(handle.ended())

    def stop_streams(_ended: object) -> None:
        for stream in streams:
            stream.stop()

    ended.add_done_callback(stop_streams)
    narrator.emit("bot_connecting", loop.time(), url=_redacted(args.bot))
    bot = asyncio.ensure_future(
        run_voicebot(
            media.session,
            media.playback,
            config,
            call,
            on_hangup=on_hangup,
            started=started,
        )
    )
    try:
        if args.duration is not None:
            done, _ = await asyncio.wait({bot}, timeout=args.duration)
            if not done:
                _hang_up(handle, narrator, "duration")
        result = await bot
    finally:
        if not bot.done():
            bot.cancel()
        if not ended.done():
            ended.cancel()
    narrator.emit("bot_ended", loop.time(), **_bot_result(result))
    transfer = None
    if result.outcome == "transferred" and result.transfer_target and handle.result is None:
        transfer = await _transfer(agent, handle, media, result.transfer_target, narrator)
    if handle.result is None:
        # The bot could not be reached, or its stream ended without a hang-up.
        _hang_up(handle, narrator, "us", outcome=str(result.outcome))
    return result, transfer


async def _transfer(
    agent: UserAgent, handle: CallHandle, media: _Media, target: str, narrator: _Narrator
) -> TransferReport:
    """Carry out the bot's transfer as a worker does: REFER, else call the target and bridge."""
    from dialer.transfer import TransferConfig, transfer_call

    loop = asyncio.get_running_loop()
    narrator.emit("transfer_started", loop.time(), target=target)
    report = await transfer_call(
        agent,
        handle,
        media.session,
        target,
        config=TransferConfig(),
        rtp_host=media.host,
        ports=media.allocator,
        session_config=media.session.config,
    )
    narrator.emit("transfer", loop.time(), **report.as_dict())
    return report


def _redacted(url: str) -> str:
    # A URL's userinfo or query may carry a secret (a password, ?token=): never print them.
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2]
    path, question, _ = path.partition("?")
    return f"{scheme}{sep}{host}{slash}{path}{'?...' if question else ''}"


def _bot_result(result: VoicebotResult) -> dict[str, object]:
    return {
        "outcome": str(result.outcome),
        "reason": result.reason,
        "values": dict(result.values),
        "tags": list(result.tags),
        "transfer_target": result.transfer_target,
        "connect_ms": None if result.connect_ms is None else round(result.connect_ms, 1),
        "frames_to_bot": result.frames_sent,
        "frames_dropped": result.frames_dropped,
        "bot_audio_ms": round(result.bot_audio_ms, 1),
        "dtmf_to_bot": result.dtmf_sent,
        "marks_echoed": result.marks_echoed,
        "clears": result.clears,
        "latency_to_bot_p99_ms": round(result.latency_to_bot.p99_ms, 2),
        "latency_from_bot_p99_ms": round(result.latency_from_bot.p99_ms, 2),
    }


class _Media:
    """The RTP side of the one call: a session, a prompt to play, a recording."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args = args
        self.settings = settings
        self.session: Any = None
        self.recorder: Any = None
        self.playback: Any = None  # the bot's audio, with --bot
        self.allocator: Any = None
        self.host = ""
        self.play_s: float | None = None

    async def open(self, host: str) -> LocalMedia:
        from media.playback import PlaybackQueue, read_wav
        from media.ports import PortAllocator, bind_pair
        from media.recording import CallRecorder
        from media.session import RtpSession

        source = None
        if self.args.play is not None:
            prompt = read_wav(self.args.play)
            source = PlaybackQueue()
            source.enqueue(prompt)
            self.play_s = prompt.duration_s
        elif self.args.bot is not None:
            source = self.playback = PlaybackQueue()
        if self.args.record is not None:
            self.recorder = CallRecorder(self.args.record)
        allocator = PortAllocator(self.settings.rtp_port_min, self.settings.rtp_port_max)
        self.allocator, self.host = allocator, host  # a bridged transfer's leg takes ports too
        ports = bind_pair(allocator, host)
        self.session = await RtpSession.create(ports, source=source, recorder=self.recorder)
        return LocalMedia(host, ports.rtp_port)

    def on_event(self, event: CallEvent) -> None:
        from media.g711 import PCMA, PCMU
        from media.session import MediaParams

        match event:
            case Answered(media=media) | Resumed(media=media) | MediaUpdated(media=media):
                codec = PCMA if media.codec.name.upper() == "PCMA" else PCMU
                params = MediaParams(
                    (media.remote_address, media.remote_port),
                    codec,
                    media.telephone_event_pt,
                )
                if self.session.started:
                    self.session.update(params)
                elif not self.session.closed:
                    self.session.start(params)
            case Ended():
                self.session.close()

    async def close(self) -> dict[str, object] | None:
        if self.session is not None:
            self.session.close()
            self.session.ports.close()
        if self.recorder is None:
            return None
        result = await self.recorder.close()
        return {"path": str(result.path), "duration_s": round(result.duration_s, 3)}


def main(argv: list[str] | None = None) -> int:
    """Run ``dialer call`` on its own (``python -m dialer.call_cli ...``)."""
    from dialer.settings import SettingsError

    parser = argparse.ArgumentParser(prog="dialer call", description=__doc__.splitlines()[0])
    _arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        return _fail(str(error))
    return asyncio.run(run(args, settings))


if __name__ == "__main__":
    sys.exit(main())

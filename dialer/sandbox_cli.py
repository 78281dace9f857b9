"""``dialer sandbox``: run the sandbox carrier on its own and narrate what it does.

Point the dialer at the URI it prints (``DIALER_TRUNK_URI``). Every call is
printed as JSON lines on stdout, ``t`` in seconds since the start::

    {"event": "listening", "t": 0.0, "uri": "sip:127.0.0.1:5080", "behaviours": "by last digit"}
    {"event": "call", "t": 3.1, "call_id": "...", "number": "+15550100", "behaviour": "person"}
    {"event": "answered", "t": 5.2, "call_id": "...", "behaviour": "person"}
    {"event": "digit", "t": 9.9, "call_id": "...", "digit": "1"}
    {"event": "ended", "t": 12.0, "call_id": "...", "end_reason": "remote_bye", ...}
    {"event": "stats", "t": 60.0, "calls": {"person": 1}, ...}

It runs until interrupted (SIGINT, SIGTERM) or ``--duration`` seconds have
passed. Exit status: 0, or 2 for a bad option (with a message on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

import orjson

from dialer.sandbox import (
    Behaviour,
    NetworkConditions,
    SandboxCarrier,
    SandboxConfig,
    parse_ratios,
)
from dialer.settings import HostPort, Settings
from dialer.sip.timers import DEFAULT_TIMERS, TimerConfig

__all__ = ["add_parser", "main", "run"]


def _host_port(text: str) -> HostPort:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return HostPort(host.strip("[]"), int(port))


def _ratios(text: str) -> dict[Behaviour, float]:
    try:
        return parse_ratios(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _port_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    if not (sep and low.isdigit() and high.isdigit() and 0 < int(low) < int(high) <= 65535):
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH ports, got {text!r}")
    return int(low), int(high)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _loss(text: str) -> float:
    value = _non_negative(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"loss is a fraction below 1: {text!r}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sandbox`` subcommand to a ``subparsers`` object of argparse."""
    parser = subparsers.add_parser(
        "sandbox",
        help="run the sandbox carrier: a SIP trunk that answers like people and machines",
        description="Run the sandbox carrier and print what every call does as JSON lines.",
    )
    _arguments(parser)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        type=_host_port,
        default=HostPort("127.0.0.1", 5080),
        help="SIP listen HOST:PORT (default 127.0.0.1:5080; port 0 picks one)",
    )
    parser.add_argument(
        "--ratios",
        type=_ratios,
        metavar="SHARES",
        help="draw each call's behaviour from shares instead of the number's last digit, "
        "e.g. person=0.6,voicemail=0.2,busy=0.1,no_answer=0.1 "
        "(also: unreachable, silent)",
    )
    parser.add_argument("--seed", type=int, help="seed of the random draws (repeatable runs)")
    parser.add_argument(
        "--yes-share",
        type=_non_negative,
        default=0.6,
        help="with --ratios: share of people who press 1 (yes) rather than 2 (default 0.6)",
    )
    parser.add_argument(
        "--early-media",
        action="store_true",
        help="send 183 with SDP and a ringback tone before answering",
    )
    parser.add_argument(
        "--delay-ms", type=_non_negative, default=0.0, help="slow network: RTP delay"
    )
    parser.add_argument(
        "--jitter-ms", type=_non_negative, default=0.0, help="slow network: RTP jitter"
    )
    parser.add_argument("--loss", type=_loss, default=0.0, help="slow network: RTP loss (0-1)")
    parser.add_argument(
        "--rtp-ports",
        type=_port_range,
        default=(31000, 31999),
        metavar="LOW-HIGH",
        help="RTP port range (default 31000-31999)",
    )
    parser.add_argument(
        "--no-speech",
        action="store_true",
        help="a synthetic voice instead of espeak-ng",
    )
    parser.add_argument(
        "--duration", type=_non_negative, help="stop after this many seconds (default: never)"
    )
    parser.add_argument("--t1", type=_non_negative, help=argparse.SUPPRESS)  # tests: short timers


def config_from_args(args: argparse.Namespace, settings: Settings) -> SandboxConfig:
    """The carrier's configuration from the command line and the settings."""
    ratios = tuple(args.ratios.items()) if args.ratios else ()
    timers = DEFAULT_TIMERS
    if args.t1:
        timers = TimerConfig(t1_s=args.t1, t2_s=max(args.t1, 4.0))
    return SandboxConfig(
        host=args.listen.host,
        port=args.listen.port,
        rtp_port_min=args.rtp_ports[0],
        rtp_port_max=args.rtp_ports[1],
        ratios=ratios,
        seed=args.seed,
        person_yes_share=min(1.0, args.yes_share),
        early_media=args.early_media,
        network=NetworkConditions(args.delay_ms, args.jitter_ms, args.loss),
        speech_cache_dir=None if args.no_speech else settings.data_dir / "tts",
        timers=timers,
    )


class _Printer:
    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.loop = asyncio.get_running_loop()

    def __call__(self, event: str, fields: dict[str, object]) -> None:
        t = round(self.loop.time() - self.origin, 4)
        sys.stdout.write(orjson.dumps({"event": event, "t": t, **fields}, default=str).decode())
        sys.stdout.write("\n")
        sys.stdout.flush()


async def _stopped(duration_s: float | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        if duration_s is None:
            await stop.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration_s)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the sandbox carrier until stopped; the exit status (see the module doc)."""
    try:
        config = config_from_args(args, settings)
    except ValueError as error:
        print(f"dialer sandbox: error: {error}", file=sys.stderr)
        return 2
    printer = _Printer(asyncio.get_running_loop().time())
    carrier = SandboxCarrier(config, on_event=printer)
    try:
        await carrier.start()
    except OSError as error:
        print(f"dialer sandbox: error: cannot listen on {args.listen}: {error}", file=sys.stderr)
        return 2
    try:
        rule = "by shares" if config.ratios else "by last digit"
        printer("listening", {"uri": carrier.uri, "behaviours": rule})
        await _stopped(args.duration)
    finally:
        await carrier.close()
        printer("stats", carrier.stats.as_dict())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``dialer sandbox`` on its own (``python -m dialer.sandbox_cli ...``)."""
    from dialer.settings import SettingsError

    parser = argparse.ArgumentParser(prog="dialer sandbox", description=__doc__.splitlines()[0])
    _arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"dialer sandbox: error: {error}", file=sys.stderr)
        return 2
    return asyncio.run(run(args, settings))


if __name__ == "__main__":
    sys.exit(main())

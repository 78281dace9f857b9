"""The ``dialer demo`` subcommand: its arguments, and the settings it runs on."""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from typing import Any

from dialer.settings import HostPort, Settings

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="place real SIP calls to the sandbox carrier with a demo bot, and show it live",
    )
    demo.add_argument("--records", type=int, default=300, help="sample records (default 300)")
    demo.add_argument("--seats", type=int, default=30, help="bot seats (default 30)")
    demo.add_argument(
        "--pacing",
        choices=("progressive", "ratio", "predictive"),
        default="predictive",
        help="pacing mode (default predictive)",
    )
    demo.add_argument("--seed", type=int, default=1, help="draws the sample people")
    demo.add_argument(
        "--timeout", type=float, default=900.0, help="give up after this many seconds"
    )
    view = demo.add_mutually_exclusive_group()
    view.add_argument("--live", dest="live", action="store_true", default=None)
    view.add_argument("--no-live", dest="live", action="store_false", help="plain lines")


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _free_sip_ports(count: int = 8) -> int:
    """A first port from which ``count`` ports are free for both UDP and TCP.

    SIP listens on both, and worker processes take the ports after the first;
    a free UDP port alone was seen to have its TCP twin taken by an outgoing
    connection's ephemeral port.
    """
    for _ in range(100):
        first = _free_port(socket.SOCK_DGRAM)
        if first + count > 65535:
            continue
        try:
            for port in range(first, first + count):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(socket.AF_INET, kind) as probe:
                        probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise OSError("no run of free SIP ports on 127.0.0.1")


def demo_settings_from(settings: Settings, environ: Any = None) -> Settings:
    """Free loopback ports for the API and SIP unless the environment names them.

    A demo must start beside a running ``dialer up`` on the default ports.
    """
    environ = os.environ if environ is None else environ
    changes: dict[str, Any] = {}
    if "DIALER_API_LISTEN" not in environ:
        changes["api_listen"] = HostPort("127.0.0.1", _free_port(socket.SOCK_STREAM))
    if "DIALER_SIP_LISTEN" not in environ:
        from dialer.worker_processes import worker_count

        first = _free_sip_ports(max(1, worker_count(settings)))
        changes["sip_listen"] = HostPort("127.0.0.1", first)
    return dataclasses.replace(settings, **changes)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from dialer.demo.run import DemoOptions, run_demo

    if args.records < 1:
        print("dialer demo: --records must be at least 1")
        return 2
    options = DemoOptions(
        records=args.records,
        seed=args.seed,
        seats=args.seats,
        pacing=args.pacing,
        timeout_s=args.timeout,
        live=args.live,
    )
    return await run_demo(demo_settings_from(settings), options, Console())

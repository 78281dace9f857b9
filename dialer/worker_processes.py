"""``dialer up``'s extra worker processes: one per core beside the one in its own process.

Each child is a plain ``dialer worker`` with its own SIP port and its own
slice of the RTP port range, reaching the queues through RabbitMQ when
``DIALER_AMQP_URL`` is set, else through the parent's in-process broker on a
Unix socket (``dialer.local_broker``). A child that dies is started again
after a pause (its unsettled jobs are back in the queue; its calls are closed
as ``worker_lost`` by the scheduler's heartbeat check). ``close()`` sends
SIGTERM, which drains: calls in progress finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from dialer.settings import Settings

__all__ = ["WorkerProcesses", "child_environments", "worker_count"]

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 2.0


def worker_count(settings: Settings) -> int:
    return settings.workers or os.cpu_count() or 1


def _even(port: int) -> int:
    return port - port % 2


def child_environments(
    settings: Settings,
    children: int,
    *,
    database_url: str,
    trunk_uri: str,
    broker_socket: str | None,
) -> list[dict[str, str]]:
    """The ``DIALER_*`` variables of each child (pure: tested without processes).

    The RTP range is cut in ``children + 1`` even-aligned slices; the parent
    keeps the first. SIP ports follow the parent's.
    """
    low, high = settings.rtp_port_min, settings.rtp_port_max
    size = _even((high - low + 1) // (children + 1))
    if size < 2:
        raise ValueError("the RTP port range is too small to share between the workers")
    envs = []
    for i in range(1, children + 1):
        env = {
            "DIALER_DATABASE_URL": database_url,
            "DIALER_TRUNK_URI": trunk_uri,
            "DIALER_SIP_LISTEN": f"{settings.sip_listen.host}:{settings.sip_listen.port + i}",
            "DIALER_RTP_PORT_MIN": str(_even(low) + i * size),
            "DIALER_RTP_PORT_MAX": str(_even(low) + (i + 1) * size - 1),
        }
        if settings.amqp_url:
            env["DIALER_AMQP_URL"] = settings.amqp_url
        elif broker_socket:
            env["DIALER_BROKER_SOCKET"] = broker_socket
        envs.append(env)
    return envs


def parent_rtp_range(settings: Settings, children: int) -> tuple[int, int]:
    size = _even((settings.rtp_port_max - settings.rtp_port_min + 1) // (children + 1))
    low = _even(settings.rtp_port_min)
    return low, low + size - 1


@dataclass
class _Child:
    index: int
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None


class WorkerProcesses:
    """Owns the child workers: starts them, restarts one that dies, stops them all."""

    def __init__(self, environments: list[dict[str, str]], base_env: Mapping[str, str]) -> None:
        self._children = [_Child(i + 1, env) for i, env in enumerate(environments)]
        self._base = {k: v for k, v in base_env.items() if not k.startswith("DIALER_")}
        # Settings the children share with the parent (data dir, log format, credentials).
        self._base |= {
            k: v
            for k, v in base_env.items()
            if k.startswith("DIALER_")
            and k not in ("DIALER_API_LISTEN", "DIALER_PUBLIC_URL", "DIALER_WORKERS")
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for child in self._children:
            await self._spawn(child)
            self._tasks.append(loop.create_task(self._watch(child)))

    async def _spawn(self, child: _Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dialer.cli",
            "worker",
            env={**self._base, **child.env},
            stdin=asyncio.subprocess.DEVNULL,
        )
        log.info("worker process %d started (pid %d)", child.index, child.process.pid)

    async def _watch(self, child: _Child) -> None:
        while True:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping:
                return
            log.warning("worker process %d exited with %s; starting it again", child.index, code)
            await asyncio.sleep(RESTART_PAUSE_S)
            if self._stopping:
                return
            await self._spawn(child)

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children if c.process is not None]

    async def close(self, drain_s: float = 30.0) -> None:
        self._stopping = True
        for child in self._children:
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        for child in self._children:
            if child.process is None:
                continue
            try:
                await asyncio.wait_for(child.process.wait(), drain_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

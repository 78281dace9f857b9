"""Building and running the parts of the stack: the one place that wires them.

``dialer up`` runs them all in one process (one event loop) over the
in-process broker unless ``DIALER_AMQP_URL`` is set; ``dialer worker`` and
``dialer scheduler`` run one part each over RabbitMQ. This module imports
upward (``api``, ``scheduler``) inside its functions, like the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from dialer.bus import Broker
from dialer.settings import Settings
from dialer.trunk import TrunkConfig, parse_trunk_uri
from dialer.trunk_limits import SharedTrunkLimits
from dialer.user_agent import UserAgent, UserAgentOptions
from dialer.worker import Worker

__all__ = [
    "Stack",
    "action_runner_for",
    "mount_call_control",
    "start_worker",
    "user_agent_for",
]

log = logging.getLogger(__name__)


def user_agent_for(
    settings: Settings, trunk: TrunkConfig, limits: SharedTrunkLimits | None = None
) -> UserAgent:
    """The worker's user agent; with ``limits``, trunk limits hold across every worker."""
    from dialer.transport import TransportConfig
    from dialer.user_agent import LOOPBACK, RequestPolicy

    options = UserAgentOptions(
        transport=TransportConfig(settings.sip_listen.host, settings.sip_listen.port),
        # The trunk is trusted by the agent itself; loopback too, for local peers.
        policy=RequestPolicy(trusted=LOOPBACK),
    )
    return UserAgent(options, [trunk], limits=limits)


def default_key(uri: str) -> str:
    """The shared-limits key of a process's default trunk: ``default:host:port``,
    the same in every worker given the same URI, whatever the trunk's name."""
    parsed = parse_trunk_uri(uri)
    return f"default:{parsed.host}:{parsed.port or ''}"


def default_trunk(settings: Settings) -> TrunkConfig | None:
    if not settings.trunk_uri:
        return None
    return TrunkConfig.from_uri(
        settings.trunk_uri,
        username=settings.trunk_username,
        password=settings.trunk_password.value or None,
        limit_key=default_key(settings.trunk_uri),
    )


def action_runner_for(settings: Settings, pool: asyncpg.Pool) -> Any:
    """The runner of sms, email and webhook nodes, under the webhooks' URL rules."""
    from api.notifier import AddressGuard
    from api.urlsafety import AllowList
    from scheduler.action_runner import ActionRunner
    from scheduler.actions import Gateways

    guard = AddressGuard(AllowList.parse(settings.webhook_allow_hosts))
    return ActionRunner(pool, Gateways.from_settings(settings), guard)


async def start_worker(
    settings: Settings,
    pool: asyncpg.Pool,
    broker: Broker,
    trunk: TrunkConfig,
    *,
    capacity: int = 100,
    control: Any = None,
) -> tuple[Worker, UserAgent]:
    from dialer.runner import SipCallRunner, TrunkDirectory
    from dialer.seats import SeatBook
    from media.playback import SpeechRenderer
    from media.ports import PortAllocator

    # Trunk channels and calls per second count across every worker (the agent
    # closes it); a trunk with neither limit costs no database work.
    limits = SharedTrunkLimits(pool)
    agent = user_agent_for(settings, trunk, limits)
    await agent.start()
    rtp_host = agent.trunks[trunk.name].ua_config.via_host  # type: ignore[union-attr]
    runner = SipCallRunner(
        agent,
        rtp_host=rtp_host,
        ports=PortAllocator(settings.rtp_port_min, settings.rtp_port_max),
        speech=SpeechRenderer(settings.data_dir / "tts"),
        recording_dir=settings.recording_dir,
        control=control,
        default_trunk=trunk.name,
        trunks=TrunkDirectory(pool),
        seats=SeatBook(pool),
    )
    # Progress held 250 ms: calls shorter than that cost one event instead of four.
    worker = Worker(pool, broker, runner, capacity=capacity, progress_delay_s=0.25)
    # Leases with no call row (bridged transfer legs) stop counting when it stops beating.
    limits.worker_id = worker.worker_id
    await worker.start()
    return worker, agent


def mount_call_control(app: Any, pool: asyncpg.Pool, control: Any) -> None:
    """Twilio's hang-up call for bots that end calls through the REST API.

    HTTP Basic: the account SID (``AC`` + the tenant id in hex, as the
    stream's ``start`` gives it) and the tenant's API key as password.
    ``control`` knows this process's calls and, when it is a
    ``RelayedCallControl``, those of every worker process.
    """
    from dialer.tenants import resolve_api_key
    from media.voicebot import CALLS_ROUTE, calls_handler

    async def check_auth(account_sid: str, login: str, password: str) -> bool:
        tenant = await resolve_api_key(pool, password)
        return tenant is not None and login == account_sid == f"AC{tenant.hex}"

    app.router.add_post(CALLS_ROUTE, calls_handler(control, check_auth=check_auth))


@dataclass
class Stack:
    """Everything ``dialer up`` runs, with one owner that stops it all."""

    settings: Settings
    pool: asyncpg.Pool
    broker: Broker
    trunk: TrunkConfig | None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closers: list[Any] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    sandbox: Any = None
    control: Any = None
    worker_processes: Any = None

    async def start(
        self,
        *,
        api: bool = True,
        scheduler: bool = True,
        sandbox: bool = True,
        notifier: bool = True,
        worker_processes: bool = False,
    ) -> None:
        """Start the parts asked for; ``worker_processes``: one worker per core (``up``)."""
        from scheduler.consumer import EventConsumer
        from scheduler.engine import Scheduler

        await self.broker.start()
        if self.trunk is None and sandbox:
            # No carrier configured: dial the built-in sandbox, which answers
            # like people, voicemail, busy lines and no-answers (see the README).
            from dialer.sandbox import SandboxCarrier, SandboxConfig

            self.sandbox = SandboxCarrier(
                SandboxConfig(port=0, speech_cache_dir=self.settings.data_dir / "tts")
            )
            await self.sandbox.start()
            self.closers.append(self.sandbox.close)
            self.trunk = TrunkConfig.from_uri(
                self.sandbox.uri, name="sandbox", limit_key=default_key(self.sandbox.uri)
            )
        if scheduler:
            consumer = EventConsumer(self.pool, self.broker)
            await consumer.start()
            self.closers.append(consumer.close)
            engine = Scheduler(self.pool, self.broker)
            self.tasks.append(asyncio.get_running_loop().create_task(engine.run(self.stop)))
            actions = action_runner_for(self.settings, self.pool)
            self.tasks.append(asyncio.get_running_loop().create_task(actions.run(self.stop)))
        if self.trunk is not None:
            from dialer.call_relay import RelayedCallControl

            own_settings = self.settings
            if worker_processes:
                own_settings = await self._start_worker_processes()
            # This process's calls, and those the worker processes announce.
            self.control = RelayedCallControl(self.pool)
            await self.control.start()
            self.closers.append(self.control.close)
            worker, agent = await start_worker(
                own_settings, self.pool, self.broker, self.trunk, control=self.control
            )
            self.closers.append(lambda: worker.drain(timeout_s=30))
            self.closers.append(agent.close)
        if notifier:
            from api.notifier import Notifier

            deliver = Notifier(self.pool, self.settings)
            self.tasks.append(asyncio.get_running_loop().create_task(deliver.run(self.stop)))
        if api:
            await self._start_api()

    async def _start_worker_processes(self) -> Settings:
        """Start the child workers; the settings left for the worker in this process."""
        import dataclasses
        import os
        import tempfile

        from dialer.worker_processes import (
            WorkerProcesses,
            child_environments,
            parent_rtp_range,
            worker_count,
        )

        children = worker_count(self.settings) - 1
        if children < 1 or self.trunk is None:
            return self.settings
        if not self.settings.database_url:
            raise RuntimeError("worker processes need the database URL in the settings")
        socket_path = None
        if not self.settings.amqp_url:
            from dialer.local_broker import BrokerServer

            # A short path: Unix socket paths are limited to about 100 bytes.
            socket_path = os.path.join(tempfile.mkdtemp(prefix="dialer-"), "broker.sock")
            server = BrokerServer(self.broker, socket_path)
            await server.start()
            self.closers.append(server.close)
        trunk_uri = self.sandbox.uri if self.sandbox is not None else self.settings.trunk_uri
        assert trunk_uri is not None
        envs = child_environments(
            self.settings,
            children,
            database_url=self.settings.database_url,
            trunk_uri=trunk_uri,
            broker_socket=socket_path,
        )
        processes = WorkerProcesses(envs, os.environ)
        await processes.start()
        # Closers run in order: the children drain before the broker server goes.
        self.closers.insert(0, processes.close)
        self.worker_processes = processes
        low, high = parent_rtp_range(self.settings, children)
        return dataclasses.replace(self.settings, rtp_port_min=low, rtp_port_max=high)

    async def _start_api(self) -> None:
        from aiohttp import web

        from api.app import create_app

        app = create_app(self.settings, self.pool)
        if self.control is not None:
            self._mount_call_control(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        listen = self.settings.api_listen
        await web.TCPSite(runner, listen.host, listen.port).start()
        self.closers.insert(0, runner.cleanup)

    def _mount_call_control(self, app: Any) -> None:
        mount_call_control(app, self.pool, self.control)

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for close in self.closers:
            try:
                await close()
            except Exception:
                log.exception("error while stopping")
        await self.broker.close()


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings, pool: asyncpg.Pool, broker: Broker, **parts: bool
) -> AsyncIterator[Stack]:
    stack = Stack(settings, pool, broker, default_trunk(settings))
    try:
        await stack.start(**parts)
        yield stack
    finally:
        await stack.close()

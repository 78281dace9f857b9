"""The ``dialer`` command.

Subcommands import what they need inside their functions: this is the one
module allowed to reach from ``dialer`` up into ``api`` and ``scheduler``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import AsyncIterator, Sequence

from dialer.settings import Settings, SettingsError

__all__ = ["main"]


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[str]:
    """The database URL: the configured one, or an embedded PostgreSQL we start."""
    if settings.database_url:
        yield settings.database_url
        return
    from dialer.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(settings.data_dir / "pgdata")
    url = await asyncio.to_thread(embedded.start)
    print(f"embedded PostgreSQL: data in {embedded.data_dir}", file=sys.stderr)
    try:
        yield url
    finally:
        await asyncio.to_thread(embedded.stop)


async def _migrate(settings: Settings) -> int:
    import asyncpg

    from dialer.db import apply_migrations

    async with database(settings) as url:
        conn = await asyncpg.connect(url)
        try:
            applied = await apply_migrations(conn)
        finally:
            await conn.close()
    print(f"applied migrations: {applied}" if applied else "database is up to date")
    return 0


async def _apikey_create(settings: Settings, tenant_name: str, label: str) -> int:
    from dialer.db import apply_migrations, connect_pool
    from dialer.tenants import create_api_key, create_tenant

    async with database(settings) as url:
        pool = await connect_pool(url, max_size=2)
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
                async with conn.transaction():
                    tenant_id = await create_tenant(conn, tenant_name)
                    key = await create_api_key(conn, tenant_id, label)
        finally:
            await pool.close()
    print(f"tenant {tenant_name} ({tenant_id})", file=sys.stderr)
    print("API key (shown once; store it now):", file=sys.stderr)
    print(key.key)
    return 0


async def _wait_for_stop(lost: asyncio.Event | None = None) -> None:
    """Until SIGINT or SIGTERM, or until ``lost`` is set (the broker's owner has gone)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.ensure_future(stop.wait())]
    if lost is not None:
        waits.append(asyncio.ensure_future(lost.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


async def _serve_api(settings: Settings) -> int:
    from aiohttp import web

    from api.app import create_app
    from dialer.call_relay import RelayedCallControl
    from dialer.db import apply_migrations, connect_pool
    from dialer.stack import mount_call_control

    async with database(settings) as url:
        pool = await connect_pool(url, max_size=20)
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
            app = create_app(settings, pool)
            # Bots' Twilio-style hang-ups, relayed to whichever worker holds the call.
            control = RelayedCallControl(pool)
            await control.start()
            mount_call_control(app, pool, control)
            app.on_cleanup.append(lambda _app: control.close())
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, settings.api_listen.host, settings.api_listen.port)
            await site.start()
            print(f"API listening on http://{settings.api_listen}", file=sys.stderr, flush=True)
            try:
                await _wait_for_stop()
            finally:
                await runner.cleanup()
        finally:
            await pool.close()
    return 0


async def _up(settings: Settings) -> int:
    from dialer.bus import make_broker
    from dialer.db import apply_migrations, connect_pool
    from dialer.stack import running_stack

    async with database(settings) as url:
        settings = dataclasses.replace(settings, database_url=url)  # for worker processes
        pool = await connect_pool(url, max_size=20)
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
            broker = make_broker(settings.amqp_url)
            async with running_stack(settings, pool, broker, worker_processes=True) as stack:
                print(f"API listening on http://{settings.api_listen}", file=sys.stderr, flush=True)
                where = "RabbitMQ" if settings.amqp_url else "the in-process broker"
                print(f"scheduler running over {where}", file=sys.stderr, flush=True)
                print("notifier delivering webhooks", file=sys.stderr, flush=True)
                if stack.worker_processes is not None:
                    print(
                        f"worker processes: this one and {len(stack.worker_processes.pids)} more",
                        file=sys.stderr,
                        flush=True,
                    )
                if stack.sandbox is not None:
                    print(
                        f"no DIALER_TRUNK_URI: dialling the sandbox carrier at {stack.sandbox.uri}",
                        file=sys.stderr,
                        flush=True,
                    )
                elif stack.trunk is not None:
                    print(
                        f"worker dialling through {settings.trunk_uri} "
                        f"(SIP on {settings.sip_listen})",
                        file=sys.stderr,
                        flush=True,
                    )
                else:
                    print(
                        "no trunk configured (DIALER_TRUNK_URI): records are scheduled "
                        "but no worker dials them",
                        file=sys.stderr,
                        flush=True,
                    )
                await _wait_for_stop()
        finally:
            await pool.close()
    return 0


async def _run_worker(settings: Settings, capacity: int) -> int:
    from dialer.bus import Broker, make_broker
    from dialer.call_relay import AnnouncingCallControl
    from dialer.db import apply_migrations, connect_pool
    from dialer.gc_policy import tune_collector
    from dialer.priority import apply_realtime_priority
    from dialer.stack import default_trunk, start_worker

    refused = apply_realtime_priority(settings.realtime_priority)
    if refused is not None:
        print(f"dialer worker: DIALER_REALTIME_PRIORITY: {refused}", file=sys.stderr)
    trunk = default_trunk(settings)
    if not (settings.amqp_url or settings.broker_socket) or trunk is None:
        print(
            "dialer worker: set DIALER_AMQP_URL (the queue it takes jobs from) and "
            "DIALER_TRUNK_URI (where it dials)",
            file=sys.stderr,
        )
        return 2
    async with database(settings) as url:
        pool = await connect_pool(url, max_size=10)
        lost: asyncio.Event | None = None
        if settings.broker_socket:
            from dialer.local_broker import SocketBroker

            # A worker process of `dialer up`: its queues are in the parent.
            socket_broker = SocketBroker(settings.broker_socket)
            lost = socket_broker.lost
            broker: Broker = socket_broker
        else:
            broker = make_broker(settings.amqp_url)
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
            await broker.start()
            # Bots may hang up through the API's Twilio-style route: announce our calls.
            control = AnnouncingCallControl(pool)
            await control.start()
            worker, agent = await start_worker(
                settings, pool, broker, trunk, capacity=capacity, control=control
            )
            # Everything loaded so far lives as long as the process: out of the
            # collector's sight, so full collections do not stall the RTP clock;
            # and young collections rarer (dialer.gc_policy says why).
            tune_collector()
            print(f"worker {worker.worker_id} running", file=sys.stderr, flush=True)
            try:
                await _wait_for_stop(lost)
                print("draining: no new calls; calls in progress finish", file=sys.stderr)
                await worker.drain(timeout_s=None)
            finally:
                await worker.close()
                await agent.close(grace_s=2.0)
                await control.close()
        finally:
            await broker.close()
            await pool.close()
    return 0


async def _run_scheduler(settings: Settings) -> int:
    from dialer.bus import make_broker
    from dialer.db import apply_migrations, connect_pool
    from dialer.stack import action_runner_for
    from scheduler.consumer import EventConsumer
    from scheduler.engine import Scheduler

    if not settings.amqp_url:
        print(
            "dialer scheduler: set DIALER_AMQP_URL; alone, the scheduler needs RabbitMQ to "
            "reach the workers (dialer up runs everything in one process instead)",
            file=sys.stderr,
        )
        return 2
    async with database(settings) as url:
        pool = await connect_pool(url, max_size=10)
        broker = make_broker(settings.amqp_url)
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
            await broker.start()
            consumer = EventConsumer(pool, broker)
            await consumer.start()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            actions = asyncio.create_task(action_runner_for(settings, pool).run(stop))
            print("scheduler running", file=sys.stderr, flush=True)
            try:
                await Scheduler(pool, broker).run(stop)
            finally:
                stop.set()
                await actions
                await consumer.close()
        finally:
            await broker.close()
            await pool.close()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dialer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations")
    sub.add_parser("api", help="serve the HTTP API")
    sub.add_parser(
        "up",
        help="run the whole stack: API, scheduler, notifier, workers"
        " (dialling DIALER_TRUNK_URI, else the built-in sandbox carrier)",
    )
    sub.add_parser("scheduler", help="run the scheduler and call-event consumer (needs RabbitMQ)")
    sub.add_parser("notifier", help="deliver the outbox as signed webhooks")
    worker = sub.add_parser("worker", help="take dial jobs from RabbitMQ and place the calls")
    worker.add_argument("--capacity", type=int, default=100, help="calls at once (default 100)")
    from dialer import call_cli, sandbox_cli
    from dialer.demo import cli as demo_cli

    call_cli.add_parser(sub)
    sandbox_cli.add_parser(sub)
    demo_cli.add_parser(sub)
    apikey = sub.add_parser("apikey", help="manage API keys")
    apikey_sub = apikey.add_subparsers(dest="apikey_command", required=True)
    create = apikey_sub.add_parser("create", help="create a tenant's API key and print it once")
    create.add_argument("--tenant", required=True, help="tenant name (created if new)")
    create.add_argument("--label", default="", help="a note to tell keys apart")
    return parser


def _run(coro: object) -> int:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"dialer: configuration error: {exc}", file=sys.stderr)
        return 2
    from dialer.logs import configure_logging

    configure_logging(settings.log_level, json_lines=settings.log_json)
    if args.command == "migrate":
        return _run(_migrate(settings))
    if args.command == "api":
        return _run(_serve_api(settings))
    if args.command == "up":
        return _run(_up(settings))
    if args.command == "worker":
        return _run(_run_worker(settings, args.capacity))
    if args.command == "notifier":
        from dialer.notifier_cli import run_notifier

        return _run(run_notifier(settings))
    if args.command == "sandbox":
        from dialer import sandbox_cli

        return _run(sandbox_cli.run(args, settings))
    if args.command == "call":
        from dialer import call_cli

        return _run(call_cli.run(args, settings))
    if args.command == "scheduler":
        return _run(_run_scheduler(settings))
    if args.command == "demo":
        from dialer.demo import cli as demo_cli

        return _run(demo_cli.run(args, settings))
    if args.command == "apikey":
        return _run(_apikey_create(settings, args.tenant, args.label))
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())

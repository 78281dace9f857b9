"""``dialer notifier``: deliver the outbox as signed webhooks until SIGINT or SIGTERM.

Like the other subcommands, this reaches up into ``api`` only inside its
function. Any number of notifiers may run against one database: they share
the work through leases (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from dialer.settings import Settings

__all__ = ["run_notifier"]


async def run_notifier(settings: Settings) -> int:
    """Run one notifier over the configured (or embedded) database; 0 on a clean stop."""
    from api.notifier import Notifier
    from dialer.cli import database
    from dialer.db import apply_migrations, connect_pool

    async with database(settings) as url:
        # One connection listens for new outbox rows; the others lease and record.
        pool = await connect_pool(url, min_size=2, max_size=6)
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            if not settings.webhook_secret:
                print(
                    "notifier: DIALER_WEBHOOK_SECRET is not set, so webhooks carry no "
                    "recording links (recording_url: null)",
                    file=sys.stderr,
                )
            print("notifier running", file=sys.stderr, flush=True)
            await Notifier(pool, settings).run(stop)
        finally:
            await pool.close()
    return 0

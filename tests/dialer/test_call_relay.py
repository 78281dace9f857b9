"""Twilio-style hang-ups reach the worker process that holds the call, through PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg

from dialer.call_relay import AnnouncingCallControl, RelayedCallControl


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_hang_up_at_the_api_reaches_the_worker_holding_the_call(
    pool: asyncpg.Pool,
) -> None:
    api_side = RelayedCallControl(pool)
    worker_a = AnnouncingCallControl(pool)
    worker_b = AnnouncingCallControl(pool)
    for control in (api_side, worker_a, worker_b):
        await control.start()
    hung_up: list[str] = []
    try:
        worker_a.register("CA1", "ACx", lambda: hung_up.append("a"))
        worker_b.register("CA2", "ACx", lambda: hung_up.append("b"))
        api_side.register("CA3", "ACx", lambda: hung_up.append("local"))  # its own worker's
        await _until(lambda: len(api_side) == 3)
        # Another account may not touch the call.
        assert api_side.update("ACother", "CA1", {"Status": "completed"}).status == 404
        answer = api_side.update("ACx", "CA1", {"Status": "completed"})
        assert answer.status == 200 and answer.body["status"] == "completed"
        await _until(lambda: hung_up == ["a"])
        assert len(worker_a) == 0 and len(worker_b) == 1  # only the owner hung up
        assert api_side.update("ACx", "CA3", {"Status": "completed"}).status == 200
        assert hung_up == ["a", "local"]
        # A call that ended is forgotten by the API too.
        worker_b.unregister("CA2")
        await _until(lambda: len(api_side) == 0)
        assert api_side.update("ACx", "CA2", {"Status": "completed"}).status == 404
        await asyncio.sleep(0.1)
        assert hung_up == ["a", "local"]
    finally:
        for control in (api_side, worker_a, worker_b):
            await control.close()

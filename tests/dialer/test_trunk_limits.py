"""Trunk limits shared by every worker: channel leases and send slots in PostgreSQL.

Two user agents stand for two workers (each with its own socket, its own
pool and its own ``SharedTrunkLimits``) against one UAS on a UDP socket that
notes when each INVITE arrives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dialer.db import connect_pool
from dialer.messages import DialJob
from dialer.runner import TrunkDirectory
from dialer.settings import Settings
from dialer.stack import default_trunk
from dialer.trunk import TrunkConfig
from dialer.trunk_limits import PACE_MARGIN_S, SharedTrunkLimits
from dialer.user_agent import CallHandle, TrunkBusy, UserAgent
from tests.conftest import Tenant
from tests.dialer.test_seats import _calls
from tests.dialer.test_user_agent import MEDIA, _wait, options
from tests.dialer.test_user_agent import Callee as Carrier
from tests.scheduler.test_engine import _workflow


def _trunk(carrier: Carrier, **limits: Any) -> TrunkConfig:
    # A key of the test's own: the tables outlive tests within the session.
    return TrunkConfig.from_uri(carrier.uri, limit_key=f"test:{secrets.token_hex(6)}", **limits)


@pytest.fixture
async def workers(database_url: str) -> AsyncIterator[list[asyncpg.Pool]]:
    """Two pools: two workers' connections to the database."""
    pools = [await connect_pool(database_url, min_size=1, max_size=3) for _ in range(2)]
    try:
        yield pools
    finally:
        for pool in pools:
            await pool.close()


async def _leases(pool: asyncpg.Pool, key: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM trunk_channels WHERE trunk_key = $1", key)


# -- two workers, one trunk --------------------------------------------------------------


async def test_two_agents_share_one_channel(workers: list[asyncpg.Pool]) -> None:
    """max_channels=1: the second worker's INVITE waits until the first call has ended."""
    async with Carrier(180) as carrier:
        config = _trunk(carrier, max_channels=1)
        key = config.shared_key
        first_ua = UserAgent(options(), [config], limits=SharedTrunkLimits(workers[0]))
        second_ua = UserAgent(options(), [config], limits=SharedTrunkLimits(workers[1]))
        async with first_ua, second_ua:
            first = await first_ua.place_call("1", media=MEDIA, lease=uuid.uuid4())
            await _wait(lambda: len(carrier.arrivals) == 1)
            second: asyncio.Task[CallHandle] = asyncio.create_task(
                second_ua.place_call("2", media=MEDIA, lease=uuid.uuid4())
            )
            await asyncio.sleep(0.6)
            assert len(carrier.arrivals) == 1 and not second.done()
            assert await _leases(workers[0], key) == 1
            first.hangup()
            ended = await asyncio.wait_for(first.ended(), 5)
            handle = await asyncio.wait_for(second, 5)
            await _wait(lambda: len(carrier.arrivals) == 2)
            assert carrier.arrivals[1] >= ended.ended_at  # type: ignore[operator]
            handle.hangup()
            await asyncio.wait_for(handle.ended(), 5)
            assert second_ua.trunks["default"].channels.in_use == 0
        # Both leases were released at their calls' ends (the agents' close flushed).
        assert await _leases(workers[0], key) == 0


async def test_two_agents_share_the_calls_per_second(workers: list[asyncpg.Pool]) -> None:
    """cps=2 on each agent's own bucket, yet no second holds more than 2 INVITEs overall."""
    async with Carrier(486) as carrier:
        config = _trunk(carrier, cps=2.0)
        agents = [
            UserAgent(options(), [config], limits=SharedTrunkLimits(pool)) for pool in workers
        ]
        async with agents[0], agents[1]:
            places = [
                agent.place_call(str(n), media=MEDIA, lease=uuid.uuid4())
                for n in range(3)
                for agent in agents
            ]
            handles = await asyncio.wait_for(asyncio.gather(*places), 10)
            for handle in handles:
                await asyncio.wait_for(handle.ended(), 5)
        arrivals = sorted(carrier.arrivals)
        assert len(arrivals) == 6
        for i in range(len(arrivals) - 2):
            # A third INVITE within a second of the first: 3 in one window.
            assert arrivals[i + 2] - arrivals[i] > 1.0, arrivals
        assert arrivals[-1] - arrivals[0] < 5 * (1 + PACE_MARGIN_S) / 2 + 0.3  # not slower


# A worker of its own: a user agent in another process, placing ``count`` calls once
# its parent says go (a line on stdin).
_OTHER_WORKER = """
import asyncio, sys, uuid
from dialer.db import connect_pool
from dialer.trunk import TrunkConfig
from dialer.trunk_limits import SharedTrunkLimits
from dialer.user_agent import UserAgent
from tests.dialer.test_user_agent import MEDIA, options

async def main(url, uri, key, count):
    pool = await connect_pool(url, min_size=1, max_size=2)
    config = TrunkConfig.from_uri(uri, limit_key=key, cps=2.0)
    async with UserAgent(options(), [config], limits=SharedTrunkLimits(pool)) as ua:
        await pool.fetchval("SELECT 1")
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        places = [ua.place_call(str(n), media=MEDIA, lease=uuid.uuid4()) for n in range(count)]
        for handle in await asyncio.gather(*places):
            await handle.ended()
    await pool.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


async def test_a_worker_process_and_this_one_share_the_calls_per_second(
    database_url: str, pool: asyncpg.Pool
) -> None:
    """The same, with the other worker a process of its own."""
    root = Path(__file__).resolve().parents[2]
    async with Carrier(486) as carrier:
        config = _trunk(carrier, cps=2.0)
        other = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _OTHER_WORKER,
            database_url,
            carrier.uri,
            config.shared_key,
            "3",
            cwd=root,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert other.stdin is not None and other.stdout is not None
            async with UserAgent(options(), [config], limits=SharedTrunkLimits(pool)) as ua:
                assert await asyncio.wait_for(other.stdout.readline(), 20) == b"ready\n"
                other.stdin.write(b"go\n")
                await other.stdin.drain()
                places = [ua.place_call(str(n), media=MEDIA, lease=uuid.uuid4()) for n in range(3)]
                handles = await asyncio.wait_for(asyncio.gather(*places), 10)
                for handle in handles:
                    await asyncio.wait_for(handle.ended(), 5)
            assert await asyncio.wait_for(other.wait(), 10) == 0
        finally:
            if other.returncode is None:
                other.kill()
                await other.wait()
        arrivals = sorted(carrier.arrivals)
        assert len(arrivals) == 6
        for i in range(len(arrivals) - 2):
            assert arrivals[i + 2] - arrivals[i] > 1.0, arrivals


async def test_send_slots_of_one_batch_and_the_next_are_spaced(pool: asyncpg.Pool) -> None:
    limits = SharedTrunkLimits(pool)
    try:
        key = f"test:{secrets.token_hex(6)}"
        interval = (1 + PACE_MARGIN_S) / 10

        def take(key: str, interval: float) -> tuple[str, None, float, uuid.UUID]:
            return (key, None, interval, uuid.uuid4())

        delays = await limits._take_many(
            [take(key, interval) for _ in range(3)] + [take(key + "b", 0.2)]
        )
        assert delays[0] == pytest.approx(0.0, abs=0.01)
        assert delays[1] - delays[0] == pytest.approx(interval)  # type: ignore[operator]
        assert delays[2] - delays[1] == pytest.approx(interval)  # type: ignore[operator]
        assert delays[3] == pytest.approx(0.0, abs=0.01)  # another trunk: its own pace
        started = time.monotonic()
        (later,) = await limits._take_many([take(key, interval)])
        # The next request gets the slot after the batch's last, whoever asks.
        assert later + (time.monotonic() - started) == pytest.approx(3 * interval, abs=0.02)  # type: ignore[operator]
    finally:
        await limits.close()


async def test_one_round_trip_takes_a_lease_and_a_slot(pool: asyncpg.Pool) -> None:
    """Channels and pace together: only granted calls get a slot, in the order asked."""
    limits = SharedTrunkLimits(pool)
    try:
        key = f"test:{secrets.token_hex(6)}"
        takes = [(key, 2, 0.5, uuid.uuid4()) for _ in range(3)]
        delays = await limits._take_many(takes)
        assert delays[0] == pytest.approx(0.0, abs=0.01)
        assert delays[1] == pytest.approx(0.5, abs=0.01)
        assert delays[2] is None
        assert await _leases(pool, key) == 2
        assert await pool.fetchval(
            "SELECT next_at - now() > interval '0.9 seconds' FROM trunk_pace WHERE trunk_key = $1",
            key,
        )
    finally:
        await limits.close()


# -- leases that no longer count ------------------------------------------------------------


async def test_lease_of_an_ended_call_counts_for_nothing(
    pool: asyncpg.Pool, tenant: Tenant
) -> None:
    """A dead worker's lease stays behind; once its call is closed it frees the channel."""
    workflow = await _workflow(pool, tenant)
    (dead_call,) = await _calls(pool, tenant, workflow, 1, "answered")
    key = f"test:{secrets.token_hex(6)}"
    await pool.execute(
        "INSERT INTO trunk_channels (call_id, trunk_key, worker_id) VALUES ($1, $2, 'dead')",
        uuid.UUID(dead_call),
        key,
    )
    limits = SharedTrunkLimits(pool)
    try:
        assert not await limits.try_claim(key, 1, uuid.uuid4())
        # The scheduler closes the lost worker's call (worker_lost).
        await pool.execute("UPDATE calls SET state = 'ended' WHERE id = $1", uuid.UUID(dead_call))
        mine = uuid.uuid4()
        assert await limits.try_claim(key, 1, mine)
        rows = await pool.fetch("SELECT call_id FROM trunk_channels WHERE trunk_key = $1", key)
        assert [r["call_id"] for r in rows] == [mine]  # the dead lease is gone too
        assert await limits.try_claim(key, 1, mine)  # held already: kept
        assert not await limits.try_claim(key, 1, uuid.uuid4())
    finally:
        await limits.close()


async def test_lease_without_a_call_counts_while_its_worker_beats(pool: asyncpg.Pool) -> None:
    """A bridged transfer leg has no call row: its lease counts until its worker goes."""
    key = f"test:{secrets.token_hex(6)}"
    worker = f"w-{secrets.token_hex(4)}"
    await pool.execute("INSERT INTO workers (id) VALUES ($1)", worker)
    limits = SharedTrunkLimits(pool, worker_id=worker)
    try:
        assert await limits.try_claim(key, 1, uuid.uuid4())
        assert not await limits.try_claim(key, 1, uuid.uuid4())
        await pool.execute(
            "UPDATE workers SET last_seen_at = now() - interval '5 minutes' WHERE id = $1", worker
        )
        now_mine = uuid.uuid4()
        assert await limits.try_claim(key, 1, now_mine)
        # The gone worker's lease was deleted on the way, not left behind.
        rows = await pool.fetch("SELECT call_id FROM trunk_channels WHERE trunk_key = $1", key)
        assert [r["call_id"] for r in rows] == [now_mine]
    finally:
        await limits.close()


async def test_claims_of_calls_that_ask_together_share_a_round_trip(pool: asyncpg.Pool) -> None:
    limits = SharedTrunkLimits(pool)
    try:
        key = f"test:{secrets.token_hex(6)}"
        leases = [uuid.uuid4() for _ in range(5)]
        granted = await asyncio.gather(*(limits.try_claim(key, 3, lease) for lease in leases))
        assert granted == [True, True, True, False, False]  # in the order asked
        assert (limits._takes.batches, limits._takes.items) == (1, 5)
        for lease in leases:
            limits.release(lease)
    finally:
        await limits.close()
    assert await _leases(pool, key) == 0


# -- the deadline ---------------------------------------------------------------------------


async def test_the_deadline_bounds_the_shared_wait(pool: asyncpg.Pool, tenant: Tenant) -> None:
    workflow = await _workflow(pool, tenant)
    (other_call,) = await _calls(pool, tenant, workflow, 1, "ringing")
    async with Carrier(180) as carrier:
        config = _trunk(carrier, max_channels=1)
        await pool.execute(
            "INSERT INTO trunk_channels (call_id, trunk_key) VALUES ($1, $2)",
            uuid.UUID(other_call),
            config.shared_key,
        )
        async with UserAgent(options(), [config], limits=SharedTrunkLimits(pool)) as ua:
            mine = uuid.uuid4()
            started = asyncio.get_running_loop().time()
            with pytest.raises(TrunkBusy) as caught:
                await ua.place_call("2", media=MEDIA, wait_s=0.3, lease=mine)
            waited = asyncio.get_running_loop().time() - started
            assert caught.value.waited and 0.29 <= waited < 1.0
            assert ua.trunks["default"].channels.in_use == 0  # the local channel went back
            with pytest.raises(TrunkBusy) as caught:
                await ua.place_call("3", media=MEDIA, wait=False)
            assert not caught.value.waited
            assert ua.trunks["default"].channels.in_use == 0
        assert carrier.arrivals == []
        assert await _leases(pool, config.shared_key) == 1  # only the other call's


async def test_runner_ends_a_call_that_waited_past_its_window_expired(
    pool: asyncpg.Pool, tenant: Tenant, tmp_path: Path
) -> None:
    from tests.integration.test_transfer import loopback_runner

    workflow = await _workflow(pool, tenant)
    (other_call,) = await _calls(pool, tenant, workflow, 1, "answered")
    async with Carrier(180) as carrier:
        config = _trunk(carrier, max_channels=1)
        await pool.execute(
            "INSERT INTO trunk_channels (call_id, trunk_key) VALUES ($1, $2)",
            uuid.UUID(other_call),
            config.shared_key,
        )
        async with UserAgent(options(), [config], limits=SharedTrunkLimits(pool)) as ua:
            runner = loopback_runner(ua, tmp_path, "default", 47000)
            job = DialJob(
                call_id=str(uuid.uuid4()),
                record_id=str(uuid.uuid4()),
                tenant_id=str(tenant.id),
                workflow_id=str(workflow["id"]),
                node_id="call",
                phone_e164="1000",
                not_after=time.time() + 0.3,
                record=True,
            )

            emitted: list[str] = []

            async def emit(kind: str, data: dict[str, Any]) -> None:
                emitted.append(kind)

            data = await asyncio.wait_for(runner.run(job, emit), 5)
            # Never dialled: no "dialing" (nor a dialled count, nor a ring time).
            assert emitted == []
            # With the channel free, "dialing" comes once the INVITE is out, and
            # before the callee's ringing.
            await pool.execute("DELETE FROM trunk_channels WHERE trunk_key = $1", config.shared_key)
            rung = dataclasses.replace(
                job, call_id=str(uuid.uuid4()), not_after=None, ring_timeout_s=0.5
            )
            rang = await asyncio.wait_for(runner.run(rung, emit), 5)
            assert rang["disposition"] == "no_answer"
            assert emitted[:2] == ["dialing", "ringing"]
            assert rang["times"]["dialing"] is not None
        assert (data["disposition"], data["end_reason"]) == ("expired", "trunk_wait")
        assert len(carrier.arrivals) == 1
        # Nothing recorded, no file left behind.
        assert "recording" not in data
        assert list((tmp_path / "recordings").rglob("*.wav")) == []


# -- no limits, no database -----------------------------------------------------------------


class NoDatabase:
    """A pool that must not be used."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"database used: pool.{name}")


async def test_a_trunk_without_limits_costs_no_database_work() -> None:
    async with Carrier(486) as carrier:
        config = TrunkConfig.from_uri(carrier.uri)
        limits = SharedTrunkLimits(NoDatabase())  # type: ignore[arg-type]
        async with UserAgent(options(), [config], limits=limits) as ua:
            handles = [await ua.place_call(str(n), media=MEDIA) for n in range(3)]
            for handle in handles:
                assert (await asyncio.wait_for(handle.ended(), 5)).sip_status == 486
        assert len(carrier.arrivals) == 3
        assert limits._takes.items == limits._releases.items == 0


# -- keys -----------------------------------------------------------------------------------


async def test_an_edited_tenant_trunk_keeps_its_key_and_its_calls(
    pool: asyncpg.Pool, tenant: Tenant
) -> None:
    """Keyed by tenant and name, not by version: calls placed before an edit still
    hold their channels against the edited trunk, here and in the database."""
    name = f"main-{secrets.token_hex(3)}"
    async with Carrier(180) as carrier:
        await pool.execute(
            """INSERT INTO trunks (id, tenant_id, name, uri, max_channels)
               VALUES ($1, $2, $3, $4, 1)""",
            uuid.uuid4(),
            tenant.id,
            name,
            carrier.uri,
        )
        directory = TrunkDirectory(pool)
        async with UserAgent(options(), limits=SharedTrunkLimits(pool)) as ua:
            before = await directory.ensure(ua, str(tenant.id), name)
            assert ua.trunks[before].config.shared_key == f"{tenant.id}:{name}"
            first = await ua.place_call("1", media=MEDIA, trunk=before, lease=uuid.uuid4())
            await pool.execute(
                "UPDATE trunks SET updated_at = now() + interval '1 second', cps = 50 "
                "WHERE tenant_id = $1 AND name = $2",
                tenant.id,
                name,
            )
            after = await directory.ensure(ua, str(tenant.id), name)
            assert after != before and ua.trunks[after].config.cps == 50
            assert ua.trunks[after].channels is ua.trunks[before].channels
            with pytest.raises(TrunkBusy):
                await ua.place_call("2", media=MEDIA, trunk=after, wait=False)
            first.hangup()
            await asyncio.wait_for(first.ended(), 5)
            second = await ua.place_call("3", media=MEDIA, trunk=after, wait_s=2.0)
            second.hangup()
            await asyncio.wait_for(second.ended(), 5)
        assert len(carrier.arrivals) == 2


def test_the_default_trunk_is_keyed_alike_in_every_worker(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, trunk_uri="sip:carrier.example:5080;transport=tcp")
    config = default_trunk(settings)
    assert config is not None
    assert config.shared_key == "default:carrier.example:5080"
    assert not config.limited
    assert TrunkConfig.from_uri("sip:h", name="x", cps=1.0).shared_key == "x:h:"

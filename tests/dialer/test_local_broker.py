"""The in-process broker over a Unix socket: what happens when a worker process dies."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

from dialer.bus import Delivery, MemoryBroker
from dialer.local_broker import BrokerServer, SocketBroker


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_dropped_connection_returns_its_jobs_to_the_queue(tmp_path: Path) -> None:
    memory = MemoryBroker("t")
    await memory.start()
    server = BrokerServer(memory, tmp_path / "b.sock")
    await server.start()
    dying = SocketBroker(tmp_path / "b.sock")
    await dying.start()
    held: list[Delivery] = []

    async def hold(delivery: Delivery) -> None:
        held.append(delivery)
        await asyncio.Event().wait()

    await dying.consume_jobs(hold, prefetch=5)
    await memory.publish_jobs([(f"c{i}", f"job {i}".encode()) for i in range(3)])
    await _until(lambda: len(held) == 3)
    # The worker process dies: its socket closes with nothing settled.
    assert dying._writer is not None
    dying._writer.transport.abort()
    taken: list[bytes] = []

    async def take(delivery: Delivery) -> None:
        taken.append(delivery.body)
        await delivery.ack()

    survivor = SocketBroker(tmp_path / "b.sock")
    await survivor.start()
    await survivor.consume_jobs(take, prefetch=5)
    await _until(lambda: len(taken) == 3)
    assert sorted(taken) == [b"job 0", b"job 1", b"job 2"]
    assert await survivor.queue_depth(survivor.dial_queue) == 0
    await _until(dying.lost.is_set)
    await survivor.close()
    await dying.close()
    await server.close()


async def test_the_client_knows_when_the_owner_goes_and_garbage_is_refused(
    tmp_path: Path,
) -> None:
    memory = MemoryBroker("ns-x")
    server = BrokerServer(memory, tmp_path / "b.sock")
    await server.start()
    client = SocketBroker(tmp_path / "b.sock")
    await client.start()
    assert client.dial_queue == "ns-x.dial"  # the server's namespace
    # A peer that sends nonsense is dropped; the server keeps serving others.
    reader, writer = await asyncio.open_unix_connection(str(tmp_path / "b.sock"))
    writer.write(struct.pack("!II", 5, 0) + b"{nope")
    await writer.drain()
    assert await reader.read() != b""  # the hello, then EOF
    writer.close()
    assert await client.queue_depth(client.dial_queue) == 0
    await server.close()
    await _until(client.lost.is_set)
    await client.close()

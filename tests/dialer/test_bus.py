"""The broker interface, run against RabbitMQ, the in-process twin, and that twin over a socket."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dialer.bus import AmqpBroker, Broker, Delivery, MemoryBroker
from dialer.local_broker import BrokerServer, SocketBroker
from tests.conftest import AMQP_URL


@pytest.fixture(params=["memory", "rabbitmq", "socket"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    """Here also through ``SocketBroker``: how ``dialer up``'s worker processes see it."""
    namespace = f"test-{secrets.token_hex(4)}"
    if request.param == "rabbitmq":
        amqp = AmqpBroker(AMQP_URL, namespace)
        await amqp.start()
        try:
            yield amqp
        finally:
            await amqp.delete_all()
            await amqp.close()
        return
    memory = MemoryBroker(namespace)
    await memory.start()
    if request.param == "memory":
        yield memory
        await memory.close()
        return
    server = BrokerServer(memory, tmp_path / "broker.sock")
    await server.start()
    client = SocketBroker(tmp_path / "broker.sock")
    await client.start()
    try:
        yield client
    finally:
        await client.close()
        await server.close()
        await memory.close()


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_jobs_delivered_once_each_and_acked(broker: Broker) -> None:
    seen: list[tuple[str | None, bytes]] = []

    async def handler(delivery: Delivery) -> None:
        seen.append((delivery.message_id, delivery.body))
        await delivery.ack()

    await broker.publish_jobs([(f"call-{i}", f"job {i}".encode()) for i in range(50)])
    sub = await broker.consume_jobs(handler, prefetch=10)
    await _until(lambda: len(seen) == 50)
    await asyncio.sleep(0.1)
    assert sorted(seen) == sorted((f"call-{i}", f"job {i}".encode()) for i in range(50))
    await sub.cancel()
    assert await broker.queue_depth(broker.dial_queue) == 0


async def test_prefetch_bounds_jobs_in_flight_and_follows_capacity(broker: Broker) -> None:
    in_flight: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        in_flight.append(delivery)

    await broker.publish_jobs([(f"c{i}", b"x") for i in range(10)])
    sub = await broker.consume_jobs(handler, prefetch=2)
    await _until(lambda: len(in_flight) == 2)
    await asyncio.sleep(0.2)
    assert len(in_flight) == 2  # nothing more until one is settled
    await sub.set_prefetch(5)
    for delivery in list(in_flight):
        await delivery.ack()
    await _until(lambda: len(in_flight) == 7)
    await asyncio.sleep(0.2)
    assert len(in_flight) == 7
    await sub.cancel()


async def test_requeue_redelivers_and_dead_letter_parks(broker: Broker) -> None:
    deliveries: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        deliveries.append(delivery)
        if delivery.body == b"poison":
            await delivery.dead_letter()
        elif not delivery.redelivered:
            await delivery.requeue()
        else:
            await delivery.ack()

    await broker.publish_jobs([("a", b"retry me"), ("b", b"poison")])
    sub = await broker.consume_jobs(handler, prefetch=5)
    await _until(lambda: sum(d.body == b"retry me" for d in deliveries) == 2)
    await asyncio.sleep(0.2)
    assert [d.redelivered for d in deliveries if d.body == b"retry me"] == [False, True]
    assert sum(d.body == b"poison" for d in deliveries) == 1
    await sub.cancel()
    if isinstance(broker, MemoryBroker):
        assert [m.body for m in broker.dead] == [b"poison"]
    else:
        for _ in range(100):  # dead-lettering is asynchronous inside the broker
            if await broker.queue_depth(broker.dead_queue) == 1:
                break
            await asyncio.sleep(0.05)
        assert await broker.queue_depth(broker.dead_queue) == 1


async def test_cancel_returns_unsettled_jobs_to_another_consumer(broker: Broker) -> None:
    first: list[Delivery] = []
    second: list[Delivery] = []

    async def hold(delivery: Delivery) -> None:
        first.append(delivery)

    async def take(delivery: Delivery) -> None:
        second.append(delivery)
        await delivery.ack()

    await broker.publish_jobs([(f"c{i}", b"x") for i in range(3)])
    sub = await broker.consume_jobs(hold, prefetch=3)
    await _until(lambda: len(first) == 3)
    await sub.cancel()  # a worker going away without settling
    sub2 = await broker.consume_jobs(take, prefetch=3)
    await _until(lambda: len(second) == 3)
    assert all(d.redelivered for d in second)
    await sub2.cancel()


async def test_events_routed_by_topic(broker: Broker) -> None:
    ended: list[str] = []
    everything: list[str] = []

    async def on_ended(delivery: Delivery) -> None:
        ended.append(delivery.routing_key)
        await delivery.ack()

    async def on_all(delivery: Delivery) -> None:
        everything.append(delivery.routing_key)
        await delivery.ack()

    ns = broker.namespace
    sub1 = await broker.consume_events(f"{ns}.q-ended", ["call.ended"], on_ended, 10)
    sub2 = await broker.consume_events(f"{ns}.q-all", ["call.#"], on_all, 10)
    await broker.publish_events(
        [("call.dialing", "1", b"{}"), ("call.answered", "2", b"{}"), ("call.ended", "3", b"{}")]
    )
    await _until(lambda: len(everything) == 3 and len(ended) == 1)
    assert ended == ["call.ended"]
    assert sorted(everything) == ["call.answered", "call.dialing", "call.ended"]
    await sub1.cancel()
    await sub2.cancel()

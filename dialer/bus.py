"""The message broker behind a small interface: RabbitMQ, or an in-process twin.

Two flows cross it:

* dial jobs: a durable work queue (a quorum queue on RabbitMQ), published
  with confirms, consumed with a prefetch that follows the worker's free
  capacity, acknowledged when the call is over; a message that cannot be
  handled is dead-lettered, and a message redelivered too often is too;
* call events: a topic exchange; each consumer binds its own queue to the
  routing keys it wants (``call.ended``, ``call.#``).

:class:`MemoryBroker` has the same semantics inside one process, for
``dialer up`` without ``DIALER_AMQP_URL``; the same tests run against both.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage

__all__ = [
    "NAMESPACE",
    "AmqpBroker",
    "Broker",
    "BrokerUnavailable",
    "Delivery",
    "MemoryBroker",
    "Subscription",
    "make_broker",
]

log = logging.getLogger(__name__)

NAMESPACE = "dialer"
# A poison message is dead-lettered after this many deliveries, not looped forever.
DELIVERY_LIMIT = 10
RECONNECT_INTERVAL_S = 1.0
# AMQP's delivery mode 2: the broker keeps the message on disk.
_PERSISTENT = 2


class BrokerUnavailable(ConnectionError):
    """The broker cannot take messages now (restarting, connection lost): try again.

    A publish that raises this may still have reached the broker (its confirm
    was lost): every message here is safe to publish twice.
    """


class Delivery(ABC):
    """One message handed to a consumer; exactly one of the three settles it."""

    body: bytes
    message_id: str | None
    routing_key: str
    redelivered: bool

    @abstractmethod
    async def ack(self) -> None: ...

    @abstractmethod
    async def requeue(self) -> None: ...

    @abstractmethod
    async def dead_letter(self) -> None: ...


Handler = Callable[[Delivery], Awaitable[None]]


class Subscription(ABC):
    @abstractmethod
    async def set_prefetch(self, count: int) -> None: ...

    @abstractmethod
    async def cancel(self) -> None:
        """Stop taking messages; unsettled ones go back to the queue."""


class Broker(ABC):
    """Queues and exchanges are named under a namespace (``dialer.dial``, ...)."""

    def __init__(self, namespace: str = NAMESPACE) -> None:
        self.namespace = namespace
        self.dial_queue = f"{namespace}.dial"
        self.events_exchange = f"{namespace}.events"
        self.dead_exchange = f"{namespace}.dead"
        self.dead_queue = f"{namespace}.dead"

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def publish_jobs(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish ``(message_id, body)`` dial jobs; returns once the broker has them all.

        Raises :class:`BrokerUnavailable` when the broker is away.
        """

    @abstractmethod
    async def publish_events(self, messages: Sequence[tuple[str, str, bytes]]) -> None:
        """Publish ``(routing_key, message_id, body)`` events (or raise BrokerUnavailable)."""

    @abstractmethod
    async def consume_jobs(self, handler: Handler, prefetch: int) -> Subscription: ...

    @abstractmethod
    async def consume_events(
        self, queue: str, patterns: Sequence[str], handler: Handler, prefetch: int
    ) -> Subscription:
        """Consume events matching ``patterns`` (AMQP topic syntax) from a durable ``queue``."""

    @abstractmethod
    async def queue_depth(self, queue: str) -> int: ...


class _TaskOwner:
    """Runs one handler task per delivery and cancels them all when asked."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, delivery: Delivery) -> None:
        task = asyncio.get_running_loop().create_task(self._run(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, delivery: Delivery) -> None:
        try:
            await self._handler(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A handler that fails leaves the message for another try.
            log.exception("message handler failed", extra={"message_id": delivery.message_id})
            with contextlib.suppress(Exception):
                await delivery.requeue()

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- in-process --------------------------------------------------------------


@dataclass(slots=True)
class _Message:
    body: bytes
    message_id: str | None
    routing_key: str
    deliveries: int = 0


class _MemoryDelivery(Delivery):
    def __init__(self, queue: _MemoryQueue, consumer: _MemoryConsumer, message: _Message) -> None:
        self.body = message.body
        self.message_id = message.message_id
        self.routing_key = message.routing_key
        self.redelivered = message.deliveries > 1
        self._queue = queue
        self._consumer = consumer
        self._message = message
        self._settled = False

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        self._consumer.unacked.discard(self)
        return True

    async def ack(self) -> None:
        if self._settle():
            self._queue.dispatch()

    async def requeue(self) -> None:
        if self._settle():
            self._queue.put(self._message, front=True)

    async def dead_letter(self) -> None:
        if self._settle():
            self._queue.broker.dead.append(self._message)
            self._queue.dispatch()


@dataclass(eq=False)
class _MemoryConsumer:
    owner: _TaskOwner
    prefetch: int
    unacked: set[_MemoryDelivery] = field(default_factory=set)
    active: bool = True


class _MemoryQueue:
    def __init__(self, broker: MemoryBroker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.messages: collections.deque[_Message] = collections.deque()
        self.consumers: list[_MemoryConsumer] = []
        self._next = 0

    def put(self, message: _Message, *, front: bool = False) -> None:
        if front:
            self.messages.appendleft(message)
        else:
            self.messages.append(message)
        self.dispatch()

    def dispatch(self) -> None:
        while self.messages:
            consumer = self._free_consumer()
            if consumer is None:
                return
            message = self.messages.popleft()
            message.deliveries += 1
            if message.deliveries > DELIVERY_LIMIT:
                self.broker.dead.append(message)
                continue
            delivery = _MemoryDelivery(self, consumer, message)
            consumer.unacked.add(delivery)
            consumer.owner.spawn(delivery)

    def _free_consumer(self) -> _MemoryConsumer | None:
        count = len(self.consumers)
        for i in range(count):
            consumer = self.consumers[(self._next + i) % count]
            if consumer.active and len(consumer.unacked) < consumer.prefetch:
                self._next = (self._next + i + 1) % count
                return consumer
        return None


class _MemorySubscription(Subscription):
    def __init__(self, queue: _MemoryQueue, consumer: _MemoryConsumer) -> None:
        self._queue = queue
        self._consumer = consumer

    async def set_prefetch(self, count: int) -> None:
        self._consumer.prefetch = max(0, count)
        self._queue.dispatch()

    async def cancel(self) -> None:
        self._consumer.active = False
        await self._consumer.owner.cancel_all()
        for delivery in list(self._consumer.unacked):
            await delivery.requeue()
        with contextlib.suppress(ValueError):
            self._queue.consumers.remove(self._consumer)
        self._queue.dispatch()


class MemoryBroker(Broker):
    """The broker inside one process: same semantics, no durability beyond it."""

    def __init__(self, namespace: str = NAMESPACE) -> None:
        super().__init__(namespace)
        self._queues: dict[str, _MemoryQueue] = {}
        self._bindings: dict[str, list[str]] = {}
        self.dead: list[_Message] = []
        self._subscriptions: list[Subscription] = []

    def _queue(self, name: str) -> _MemoryQueue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _MemoryQueue(self, name)
        return queue

    async def start(self) -> None:
        self._queue(self.dial_queue)

    async def close(self) -> None:
        for sub in self._subscriptions:
            await sub.cancel()
        self._subscriptions.clear()

    async def publish_jobs(self, messages: Sequence[tuple[str, bytes]]) -> None:
        queue = self._queue(self.dial_queue)
        for message_id, body in messages:
            queue.put(_Message(body, message_id, self.dial_queue))

    async def publish_events(self, messages: Sequence[tuple[str, str, bytes]]) -> None:
        for routing_key, message_id, body in messages:
            for queue_name, patterns in self._bindings.items():
                if any(_topic_matches(p, routing_key) for p in patterns):
                    self._queue(queue_name).put(_Message(body, message_id, routing_key))

    async def _consume(self, queue_name: str, handler: Handler, prefetch: int) -> Subscription:
        queue = self._queue(queue_name)
        consumer = _MemoryConsumer(_TaskOwner(handler), prefetch)
        queue.consumers.append(consumer)
        sub = _MemorySubscription(queue, consumer)
        self._subscriptions.append(sub)
        queue.dispatch()
        return sub

    async def consume_jobs(self, handler: Handler, prefetch: int) -> Subscription:
        return await self._consume(self.dial_queue, handler, prefetch)

    async def consume_events(
        self, queue: str, patterns: Sequence[str], handler: Handler, prefetch: int
    ) -> Subscription:
        bound = self._bindings.setdefault(queue, [])
        bound.extend(p for p in patterns if p not in bound)
        return await self._consume(queue, handler, prefetch)

    async def queue_depth(self, queue: str) -> int:
        if queue == self.dead_queue:  # dead letters are parked in a list, not a queue
            return len(self.dead)
        return len(self._queue(queue).messages)


def _topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` zero or more."""
    return _match_words(pattern.split("."), key.split("."))


def _match_words(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match_words(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    if head in ("*", words[0]):
        return _match_words(rest, words[1:])
    return False


# -- RabbitMQ ----------------------------------------------------------------


class _AmqpDelivery(Delivery):
    def __init__(self, message: AbstractIncomingMessage) -> None:
        self._message = message
        self.body = message.body
        self.message_id = message.message_id
        self.routing_key = message.routing_key or ""
        self.redelivered = bool(message.redelivered)

    async def ack(self) -> None:
        await self._message.ack()

    async def requeue(self) -> None:
        await self._message.nack(requeue=True)

    async def dead_letter(self) -> None:
        await self._message.reject(requeue=False)


class _AmqpSubscription(Subscription):
    def __init__(
        self, channel: object, queue: object, on_message: object, owner: _TaskOwner
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._on_message = on_message
        self._owner = owner
        self._tag: str | None = None

    async def start(self, prefetch: int) -> None:
        await self._channel.set_qos(prefetch_count=prefetch)  # type: ignore[attr-defined]
        self._tag = await self._queue.consume(self._on_message, no_ack=False)  # type: ignore[attr-defined]

    async def set_prefetch(self, count: int) -> None:
        # Quorum queues take only per-consumer limits, and RabbitMQ applies
        # one only to consumers started after it: so restart the consumer.
        # Deliveries in hand stay ours to settle on this channel.
        if self._tag is not None:
            await self._queue.cancel(self._tag)  # type: ignore[attr-defined]
            self._tag = None
        if count > 0:  # 0 means "take nothing more" (draining); AMQP's 0 would mean unlimited
            await self.start(count)

    async def cancel(self) -> None:
        if self._tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._tag)  # type: ignore[attr-defined]
            self._tag = None
        await self._owner.cancel_all()
        with contextlib.suppress(Exception):
            await self._channel.close()  # type: ignore[attr-defined]


class AmqpBroker(Broker):
    """RabbitMQ through aio-pika; reconnects (and restores consumers) on its own."""

    def __init__(self, url: str, namespace: str = NAMESPACE) -> None:
        super().__init__(namespace)
        self._url = url
        self._connection: object | None = None
        self._publish_channel: object | None = None
        self._subscriptions: list[Subscription] = []
        self._event_queues: set[str] = set()

    async def start(self) -> None:
        import aio_pika

        # A broker restart is seconds long: try again every second, not every five.
        self._connection = connection = await aio_pika.connect_robust(
            self._url, reconnect_interval=RECONNECT_INTERVAL_S
        )
        channel = await connection.channel(publisher_confirms=True)
        self._publish_channel = channel
        dead = await channel.declare_exchange(
            self.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_queue = await channel.declare_queue(self.dead_queue, durable=True)
        await dead_queue.bind(dead)
        await self._declare_work_queue(channel, self.dial_queue)
        await channel.declare_exchange(
            self.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def _declare_work_queue(self, channel: object, name: str) -> object:
        return await channel.declare_queue(  # type: ignore[attr-defined]
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": self.dead_exchange,
                "x-delivery-limit": DELIVERY_LIMIT,
            },
        )

    async def close(self) -> None:
        for sub in self._subscriptions:
            await sub.cancel()
        self._subscriptions.clear()
        if self._connection is not None:
            await self._connection.close()  # type: ignore[attr-defined]
            self._connection = None

    async def publish_jobs(self, messages: Sequence[tuple[str, bytes]]) -> None:
        await self._publish("", [(self.dial_queue, id_, body) for id_, body in messages])

    async def publish_events(self, messages: Sequence[tuple[str, str, bytes]]) -> None:
        await self._publish(self.events_exchange, messages)

    async def _publish(self, exchange: str, messages: Sequence[tuple[str, str, bytes]]) -> None:
        """Publish persistent JSON messages on the underlying channel, confirms pipelined.

        What aio-pika's ``Exchange.publish`` does, without its ``Message``: a
        dozen attribute writes that each check a lock, then copied into the
        properties, for every message.
        """
        import aiormq
        from aiormq.exceptions import ChannelInvalidStateError

        properties = aiormq.spec.Basic.Properties
        away = _away_errors()
        channel = self._publish_channel
        try:
            if channel.is_closed:  # type: ignore[union-attr]
                raise ChannelInvalidStateError(f"{channel!r} closed")
            raw = await channel.get_underlay_channel()  # type: ignore[union-attr]
            publishes = [
                raw.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties(
                        content_type="application/json",
                        delivery_mode=_PERSISTENT,
                        message_id=message_id,
                    ),
                    mandatory=True,
                    # The confirm comes after the frame is written: waiting for the
                    # write as well cost a future and a wake-up per message.
                    wait=False,
                )
                for routing_key, message_id, body in messages
            ]
            if len(publishes) == 1:
                # A worker's event: awaited here, without gather's task around it.
                await publishes[0]
                return
        except away as exc:
            raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc
        # Confirms are pipelined: publish all, then wait for every confirm at once.
        await _unavailable_as_one_error(*publishes)

    async def _consume(
        self,
        queue_factory: Callable[[object], Awaitable[object]],
        handler: Handler,
        prefetch: int,
    ) -> Subscription:
        channel = await self._connection.channel()  # type: ignore[union-attr]
        queue = await queue_factory(channel)
        owner = _TaskOwner(handler)

        async def on_message(message: AbstractIncomingMessage) -> None:
            owner.spawn(_AmqpDelivery(message))

        sub = _AmqpSubscription(channel, queue, on_message, owner)
        await sub.start(max(1, prefetch))
        self._subscriptions.append(sub)
        return sub

    async def consume_jobs(self, handler: Handler, prefetch: int) -> Subscription:
        return await self._consume(
            lambda ch: self._declare_work_queue(ch, self.dial_queue), handler, prefetch
        )

    async def consume_events(
        self, queue: str, patterns: Sequence[str], handler: Handler, prefetch: int
    ) -> Subscription:
        self._event_queues.add(queue)

        async def declare(channel: object) -> object:
            declared = await self._declare_work_queue(channel, queue)
            for pattern in patterns:
                await declared.bind(self.events_exchange, routing_key=pattern)  # type: ignore[attr-defined]
            return declared

        return await self._consume(declare, handler, prefetch)

    async def queue_depth(self, queue: str) -> int:
        # A passive declare on the raw channel: aio-pika's robust channel
        # hands back the first declaration's (stale) counts.
        raw = await self._publish_channel.get_underlay_channel()  # type: ignore[union-attr]
        declared = await raw.queue_declare(queue, passive=True)
        return int(declared.message_count or 0)

    async def delete_all(self) -> None:
        """Remove this namespace's queues and exchanges (tests clean up with it)."""
        channel = self._publish_channel
        for queue in (self.dial_queue, self.dead_queue, *self._event_queues):
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)  # type: ignore[union-attr]
        for exchange in (self.events_exchange, self.dead_exchange):
            with contextlib.suppress(Exception):
                await channel.exchange_delete(exchange)  # type: ignore[union-attr]


async def _unavailable_as_one_error(*publishes: Awaitable[object]) -> None:
    """Await the publishes; the many ways aio-pika says "the broker is away" become one."""
    away = _away_errors()
    results = await asyncio.gather(*publishes, return_exceptions=True)
    for result in results:
        if isinstance(result, away):
            raise BrokerUnavailable(str(result) or type(result).__name__) from result
        if isinstance(result, BaseException):
            raise result


def _away_errors() -> tuple[type[BaseException], ...]:
    """What aiormq raises when the broker is away (imported late: MemoryBroker needs none)."""
    from aiormq.exceptions import AMQPError, ChannelInvalidStateError

    return (AMQPError, ChannelInvalidStateError, ConnectionError)


def make_broker(amqp_url: str | None, namespace: str = NAMESPACE) -> Broker:
    return AmqpBroker(amqp_url, namespace) if amqp_url else MemoryBroker(namespace)

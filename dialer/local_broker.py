"""The in-process broker shared with worker processes over a Unix socket.

``dialer up`` without RabbitMQ keeps its queues in a :class:`MemoryBroker`
in the main process; its worker processes (one per core) reach it through
:class:`BrokerServer` on a Unix socket with :class:`SocketBroker`, a client
with the same ``Broker`` interface. The semantics stay the broker's own:
prefetch per subscription, a delivery settled exactly once, and every
delivery a worker had not settled goes back to the queue when its
connection drops (the worker died), as with RabbitMQ.

Frames both ways: two big-endian u32 lengths, a JSON header, a raw body::

    client -> server  hello? no: the server speaks first with its namespace
    server -> client  {"op": "hello", "namespace": ...}
    client -> server  {"op": "publish_jobs"|"publish_events"|"consume_jobs"|
                       "consume_events"|"set_prefetch"|"cancel"|"queue_depth",
                       "req": n, ...}            answered by {"op": "reply", "req": n}
    server -> client  {"op": "deliver", "sub": s, "tag": t, ...} + body
    client -> server  {"op": "settle", "tag": t, "how": "ack"|"requeue"|"dead_letter"}
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from dialer.bus import Broker, Delivery, Handler, Subscription, _TaskOwner

__all__ = ["BrokerServer", "SocketBroker"]

log = logging.getLogger(__name__)

_LENGTHS = struct.Struct("!II")
MAX_FRAME = 64 * 1024 * 1024
SETTLE_HOW = frozenset({"ack", "requeue", "dead_letter"})


def _frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return _LENGTHS.pack(len(head), len(body)) + head + body


async def _read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    head_len, body_len = _LENGTHS.unpack(await reader.readexactly(_LENGTHS.size))
    if head_len > MAX_FRAME or body_len > MAX_FRAME:
        raise ConnectionError("frame too large")
    header = orjson.loads(await reader.readexactly(head_len))
    body = await reader.readexactly(body_len) if body_len else b""
    if not isinstance(header, dict):
        raise ConnectionError("frame header is not an object")
    return header, body


# -- server side (in the process that owns the broker) -----------------------


class _Connection:
    """One worker process's connection: its subscriptions and unsettled deliveries."""

    def __init__(self, broker: Broker, writer: asyncio.StreamWriter) -> None:
        self.broker = broker
        self.writer = writer
        self.subscriptions: dict[int, Subscription] = {}
        self.pending: dict[int, asyncio.Future[str]] = {}
        self.tags = itertools.count(1)

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        if not self.writer.is_closing():
            self.writer.write(_frame(header, body))

    def handler(self, sub: int) -> Handler:
        async def forward(delivery: Delivery) -> None:
            tag = next(self.tags)
            settled = asyncio.get_running_loop().create_future()
            self.pending[tag] = settled
            try:
                self.send(
                    {
                        "op": "deliver",
                        "sub": sub,
                        "tag": tag,
                        "message_id": delivery.message_id,
                        "routing_key": delivery.routing_key,
                        "redelivered": delivery.redelivered,
                    },
                    delivery.body,
                )
                how = await settled
            finally:
                self.pending.pop(tag, None)
            if how == "ack":
                await delivery.ack()
            elif how == "dead_letter":
                await delivery.dead_letter()
            else:
                await delivery.requeue()

        return forward

    async def request(self, header: dict[str, Any], body: bytes) -> Any:
        op = header.get("op")
        if op == "publish_jobs":
            await self.broker.publish_jobs([(header["message_id"], body)])
        elif op == "publish_events":
            await self.broker.publish_events([(header["routing_key"], header["message_id"], body)])
        elif op == "consume_jobs":
            sub = int(header["sub"])
            self.subscriptions[sub] = await self.broker.consume_jobs(
                self.handler(sub), int(header["prefetch"])
            )
        elif op == "consume_events":
            sub = int(header["sub"])
            self.subscriptions[sub] = await self.broker.consume_events(
                str(header["queue"]),
                [str(p) for p in header["patterns"]],
                self.handler(sub),
                int(header["prefetch"]),
            )
        elif op == "set_prefetch":
            subscription = self.subscriptions.get(int(header["sub"]))
            if subscription is not None:
                await subscription.set_prefetch(int(header["count"]))
        elif op == "cancel":
            subscription = self.subscriptions.pop(int(header["sub"]), None)
            if subscription is not None:
                await subscription.cancel()
        elif op == "queue_depth":
            return await self.broker.queue_depth(str(header["queue"]))
        else:
            raise ValueError(f"unknown op {op!r}")
        return None

    async def close(self) -> None:
        # Unsettled deliveries go back to the queue (the subscription's cancel
        # requeues whatever its handlers still hold).
        for settled in self.pending.values():
            if not settled.done():
                settled.set_result("requeue")
        for subscription in self.subscriptions.values():
            with contextlib.suppress(Exception):
                await subscription.cancel()
        self.subscriptions.clear()


class BrokerServer:
    """Serves ``broker`` on a Unix socket at ``path`` to worker processes."""

    def __init__(self, broker: Broker, path: str | Path) -> None:
        self.broker = broker
        self.path = str(path)
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            Path(self.path).unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        connection = _Connection(self.broker, writer)
        connection.send({"op": "hello", "namespace": self.broker.namespace})
        try:
            while True:
                header, body = await _read_frame(reader)
                if header.get("op") == "settle":
                    settled = connection.pending.get(int(header.get("tag", 0)))
                    how = header.get("how")
                    if settled is not None and not settled.done() and how in SETTLE_HOW:
                        settled.set_result(how)
                    continue
                reply: dict[str, Any] = {"op": "reply", "req": header.get("req")}
                try:
                    reply["value"] = await connection.request(header, body)
                except (KeyError, TypeError, ValueError) as exc:
                    reply["error"] = str(exc)
                connection.send(reply)
        except (asyncio.IncompleteReadError, ConnectionError, orjson.JSONDecodeError):
            pass
        finally:
            await connection.close()
            writer.close()
            self._connections.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            Path(self.path).unlink()


# -- client side (in a worker process) ----------------------------------------


class _SocketDelivery(Delivery):
    def __init__(self, client: SocketBroker, header: dict[str, Any], body: bytes) -> None:
        self.body = body
        self.message_id = header.get("message_id")
        self.routing_key = str(header.get("routing_key", ""))
        self.redelivered = bool(header.get("redelivered"))
        self._client = client
        self._tag = header["tag"]
        self._settled = False

    def _settle(self, how: str) -> None:
        if not self._settled:
            self._settled = True
            self._client._send({"op": "settle", "tag": self._tag, "how": how})

    async def ack(self) -> None:
        self._settle("ack")

    async def requeue(self) -> None:
        self._settle("requeue")

    async def dead_letter(self) -> None:
        self._settle("dead_letter")


class _SocketSubscription(Subscription):
    def __init__(self, client: SocketBroker, sub: int, owner: _TaskOwner) -> None:
        self._client = client
        self.sub = sub
        self.owner = owner

    async def set_prefetch(self, count: int) -> None:
        await self._client._call({"op": "set_prefetch", "sub": self.sub, "count": max(0, count)})

    async def cancel(self) -> None:
        self._client._subscriptions.pop(self.sub, None)
        with contextlib.suppress(ConnectionError):
            await self._client._call({"op": "cancel", "sub": self.sub})
        await self.owner.cancel_all()


class SocketBroker(Broker):
    """A ``Broker`` whose queues live in another process (see :class:`BrokerServer`).

    ``lost`` is set when the connection drops: the owning process has gone,
    and a worker should stop (its unsettled jobs are back in the queue).
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = str(path)
        self.lost = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._requests = itertools.count(1)
        self._subs = itertools.count(1)
        self._subscriptions: dict[int, _SocketSubscription] = {}
        self._read_task: asyncio.Task[None] | None = None
        # Set by close(): the connection's end is ours, not news.
        self._closing = False

    async def start(self) -> None:
        self._reader, self._writer = await asyncio.open_unix_connection(self.path)
        header, _ = await _read_frame(self._reader)
        if header.get("op") != "hello":
            raise ConnectionError(f"unexpected first frame from the broker: {header!r}")
        Broker.__init__(self, str(header["namespace"]))  # queue names follow the server's
        self._read_task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            while True:
                header, body = await _read_frame(self._reader)
                op = header.get("op")
                if op == "reply":
                    waiter = self._replies.pop(int(header.get("req") or 0), None)
                    if waiter is not None and not waiter.done():
                        if "error" in header:
                            waiter.set_exception(ValueError(header["error"]))
                        else:
                            waiter.set_result(header.get("value"))
                elif op == "deliver":
                    subscription = self._subscriptions.get(int(header.get("sub", 0)))
                    delivery = _SocketDelivery(self, header, body)
                    if subscription is None:
                        await delivery.requeue()
                    else:
                        subscription.owner.spawn(delivery)
        except (asyncio.IncompleteReadError, ConnectionError, orjson.JSONDecodeError):
            if not self._closing:
                log.warning("lost the connection to the broker at %s", self.path)
        finally:
            self.lost.set()
            for waiter in self._replies.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("broker connection lost"))
            self._replies.clear()

    def _send(self, header: dict[str, Any], body: bytes = b"") -> None:
        if self._writer is None or self._writer.is_closing() or self.lost.is_set():
            raise ConnectionError("not connected to the broker")
        self._writer.write(_frame(header, body))

    async def _call(self, header: dict[str, Any], body: bytes = b"") -> Any:
        req = next(self._requests)
        waiter = asyncio.get_running_loop().create_future()
        self._replies[req] = waiter
        try:
            self._send({**header, "req": req}, body)
        except ConnectionError:
            self._replies.pop(req, None)
            raise
        return await waiter

    async def publish_jobs(self, messages: Sequence[tuple[str, bytes]]) -> None:
        for message_id, body in messages:
            await self._call({"op": "publish_jobs", "message_id": message_id}, body)

    async def publish_events(self, messages: Sequence[tuple[str, str, bytes]]) -> None:
        for routing_key, message_id, body in messages:
            header = {"op": "publish_events", "routing_key": routing_key, "message_id": message_id}
            await self._call(header, body)

    async def _subscribe(self, handler: Handler, request: dict[str, Any]) -> Subscription:
        sub = next(self._subs)
        subscription = _SocketSubscription(self, sub, _TaskOwner(handler))
        self._subscriptions[sub] = subscription
        await self._call({**request, "sub": sub})
        return subscription

    async def consume_jobs(self, handler: Handler, prefetch: int) -> Subscription:
        return await self._subscribe(handler, {"op": "consume_jobs", "prefetch": prefetch})

    async def consume_events(
        self, queue: str, patterns: Sequence[str], handler: Handler, prefetch: int
    ) -> Subscription:
        request = {
            "op": "consume_events",
            "queue": queue,
            "patterns": list(patterns),
            "prefetch": prefetch,
        }
        return await self._subscribe(handler, request)

    async def queue_depth(self, queue: str) -> int:
        return int(await self._call({"op": "queue_depth", "queue": queue}))

    async def close(self) -> None:
        self._closing = True
        for subscription in list(self._subscriptions.values()):
            await subscription.cancel()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task

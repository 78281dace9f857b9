"""SIP over UDP and TCP: the asyncio edge that moves bytes for the pure SIP core.

Rules of this file:

1. The transport parses and frames, nothing more. Every whole message goes to
   the handler's ``message_received``; every datagram or frame that does not
   parse goes to ``invalid_received`` with the error, and the handler decides
   whether to answer it (a 400 built by ``parser.error_response``) or drop it.
   No input bytes can raise out of a callback: a bad packet is counted,
   never fatal, and never stalls the socket.
2. Callbacks never await. Sending is ``send(data, addr, transport)``: a
   datagram at once, or bytes written to a TCP connection (opened in a task
   the transport owns when there is none to reuse).
3. RFC 3261 §18.1.1: a request over 1300 bytes that would go over UDP goes
   over TCP instead, with the top Via rewritten to say so; if the connection
   cannot be made, it falls back to UDP (the same section's SHOULD).
4. TCP connections are reused both ways and keyed by the peer's address: a
   response to a request that came in on a connection goes back on it
   (§18.2.2). Each connection cuts its stream with ``StreamFramer`` and has
   limits (connections, idle time, unsent bytes); past one, it is closed.
5. Every task and timer the transport starts is cancelled by ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from dialer.sip.actions import Address
from dialer.sip.errors import FramingError, SipError
from dialer.sip.framing import StreamFramer
from dialer.sip.headers import Via
from dialer.sip.message import Request, Response
from dialer.sip.parser import DEFAULT_LIMITS, ParserLimits, parse_message

__all__ = [
    "MTU_RULE_BYTES",
    "MessageHandler",
    "SipTransport",
    "TransportConfig",
    "TransportStats",
    "open_transport",
]

#: RFC 3261 §18.1.1: a request within 200 bytes of a 1500-byte MTU goes over TCP.
MTU_RULE_BYTES = 1300
_MIB = 1024 * 1024
_PONG = b"\r\n"
# What keeps a NAT binding open over UDP (RFC 5626 §3.5.1 uses STUN, older
# phones send CRLFs or a few zero bytes): ignored without counting it as junk.
_KEEPALIVE_CHARS = b"\r\n\x00 "


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Where to listen and the limits that keep one peer from hurting the others.

    ``port`` 0 picks a free port (the same number for UDP and TCP).
    ``idle_timeout_s`` closes a TCP connection with no whole message (or
    ping) either way for that long: bytes that never finish a message do not
    keep it open. ``max_unsent_bytes`` closes a connection whose peer stopped
    reading. Connections others open to us are at most ``max_inbound_per_host``
    per address, and leave ``outbound_reserve`` of ``max_connections`` to the
    ones we open (to the trunk), so that a flood of idle peers cannot cut us off.
    """

    host: str = "127.0.0.1"
    port: int = 5060
    udp: bool = True
    tcp: bool = True
    buffer_bytes: int = 4 * _MIB
    limits: ParserLimits = DEFAULT_LIMITS
    max_connections: int = 1024
    max_inbound_per_host: int = 64
    outbound_reserve: int = 32
    idle_timeout_s: float = 120.0
    max_unsent_bytes: int = 4 * _MIB
    connect_timeout_s: float = 5.0
    mtu_rule_bytes: int | None = MTU_RULE_BYTES


@dataclass(slots=True)
class TransportStats:
    """Counters of what crossed the sockets (monotonic, never reset)."""

    datagrams_received: int = 0
    datagrams_sent: int = 0
    frames_received: int = 0
    frames_sent: int = 0
    keepalives: int = 0
    malformed: int = 0  # did not parse (the handler then answered or dropped it)
    framing_errors: int = 0  # a TCP stream that could not be cut: connection closed
    send_errors: int = 0
    icmp_errors: int = 0
    connections_opened: int = 0
    connections_accepted: int = 0
    connections_refused: int = 0  # over max_connections
    connections_closed: int = 0
    idle_closed: int = 0
    overflow_closed: int = 0  # peer stopped reading
    mtu_switches: int = 0  # §18.1.1 requests moved from UDP to TCP
    mtu_fallbacks: int = 0  # ... and back to UDP when TCP failed

    def as_dict(self) -> dict[str, int]:
        """The counters by name, for metrics and logs."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class MessageHandler(Protocol):
    """What the transport hands its input to (the user agent)."""

    def message_received(
        self, message: Request | Response, source: Address, transport: str
    ) -> None:
        """A message that parsed."""

    def invalid_received(
        self, data: bytes, error: SipError, source: Address, transport: str
    ) -> None:
        """Bytes that did not parse: answer them with ``SipTransport.send`` or drop them."""

    def send_failed(self, data: bytes, addr: Address, transport: str) -> None:
        """Bytes that could not be sent (no connection, reset, refused)."""


# --- UDP ----------------------------------------------------------------------------------


class _UdpProtocol(asyncio.DatagramProtocol):
    __slots__ = ("owner",)

    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.owner._datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the datagram is lost, which the
        # transaction layer's retransmissions and timeouts already cover.
        self.owner.stats.icmp_errors += 1


# --- TCP ----------------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One TCP connection: a framer on the way in, a write queue until connected."""

    __slots__ = ("framer", "inbound", "key", "last_active", "owner", "pending", "transport")

    def __init__(self, owner: SipTransport, key: Address | None) -> None:
        self.owner = owner
        self.key = key
        self.framer = StreamFramer(owner.config.limits)
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.last_active = owner.loop.time()
        # Counted in the owner's inbound connections per host.
        self.inbound = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        owner = self.owner
        if self.key is None:
            peer = transport.get_extra_info("peername")
            self.key = (peer[0], peer[1])
            config = owner.config
            if (
                len(owner._connections) >= config.max_connections - config.outbound_reserve
                or owner._inbound_per_host[peer[0]] >= config.max_inbound_per_host
            ):
                owner.stats.connections_refused += 1
                transport.abort()
                return
            owner.stats.connections_accepted += 1
            self.inbound = True
            owner._inbound_per_host[peer[0]] += 1
            old = owner._connections.get(self.key)
            if old is not None and old is not self:
                old.close()
            owner._connections[self.key] = self
        else:
            owner.stats.connections_opened += 1
        _nodelay(transport)
        for data in self.pending:
            self.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        framer = self.framer
        framer.feed(data)
        key = self.key
        assert key is not None
        while True:
            try:
                frame = framer.next_frame()
            except FramingError as error:
                # §18.3: nothing after a broken frame can be found: close.
                owner.stats.framing_errors += 1
                owner.handler.invalid_received(b"", error, key, "TCP")
                self.close()
                return
            if frame is None:
                break
            owner.stats.frames_received += 1
            # Only a whole message keeps the connection alive, not a trickle of bytes.
            self.last_active = owner.loop.time()
            owner._deliver(frame, key, "TCP")
            if self.transport is None or self.transport.is_closing():
                return
        pings = framer.take_pings()
        if pings and self.transport is not None:
            # RFC 5626 §4.4.1: a double-CRLF ping is answered with one CRLF. One
            # answer for the pings of one read: a peer that pings without reading
            # cannot make us buffer an answer per ping.
            owner.stats.keepalives += pings
            self.last_active = owner.loop.time()
            self.transport.write(_PONG)
            self._check_backlog(self.transport)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            self.pending.append(data)
            return
        if transport.is_closing():
            self.owner._send_failed(data, self.key, "TCP")
            return
        self.last_active = self.owner.loop.time()
        transport.write(data)
        self.owner.stats.frames_sent += 1
        self._check_backlog(transport)

    def _check_backlog(self, transport: asyncio.Transport) -> None:
        if transport.get_write_buffer_size() > self.owner.config.max_unsent_bytes:
            self.owner.stats.overflow_closed += 1
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self._forget()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        self.owner.stats.connections_closed += 1
        for data in self.pending:
            self.owner._send_failed(data, self.key, "TCP")
        self.pending.clear()

    def _forget(self) -> None:
        owner = self.owner
        if self.inbound and self.key is not None:
            self.inbound = False
            host = self.key[0]
            owner._inbound_per_host[host] -= 1
            if owner._inbound_per_host[host] <= 0:
                del owner._inbound_per_host[host]
        if self.key is not None and owner._connections.get(self.key) is self:
            del owner._connections[self.key]


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _set_buffers(sock: socket.socket, size: int) -> None:
    # The kernel may cap these (net.core.rmem_max): a smaller buffer is not an
    # error, only fewer packets survive a burst.
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)


def _is_keepalive(data: bytes) -> bool:
    return len(data) <= 4 and not data.strip(_KEEPALIVE_CHARS)


# --- the transport ------------------------------------------------------------------------


@dataclass(slots=True)
class _Listeners:
    udp: asyncio.DatagramTransport | None = None
    tcp: asyncio.Server | None = None
    sockets: list[socket.socket] = field(default_factory=list)


class SipTransport:
    """The UDP socket and TCP listener of one user agent, and its TCP connections.

    Build with ``await open_transport(config, handler)``. ``address`` is the
    bound ``(host, port)``, the same port for both protocols.
    """

    def __init__(
        self,
        config: TransportConfig,
        handler: MessageHandler,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.loop = loop or asyncio.get_running_loop()
        self.stats = TransportStats()
        self.address: Address = (config.host, config.port)
        self._listeners = _Listeners()
        self._connections: dict[Address, _Connection] = {}
        self._inbound_per_host: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self._limits = config.limits

    # --- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the sockets (UDP first, then TCP on the same port)."""
        config = self.config
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        for attempt in range(20):
            udp_sock = tcp_sock = None
            try:
                port = config.port
                if config.udp:
                    udp_sock = socket.socket(family, socket.SOCK_DGRAM)
                    _set_buffers(udp_sock, config.buffer_bytes)
                    udp_sock.bind((config.host, port))
                    port = udp_sock.getsockname()[1]
                if config.tcp:
                    tcp_sock = socket.socket(family, socket.SOCK_STREAM)
                    tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    _set_buffers(tcp_sock, config.buffer_bytes)
                    tcp_sock.bind((config.host, port))
                    port = tcp_sock.getsockname()[1]
                break
            except OSError as error:
                for sock in (udp_sock, tcp_sock):
                    if sock is not None:
                        sock.close()
                # Port 0 gave a UDP port whose TCP twin is taken: try another.
                if config.port != 0 or error.errno != errno.EADDRINUSE or attempt == 19:
                    raise
        self.address = (config.host, port)
        if udp_sock is not None:
            udp_sock.setblocking(False)
            transport, _ = await self.loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=udp_sock
            )
            self._listeners.udp = transport  # type: ignore[assignment]
        if tcp_sock is not None:
            tcp_sock.setblocking(False)
            self._listeners.tcp = await self.loop.create_server(
                lambda: _Connection(self, None), sock=tcp_sock, backlog=1024
            )
        self._schedule_sweep()

    async def close(self) -> None:
        """Close the sockets and every connection, cancel every task and timer."""
        if self._closed:
            return
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for connection in list(self._connections.values()):
            connection.close()
        if self._listeners.udp is not None:
            self._listeners.udp.close()
        if self._listeners.tcp is not None:
            self._listeners.tcp.close()
            await self._listeners.tcp.wait_closed()

    @property
    def connections(self) -> int:
        """Open TCP connections."""
        return len(self._connections)

    # --- sending ------------------------------------------------------------------------

    def send(
        self,
        data: bytes,
        addr: Address,
        transport: str,
        message: Request | Response | None = None,
    ) -> None:
        """Send ``data`` to ``addr``; never raises (a failure goes to ``send_failed``).

        ``message`` is the value ``data`` was serialised from: with it, a
        request too large for UDP is moved to TCP (§18.1.1).
        """
        if self._closed:
            return
        if transport.upper() == "TCP":
            self._send_tcp(data, addr)
            return
        rule = self.config.mtu_rule_bytes
        if (
            rule is not None
            and len(data) > rule
            and isinstance(message, Request)
            and self.config.tcp
            and message.top_via.transport.upper() == "UDP"
        ):
            # §18.1.1: "MUST be sent using an RFC 2914 congestion controlled
            # transport protocol"; the top Via MUST then name that transport.
            via = message.top_via
            moved = message.replace_header(
                "Via", ", ".join([_with_transport(via, "TCP"), *_other_vias(message)])
            )
            self.stats.mtu_switches += 1
            self._send_tcp(moved.serialize(), addr, fallback=data)
            return
        self._send_udp(data, addr)

    def _send_udp(self, data: bytes, addr: Address) -> None:
        udp = self._listeners.udp
        if udp is None:
            self._send_failed(data, addr, "UDP")
            return
        try:
            udp.sendto(data, addr)
        except (OSError, ValueError, TypeError):
            self._send_failed(data, addr, "UDP")
            return
        self.stats.datagrams_sent += 1

    def _send_tcp(self, data: bytes, addr: Address, fallback: bytes | None = None) -> None:
        connection = self._connections.get(addr)
        if connection is not None:
            connection.write(data)
            return
        if len(self._connections) >= self.config.max_connections:
            self.stats.connections_refused += 1
            self._send_failed(data, addr, "TCP")
            return
        connection = _Connection(self, addr)
        connection.pending.append(data)
        self._connections[addr] = connection
        self._spawn(self._connect(connection, addr, fallback))

    async def _connect(
        self, connection: _Connection, addr: Address, fallback: bytes | None
    ) -> None:
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                await self.loop.create_connection(lambda: connection, addr[0], addr[1])
        except (OSError, TimeoutError):
            connection._forget()
            pending, connection.pending = connection.pending, []
            if fallback is not None:
                # §18.1.1: a refused or reset connection for a request moved off
                # UDP "SHOULD" retry over UDP.
                self.stats.mtu_fallbacks += 1
                self._send_udp(fallback, addr)
                return
            for data in pending:
                self._send_failed(data, addr, "TCP")

    def _send_failed(self, data: bytes, addr: Address | None, transport: str) -> None:
        self.stats.send_errors += 1
        if addr is not None:
            self.handler.send_failed(data, addr, transport)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- receiving ----------------------------------------------------------------------

    def _datagram(self, data: bytes, source: Address) -> None:
        self.stats.datagrams_received += 1
        if _is_keepalive(data):
            self.stats.keepalives += 1
            return
        self._deliver(data, source, "UDP")

    def _deliver(self, data: bytes, source: Address, transport: str) -> None:
        try:
            message = parse_message(data, self._limits)
        except SipError as error:
            self.stats.malformed += 1
            self.handler.invalid_received(data, error, source, transport)
            return
        self.handler.message_received(message, source, transport)

    # --- housekeeping -------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        if self._closed or not self.config.tcp:
            return
        interval = max(0.05, min(self.config.idle_timeout_s / 2, 10.0))
        self._sweep = self.loop.call_later(interval, self._sweep_idle)

    def _sweep_idle(self) -> None:
        deadline = self.loop.time() - self.config.idle_timeout_s
        for connection in list(self._connections.values()):
            if connection.last_active < deadline and connection.transport is not None:
                self.stats.idle_closed += 1
                connection.close()
        self._schedule_sweep()


def _with_transport(via: Via, transport: str) -> str:
    return Via(transport, via.host, via.port, via.params, via.protocol).serialize()


def _other_vias(message: Request) -> list[str]:
    return message.get_all("Via")[1:]


async def open_transport(
    config: TransportConfig,
    handler: MessageHandler,
    loop: asyncio.AbstractEventLoop | None = None,
) -> SipTransport:
    """Bind a transport and start receiving."""
    transport = SipTransport(config, handler, loop)
    await transport.start()
    return transport

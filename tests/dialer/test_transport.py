"""The SIP transport over real loopback sockets: datagrams, stream framing, limits."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from dialer.sip.errors import FramingError, SipError
from dialer.sip.message import Request, Response
from dialer.sip.parser import ParserLimits, parse_message
from dialer.transport import SipTransport, TransportConfig, open_transport

OPTIONS = (
    b"OPTIONS sip:dialer@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-t1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:probe@127.0.0.1>;tag=a1\r\n"
    b"To: <sip:dialer@127.0.0.1>\r\n"
    b"Call-ID: transport-test-1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def big_request(size: int) -> Request:
    body = b"x" * size
    text = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: %d" % size) + body
    message = parse_message(text)
    assert isinstance(message, Request)
    return message


@dataclass
class Recorder:
    """A handler that keeps what the transport hands it."""

    messages: asyncio.Queue[tuple[Request | Response, tuple[str, int], str]] = field(
        default_factory=asyncio.Queue
    )
    invalid: asyncio.Queue[tuple[bytes, SipError, str]] = field(default_factory=asyncio.Queue)
    failed: asyncio.Queue[tuple[bytes, tuple[str, int], str]] = field(default_factory=asyncio.Queue)

    def message_received(self, message: Request | Response, source: tuple, transport: str) -> None:
        self.messages.put_nowait((message, source, transport))

    def invalid_received(self, data: bytes, error: SipError, source: tuple, transport: str) -> None:
        self.invalid.put_nowait((data, error, transport))

    def send_failed(self, data: bytes, addr: tuple, transport: str) -> None:
        self.failed.put_nowait((data, addr, transport))


async def get(queue: asyncio.Queue, timeout: float = 2.0):  # type: ignore[type-arg]
    async with asyncio.timeout(timeout):
        return await queue.get()


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def transport(recorder: Recorder) -> AsyncIterator[SipTransport]:
    t = await open_transport(TransportConfig("127.0.0.1", 0), recorder)
    yield t
    await t.close()


def udp_peer() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    return sock


async def test_binds_one_port_for_both_and_big_buffers(transport: SipTransport) -> None:
    host, port = transport.address
    assert host == "127.0.0.1" and port > 0
    _reader, writer = await asyncio.open_connection(host, port)  # TCP on the same port
    writer.close()
    udp = transport._listeners.udp
    assert udp is not None
    sock = udp.get_extra_info("socket")
    # Linux doubles what it was asked for, up to rmem_max: at least the default.
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 200_000


async def test_udp_message_and_malformed(transport: SipTransport, recorder: Recorder) -> None:
    peer = udp_peer()
    peer.sendto(OPTIONS, transport.address)
    message, source, kind = await get(recorder.messages)
    assert isinstance(message, Request) and message.method == "OPTIONS"
    assert source == peer.getsockname() and kind == "UDP"
    peer.sendto(b"\r\n\r\n", transport.address)  # keep-alive: neither message nor junk
    peer.sendto(b"INVITE nonsense\r\n\r\n", transport.address)
    data, error, kind = await get(recorder.invalid)
    assert data.startswith(b"INVITE nonsense") and isinstance(error, SipError)
    assert transport.stats.keepalives == 1 and transport.stats.malformed == 1
    peer.close()


async def test_udp_send(transport: SipTransport) -> None:
    peer = udp_peer()
    transport.send(b"hello", peer.getsockname(), "UDP")
    assert await asyncio.to_thread(peer.recv, 100) == b"hello"
    peer.close()


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([OPTIONS], 1),
        ([OPTIONS + OPTIONS], 2),
        ([bytes([b]) for b in OPTIONS], 1),  # one byte at a time
        ([b"\r\n\r\n" + OPTIONS[:30], OPTIONS[30:] + OPTIONS[:5], OPTIONS[5:]], 2),
    ],
)
async def test_tcp_framing(
    transport: SipTransport, recorder: Recorder, chunks: list[bytes], expected: int
) -> None:
    _reader, writer = await asyncio.open_connection(*transport.address)
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
    for _ in range(expected):
        message, _source, kind = await get(recorder.messages)
        assert message.call_id == "transport-test-1" and kind == "TCP"
    assert recorder.messages.empty()
    writer.close()


async def test_tcp_ping_pong_and_reply_on_same_connection(
    transport: SipTransport, recorder: Recorder
) -> None:
    reader, writer = await asyncio.open_connection(*transport.address)
    writer.write(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.readexactly(2), 2) == b"\r\n"
    writer.write(OPTIONS)
    _, source, _ = await get(recorder.messages)
    transport.send(b"SIP/2.0 200 OK\r\n\r\n", source, "TCP")
    assert await asyncio.wait_for(reader.readexactly(18), 2) == b"SIP/2.0 200 OK\r\n\r\n"
    assert transport.stats.connections_opened == 0  # reused, not opened
    writer.close()


@pytest.mark.parametrize(
    "stream",
    [
        OPTIONS.replace(b"Content-Length: 0\r\n", b""),  # §18.3: mandatory on streams
        OPTIONS.replace(b"Content-Length: 0", b"Content-Length: -4"),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"A" * 70_000,  # no line end within any limit
    ],
)
async def test_tcp_broken_stream_closes(
    transport: SipTransport, recorder: Recorder, stream: bytes
) -> None:
    reader, writer = await asyncio.open_connection(*transport.address)
    writer.write(stream)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the transport
    _data, error, kind = await get(recorder.invalid)
    assert isinstance(error, FramingError) and kind == "TCP"
    assert transport.stats.framing_errors == 1 and transport.connections == 0
    writer.close()


async def test_tcp_malformed_frame_keeps_connection(
    transport: SipTransport, recorder: Recorder
) -> None:
    _reader, writer = await asyncio.open_connection(*transport.address)
    bad = OPTIONS.replace(b"CSeq: 1 OPTIONS", b"CSeq: x OPTIONS")
    writer.write(bad + OPTIONS)
    _, error, _ = await get(recorder.invalid)
    assert not isinstance(error, FramingError)
    message, _, _ = await get(recorder.messages)  # the next message still arrives
    assert message.cseq.seq == 1
    writer.close()


async def test_outbound_tcp_is_opened_once_and_reused(transport: SipTransport) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()
    accepted = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        while data := await reader.read(65536):
            received.put_nowait(data)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    addr = server.sockets[0].getsockname()[:2]
    for n in range(3):
        transport.send(b"msg%d" % n, addr, "TCP")
    got = b""
    while len(got) < 12:
        got += await get(received)
    assert got == b"msg0msg1msg2"
    assert accepted == 1 and transport.stats.connections_opened == 1
    server.close()


async def test_tcp_refused_reports_failure(transport: SipTransport, recorder: Recorder) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    transport.send(b"data", ("127.0.0.1", port), "TCP")
    data, addr, kind = await get(recorder.failed)
    assert (data, addr, kind) == (b"data", ("127.0.0.1", port), "TCP")


async def test_large_udp_request_moves_to_tcp(transport: SipTransport) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.put_nowait(data)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    addr = server.sockets[0].getsockname()[:2]
    request = big_request(1400)
    transport.send(request.serialize(), addr, "UDP", request)
    got = b""
    while b"x" * 1400 not in got:
        got += await get(received)
    moved = parse_message(got)
    assert moved.top_via.transport == "TCP" and moved.branch == "z9hG4bK-t1"
    assert transport.stats.mtu_switches == 1
    server.close()


async def test_large_udp_request_falls_back_when_tcp_refused(transport: SipTransport) -> None:
    peer = udp_peer()  # a UDP-only peer: nothing on its TCP port
    request = big_request(1400)
    transport.send(request.serialize(), peer.getsockname(), "UDP", request)
    data = await asyncio.to_thread(peer.recv, 65536)
    assert parse_message(data).top_via.transport == "UDP"
    assert transport.stats.mtu_fallbacks == 1
    peer.close()


async def test_small_udp_request_stays_udp(transport: SipTransport) -> None:
    peer = udp_peer()
    request = big_request(100)
    transport.send(request.serialize(), peer.getsockname(), "UDP", request)
    assert parse_message(await asyncio.to_thread(peer.recv, 65536)).top_via.transport == "UDP"
    assert transport.stats.mtu_switches == 0
    peer.close()


async def test_connection_limit_and_idle_timeout(recorder: Recorder) -> None:
    config = TransportConfig(
        "127.0.0.1", 0, max_connections=1, outbound_reserve=0, idle_timeout_s=0.2
    )
    transport = await open_transport(config, recorder)
    try:
        r1, w1 = await asyncio.open_connection(*transport.address)
        w1.write(OPTIONS)
        await get(recorder.messages)
        r2, w2 = await asyncio.open_connection(*transport.address)
        assert await asyncio.wait_for(r2.read(), 2) == b""  # over the limit: refused
        assert transport.stats.connections_refused == 1
        assert await asyncio.wait_for(r1.read(), 3) == b""  # idle: closed
        assert transport.stats.idle_closed == 1
        w1.close()
        w2.close()
    finally:
        await transport.close()


async def test_pings_without_reading_do_not_pile_up_answers(
    transport: SipTransport, recorder: Recorder
) -> None:
    reader, writer = await asyncio.open_connection(*transport.address)
    pings = 262_144  # 1 MiB of double-CRLF pings, answers never read meanwhile
    writer.write(b"\r\n\r\n" * pings)
    await writer.drain()
    async with asyncio.timeout(5):
        while transport.stats.keepalives < pings:
            await asyncio.sleep(0.01)
    answered = b""
    with contextlib.suppress(TimeoutError):
        while chunk := await asyncio.wait_for(reader.read(65536), 0.3):
            answered += chunk
    # One answer per read of pings, not one per ping (which was 512 KiB).
    assert 0 < len(answered) < 64 * 1024 and not answered.strip(b"\r\n")
    writer.close()


async def test_a_message_that_never_finishes_does_not_keep_its_connection(
    recorder: Recorder,
) -> None:
    transport = await open_transport(TransportConfig("127.0.0.1", 0, idle_timeout_s=0.3), recorder)
    try:
        reader, writer = await asyncio.open_connection(*transport.address)
        closed = asyncio.ensure_future(reader.read())
        # A byte every 50 ms, never the end of the headers (slowloris).
        for byte in OPTIONS[:40]:
            if closed.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        assert closed.done() and closed.result() == b""
        assert transport.stats.idle_closed == 1
        writer.close()
    finally:
        await transport.close()


async def test_inbound_connections_are_capped_per_host_and_leave_room_to_dial_out(
    recorder: Recorder,
) -> None:
    config = TransportConfig(
        "127.0.0.1", 0, max_connections=4, max_inbound_per_host=2, outbound_reserve=1
    )
    transport = await open_transport(config, recorder)
    peer = await open_transport(TransportConfig("127.0.0.1", 0), Recorder())
    writers = []
    try:
        for host in ("127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"):
            reader, writer = await asyncio.open_connection(*transport.address, local_addr=(host, 0))
            writers.append(writer)
            writer.write(OPTIONS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.3)
        # 127.0.0.2's third is over its share, and 127.0.0.3's second would take
        # the room kept for dialling out.
        assert transport.stats.connections_accepted == 3
        assert transport.stats.connections_refused == 2
        transport.send(OPTIONS, peer.address, "TCP")
        assert transport.stats.connections_opened == 0
        async with asyncio.timeout(2):
            while transport.stats.connections_opened == 0:
                await asyncio.sleep(0.01)
        assert recorder.failed.empty()
    finally:
        for writer in writers:
            writer.close()
        await peer.close()
        await transport.close()


async def test_message_size_limit(recorder: Recorder) -> None:
    config = TransportConfig("127.0.0.1", 0, limits=ParserLimits(max_message_bytes=1000))
    transport = await open_transport(config, recorder)
    try:
        peer = udp_peer()
        peer.sendto(big_request(2000).serialize(), transport.address)
        _, error, _ = await get(recorder.invalid)
        assert error.status_hint == 513
        peer.close()
    finally:
        await transport.close()


async def test_close_is_idempotent_and_stops_sending(recorder: Recorder) -> None:
    transport = await open_transport(TransportConfig("127.0.0.1", 0), recorder)
    await transport.close()
    await transport.close()
    transport.send(b"x", ("127.0.0.1", 9), "UDP")  # silently ignored
    assert transport.stats.datagrams_sent == 0

"""The running listener against RFC 4475's torture messages and the PROTOS c07-sip suite.

Every message goes to a live user agent over UDP and over TCP (whole, and one
byte per write). What must hold: each gets the answer its verdict calls for
(or is dropped), no callback raises, nothing stalls, and the listener still
answers OPTIONS afterwards. The test data lives beside the repository (or
where ``DIALER_TESTDATA`` says); without it these tests skip.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dialer.sip.timers import TimerConfig
from dialer.transport import TransportConfig
from dialer.user_agent import LOOPBACK, RequestPolicy, UserAgent, UserAgentOptions

pytestmark = pytest.mark.integration


def _testdata() -> Path | None:
    env = os.environ.get("DIALER_TESTDATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / ".." / "shared" / "testdata")
    return next((c.resolve() for c in candidates if c.is_dir()), None)


TESTDATA = _testdata()
RFC4475 = TESTDATA / "rfc4475" if TESTDATA else None
PROTOS = TESTDATA / "protos-c07-sip" / "cases" if TESTDATA else None
needs_rfc4475 = pytest.mark.skipif(
    RFC4475 is None or not RFC4475.is_dir(), reason="shared test data (rfc4475/) is absent"
)
needs_protos = pytest.mark.skipif(
    PROTOS is None or not PROTOS.is_dir(), reason="shared test data (protos-c07-sip/) is absent"
)

# What the listener answers each RFC 4475 message with over UDP (None: dropped).
# Requests that parse get the user agent's answer to an out-of-dialog request
# (603 to an INVITE, 405 to a REGISTER, 501 to an unknown method, 481 with a
# To tag ...); malformed ones get their error's status; responses are dropped.
RFC4475_UDP: dict[str, int | None] = {
    "wsinv.dat": 481,  # valid INVITE, but its To carries a tag: no such dialog
    "intmeth.dat": 501,
    "esc01.dat": 603,
    "escnull.dat": 405,
    "esc02.dat": 501,
    "lwsdisp.dat": 200,
    "longreq.dat": 603,
    "dblreq.dat": 405,  # the trailing INVITE-like octets are ignored
    "semiuri.dat": 200,
    "transports.dat": 200,
    "mpart01.dat": 405,
    "unreason.dat": None,  # responses are never answered
    "noreason.dat": None,
    "badinv01.dat": 400,
    "clerr.dat": 400,
    "ncl.dat": 400,
    "scalar02.dat": 400,
    "scalarlg.dat": None,
    "quotbal.dat": 400,
    "ltgtruri.dat": 400,
    "lwsruri.dat": 400,
    "lwsstart.dat": 400,
    "trws.dat": 400,
    "escruri.dat": 400,
    "baddate.dat": 603,  # the Date does not matter to us
    "regbadct.dat": 405,
    "badaspec.dat": 400,
    "baddn.dat": 400,
    "badvers.dat": 505,
    "mismatch01.dat": 400,
    "mismatch02.dat": 400,
    "bigcode.dat": None,
    "badbranch.dat": 200,
    "insuf.dat": None,  # no Call-ID, From or To: nothing to build an answer from
    "unkscm.dat": 416,
    "novelsc.dat": 416,
    "unksm2.dat": 405,
    "bext01.dat": 420,
    "invut.dat": 603,
    "regaut01.dat": 405,
    "multi01.dat": 400,
    "mcl01.dat": 400,
    "bcast.dat": None,
    "zeromf.dat": 200,  # Max-Forwards 0 is for proxies: an endpoint answers
    "cparam01.dat": 405,
    "cparam02.dat": 405,
    "regescrt.dat": 405,
    "sdp01.dat": 603,
    "inv2543.dat": 603,
    "test.dat": None,
}
# On a stream a message without a usable Content-Length cannot be framed
# (RFC 3261 §18.3): the connection is closed without an answer.
RFC4475_TCP_CLOSED = frozenset(
    {"clerr.dat", "ncl.dat", "mcl01.dat", "baddn.dat", "inv2543.dat", "test.dat"}
)
ALLOWED = frozenset({200, 400, 405, 416, 420, 481, 501, 505, 513, 603})
FAST = TimerConfig(t1_s=0.01, t2_s=0.04, t4_s=0.05, timer_d_s=0.05)
STATUS_RE = re.compile(rb"SIP/2\.0 ([1-6][0-9][0-9]) ")


def probe(n: int | str) -> bytes:
    return (
        "OPTIONS sip:dialer@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-probe-{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:probe@127.0.0.1>;tag=p\r\n"
        "To: <sip:dialer@127.0.0.1>\r\n"
        f"Call-ID: probe-{n}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Agent:
    """A user agent trusting loopback, with a guard on errors raised in callbacks."""

    def __init__(self) -> None:
        self.errors: list[dict[str, object]] = []
        self.ua: UserAgent | None = None

    async def __aenter__(self) -> UserAgent:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        options = UserAgentOptions(
            transport=TransportConfig("127.0.0.1", 0),
            policy=RequestPolicy(trusted=LOOPBACK),
            timers=FAST,
        )
        self.ua = UserAgent(options)
        await self.ua.start()
        return self.ua

    async def __aexit__(self, *exc: object) -> None:
        assert self.ua is not None
        await self.ua.close()
        asyncio.get_running_loop().set_exception_handler(None)
        assert self.errors == [], self.errors


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def udp_roundtrip(sock: socket.socket, ua: UserAgent, tag: int | str) -> None:
    """Send a probe and wait for its 200: everything sent before it has been handled."""
    loop = asyncio.get_running_loop()
    sock.sendto(probe(tag), ua.address)
    marker = f"Call-ID: probe-{tag}\r\n".encode()
    async with asyncio.timeout(5):
        while True:
            data = await loop.sock_recv(sock, 65536)
            if marker in data:
                assert data.startswith(b"SIP/2.0 200 ")
                return


def verdict(before: dict[int, int], after: dict[int, int]) -> int | None:
    """The one status the listener answered with between two snapshots, or None."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta = {k: v for k, v in delta.items() if v}
    assert sum(delta.values()) <= 1, delta
    return next(iter(delta), None)


# --- RFC 4475 ----------------------------------------------------------------------------


def rfc4475_files() -> list[str]:
    return sorted(RFC4475_UDP)


@needs_rfc4475
def test_the_table_covers_every_file() -> None:
    assert RFC4475 is not None
    assert sorted(p.name for p in RFC4475.glob("*.dat")) == rfc4475_files()


@needs_rfc4475
async def test_rfc4475_over_udp(udp: socket.socket) -> None:
    assert RFC4475 is not None
    got: dict[str, int | None] = {}
    for name in rfc4475_files():
        # A fresh agent per message: several files share a branch, and a
        # shared agent would rightly take the second as a retransmission.
        async with Agent() as ua:
            before = dict(ua.stats.answered)
            udp.sendto((RFC4475 / name).read_bytes(), ua.address)
            await udp_roundtrip(udp, ua, name)
            after = dict(ua.stats.answered)
            after[200] -= 1  # the probe's
            got[name] = verdict(before, after)
    assert got == RFC4475_UDP


async def tcp_exchange(ua: UserAgent, data: bytes, *, bytewise: bool) -> list[int]:
    """Write ``data`` on a new connection, half-close, read to the end: statuses seen."""
    reader, writer = await asyncio.open_connection(*ua.address)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if bytewise:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
    else:
        writer.write(data)
    try:
        writer.write_eof()
        received = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        received = b""  # the listener closed a stream it could not frame
    finally:
        writer.close()
    return [int(code) for code in STATUS_RE.findall(received)]


@needs_rfc4475
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "one-byte-writes"])
async def test_rfc4475_over_tcp(bytewise: bool, udp: socket.socket) -> None:
    assert RFC4475 is not None
    got: dict[str, list[int]] = {}
    for name in rfc4475_files():
        async with Agent() as ua:
            data = (RFC4475 / name).read_bytes()
            statuses = await tcp_exchange(
                ua, data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"), bytewise=bytewise
            )
            got[name] = statuses
            await udp_roundtrip(udp, ua, name)  # the listener still answers
    expected = {
        name: [] if name in RFC4475_TCP_CLOSED or status is None else [status]
        for name, status in RFC4475_UDP.items()
    }
    # On a stream the octets after Content-Length are the next message.
    expected["dblreq.dat"] = [405, 603]
    assert got == expected


# --- PROTOS c07-sip ------------------------------------------------------------------------


def protos_case(path: Path, local_port: int) -> tuple[bytes, bytes]:
    """The INVITE and the CANCEL of one case, placeholders filled in (see the data README)."""
    raw = path.read_bytes()
    messages: list[bytes] = []
    pos = 0
    while pos < len(raw) and len(messages) < 2:
        space = raw.index(b" ", pos)
        length = int(raw[pos:space])
        messages.append(raw[space + 1 : space + 1 + length])
        pos = space + 1 + length
    number = int(path.name)
    values = {
        b"<To>": b"dialer@127.0.0.1",
        b"<From>": b"protos@127.0.0.1",
        b"<From-Address>": b"127.0.0.1",
        b"<From-IP>": b"127.0.0.1",
        b"<Local-Port>": str(local_port).encode(),
        b"<Branch-ID>": str(number).encode(),
        b"<Call-ID>": f"protos-{number}".encode(),
        b"<CSeq>": b"1",
        b"<Teardown-Method>": b"CANCEL",
    }
    out = []
    for message in messages:
        for key, value in values.items():
            message = message.replace(key, value)
        _, sep, body = message.partition(b"\r\n\r\n")
        if not sep:
            _, sep, body = message.partition(b"\n\n")
        message = message.replace(b"<Content-Length>", str(len(body)).encode())
        out.append(message)
    return out[0], out[1]


def protos_paths() -> list[Path]:
    assert PROTOS is not None
    return sorted(PROTOS.iterdir(), key=lambda p: int(p.name))


@needs_protos
async def test_protos_over_udp(udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    paths = protos_paths()
    assert len(paths) == 4527
    async with Agent() as ua:
        # Case 0 is the valid reference: an INVITE we decline, then its CANCEL.
        invite, cancel = protos_case(paths[0], port)
        udp.sendto(invite, ua.address)
        udp.sendto(cancel, ua.address)
        await udp_roundtrip(udp, ua, "case-0")
        assert ua.stats.answered == {603: 1, 200: 2}  # 603, the CANCEL's 200, the probe's
        # The rest in batches, each closed by a probe (flow control, and proof
        # that the listener is still answering).
        batch = 250
        handled_before = ua.stats.requests_received + ua.transport.stats.malformed
        sent = 0
        too_big = 0
        for start in range(1, len(paths), batch):
            for path in paths[start : start + batch]:
                for message in protos_case(path, port):
                    if len(message) > 65507:
                        too_big += 1  # cannot be a datagram at all
                        continue
                    udp.sendto(message, ua.address)
                    sent += 1
            await udp_roundtrip(udp, ua, f"batch-{start}")
            sent += 1
        handled = ua.stats.requests_received + ua.transport.stats.malformed - handled_before
        assert handled == sent  # every datagram was handled: none lost, none stuck
        assert too_big < 200  # the overflow cases of the suite, past 64 KiB
        assert set(ua.stats.answered) <= ALLOWED, ua.stats.answered
        # Most mutations still parse (the INVITE is declined); the rest are
        # answered 400-class or dropped. Both kinds must be present.
        assert ua.stats.answered[603] > 1000 and ua.stats.malformed_answered > 100
        await udp_roundtrip(udp, ua, "end")


@needs_protos
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "one-byte-writes"])
async def test_protos_sample_over_tcp(bytewise: bool, udp: socket.socket) -> None:
    paths = protos_paths()[:: 150 if bytewise else 45]
    async with Agent() as ua:
        for path in paths:
            invite, _ = protos_case(path, 9)
            statuses = await tcp_exchange(
                ua, invite.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"), bytewise=bytewise
            )
            assert len(statuses) <= 1 and set(statuses) <= ALLOWED, (path.name, statuses)
            if path.name == "0000000":
                assert statuses == [603]
        await udp_roundtrip(udp, ua, "end")
        assert ua.transport.connections == 0  # every connection was closed

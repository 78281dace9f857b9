"""ReceivePoller: many UDP sockets read in one pass, over real loopback sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from media.receive_poller import ReceivePoller


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made = []
    for _ in range(3):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        made.append(sock)
    yield made
    for sock in made:
        sock.close()


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def _settle() -> None:
    time.sleep(0.02)  # loopback delivery is immediate; this only orders the test


def test_each_socket_gets_its_datagrams_with_the_source(
    sockets: list[socket.socket], sender: socket.socket
) -> None:
    poller = ReceivePoller()
    got: dict[int, list[tuple[bytes, tuple[str, int]]]] = {i: [] for i in range(3)}
    for i, sock in enumerate(sockets):
        poller.add(sock, lambda data, address, i=i: got[i].append((data, address)))
    for i, sock in enumerate(sockets):
        sender.sendto(b"to %d" % i, sock.getsockname())
    _settle()
    assert poller.poll() == 3
    source = sender.getsockname()
    assert got == {i: [(b"to %d" % i, source)] for i in range(3)}
    assert poller.poll() == 0  # nothing left
    poller.close()


def test_a_burst_is_drained_over_rounds_and_the_rest_waits(
    sockets: list[socket.socket], sender: socket.socket
) -> None:
    poller = ReceivePoller(max_rounds=4)
    got: list[bytes] = []
    poller.add(sockets[0], lambda data, address: got.append(data))
    for n in range(6):
        sender.sendto(bytes([n]), sockets[0].getsockname())
    _settle()
    assert poller.poll() == 4
    assert poller.poll() == 2
    assert got == [bytes([n]) for n in range(6)]  # in order, none lost
    poller.close()


def test_removed_and_drained_sockets(sockets: list[socket.socket], sender: socket.socket) -> None:
    poller = ReceivePoller()
    got: list[bytes] = []
    poller.add(sockets[0], lambda data, address: got.append(data))
    poller.add(sockets[1], lambda data, address: got.append(data))
    with pytest.raises(ValueError, match="already polled"):
        poller.add(sockets[1], lambda data, address: None)
    poller.remove(sockets[1])
    poller.remove(sockets[1])  # twice is harmless
    assert len(poller) == 1
    sender.sendto(b"a", sockets[0].getsockname())
    sender.sendto(b"b", sockets[1].getsockname())
    sender.sendto(b"c", sockets[1].getsockname())
    _settle()
    assert poller.poll() == 1
    assert got == [b"a"]
    poller.close()


def test_a_failing_handler_does_not_stop_the_others(
    sockets: list[socket.socket], sender: socket.socket
) -> None:
    errors: list[Exception] = []
    poller = ReceivePoller(on_error=lambda exc, where: errors.append(exc))
    got: list[bytes] = []

    def broken(data: bytes, address: tuple[str, int]) -> None:
        raise RuntimeError("bad handler")

    poller.add(sockets[0], broken)
    poller.add(sockets[1], lambda data, address: got.append(data))
    sender.sendto(b"x", sockets[0].getsockname())
    sender.sendto(b"y", sockets[1].getsockname())
    _settle()
    assert poller.poll() == 2
    assert got == [b"y"]
    assert [str(e) for e in errors] == ["bad handler"]
    poller.close()


def test_without_an_error_callback_the_handlers_error_propagates(
    sockets: list[socket.socket], sender: socket.socket
) -> None:
    poller = ReceivePoller()

    def broken(data: bytes, address: tuple[str, int]) -> None:
        raise RuntimeError("bad handler")

    poller.add(sockets[0], broken)
    sender.sendto(b"x", sockets[0].getsockname())
    _settle()
    with pytest.raises(RuntimeError):
        poller.poll()
    poller.close()


def test_a_connected_socket_is_read_without_source_and_handed_its_peer(
    sockets: list[socket.socket], sender: socket.socket
) -> None:
    poller = ReceivePoller()
    got: list[tuple[bytes, tuple[str, int]]] = []
    sock = sockets[0]
    poller.add(sock, lambda data, address: got.append((data, address)))
    peer = sender.getsockname()
    sock.connect(peer)
    poller.connected(sock, peer)
    sender.sendto(b"one", sock.getsockname())
    _settle()
    assert poller.poll() == 1
    assert got == [(b"one", peer)]
    poller.connected(sock, None)  # back to recvfrom: the source comes from the datagram
    sender.sendto(b"two", sock.getsockname())
    _settle()
    assert poller.poll() == 1
    assert got[-1] == (b"two", peer)
    poller.close()

"""The port-pair allocator as a table of moves, and the bind helper on real sockets."""

from __future__ import annotations

import socket

import pytest

from media.ports import PortAllocator, PortPair, PortsExhausted, bind_pair


@pytest.mark.parametrize(
    ("first", "last", "capacity", "ports"),
    [
        (10000, 10009, 5, [10000, 10002, 10004, 10006, 10008]),
        (10001, 10009, 4, [10002, 10004, 10006, 10008]),  # odd start rounds up
        (10000, 10008, 4, [10000, 10002, 10004, 10006]),  # 10008 has no odd partner
        (10000, 10001, 1, [10000]),
    ],
)
def test_range_holds_even_odd_pairs(first, last, capacity, ports):
    allocator = PortAllocator(first, last)
    assert allocator.capacity == capacity
    pairs = [allocator.acquire() for _ in range(capacity)]
    assert [p.rtp for p in pairs] == ports
    assert all(p.rtcp == p.rtp + 1 <= last for p in pairs)
    with pytest.raises(PortsExhausted):
        allocator.acquire()


@pytest.mark.parametrize(
    ("first", "last"), [(10000, 10000), (10001, 10002), (0, 10), (65534, 65536)]
)
def test_ranges_without_a_pair_are_refused(first, last):
    with pytest.raises(ValueError):
        PortAllocator(first, last)


# Each move: ("acquire", expected rtp port) or ("release", port) or ("exhausted", None).
@pytest.mark.parametrize(
    "moves",
    [
        # Round-robin: a released pair is reused last.
        [
            ("acquire", 20000),
            ("release", 20000),
            ("acquire", 20002),
            ("acquire", 20004),
            ("acquire", 20000),
            ("exhausted", None),
        ],
        # Never the same pair twice while held, whatever the release order.
        [
            ("acquire", 20000),
            ("acquire", 20002),
            ("acquire", 20004),
            ("release", 20002),
            ("acquire", 20002),
            ("exhausted", None),
            ("release", 20000),
            ("acquire", 20000),
        ],
    ],
)
def test_allocation_moves(moves):
    allocator = PortAllocator(20000, 20005)
    for move, port in moves:
        if move == "acquire":
            assert allocator.acquire().rtp == port
        elif move == "release":
            allocator.release(PortPair(port))
        else:
            with pytest.raises(PortsExhausted):
                allocator.acquire()
    assert allocator.in_use + allocator.available == allocator.capacity


def test_probe_skips_unusable_pairs_without_holding_them():
    allocator = PortAllocator(30000, 30007)
    busy = {30000, 30004}
    pair = allocator.acquire(lambda p: p.rtp not in busy)
    assert pair.rtp == 30002
    assert allocator.in_use == 1
    assert allocator.acquire(lambda p: p.rtp not in busy).rtp == 30006
    with pytest.raises(PortsExhausted, match="2 of 4 held"):
        allocator.acquire(lambda p: p.rtp not in busy)
    busy.clear()  # the other program let go: the skipped pairs are usable again
    assert {allocator.acquire().rtp, allocator.acquire().rtp} == {30000, 30004}


def test_releasing_a_pair_not_held_is_an_error():
    allocator = PortAllocator(30000, 30003)
    with pytest.raises(ValueError, match="not held"):
        allocator.release(PortPair(30000))


def test_start_port_sets_where_allocation_begins():
    allocator = PortAllocator(30000, 30009, start_port=30006)
    assert [allocator.acquire().rtp for _ in range(5)] == [30006, 30008, 30000, 30002, 30004]


def test_bind_pair_skips_ports_another_socket_holds():
    allocator = PortAllocator(42000, 42999)
    first = bind_pair(allocator, "127.0.0.1")
    # Someone else takes the RTCP port of the next pair.
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", first.rtp_port + 3))
    try:
        second = bind_pair(allocator, "127.0.0.1")
        assert second.rtp_port == first.rtp_port + 4
        assert second.rtp_socket.getsockname()[1] == second.rtp_port
        assert second.rtcp_socket.getsockname()[1] == second.rtcp_port
        assert not allocator.is_held(PortPair(first.rtp_port + 2))
    finally:
        squatter.close()
    first.close()
    second.close()
    second.close()  # idempotent
    assert allocator.in_use == 0
    assert first.rtp_socket.fileno() == -1


def test_bind_pair_raises_when_nothing_binds():
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    even = port - (port & 1)
    try:
        allocator = PortAllocator(even, even + 1)
        with pytest.raises(PortsExhausted):
            bind_pair(allocator, "127.0.0.1")
        assert allocator.in_use == 0
    finally:
        holder.close()

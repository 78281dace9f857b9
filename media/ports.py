"""RTP/RTCP port pairs: an allocator over an even-port range, and a bind helper.

Rules of this file:

- RTP takes the even port and RTCP the odd port just above it (RFC 3550
  §11: "RTP SHOULD use an even destination port number and the corresponding
  RTCP stream SHOULD use the next higher (odd) destination port number").
- ``PortAllocator`` is bookkeeping only: it never opens a socket. Whether a
  pair can really be used is asked of a ``probe`` the caller hands in, so a
  pair some other program holds is skipped, not handed out.
- A pair is never handed out twice while it is held. Allocation goes round
  the range from where the last one stopped, so a pair just released is the
  last to be reused and stray packets of the old call find no new one.
- ``bind_pair`` is the thin edge: its probe binds both UDP sockets, and the
  ``BoundPair`` it returns gives the pair back when closed.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "BoundPair",
    "PortAllocator",
    "PortPair",
    "PortsExhausted",
    "bind_pair",
]


class PortsExhausted(RuntimeError):
    """Every pair of the range is held, or none of the free ones could be bound."""


@dataclass(frozen=True, slots=True)
class PortPair:
    """An RTP port (even) and its RTCP port (the odd one above)."""

    rtp: int

    @property
    def rtcp(self) -> int:
        """The RTCP port: RTP + 1."""
        return self.rtp + 1


class PortAllocator:
    """Hands out even/odd port pairs from ``[first_port, last_port]``.

    ``first_port`` is rounded up to even and ``last_port`` bounds the RTCP
    port (the odd one), so the range 10000-10009 holds five pairs.
    """

    def __init__(self, first_port: int, last_port: int, *, start_port: int | None = None) -> None:
        first = first_port + (first_port & 1)
        if not 0 < first < last_port <= 65535:
            raise ValueError(f"port range {first_port}-{last_port} holds no even/odd pair")
        self.first_port = first
        self.last_port = last_port
        self.capacity = (last_port - first + 1) // 2
        self._held: set[int] = set()
        start = first if start_port is None else start_port
        self._cursor = ((start - first) // 2) % self.capacity

    @property
    def in_use(self) -> int:
        """Pairs held now."""
        return len(self._held)

    @property
    def available(self) -> int:
        """Pairs not held (some may still fail to bind)."""
        return self.capacity - len(self._held)

    def is_held(self, pair: PortPair) -> bool:
        """True while ``pair`` is handed out and not released."""
        return pair.rtp in self._held

    def acquire(self, probe: Callable[[PortPair], bool] | None = None) -> PortPair:
        """Return the next free pair that ``probe`` accepts, and hold it.

        ``probe`` is asked about each free pair in turn (round the range from
        the last allocation) and says whether it is usable; without one,
        every free pair is. Raises ``PortsExhausted`` when none is.
        """
        for step in range(self.capacity):
            slot = (self._cursor + step) % self.capacity
            port = self.first_port + 2 * slot
            if port in self._held:
                continue
            pair = PortPair(port)
            if probe is not None and not probe(pair):
                continue
            self._held.add(port)
            self._cursor = (slot + 1) % self.capacity
            return pair
        raise PortsExhausted(
            f"no usable RTP port pair in {self.first_port}-{self.last_port} "
            f"({self.in_use} of {self.capacity} held)"
        )

    def release(self, pair: PortPair) -> None:
        """Give ``pair`` back; releasing a pair not held raises ``ValueError``."""
        try:
            self._held.remove(pair.rtp)
        except KeyError:
            raise ValueError(f"port pair {pair.rtp}/{pair.rtcp} is not held") from None


@dataclass(slots=True)
class BoundPair:
    """Two bound UDP sockets for one call; ``close()`` closes them and frees the pair.

    The sockets are non-blocking and are handed to the event loop as they are;
    once a transport owns a socket, closing the transport closes it too (a
    second close here does no harm).
    """

    pair: PortPair
    host: str
    rtp_socket: socket.socket
    rtcp_socket: socket.socket
    allocator: PortAllocator | None = None
    _released: bool = field(default=False, init=False, repr=False)

    @property
    def rtp_port(self) -> int:
        """The RTP port (even)."""
        return self.pair.rtp

    @property
    def rtcp_port(self) -> int:
        """The RTCP port (RTP + 1)."""
        return self.pair.rtcp

    def release(self) -> None:
        """Give the pair back to the allocator, leaving the sockets alone (idempotent).

        For sockets a transport owns and closes: if the pair is acquired again
        before the transport has closed them, binding fails and it is skipped.
        """
        if not self._released:
            self._released = True
            if self.allocator is not None:
                self.allocator.release(self.pair)

    def close(self) -> None:
        """Close both sockets and release the pair (idempotent)."""
        self.rtp_socket.close()
        self.rtcp_socket.close()
        self.release()


def _udp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_pair(allocator: PortAllocator, host: str = "0.0.0.0") -> BoundPair:
    """Acquire a pair from ``allocator`` whose two ports both bind on ``host``.

    Ports another program holds are skipped (they stay free in the allocator
    and are tried again next time round). Raises ``PortsExhausted``.
    """
    bound: list[socket.socket] = []

    def probe(pair: PortPair) -> bool:
        try:
            rtp = _udp_socket(host, pair.rtp)
        except OSError:
            return False
        try:
            rtcp = _udp_socket(host, pair.rtcp)
        except OSError:
            rtp.close()
            return False
        bound[:] = [rtp, rtcp]
        return True

    pair = allocator.acquire(probe)
    return BoundPair(pair, host, bound[0], bound[1], allocator)

"""Reads the RTP sockets of many calls in one pass, on the media clock's wake-ups.

Rules of this file:

- Why: with one event-loop reader per call, every datagram that finds the
  loop asleep costs a wake-up (an ``epoll_wait`` return, a context switch,
  a callback through the loop) for one 172-byte packet. At a few hundred
  calls that is most of a worker's system time. Here the sockets sit in a
  poll set of their own, outside the event loop, and ``poll()`` (called by
  ``media.ticker.FrameTicker`` at each 1 ms slot wake-up, before the frames
  due are sent) asks the kernel once which of them hold datagrams and reads
  them: one ``epoll_wait`` for all the calls of the worker, and the loop
  sleeps between its timers.
- A datagram waits at most until the next wake-up of the clock (the ticker
  wakes at least every 1 ms while it watches sockets): arrival times are
  read when it is handled, so they carry up to 1 ms of extra jitter, which
  the jitter buffer absorbs.
- One datagram per ready socket per round, then the set is asked again, up
  to ``max_rounds``: a burst on one call (catching up after a stall, 10 ms
  packets) is drained without a failed ``recvfrom`` per socket per pass.
  What is left waits for the next wake-up (the poll set is level-triggered).
- A socket error on receive (an ICMP error queued on the socket) is counted
  and skipped; the handler decides about the datagram's content. A handler
  that raises does not stop the pass: the error goes to ``on_error`` and the
  other sockets are read.
- A socket connected to its peer (``connected``: symmetric RTP once the
  peer's source is known) is read with ``recv``: the kernel drops datagrams
  from anyone else, and no address tuple is made per datagram; the handler
  gets the connected address.
- Linux has ``epoll``; elsewhere ``select.poll`` does the same job.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable

__all__ = ["DatagramHandler", "ReceivePoller"]

Address = tuple[str, int]
DatagramHandler = Callable[[bytes, Address], None]

_MAX_DATAGRAM = 2048  # an RTP packet of G.711 is 172 bytes; a jumbo frame is not RTP


class ReceivePoller:
    """A poll set of UDP sockets and the handler of each."""

    def __init__(
        self,
        *,
        max_rounds: int = 4,
        on_error: Callable[[Exception, socket.socket | int], None] | None = None,
    ) -> None:
        if hasattr(select, "epoll"):
            self._poll_set: select.epoll | select.poll = select.epoll()
            self._timeout: float = 0.0
        else:  # pragma: no cover - not Linux
            self._poll_set = select.poll()
            self._timeout = 0.0
        self.max_rounds = max_rounds
        self.on_error = on_error
        # fd -> (recvfrom, recv, handler, the connected address or None)
        self._handlers: dict[
            int,
            tuple[
                Callable[[int], tuple[bytes, Address]],
                Callable[[int], bytes],
                DatagramHandler,
                Address | None,
            ],
        ] = {}
        self.received = 0
        self.errors = 0
        self.polls = 0

    def __len__(self) -> int:
        return len(self._handlers)

    def add(self, sock: socket.socket, handler: DatagramHandler) -> None:
        """Watch ``sock`` (non-blocking); ``handler(data, address)`` gets each datagram."""
        fd = sock.fileno()
        if fd in self._handlers:
            raise ValueError(f"socket {fd} is already polled")
        sock.setblocking(False)
        self._poll_set.register(fd, select.POLLIN)
        self._handlers[fd] = (sock.recvfrom, sock.recv, handler, None)

    def connected(self, sock: socket.socket, address: Address | None) -> None:
        """``sock`` is now connected to ``address`` (None: no longer connected)."""
        entry = self._handlers.get(sock.fileno())
        if entry is not None:
            self._handlers[sock.fileno()] = (entry[0], entry[1], entry[2], address)

    def remove(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` (no-op when it is not watched or already closed)."""
        fd = sock.fileno()
        if self._handlers.pop(fd, None) is not None:
            try:
                self._poll_set.unregister(fd)
            except (OSError, KeyError, ValueError):
                return

    def poll(self) -> int:
        """Read what is waiting on the sockets; return the number of datagrams handled."""
        handlers = self._handlers
        if not handlers:
            return 0
        poll = self._poll_set.poll
        timeout = self._timeout
        handled = 0
        self.polls += 1
        for _ in range(self.max_rounds):
            ready = poll(timeout)
            if not ready:
                break
            for fd, _events in ready:
                entry = handlers.get(fd)
                if entry is None:
                    continue  # removed by a handler earlier in this pass
                recvfrom, recv, handler, address = entry
                try:
                    if address is None:
                        data, address = recvfrom(_MAX_DATAGRAM)
                    else:
                        data = recv(_MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    self.errors += 1
                    continue
                handled += 1
                try:
                    handler(data, address)
                except Exception as exc:  # one call's failure must not stop the others
                    if self.on_error is None:
                        raise
                    self.on_error(exc, fd)
        self.received += handled
        return handled

    def close(self) -> None:
        """Forget every socket and close the poll set (idempotent)."""
        self._handlers.clear()
        close = getattr(self._poll_set, "close", None)
        if close is not None:
            close()

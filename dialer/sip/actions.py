"""What the pure SIP core asks the edge to do, and what it tells the layer above.

Rules of this file:

1. Every state-machine step in ``transaction.py``, ``dialog.py`` and
   ``call.py`` returns a ``list[Action]``; none writes to a socket, starts a
   real timer or calls back into anything. The edge carries the actions out
   in order::

       for action in actions:
           match action:
               case Send(data=data, addr=addr):
                   transport.sendto(data, addr)
               case StartTimer(key=key, timer=timer, at=at):
                   timers.schedule(key, timer, at)   # loop.call_at, or a fake clock
               case CancelTimer(key=key, timer=timer):
                   timers.cancel(key, timer)

   and hands every other action (an application event) upward.
2. Timers are data. ``(key, timer)`` names one timer; starting a timer that
   is already running replaces it. When it fires, the edge calls
   ``timer_fired(key, timer, now)`` on whoever owns ``key``.
3. Actions are small, frozen and slotted. ``Send`` carries the bytes already
   serialised (a retransmission sends the very same bytes) and the message
   they came from, for logs and tests.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TypeAlias

from dialer.sip.message import Request, Response
from dialer.sip.slot_init import slot_init

__all__ = [
    "Action",
    "Address",
    "CancelTimer",
    "Deliver",
    "Send",
    "StartTimer",
    "TimedOut",
    "TransactionTerminated",
    "TransportFailed",
]

#: A transport address: (host, port). The host is an IP literal at the edge.
Address: TypeAlias = tuple[str, int]


class Action:
    """Base of everything a core step returns (wire work, timers, events)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Send(Action):
    """Send ``data`` to ``addr`` over ``transport`` ("UDP", "TCP" or "TLS")."""

    data: bytes
    addr: Address
    transport: str
    message: Request | Response = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class StartTimer(Action):
    """Call ``timer_fired(key, timer, now)`` once the clock reaches ``at`` (seconds)."""

    key: Hashable
    timer: str
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer(Action):
    """Forget timer ``(key, timer)`` if it is still pending."""

    key: Hashable
    timer: str


@dataclass(frozen=True, slots=True)
class Deliver(Action):
    """A message for the transaction user.

    ``key`` is the transaction it belongs to, or None for a message no
    transaction claims: the ACK for a 2xx (its own branch, §17.2.3) and a
    response that matches no client transaction (a stray 2xx, §17.1.3).
    ``cancels`` is set on a CANCEL: the key of the INVITE server transaction it
    targets, None if there is none (then the answer is 481, §9.2).
    """

    key: Hashable | None
    message: Request | Response
    source: Address | None = None
    cancels: Hashable | None = None


@dataclass(frozen=True, slots=True)
class TimedOut(Action):
    """A transaction gave up (Timer B, F or H): act as for a 408 (§8.1.3.1)."""

    key: Hashable
    timer: str
    request: Request


@dataclass(frozen=True, slots=True)
class TransportFailed(Action):
    """The transport reported a failure: act as for a 503 (§8.1.3.1)."""

    key: Hashable
    request: Request


@dataclass(frozen=True, slots=True)
class TransactionTerminated(Action):
    """The transaction reached Terminated; the layer has already forgotten it."""

    key: Hashable


# Called, not a decorator: mypyc builds a class under a decorator it does not know
# as a plain Python class (slot_init.py, rule 4).
slot_init(Send)
slot_init(StartTimer)
slot_init(CancelTimer)
slot_init(Deliver)

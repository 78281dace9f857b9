"""Real-time scheduling for a worker's media clock.

A worker sends every call's RTP on a 20 ms clock; when other programs on
the machine take the CPU at the wrong moment, frames go out late whatever
the worker's own load. Media servers are run at a real-time priority for
that reason (Asterisk ``-p``, FreeSWITCH ``-rp``), and so can a worker:
``DIALER_REALTIME_PRIORITY`` (1-99) puts its process under ``SCHED_RR``.
A worker that is not allowed to (it needs root or CAP_SYS_NICE) runs on at
normal priority and says so.
"""

from __future__ import annotations

import os

__all__ = ["apply_realtime_priority"]


def apply_realtime_priority(priority: int) -> str | None:
    """Put this process under SCHED_RR at ``priority`` (0: leave it alone).

    Returns ``None`` when done (or nothing was asked), else why it was not.
    """
    if priority <= 0:
        return None
    if not hasattr(os, "sched_setscheduler"):
        return "real-time scheduling is not available on this system"
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
    except PermissionError:
        return "not permitted to use SCHED_RR (needs root or CAP_SYS_NICE)"
    except OSError as exc:
        return f"SCHED_RR refused: {exc.strerror or exc}"
    return None

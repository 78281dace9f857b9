"""Garbage collection in a worker: start-up objects out of the collector's sight.

A worker's 20 ms media clock cannot wait for a full collection: at 200
voicebot calls one took 30-40 ms, long enough to make every call's audio
late. Most of what a full collection walks never dies: the modules,
classes, functions and tables loaded at start-up. ``gc.freeze()`` moves
everything alive at that moment into a permanent generation the collector
skips, so later collections walk only the calls' own objects (and are
rarer, since the frozen objects no longer count towards the next full
collection). Reference counting still frees frozen objects that are no
longer used; only a reference cycle among them would stay, and start-up
objects do not come and go.

A worker also makes its young collections rarer (`WORKER_THRESHOLDS`): with
CPython's default of one every 700 new container objects, a call's
short-lived state (its transactions, parsed messages, tasks) lives through
several young collections and is promoted before it dies, to be walked again
by older ones. Measured in ``bench/pipeline.py`` (1 worker, 9,000 calls,
compiled build): garbage collection took 1.2-1.5 s of the worker's 11-12.5 s
of CPU at the default with 14 full collections of up to 65 ms, and 0.6 s of
9.7 s with (3000, 10, 10), 3 full collections of up to 30 ms; the longest
young and middle collections stayed 4 and 8 ms. Larger first thresholds cut
the total further (0.3 s at 10,000) but made middle collections of up to
38 ms, which a 20 ms media clock would feel.
"""

from __future__ import annotations

import gc

__all__ = ["WORKER_THRESHOLDS", "freeze_startup_objects", "tune_collector"]

WORKER_THRESHOLDS = (3000, 10, 10)


def freeze_startup_objects() -> int:
    """Collect once, then freeze what is alive; return how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def tune_collector() -> int:
    """A worker's collector: start-up objects frozen, young collections rarer.

    Returns how many objects were frozen.
    """
    gc.set_threshold(*WORKER_THRESHOLDS)
    return freeze_startup_objects()

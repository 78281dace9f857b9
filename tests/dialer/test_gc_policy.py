"""freeze_startup_objects: what is alive at start-up leaves the collector's generations."""

from __future__ import annotations

import subprocess
import sys


def _in_a_child(code: str) -> None:
    """Run ``code`` in a fresh interpreter; it prints ok when its asserts hold.

    In a child: freezing the test runner's own objects would outlive the test.
    """
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_startup_objects_are_frozen_and_new_garbage_is_still_collected() -> None:
    code = (
        "import gc\n"
        "from dialer.gc_policy import freeze_startup_objects\n"
        "frozen = freeze_startup_objects()\n"
        "assert frozen == gc.get_freeze_count() > 1000, frozen\n"
        "assert sum(gc.get_count()) < 50\n"
        "class Node:\n"
        "    pass\n"
        "a, b = Node(), Node()\n"
        "a.other, b.other = b, a\n"
        "del a, b\n"
        "assert gc.collect() >= 2  # a cycle made after the freeze is found\n"
        "print('ok')\n"
    )
    _in_a_child(code)


def test_a_worker_collector_is_frozen_and_collects_the_young_less_often() -> None:
    code = (
        "import gc\n"
        "from dialer.gc_policy import WORKER_THRESHOLDS, tune_collector\n"
        "default = gc.get_threshold()\n"
        "assert tune_collector() == gc.get_freeze_count() > 1000\n"
        "assert gc.get_threshold() == WORKER_THRESHOLDS\n"
        "assert WORKER_THRESHOLDS[0] > default[0]\n"
        "print('ok')\n"
    )
    _in_a_child(code)

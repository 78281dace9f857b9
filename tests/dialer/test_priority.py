"""DIALER_REALTIME_PRIORITY: the worker's process under SCHED_RR, or a reason why not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dialer.priority import apply_realtime_priority
from dialer.settings import Settings, SettingsError


def test_zero_leaves_the_process_alone() -> None:
    before = os.sched_getscheduler(0)
    assert apply_realtime_priority(0) is None
    assert os.sched_getscheduler(0) == before


def _in_child(code: str) -> str:
    # In a child process: the test runner itself must not turn real-time.
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    return result.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_RR needs root here")
def test_a_priority_puts_the_process_under_round_robin() -> None:
    out = _in_child(
        "import os; from dialer.priority import apply_realtime_priority as a; "
        "print(a(7), os.sched_getscheduler(0) == os.SCHED_RR, os.sched_getparam(0).sched_priority)"
    )
    assert out == "None True 7"


def test_refusal_is_reported_not_raised() -> None:
    # An unprivileged child: drop to nobody first when we are root.
    code = (
        "import os\n"
        "if os.geteuid() == 0:\n"
        "    os.setgid(65534); os.setuid(65534)\n"
        "from dialer.priority import apply_realtime_priority as a\n"
        "print(a(5))\n"
    )
    out = _in_child(code)
    assert "not permitted" in out or "refused" in out


def test_the_setting_is_parsed_and_bounded() -> None:
    assert Settings.from_env({"DIALER_REALTIME_PRIORITY": "10"}).realtime_priority == 10
    assert Settings.from_env({}).realtime_priority == 0
    with pytest.raises(SettingsError, match="DIALER_REALTIME_PRIORITY"):
        Settings.from_env({"DIALER_REALTIME_PRIORITY": "100"})

"""The plain-Python SIP core, where this checkout runs the compiled one (setup.py).

Installs without a C compiler get the same sources uncompiled; the suite
otherwise only ever runs whichever one is built here. This runs the SIP unit
tests against a copy of ``dialer/sip/`` that holds the sources alone, in a
subprocess, so that the plain package (and ``slot_init`` on plain slotted
classes) stays tested too.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent


def _compiled() -> list[Path]:
    return [
        path
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        for path in (ROOT / "dialer" / "sip").glob(f"*{suffix}")
    ]


@pytest.mark.skipif(not _compiled(), reason="this checkout runs the plain-Python SIP core already")
def test_the_uncompiled_sip_core_passes_the_sip_unit_tests(tmp_path: Path) -> None:
    (tmp_path / "dialer").mkdir()
    shutil.copy(ROOT / "dialer" / "__init__.py", tmp_path / "dialer" / "__init__.py")
    shutil.copytree(
        ROOT / "dialer" / "sip",
        tmp_path / "dialer" / "sip",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"),
    )
    shutil.copytree(
        HERE,
        tmp_path / "tests" / "dialer" / "sip",
        ignore=shutil.ignore_patterns(Path(__file__).name, "__pycache__"),
    )
    shutil.copy(ROOT / "tests" / "__init__.py", tmp_path / "tests" / "__init__.py")
    shutil.copy(ROOT / "tests" / "dialer" / "__init__.py", tmp_path / "tests" / "dialer")
    probe = (
        "import sys, dialer.sip.call as c, dialer.sip.uri as u; "
        "sys.exit(not (c.__file__.endswith('.py') and '__slots__' in vars(u.SipUri)))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    assert subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env).returncode == 0
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         "-o", "asyncio_mode=auto", "--rootdir", str(tmp_path), "tests/dialer/sip"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

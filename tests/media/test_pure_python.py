"""The plain-Python media package, where this checkout runs the compiled one (setup.py).

Installs without a C compiler get the same sources uncompiled; the suite
otherwise only ever runs whichever one is built here. This runs the media
unit tests that need no server against a copy of ``media/`` that holds the
sources alone, in a subprocess, so that the plain package stays tested too.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = [
    "test_session.py",
    "test_jitter.py",
    "test_receive_poller.py",
    "test_recording.py",
    "test_streams.py",
    "test_websocket.py",
    "test_rtp.py",
]


def _compiled() -> list[Path]:
    return [
        path
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        for path in (ROOT / "media").glob(f"*{suffix}")
    ]


@pytest.mark.skipif(not _compiled(), reason="this checkout runs the plain-Python media already")
def test_the_uncompiled_media_package_passes_the_media_unit_tests(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "media", tmp_path / "media", ignore=shutil.ignore_patterns("*.so"))
    (tmp_path / "tests" / "media").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "__init__.py", tmp_path / "tests" / "__init__.py")
    shutil.copy(ROOT / "tests" / "media" / "__init__.py", tmp_path / "tests" / "media")
    present = [name for name in TESTS if (ROOT / "tests" / "media" / name).exists()]
    for name in present:
        shutil.copy(ROOT / "tests" / "media" / name, tmp_path / "tests" / "media" / name)
    probe = "import media.session, sys; sys.exit(media.session.__file__.endswith('.py') is False)"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    assert subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env).returncode == 0
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         "-o", "asyncio_mode=auto", "--rootdir", str(tmp_path),
         *[f"tests/media/{name}" for name in present]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

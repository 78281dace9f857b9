"""A compiled module older than its source is refused in a checkout, not run silently."""

from __future__ import annotations

import importlib.machinery
import os
from pathlib import Path

import pytest

from media.stale_build import refuse_stale_builds


def _checkout(tmp_path: Path, *, source_newer_by_s: float) -> Path:
    (tmp_path / "pyproject.toml").write_text("")
    package = tmp_path / "pkg"
    package.mkdir()
    source = package / "mod.py"
    built = package / f"mod{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    source.write_text("")
    built.write_bytes(b"")
    os.utime(built, (1_000_000.0, 1_000_000.0))
    os.utime(source, (1_000_000.0 + source_newer_by_s,) * 2)
    return package


def test_a_source_edited_after_its_build_is_refused(tmp_path: Path) -> None:
    package = _checkout(tmp_path, source_newer_by_s=60)
    with pytest.raises(ImportError, match=r"mod\.py changed after it was compiled.*pkg/\*\.so"):
        refuse_stale_builds(package, tmp_path, what="pkg/*.so")


def test_a_build_as_new_as_its_source_is_used(tmp_path: Path) -> None:
    package = _checkout(tmp_path, source_newer_by_s=0.5)  # within the copy's second
    refuse_stale_builds(package, tmp_path, what="pkg/*.so")


def test_an_installed_package_is_not_checked(tmp_path: Path) -> None:
    package = _checkout(tmp_path, source_newer_by_s=60)
    (tmp_path / "pyproject.toml").unlink()
    refuse_stale_builds(package, tmp_path, what="pkg/*.so")

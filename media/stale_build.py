"""Refuse a compiled module older than its source, in a checkout.

Python imports a compiled module before its source, so a source edited after
`pip install -e .` compiled it would be ignored without a word. The compiled
packages (media, dialer.sip) call this from their ``__init__``. Plain Python,
never compiled itself, and importing nothing of ours, so that any package may
use it.
"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

__all__ = ["refuse_stale_builds"]


def refuse_stale_builds(package_dir: Path, checkout_root: Path, *, what: str) -> None:
    """Raise ImportError if a ``.py`` in ``package_dir`` is newer than its build.

    Only in a checkout (``checkout_root`` holds pyproject.toml): an installed
    package was built and copied together. ``what`` names the package's
    modules in the message (``media/*.so``).
    """
    if not (checkout_root / "pyproject.toml").exists():
        return
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for built in package_dir.glob(f"*{suffix}"):
            source = built.with_name(built.name[: -len(suffix)] + ".py")
            if source.exists() and source.stat().st_mtime > built.stat().st_mtime + 1:
                raise ImportError(
                    f"{source} changed after it was compiled into {built.name}: "
                    "rebuild (pip install -e .) or remove the build "
                    f"(rm {what}; DIALER_PURE_PYTHON=1 pip install -e . keeps it off)"
                )

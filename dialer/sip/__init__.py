"""Pure SIP protocol core (sans-IO).

The per-call modules may be compiled by mypyc (setup.py). Python imports a
compiled module before its source, so a source edited after the build would
be ignored without a word: that is refused here, with what to run.
"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path


def _refuse_stale_builds() -> None:
    here = Path(__file__).parent
    if not (here.parent.parent / "pyproject.toml").exists():
        return  # installed, not a checkout: built and copied together
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for built in here.glob(f"*{suffix}"):
            source = built.with_name(built.name[: -len(suffix)] + ".py")
            if source.exists() and source.stat().st_mtime > built.stat().st_mtime + 1:
                raise ImportError(
                    f"{source} changed after it was compiled into {built.name}: "
                    "rebuild (pip install -e .) or remove the build "
                    "(rm dialer/sip/*.so; DIALER_PURE_PYTHON=1 pip install -e . keeps it off)"
                )


_refuse_stale_builds()

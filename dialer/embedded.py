"""The embedded PostgreSQL used when no ``DIALER_DATABASE_URL`` is set.

``pgserver`` ships PostgreSQL binaries in a wheel and runs them on a unix
socket inside a data directory of ours, so a laptop needs nothing installed.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedPostgres"]

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """Start (or reuse) a PostgreSQL server in ``data_dir``; stop it on close."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._server: Any = None

    def start(self) -> str:
        try:
            with warnings.catch_warnings():
                # platformdirs notes that XDG_RUNTIME_DIR is unset (root, a service).
                warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
                import pgserver
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise RuntimeError(
                "no DIALER_DATABASE_URL is set and the embedded PostgreSQL (the pgserver "
                "package) is not installed; set DIALER_DATABASE_URL=postgresql://... "
                "or pip install pgserver"
            ) from exc
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # pgserver narrates every command it runs at INFO; its warnings still show.
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            # platformdirs' note that XDG_RUNTIME_DIR is unset (as under root or a service).
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        uri = self._server.get_uri()
        log.info("embedded PostgreSQL running; its data lives in %s", self.data_dir)
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None

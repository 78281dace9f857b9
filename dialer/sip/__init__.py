"""Pure SIP protocol core (sans-IO).

The per-call modules may be compiled by mypyc (setup.py). Python imports a
compiled module before its source, so a source edited after the build would
be ignored without a word: that is refused here, with what to run.
"""

from __future__ import annotations

from pathlib import Path

from media.stale_build import refuse_stale_builds

_HERE = Path(__file__).parent
refuse_stale_builds(_HERE, _HERE.parent.parent, what="dialer/sip/*.so")

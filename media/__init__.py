"""Media: RTP, codecs, jitter buffer, DTMF, recording, AMD. Imports nothing of ours.

The per-packet modules may be compiled by mypyc (setup.py). Python imports a
compiled module before its source, so a source edited after the build would
be ignored without a word: that is refused here, with what to run.
"""

from __future__ import annotations

from pathlib import Path

from media.stale_build import refuse_stale_builds

refuse_stale_builds(Path(__file__).parent, Path(__file__).parent.parent, what="media/*.so")

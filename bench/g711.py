"""G.711 per-frame encode/decode time: numpy lookup tables against stdlib audioop.

Prints the median time per 20 ms frame (160 samples) for each direction and
law, and the ratio ours / audioop measured in the same run (below 1 is faster).
Per-frame numpy calls are dominated by call overhead, so the "x100" rows also
show one call over 100 frames at once (frames of many calls batched together),
reported per frame.

    python bench/g711.py [--frames N] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np

from media import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


BATCH = 100


def _median_per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def _cases(frames_at_once: int) -> list[tuple[str, Callable[[], object], Callable[[], object]]]:
    rng = np.random.default_rng(1)
    n = g711.SAMPLES_PER_FRAME * frames_at_once
    pcm = rng.normal(0, 3000, n).clip(-32768, 32767).astype(np.int16)
    pcm_bytes = pcm.tobytes()
    ulaw = g711.ulaw_encode(pcm).tobytes()
    alaw = g711.alaw_encode(pcm).tobytes()
    out_codes = np.empty(n, dtype=np.uint8)
    out_pcm = np.empty(n, dtype=np.int16)
    suffix = "" if frames_at_once == 1 else f" x{frames_at_once}"
    return [
        (
            "ulaw encode" + suffix,
            lambda: g711.ulaw_encode(pcm, out=out_codes),
            lambda: audioop.lin2ulaw(pcm_bytes, 2),
        ),
        (
            "ulaw decode" + suffix,
            lambda: g711.ulaw_decode(ulaw, out=out_pcm),
            lambda: audioop.ulaw2lin(ulaw, 2),
        ),
        (
            "alaw encode" + suffix,
            lambda: g711.alaw_encode(pcm, out=out_codes),
            lambda: audioop.lin2alaw(pcm_bytes, 2),
        ),
        (
            "alaw decode" + suffix,
            lambda: g711.alaw_decode(alaw, out=out_pcm),
            lambda: audioop.alaw2lin(alaw, 2),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000, help="frames per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    print(f"per 20 ms frame, median of {args.repeats} x {args.frames} frames")
    print(f"{'case':<16} {'ours us':>9} {'audioop us':>11} {'ratio':>7}")
    for frames_at_once in (1, BATCH):
        calls = max(1, args.frames // frames_at_once)
        for name, ours, reference in _cases(frames_at_once):
            ours_us = _median_per_call_us(ours, calls, args.repeats) / frames_at_once
            ref_us = _median_per_call_us(reference, calls, args.repeats) / frames_at_once
            print(f"{name:<16} {ours_us:9.2f} {ref_us:11.2f} {ours_us / ref_us:7.2f}")


if __name__ == "__main__":
    main()

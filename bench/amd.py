"""Answering-machine detection on a labelled espeak-ng corpus, against the classic rule.

Builds the corpus (bench/amd_corpus.py) into OUT_DIR, or reuses one already
there, passes every clip through G.711 mu-law as a phone line would, feeds
it to the detector in 20 ms frames in both modes (``AmdConfig.fast()`` and
``AmdConfig.wait_for_beep()``) and prints, per mode: the confusion matrix
(true label x verdict), human/machine accuracy on the clean-ish clips (no
noise or 30 dB SNR, hard cases left out) and on all of them, and the median
and p90 decision time per true label. An unknown verdict on a person or a
machine counts as wrong.

The baseline, run on the same audio: a fixed -40 dBFS energy gate with no
noise floor and no steady-noise test; the greeting runs from the first loud
frame to the last before 1.2 s of quiet; longer than 2.4 s => machine, else
human; nothing loud within 5 s => unknown (the rule most dialers start with).

The detector's constants were tuned looking at seeds 1-3; seed 4 and up
are clips it has never been tuned on. The last line sums up a run.

    python bench/amd.py [OUT_DIR] [--seed N] [--jobs J] [--errors]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import wave
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from amd_corpus import build_corpus, load_manifest

from media import g711
from media.amd import AmdConfig, AmdVerdict, AnsweringMachineDetector

FRAME = g711.SAMPLES_PER_FRAME
FRAME_MS = 20
LABELS = ("human", "machine_beep", "machine_silence", "silence")
VERDICTS = (
    "human",
    "machine_start",
    "machine_end_beep",
    "machine_end_silence",
    "machine_end_other",
    "unknown",
)

Result = tuple[str, int]  # verdict, decision time in ms


def load_line_audio(path: Path) -> np.ndarray:
    """The clip as it arrives over a PCMU call: mu-law encoded and decoded."""
    with wave.open(str(path), "rb") as f:
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.int16)
    return g711.ulaw_decode(g711.ulaw_encode(pcm))


def run_detector(samples: np.ndarray, config: AmdConfig) -> AmdVerdict:
    """Feed whole 20 ms frames; ``finish`` at the end of the clip."""
    detector = AnsweringMachineDetector(config)
    frames = samples.shape[0] // FRAME
    for index in range(frames):
        verdict = detector.feed(samples[index * FRAME : (index + 1) * FRAME], index * FRAME_MS)
        if verdict is not None:
            return verdict
    return detector.finish(frames * FRAME_MS)


def run_baseline(samples: np.ndarray) -> Result:
    """The classic rule (see the module docstring), frame by frame."""
    threshold = 32768.0**2 * 10 ** (-40 / 10)
    first = last = None
    frames = samples.shape[0] // FRAME
    for index in range(frames):
        frame = samples[index * FRAME : (index + 1) * FRAME].astype(np.float64)
        end_ms = (index + 1) * FRAME_MS
        if float(np.dot(frame, frame)) / FRAME >= threshold:
            if first is None:
                first = index * FRAME_MS
            last = end_ms
        if first is None:
            if end_ms >= 5000:
                return "unknown", end_ms
            continue
        assert last is not None
        if last - first > 2400:
            return "machine_start", end_ms
        if end_ms - last >= 1200:
            return "human", end_ms
    return "unknown", frames * FRAME_MS


def _is_right(label: str, verdict: str) -> bool:
    if label == "human":
        return verdict == "human"
    if label.startswith("machine"):
        return verdict.startswith("machine")
    return verdict == "unknown"


def _percentile(values: Sequence[int], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return float(ordered[rank])


def _right(
    clips: list[dict], results: list[Result], keep: Callable[[dict], bool]
) -> tuple[int, int]:
    pairs = [
        (str(clip["label"]), verdict)
        for clip, (verdict, _) in zip(clips, results, strict=True)
        if keep(clip) and clip["label"] != "silence"
    ]
    return sum(_is_right(label, verdict) for label, verdict in pairs), len(pairs)


def _accuracy(clips: list[dict], results: list[Result], keep: Callable[[dict], bool]) -> str:
    right, total = _right(clips, results, keep)
    return f"{right}/{total} = {100 * right / max(total, 1):5.1f} %"


def _percent(clips: list[dict], results: list[Result], keep: Callable[[dict], bool]) -> str:
    right, total = _right(clips, results, keep)
    return f"{100 * right / max(total, 1):.1f} %"


def _median_s(clips: list[dict], results: list[Result], machine: bool) -> float:
    times = [
        ms
        for clip, (_, ms) in zip(clips, results, strict=True)
        if str(clip["label"]).startswith("machine") == machine and clip["label"] != "silence"
    ]
    return statistics.median(times) / 1000


def report(name: str, clips: list[dict], results: list[Result]) -> None:
    """Print the confusion matrix, accuracies and decision times of one run."""
    print(f"\n== {name}")
    columns = [v for v in VERDICTS if any(r[0] == v for r in results)]
    width = max(len(c) for c in columns) + 1
    print(f"{'true / verdict':<16}" + "".join(f"{c:>{width}}" for c in columns))
    for label in LABELS:
        counts = Counter(
            v for clip, (v, _) in zip(clips, results, strict=True) if clip["label"] == label
        )
        print(f"{label:<16}" + "".join(f"{counts[c]:>{width}}" for c in columns))
    print(f"human/machine accuracy, clean-ish: {_accuracy(clips, results, lambda c: c['clean'])}")
    print(f"human/machine accuracy, all:       {_accuracy(clips, results, lambda c: True)}")
    for snr in (None, 30.0, 20.0, 10.0):

        def at_snr(clip: dict, snr: float | None = snr) -> bool:
            return clip["snr_db"] == snr and not clip["hard"]

        name_snr = "none" if snr is None else f"{snr:.0f} dB"
        print(f"  SNR {name_snr:>5} (not hard): {_accuracy(clips, results, at_snr)}")
    print(f"  hard cases:            {_accuracy(clips, results, lambda c: c['hard'])}")
    print("decision time ms   median     p90")
    for label in LABELS:
        times = [t for clip, (_, t) in zip(clips, results, strict=True) if clip["label"] == label]
        print(f"  {label:<16} {statistics.median(times):7.0f} {_percentile(times, 0.9):7.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=Path, help="corpus directory (default: temp)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--errors", action="store_true", help="list the clips each run got wrong")
    args = parser.parse_args()

    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="amd_corpus_"))
    clips = load_manifest(out_dir, args.seed)
    if clips is None:
        print(f"building the corpus in {out_dir} ...", file=sys.stderr)
        clips = build_corpus(out_dir, args.seed, args.jobs)
    audio = [load_line_audio(out_dir / str(clip["file"])) for clip in clips]

    runs: dict[str, list[Result]] = {}
    elapsed_s: dict[str, float] = {}
    frames: dict[str, int] = {}
    for name, config in (("fast", AmdConfig.fast()), ("wait_for_beep", AmdConfig.wait_for_beep())):
        started = time.perf_counter()
        verdicts = [run_detector(samples, config) for samples in audio]
        elapsed_s[name] = time.perf_counter() - started
        runs[name] = [(v.answered_by.value, v.decision_ms) for v in verdicts]
        frames[name] = sum(v.decision_ms // FRAME_MS for v in verdicts)
    started = time.perf_counter()
    runs["baseline"] = [run_baseline(samples) for samples in audio]
    elapsed_s["baseline"] = time.perf_counter() - started
    frames["baseline"] = sum(ms // FRAME_MS for _, ms in runs["baseline"])

    print(f"{len(clips)} clips ({dict(Counter(str(c['label']) for c in clips))}), G.711 mu-law")
    for name in ("fast", "wait_for_beep", "baseline"):
        report(name, clips, runs[name])

    # Beep or silence: how a machine's greeting ended, among machines found.
    wait = runs["wait_for_beep"]
    ends = [
        (str(clip["label"]), verdict)
        for clip, (verdict, _) in zip(clips, wait, strict=True)
        if verdict in ("machine_end_beep", "machine_end_silence")
        and str(clip["label"]).startswith("machine")
    ]
    right = sum(
        (label, verdict)
        in {("machine_beep", "machine_end_beep"), ("machine_silence", "machine_end_silence")}
        for label, verdict in ends
    )
    print(f"\nwait_for_beep: greeting end (beep vs silence) right for {right}/{len(ends)} machines")

    def errors(results: list[Result], keep: Callable[[dict], bool]) -> int:
        return sum(
            not _is_right(str(clip["label"]), verdict)
            for clip, (verdict, _) in zip(clips, results, strict=True)
            if keep(clip) and clip["label"] != "silence"
        )

    for scope, keep in (("clean-ish", lambda c: c["clean"]), ("all", lambda c: True)):
        ours, base = errors(runs["fast"], keep), errors(runs["baseline"], keep)
        ratio = f"{ours / base:.2f}" if base else "n/a"
        print(f"errors {scope:<9}: fast {ours}, baseline {base}, ratio fast/baseline {ratio}")

    fast, base = runs["fast"], runs["baseline"]
    print(
        f"summary seed {args.seed}: human/machine {_percent(clips, fast, lambda c: True)} "
        f"(baseline {_percent(clips, base, lambda c: True)}), "
        f"clean-ish {_percent(clips, fast, lambda c: c['clean'])} "
        f"({_percent(clips, base, lambda c: c['clean'])}), "
        f"10 dB SNR {_percent(clips, fast, lambda c: c['snr_db'] == 10.0 and not c['hard'])} "
        f"({_percent(clips, base, lambda c: c['snr_db'] == 10.0 and not c['hard'])}); "
        f"median decision human {_median_s(clips, fast, False):.1f} s, "
        f"machine {_median_s(clips, fast, True):.1f} s; beep vs silence {right}/{len(ends)}"
    )
    cost = {name: elapsed_s[name] / frames[name] * 1e6 for name in runs}
    print(
        "us per 20 ms frame: "
        + ", ".join(f"{name} {us:.1f}" for name, us in cost.items())
        + f"; fast/baseline {cost['fast'] / cost['baseline']:.2f}"
    )

    if args.errors:
        for name, results in runs.items():
            print(f"\n-- wrong in {name}")
            for clip, (verdict, ms) in zip(clips, results, strict=True):
                if not _is_right(str(clip["label"]), verdict):
                    print(
                        f"  {clip['file']:<26} {verdict:<20} {ms:6d} ms  snr={clip['snr_db']} "
                        f"gain={clip['gain_db']} hard={clip['hard']} speech={clip['speech_s']}s "
                        f"{clip['text'][:50]!r}"
                    )


if __name__ == "__main__":
    main()

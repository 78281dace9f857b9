"""Build a labelled answering-machine corpus with espeak-ng and sox.

Each clip is what the callee's side of a call sounds like from the moment it
is answered, at 8 kHz mono 16-bit: some silence, then either a person's
short greeting ("Hello?") followed by the silence of someone waiting (and
sometimes a second "Hello?" two seconds later), or a voicemail greeting of 2
to 20 s, with or without a beep (sine, 800/1000/1400 Hz, 0.2-0.5 s), and the
silence of a recording. A few clips are dead air. Voices, speeds, pitch,
levels, background noise (white, pink, brown at several signal-to-noise
ratios) and a 300-3400 Hz line filter vary from clip to clip; every choice
comes from one seeded generator, so the same seed builds the same corpus.

``manifest.json`` in the output directory lists the clips with their labels
(``human``, ``machine_beep``, ``machine_silence``, ``silence``) and how each
was made; it is written last, so a directory holding one is complete.
A few clips are marked ``hard``: people with a long greeting ("Good
afternoon, Doctor Patel's office, ...") and machines with a short one,
the cases the length rule gets wrong by design.

    python bench/amd_corpus.py [OUT_DIR] [--seed N] [--jobs J]

Needs the espeak-ng and sox commands (Debian packages espeak-ng, sox).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["CORPUS_VERSION", "Clip", "build_corpus", "load_manifest", "plan", "render"]

CORPUS_VERSION = 1
RATE = 8000

VOICES = [
    "en-us",
    "en-us+f3",
    "en-us+m3",
    "en-us+f5",
    "en-us-nyc+f2",
    "en-gb",
    "en-gb+f4",
    "en-gb-x-rp+m2",
    "en-gb-scotland+f1",
    "en-029+m5",
    "en+klatt",
    "en+f2",
]

HUMAN_GREETINGS = [
    "Hello?",
    "Hello.",
    "Yes?",
    "Hi.",
    "Hey.",
    "Yeah?",
    "Hello, who is this?",
    "Hi, who is this?",
    "Yes, this is Anna.",
    "Hello, Smith residence.",
    "Hello, this is Mark.",
    "Speaking.",
    "Yeah, hello?",
    "Good afternoon.",
    "Hello, who's calling?",
    "Hi, it's Maria.",
    "Hello, yes?",
    "Jim speaking.",
]
# People who answer like a receptionist: long enough to look like a machine.
HUMAN_LONG_GREETINGS = [
    "Good afternoon, Doctor Patel's office, this is Karen, how can I help you?",
    "Thank you for calling Green Valley Plumbing, this is Steve speaking.",
    "Hello, you've got Michael at Riverside Motors, what can I do for you?",
]

NAMES = ["John Smith", "Anna", "Maria Lopez", "David", "the Johnson family", "Doctor Patel"]
COMPANIES = ["Acme Insurance", "Riverside Dental", "Blue Sky Travel", "the city library"]
OPENERS = [
    "Hi, you've reached {name}.",
    "Hello, you have reached the voicemail of {name}.",
    "Hi, this is {name}.",
    "The person you are calling, {name}, is not available.",
    "Thank you for calling {company}.",
    "The number you have dialed, five five five, one two three four, is not available.",
    "Hey, it's {name}.",
]
MIDDLES = [
    "I can't take your call right now.",
    "I'm away from my phone at the moment.",
    "Sorry I missed you.",
    "Our office hours are Monday to Friday, nine to five.",
    "If this is an emergency, please hang up and dial nine one one.",
    "I'm either on the other line or away from my desk.",
    "I check my messages regularly, so I will get back to you as soon as I can.",
    "For billing questions, please visit our website.",
]
CLOSERS = [
    "Please leave a message after the tone.",
    "Leave your name and number and I'll call you back.",
    "Please leave a message.",
    "At the tone, please record your message. When you have finished recording, "
    "you may hang up, or press pound for more options.",
    "Leave a message and have a great day.",
]
# Machines with a greeting short enough to look like a person.
MACHINE_SHORT_GREETINGS = ["Leave a message.", "It's Tom, leave a message.", "Hi, it's Jo, beep."]

NOISES = ["whitenoise", "pinknoise", "brownnoise"]
# Signal-to-noise ratio of the mix, None for none; "clean-ish" is None or 30 dB.
SNRS_DB = [None, None, 30.0, 20.0, 10.0]


@dataclass(frozen=True, slots=True)
class Clip:
    """How one clip is made, and its label."""

    name: str
    label: str  # human, machine_beep, machine_silence, silence
    hard: bool
    voice: str
    speed_wpm: int
    pitch: int
    text: str
    second_text: str | None  # a person's second "Hello?" after second_gap_s
    second_gap_s: float
    lead_s: float
    tail_s: float
    beep_gap_s: float
    beep_hz: float | None
    beep_s: float
    beep_dbfs: float
    noise: str | None
    snr_db: float | None
    gain_db: float
    line_filter: bool

    @property
    def clean(self) -> bool:
        """No noise or a 30 dB signal-to-noise ratio, and not a hard case."""
        return not self.hard and (self.snr_db is None or self.snr_db >= 30.0)


def _machine_text(rng: random.Random) -> str:
    parts = [rng.choice(OPENERS)]
    parts += rng.sample(MIDDLES, rng.choice([0, 1, 1, 2, 3]))
    parts.append(rng.choice(CLOSERS))
    text = " ".join(parts)
    return text.format(name=rng.choice(NAMES), company=rng.choice(COMPANIES))


def plan(seed: int = 1, humans: int = 60, machines: int = 70, dead_air: int = 8) -> list[Clip]:
    """The clips of the corpus, drawn from ``seed``."""
    rng = random.Random(seed)
    clips = []
    for index in range(humans + machines + dead_air):
        if index < humans:
            label = "human"
        elif index < humans + machines:
            label = "machine_beep" if rng.random() < 0.65 else "machine_silence"
        else:
            label = "silence"
        hard = False
        second_text = None
        beep_hz = None
        if label == "human":
            if rng.random() < 0.08:
                hard, text = True, rng.choice(HUMAN_LONG_GREETINGS)
            else:
                text = rng.choice(HUMAN_GREETINGS)
            if rng.random() < 0.3:
                second_text = rng.choice(["Hello?", "Hello? Anyone there?", "Hello?"])
            tail_s = rng.uniform(3.0, 4.5)
        elif label == "silence":
            text = ""
            tail_s = rng.uniform(6.0, 8.0)
        else:
            if rng.random() < 0.08:
                hard, text = True, rng.choice(MACHINE_SHORT_GREETINGS)
            else:
                text = _machine_text(rng)
            if label == "machine_beep":
                beep_hz = rng.choice([1000.0, 1000.0, 1000.0, 800.0, 1400.0, 440.0])
            tail_s = rng.uniform(3.0, 5.0)
        clips.append(
            Clip(
                name=f"{index:03d}_{label}",
                label=label,
                hard=hard,
                voice=rng.choice(VOICES),
                speed_wpm=rng.randint(135, 195),
                pitch=rng.randint(30, 70),
                text=text,
                second_text=second_text,
                second_gap_s=rng.uniform(1.8, 2.5),
                lead_s=rng.choice([0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0]),
                tail_s=round(tail_s, 2),
                beep_gap_s=round(rng.uniform(0.1, 1.0), 2),
                beep_hz=beep_hz,
                beep_s=round(rng.uniform(0.2, 0.5), 2),
                beep_dbfs=rng.choice([-6.0, -10.0, -14.0]),
                noise=rng.choice(NOISES),
                snr_db=rng.choice(SNRS_DB),
                gain_db=rng.choice([-3.0, -8.0, -14.0, -20.0]),
                line_filter=rng.random() < 0.75,
            )
        )
    return clips


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def _sox_silence(path: Path, seconds: float) -> None:
    _run("sox", "-n", "-r", str(RATE), "-c", "1", "-b", "16", str(path), "trim", "0", f"{seconds}")


def _speech(work: Path, stem: str, clip: Clip, text: str) -> Path:
    raw = work / f"{stem}_raw.wav"
    out = work / f"{stem}.wav"
    _run(
        "espeak-ng",
        "-v",
        clip.voice,
        "-s",
        str(clip.speed_wpm),
        "-p",
        str(clip.pitch),
        "-w",
        str(raw),
        text,
    )
    # To 8 kHz, without espeak's own leading and trailing silence, peak at -1 dBFS.
    trim = ["silence", "1", "0.02", "0.5%"]
    _run(
        "sox",
        str(raw),
        "-r",
        str(RATE),
        "-c",
        "1",
        "-b",
        "16",
        str(out),
        *trim,
        "reverse",
        *trim,
        "reverse",
        "gain",
        "-n",
        "-1",
    )
    return out


def _read(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as f:
        return np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float64)


def _active_rms(samples: np.ndarray) -> float:
    """RMS over the 20 ms frames within 30 dB of the loudest: the speech, not its pauses."""
    frames = samples[: samples.size // 160 * 160].reshape(-1, 160)
    power = (frames**2).mean(axis=1)
    active = power[power >= power.max() * 1e-3]
    return float(np.sqrt(active.mean()))


def render(clip: Clip, out_dir: Path) -> dict[str, object]:
    """Make one clip in ``out_dir``; return its manifest entry."""
    work = Path(tempfile.mkdtemp(prefix=f".{clip.name}_", dir=out_dir))
    try:
        parts = [work / "lead.wav"]
        _sox_silence(parts[0], clip.lead_s)
        speech_s = 0.0
        speech_rms = 0.0
        if clip.text:
            speech = _speech(work, "speech", clip, clip.text)
            samples = _read(speech)
            speech_s = samples.size / RATE
            speech_rms = _active_rms(samples)
            parts.append(speech)
        if clip.second_text:
            gap = work / "gap2.wav"
            _sox_silence(gap, clip.second_gap_s)
            parts += [gap, _speech(work, "second", clip, clip.second_text)]
        if clip.beep_hz is not None:
            gap, beep = work / "gap_beep.wav", work / "beep.wav"
            _sox_silence(gap, clip.beep_gap_s)
            _run(
                "sox",
                "-n",
                "-r",
                str(RATE),
                "-c",
                "1",
                "-b",
                "16",
                str(beep),
                "synth",
                f"{clip.beep_s}",
                "sine",
                f"{clip.beep_hz}",
                "fade",
                "0.005",
                "-0",
                "0.005",
                "gain",
                f"{clip.beep_dbfs}",
            )
            parts += [gap, beep]
        tail = work / "tail.wav"
        _sox_silence(tail, clip.tail_s)
        parts.append(tail)
        clean = work / "clean.wav"
        _run("sox", *map(str, parts), str(clean))

        mix = [str(clean)]
        if clip.snr_db is not None and clip.noise is not None:
            duration_s = _read(clean).size / RATE
            noise = work / "noise.wav"
            # -R: repeatable noise, so a seed always builds the same clip.
            _run(
                "sox",
                "-R",
                "-n",
                "-r",
                str(RATE),
                "-c",
                "1",
                "-b",
                "16",
                str(noise),
                "synth",
                f"{duration_s}",
                clip.noise,
                "gain",
                "-n",
                "-6",
            )
            # Dead air has no speech to set the level against: a -40 dBFS-ish hiss.
            reference = speech_rms if speech_rms else 0.01 * 32768 * 10 ** (clip.snr_db / 20)
            noise_rms = float(np.sqrt((_read(noise) ** 2).mean()))
            factor = reference / noise_rms / 10 ** (clip.snr_db / 20)
            mix = ["-m", "-v", "1", str(clean), "-v", f"{factor:.6f}", str(noise)]
        effects = ["sinc", "300-3400"] if clip.line_filter else []
        target = out_dir / f"{clip.name}.wav"
        _run("sox", *mix, "-b", "16", str(target), *effects, "gain", f"{clip.gain_db}")
        entry = asdict(clip)
        entry.update(file=target.name, clean=clip.clean, speech_s=round(speech_s, 3))
        return entry
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_manifest(out_dir: Path, seed: int) -> list[dict[str, object]] | None:
    """The clips of a complete corpus built by this version with ``seed``, else None."""
    path = out_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("version") != CORPUS_VERSION or manifest.get("seed") != seed:
        return None
    clips = manifest["clips"]
    if not all((out_dir / clip["file"]).is_file() for clip in clips):
        return None
    return clips


def build_corpus(out_dir: Path, seed: int = 1, jobs: int | None = None) -> list[dict[str, object]]:
    """Render every clip of ``plan(seed)`` into ``out_dir`` in parallel; write the manifest."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (Debian package {tool})")
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = plan(seed)
    workers = jobs or (os.cpu_count() or 1) * 2
    with ThreadPoolExecutor(max_workers=workers) as pool:
        entries = list(pool.map(lambda clip: render(clip, out_dir), clips))
    manifest = {"version": CORPUS_VERSION, "seed": seed, "clips": entries}
    # Written under a temporary name and renamed: a reader sees all of it or none.
    partial = out_dir / f".manifest.{os.getpid()}.json"
    partial.write_text(json.dumps(manifest, indent=1))
    partial.replace(out_dir / "manifest.json")
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=Path, help="default: a new temporary directory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=None, help="parallel clips (default 2 x CPUs)")
    args = parser.parse_args()
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="amd_corpus_"))
    entries = build_corpus(out_dir, args.seed, args.jobs)
    counts: dict[str, int] = {}
    for entry in entries:
        counts[str(entry["label"])] = counts.get(str(entry["label"]), 0) + 1
    summary = ", ".join(f"{label} {count}" for label, count in sorted(counts.items()))
    print(f"{len(entries)} clips in {out_dir}: {summary}", file=sys.stderr)
    print(out_dir)


if __name__ == "__main__":
    main()

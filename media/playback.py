"""Prompts and the playback queue a session pulls its 20 ms frames from.

Rules of this file:

- Everything played is 8 kHz, 16-bit, mono: a WAV of any common rate (8 to
  48 kHz), width (8 or 16 bits; 24 and 32 too) and channel count is
  converted once, when loaded, and kept as a read-only ``Prompt``. The
  resampler is band-limited (FFT, with a short taper below the new Nyquist
  frequency) so nothing above 4 kHz folds back into the call.
- Prompts are padded with silence to whole 20 ms frames, so a frame never
  straddles two prompts and a prompt's last frame plays in full.
- Text-to-speech runs espeak-ng in a subprocess and converts its output in a
  thread: the event loop never waits on either. Each distinct (voice, rate,
  text) is rendered once; the 8 kHz result is kept in the caller's cache
  directory under the SHA-256 of the key, and in memory.
- ``PlaybackQueue`` is what a session pulls frames from: audio and marks in
  order; a mark is reported when the audio queued before it has been pulled
  (sent), or when ``clear()`` drops it (barge-in). Callbacks never await.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import shutil
import tempfile
import wave
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "PlaybackQueue",
    "Prompt",
    "PromptCache",
    "PromptError",
    "SpeechRenderer",
    "espeak_available",
    "load_prompt",
    "prompt_from_samples",
    "read_wav",
    "resample",
    "silence",
    "to_mono_int16",
    "write_wav",
]

SAMPLE_RATE = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz

# Fraction of the output band (below its Nyquist frequency) over which the
# resampler's low-pass rolls off, to keep its ringing short.
_TAPER_FRACTION = 0.08
# Zeros added on both sides before the FFT, so the circular transform does
# not wrap the end of a prompt onto its start.
_PAD_S = 0.05


class PromptError(ValueError):
    """Audio that cannot be turned into a prompt (blame: whoever supplied it)."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """Audio ready to play: 8 kHz int16 mono, a whole number of 20 ms frames, read-only."""

    samples: NDArray[np.int16]
    source: str = ""

    @property
    def duration_s(self) -> float:
        """Length in seconds (padding included)."""
        return self.samples.shape[0] / SAMPLE_RATE

    @property
    def frames(self) -> int:
        """Number of 20 ms frames."""
        return self.samples.shape[0] // FRAME_SAMPLES


# -- conversion ----------------------------------------------------------------------


def to_mono_int16(raw: bytes, *, sample_width: int, channels: int) -> NDArray[np.float64]:
    """Decode little-endian PCM frames to mono float samples on the int16 scale."""
    if channels < 1:
        raise PromptError("a WAV needs at least one channel")
    if sample_width == 1:
        # 8-bit WAV is unsigned, centred on 128.
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) * 256.0
    elif sample_width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float64)
    elif sample_width == 3:
        octets = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = octets[:, 0] | (octets[:, 1] << 8) | (octets[:, 2] << 16)
        value = np.where(value & 0x800000, value - 0x1000000, value)
        data = value.astype(np.float64) / 256.0
    elif sample_width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float64) / 65536.0
    else:
        raise PromptError(f"unsupported sample width of {sample_width} octets")
    usable = data.shape[0] - data.shape[0] % channels
    return data[:usable].reshape(-1, channels).mean(axis=1)


def resample(samples: NDArray[np.float64], rate_in: int, rate_out: int) -> NDArray[np.float64]:
    """Band-limited resampling of a whole signal by FFT (any pair of rates).

    The transform length is a multiple of ``rate_in / gcd`` so both lengths
    are whole and the output is time-aligned with the input.
    """
    if rate_in <= 0 or rate_out <= 0:
        raise PromptError("sample rates must be positive")
    if rate_in == rate_out or samples.shape[0] == 0:
        return samples.astype(np.float64, copy=True)
    g = math.gcd(rate_in, rate_out)
    step_in, step_out = rate_in // g, rate_out // g
    pad = int(_PAD_S * rate_in)
    total = samples.shape[0] + 2 * pad
    n_in = -(-total // step_in) * step_in
    n_out = n_in // step_in * step_out
    padded = np.zeros(n_in, dtype=np.float64)
    padded[pad : pad + samples.shape[0]] = samples
    spectrum = np.fft.rfft(padded)
    bins_out = n_out // 2 + 1
    kept = min(spectrum.shape[0], bins_out)
    out_spectrum = np.zeros(bins_out, dtype=np.complex128)
    out_spectrum[:kept] = spectrum[:kept]
    if rate_out < rate_in:
        # Roll off over the top of the new band (raised cosine) instead of a
        # brick wall, which would ring for the whole prompt.
        taper = max(1, int(bins_out * _TAPER_FRACTION))
        ramp = 0.5 * (1 + np.cos(np.linspace(0, np.pi, taper)))
        out_spectrum[bins_out - taper : bins_out] *= ramp
    out = np.fft.irfft(out_spectrum, n_out) * (n_out / n_in)
    start = pad * step_out // step_in
    length = round(samples.shape[0] * rate_out / rate_in)
    return out[start : start + length]


def _frames_of(samples: NDArray[np.float64]) -> NDArray[np.int16]:
    padded_len = -(-samples.shape[0] // FRAME_SAMPLES) * FRAME_SAMPLES
    out = np.zeros(padded_len, dtype=np.int16)
    out[: samples.shape[0]] = np.clip(np.rint(samples), -32768, 32767)
    out.flags.writeable = False
    return out


def prompt_from_samples(
    samples: NDArray[np.int16] | NDArray[np.float64],
    sample_rate: int = SAMPLE_RATE,
    source: str = "",
) -> Prompt:
    """Make a prompt from mono samples at any rate (int16 scale)."""
    if samples.ndim != 1:
        raise PromptError("prompt samples must be mono (one dimension)")
    return Prompt(
        _frames_of(resample(samples.astype(np.float64), sample_rate, SAMPLE_RATE)), source
    )


def read_wav(path: str | os.PathLike[str]) -> Prompt:
    """Read a PCM WAV file of any common format and convert it to a prompt."""
    try:
        with wave.open(os.fspath(path), "rb") as reader:
            params = reader.getparams()
            raw = reader.readframes(params.nframes)
    except (wave.Error, EOFError) as error:
        raise PromptError(f"{path}: not a PCM WAV file ({error})") from error
    mono = to_mono_int16(raw, sample_width=params.sampwidth, channels=params.nchannels)
    return Prompt(_frames_of(resample(mono, params.framerate, SAMPLE_RATE)), os.fspath(path))


load_prompt = read_wav


def write_wav(path: str | os.PathLike[str], samples: NDArray[np.int16]) -> None:
    """Write 8 kHz int16 mono samples as a WAV file, atomically (temp file, rename)."""
    target = Path(path)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".wav.part")
    try:
        with os.fdopen(fd, "wb") as raw, wave.open(raw, "wb") as writer:
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(SAMPLE_RATE)
            writer.writeframes(samples.astype("<i2", copy=False).tobytes())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def silence(duration_ms: int) -> Prompt:
    """A prompt of ``duration_ms`` of silence (rounded up to whole frames)."""
    if duration_ms < 0:
        raise PromptError("silence cannot last a negative time")
    frames = -(-duration_ms * SAMPLE_RATE // 1000 // FRAME_SAMPLES)
    samples = np.zeros(frames * FRAME_SAMPLES, dtype=np.int16)
    samples.flags.writeable = False
    return Prompt(samples, f"silence:{duration_ms}ms")


# -- caches ----------------------------------------------------------------------------


class PromptCache:
    """Prompts loaded from WAV files, converted once and kept by path and mtime."""

    def __init__(self) -> None:
        self._prompts: dict[tuple[str, int, int], Prompt] = {}
        self.loads = 0  # conversions done (cache misses)

    def _key(self, path: str | os.PathLike[str]) -> tuple[str, int, int]:
        resolved = Path(path).resolve()
        info = resolved.stat()
        return (str(resolved), info.st_mtime_ns, info.st_size)

    def get(self, path: str | os.PathLike[str]) -> Prompt:
        """Load (or return the cached) prompt of ``path``; blocking, for start-up."""
        key = self._key(path)
        prompt = self._prompts.get(key)
        if prompt is None:
            prompt = read_wav(key[0])
            self.loads += 1
            self._prompts[key] = prompt
        return prompt

    async def load(self, path: str | os.PathLike[str]) -> Prompt:
        """Like ``get``, converting in a thread so the event loop does not wait."""
        key = await asyncio.to_thread(self._key, path)
        prompt = self._prompts.get(key)
        if prompt is None:
            prompt = await asyncio.to_thread(read_wav, key[0])
            self.loads += 1
            self._prompts[key] = prompt
        return prompt


def espeak_available(executable: str = "espeak-ng") -> bool:
    """True when the espeak-ng program can be found on PATH."""
    return shutil.which(executable) is not None


class SpeechRenderer:
    """Text to 8 kHz prompts through espeak-ng, each distinct text rendered once."""

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        *,
        voice: str = "en-us",
        words_per_minute: int = 160,
        executable: str = "espeak-ng",
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.executable = executable
        self.renders = 0  # espeak-ng runs (neither memory nor disk had the text)
        self._memory: dict[str, Prompt] = {}
        self._pending: dict[str, asyncio.Future[Prompt]] = {}

    def key(self, text: str) -> str:
        """The cache key of ``text``: SHA-256 over voice, rate and text."""
        material = f"{self.voice}\0{self.words_per_minute}\0{text}".encode()
        return hashlib.sha256(material).hexdigest()

    def path_for(self, text: str) -> Path:
        """Where the 8 kHz rendering of ``text`` is kept."""
        return self.cache_dir / f"tts-{self.key(text)}.wav"

    async def render(self, text: str) -> Prompt:
        """Return the prompt speaking ``text``; concurrent calls share one rendering."""
        key = self.key(text)
        prompt = self._memory.get(key)
        if prompt is not None:
            return prompt
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Prompt] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            prompt = await self._load_or_render(text)
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved here: a waiter may not exist
            raise
        finally:
            del self._pending[key]
        self._memory[key] = prompt
        future.set_result(prompt)
        return prompt

    async def _load_or_render(self, text: str) -> Prompt:
        path = self.path_for(text)
        if await asyncio.to_thread(path.is_file):
            return await asyncio.to_thread(read_wav, path)
        await asyncio.to_thread(self.cache_dir.mkdir, parents=True, exist_ok=True)
        raw_fd, raw_path = tempfile.mkstemp(dir=self.cache_dir, prefix=".", suffix=".raw.wav")
        os.close(raw_fd)
        try:
            # The text goes in on stdin, never as an argument: a text that
            # starts with "-" must not be read as an option.
            process = await asyncio.create_subprocess_exec(
                self.executable,
                "-v",
                self.voice,
                "-s",
                str(self.words_per_minute),
                "--stdin",
                "-w",
                raw_path,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            # Through Any: typeshed says (bytes, bytes), but stdout is None here,
            # and a compiled build (setup.py) checks a call's declared type.
            communicate: Any = process.communicate
            stderr: bytes = (await communicate(text.encode()))[1]
            if process.returncode != 0:
                message = stderr.decode(errors="replace").strip()
                raise PromptError(f"espeak-ng exited with {process.returncode}: {message}")
            self.renders += 1
            prompt = await asyncio.to_thread(read_wav, raw_path)
            await asyncio.to_thread(write_wav, path, prompt.samples)
        finally:
            Path(raw_path).unlink(missing_ok=True)
        return Prompt(prompt.samples, str(path))


# -- the queue ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Audio:
    samples: NDArray[np.int16]
    position: int = 0
    # The samples encoded whole with ``encoded_by`` (an encode table), made
    # the first time a frame of them is read as a payload.
    encoded: bytes = b""
    encoded_by: NDArray[np.uint8] | None = None


@dataclass(frozen=True, slots=True)
class _Mark:
    name: str


class PlaybackQueue:
    """Audio and marks in order; a session pulls one 20 ms frame per period.

    ``on_mark(name, played)`` is called with ``played=True`` when the audio
    before the mark has been pulled, and with ``played=False`` for marks that
    ``clear()`` dropped. It must not await (it runs inside the send timer).
    """

    def __init__(
        self,
        on_mark: Callable[[str, bool], None] | None = None,
        *,
        frame_samples: int = FRAME_SAMPLES,
    ) -> None:
        self.on_mark = on_mark
        self.frame_samples = frame_samples
        self._items: deque[_Audio | _Mark] = deque()
        self._queued = 0
        self._scratch = np.zeros(frame_samples, dtype=np.int16)

    @property
    def queued_samples(self) -> int:
        """Samples waiting to be played."""
        return self._queued

    @property
    def queued_ms(self) -> float:
        """Milliseconds of audio waiting to be played."""
        return self._queued * 1000 / SAMPLE_RATE

    @property
    def idle(self) -> bool:
        """True when neither audio nor marks are waiting."""
        return not self._items

    def enqueue(self, audio: Prompt | NDArray[np.int16]) -> None:
        """Queue a prompt, or raw 8 kHz int16 mono samples of any length (kept, not copied)."""
        samples = audio.samples if isinstance(audio, Prompt) else audio
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise PromptError("queued audio must be 8 kHz int16 mono")
        if samples.shape[0]:
            self._items.append(_Audio(samples))
            self._queued += samples.shape[0]

    def mark(self, name: str) -> None:
        """Queue a mark: reported once the audio queued before it has been played."""
        self._items.append(_Mark(name))

    def clear(self) -> list[str]:
        """Drop everything queued (barge-in); report and return the marks dropped."""
        dropped = [item.name for item in self._items if isinstance(item, _Mark)]
        self._items.clear()
        self._queued = 0
        if self.on_mark is not None:
            for name in dropped:
                self.on_mark(name, False)
        return dropped

    def _fire_marks(self) -> None:
        items = self._items
        while items and type(items[0]) is _Mark:
            name = items.popleft().name  # type: ignore[union-attr]
            if self.on_mark is not None:
                self.on_mark(name, True)

    def read_frame(self) -> NDArray[np.int16] | None:
        """Return the next frame, or ``None`` when there is nothing to play.

        The array may be a view of a prompt or a reused scratch buffer: it is
        valid until the next call, and must not be written to.
        """
        head = self._next_piece()
        if head is None:
            return None
        start = head.position
        n = self.frame_samples
        if head.samples.shape[0] - start < n:
            return self._gather()
        # The common case: a whole frame inside one piece of audio.
        self._step(head, start)
        return head.samples[start : start + n]

    def read_payload(self, encode_table: NDArray[np.uint8]) -> bytes | None:
        """Like ``read_frame``, the frame encoded with a G.711 ``encode_table``.

        Each piece of queued audio is encoded whole the first time it is
        read this way (one table look-up per prompt, not per frame), and its
        frames are handed out as slices of that.
        """
        head = self._next_piece()
        if head is None:
            return None
        start = head.position
        n = self.frame_samples
        if head.samples.shape[0] - start < n:
            return encode_table.take(self._gather().view(np.uint16)).tobytes()
        if head.encoded_by is not encode_table:
            head.encoded = encode_table.take(head.samples.view(np.uint16)).tobytes()
            head.encoded_by = encode_table
        self._step(head, start)
        return head.encoded[start : start + n]

    def _next_piece(self) -> _Audio | None:
        # The audio the next frame starts in, once the marks before it have fired.
        items = self._items
        if items and type(items[0]) is _Mark:
            self._fire_marks()
        return items[0] if items else None  # type: ignore[return-value]

    def _step(self, head: _Audio, start: int) -> None:
        # Past one whole frame of ``head`` from ``start``; fire the marks it reaches.
        head.position = start + self.frame_samples
        self._queued -= self.frame_samples
        if head.position == head.samples.shape[0]:
            items = self._items
            items.popleft()
            if items and type(items[0]) is _Mark:
                self._fire_marks()

    def _gather(self) -> NDArray[np.int16]:
        # A frame made of the ends of several pieces (raw audio of odd
        # lengths), padded with zeros when the queue runs dry.
        out = self._scratch
        filled = 0
        n = self.frame_samples
        items = self._items
        while filled < n and items:
            head = items[0]
            if isinstance(head, _Mark):
                self._fire_marks()
                continue
            take = min(n - filled, head.samples.shape[0] - head.position)
            out[filled : filled + take] = head.samples[head.position : head.position + take]
            head.position += take
            filled += take
            self._queued -= take
            if head.position == head.samples.shape[0]:
                items.popleft()
        out[filled:] = 0
        if items and type(items[0]) is _Mark:
            self._fire_marks()
        return out

"""G.711 mu-law (PCMU) and A-law (PCMA) with numpy lookup tables.

Rules of this file:

- Every table is computed once, at import, from the segment rules of ITU-T
  G.711 (the same arithmetic as the ITU reference `g711.c`); the per-frame
  work is then a single numpy gather.
- Encoders take signed 16-bit linear PCM (a numpy ``int16`` array, or
  little-endian ``bytes``) and return ``uint8`` codes; decoders take codes
  (``uint8`` array or ``bytes``) and return ``int16`` samples.
- mu-law encodes the 14 most significant bits and A-law the 13 most
  significant bits of the sample, as G.711 defines them; the low bits are
  dropped by the companding itself, so every one of the 65,536 inputs has
  exactly one code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ALAW_DECODE_TABLE",
    "ALAW_ENCODE_TABLE",
    "ALAW_SILENCE",
    "PAYLOAD_TYPE_PCMA",
    "PAYLOAD_TYPE_PCMU",
    "PCMA",
    "PCMU",
    "SAMPLES_PER_FRAME",
    "SAMPLE_RATE",
    "ULAW_DECODE_TABLE",
    "ULAW_ENCODE_TABLE",
    "ULAW_SILENCE",
    "G711Codec",
    "alaw_decode",
    "alaw_encode",
    "codec_for_payload_type",
    "ulaw_decode",
    "ulaw_encode",
]

SAMPLE_RATE = 8000
SAMPLES_PER_FRAME = 160  # 20 ms
PAYLOAD_TYPE_PCMU = 0  # RFC 3551 §6, table 4
PAYLOAD_TYPE_PCMA = 8

# The code each law gives a zero sample: what a silent frame is filled with.
ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5

_BIAS = 0x84  # mu-law bias, 132 in the 16-bit scale (33 in the 14-bit scale)


def _ulaw_decode_table() -> NDArray[np.int16]:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((code & 0x0F) << 3) + _BIAS) << ((code & 0x70) >> 4)
    linear = np.where(code & 0x80, _BIAS - magnitude, magnitude - _BIAS)
    return linear.astype(np.int16)


def _alaw_decode_table() -> NDArray[np.int16]:
    code = np.arange(256, dtype=np.int32) ^ 0x55  # even bits are inverted on the wire
    mantissa = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    magnitude = np.where(
        segment == 0,
        mantissa + 8,
        (mantissa + 0x108) << np.maximum(segment - 1, 0),
    )
    linear = np.where(code & 0x80, magnitude, -magnitude)
    return linear.astype(np.int16)


def _segment(magnitude: NDArray[np.int32], first_end: int) -> NDArray[np.int32]:
    # Segment ends are first_end, 2*first_end+1, ... (each segment doubles); the
    # segment is the count of ends the magnitude exceeds, 8 meaning "over range".
    ends = (first_end + 1) * (1 << np.arange(8, dtype=np.int32)) - 1
    return np.searchsorted(ends, magnitude, side="left").astype(np.int32)


def _ulaw_encode_table() -> NDArray[np.uint8]:
    # Indexed by the int16 sample reinterpreted as uint16.
    linear = np.arange(65536, dtype=np.int32)
    linear = np.where(linear >= 0x8000, linear - 0x10000, linear) >> 2  # 14-bit sample
    negative = linear < 0
    mask = np.where(negative, 0x7F, 0xFF)
    magnitude = np.minimum(np.where(negative, -linear, linear), 8159) + (_BIAS >> 2)
    segment = _segment(magnitude, 0x3F)
    code = (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    capped = np.where(segment >= 8, 0x7F, code) ^ mask
    return capped.astype(np.uint8)


def _alaw_encode_table() -> NDArray[np.uint8]:
    linear = np.arange(65536, dtype=np.int32)
    linear = np.where(linear >= 0x8000, linear - 0x10000, linear) >> 3  # 13-bit sample
    negative = linear < 0
    mask = np.where(negative, 0x55, 0xD5)
    # A-law is symmetric around -1/2: a negative sample n codes like magnitude -n-1.
    magnitude = np.where(negative, -linear - 1, linear)
    segment = _segment(magnitude, 0x1F)
    shift = np.where(segment < 2, 1, segment)
    code = (segment << 4) | ((magnitude >> shift) & 0x0F)
    capped = np.where(segment >= 8, 0x7F, code) ^ mask
    return capped.astype(np.uint8)


ULAW_DECODE_TABLE: NDArray[np.int16] = _ulaw_decode_table()
ALAW_DECODE_TABLE: NDArray[np.int16] = _alaw_decode_table()
ULAW_ENCODE_TABLE: NDArray[np.uint8] = _ulaw_encode_table()
ALAW_ENCODE_TABLE: NDArray[np.uint8] = _alaw_encode_table()
for _table in (ULAW_DECODE_TABLE, ALAW_DECODE_TABLE, ULAW_ENCODE_TABLE, ALAW_ENCODE_TABLE):
    _table.flags.writeable = False

_LE_UINT16 = np.dtype("<u2")

PcmInput = NDArray[np.int16] | bytes | bytearray | memoryview
CodeInput = NDArray[np.uint8] | bytes | bytearray | memoryview


def _linear_index(pcm: PcmInput) -> NDArray[np.uint16]:
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.int16:
            raise TypeError(f"expected int16 samples, got {pcm.dtype}")
        return pcm.view(np.uint16)
    if len(pcm) % 2:
        raise ValueError("16-bit PCM bytes must have an even length")
    return np.frombuffer(pcm, dtype=_LE_UINT16)


def _code_index(codes: CodeInput) -> NDArray[np.uint8]:
    if isinstance(codes, np.ndarray):
        if codes.dtype != np.uint8:
            raise TypeError(f"expected uint8 codes, got {codes.dtype}")
        return codes
    return np.frombuffer(codes, dtype=np.uint8)


def ulaw_encode(pcm: PcmInput, out: NDArray[np.uint8] | None = None) -> NDArray[np.uint8]:
    """Encode 16-bit linear PCM to mu-law codes (``bytes`` input is little-endian)."""
    return np.take(ULAW_ENCODE_TABLE, _linear_index(pcm), out=out)


def alaw_encode(pcm: PcmInput, out: NDArray[np.uint8] | None = None) -> NDArray[np.uint8]:
    """Encode 16-bit linear PCM to A-law codes (``bytes`` input is little-endian)."""
    return np.take(ALAW_ENCODE_TABLE, _linear_index(pcm), out=out)


def ulaw_decode(codes: CodeInput, out: NDArray[np.int16] | None = None) -> NDArray[np.int16]:
    """Decode mu-law codes to 16-bit linear PCM."""
    return np.take(ULAW_DECODE_TABLE, _code_index(codes), out=out)


def alaw_decode(codes: CodeInput, out: NDArray[np.int16] | None = None) -> NDArray[np.int16]:
    """Decode A-law codes to 16-bit linear PCM."""
    return np.take(ALAW_DECODE_TABLE, _code_index(codes), out=out)


@dataclass(frozen=True, slots=True)
class G711Codec:
    """One G.711 law as negotiated in SDP: its static payload type and functions."""

    name: str
    payload_type: int
    encode: Callable[..., NDArray[np.uint8]]
    decode: Callable[..., NDArray[np.int16]]
    silence: int
    clock_rate: int = SAMPLE_RATE


PCMU = G711Codec("PCMU", PAYLOAD_TYPE_PCMU, ulaw_encode, ulaw_decode, ULAW_SILENCE)
PCMA = G711Codec("PCMA", PAYLOAD_TYPE_PCMA, alaw_encode, alaw_decode, ALAW_SILENCE)
_BY_PAYLOAD_TYPE = {PCMU.payload_type: PCMU, PCMA.payload_type: PCMA}


def codec_for_payload_type(payload_type: int) -> G711Codec:
    """Return the codec for a static payload type (0 or 8); ``KeyError`` otherwise."""
    return _BY_PAYLOAD_TYPE[payload_type]

"""G.711 against the standard library's independent implementation, value by value."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from media import g711

with warnings.catch_warnings():
    # audioop is deprecated (removed in 3.13), but it is the independent
    # reference we compare every value against while it exists.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_LINEAR = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))

LAWS = [
    pytest.param(g711.ulaw_encode, g711.ulaw_decode, audioop.lin2ulaw, audioop.ulaw2lin, id="ulaw"),
    pytest.param(g711.alaw_encode, g711.alaw_decode, audioop.lin2alaw, audioop.alaw2lin, id="alaw"),
]


@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), LAWS)
def test_encode_matches_reference_for_all_65536_values(encode, decode, ref_encode, ref_decode):
    expected = np.frombuffer(ref_encode(ALL_LINEAR.tobytes(), 2), dtype=np.uint8)
    got = encode(ALL_LINEAR)
    assert got.dtype == np.uint8
    assert got.shape == (65536,)
    mismatches = np.flatnonzero(got != expected)
    assert mismatches.size == 0, f"first mismatch at linear {int(ALL_LINEAR[mismatches[0]])}"


@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), LAWS)
def test_decode_matches_reference_for_all_256_codes(encode, decode, ref_encode, ref_decode):
    expected = np.frombuffer(ref_decode(ALL_CODES, 2), dtype=np.int16)
    got = decode(ALL_CODES)
    assert got.dtype == np.int16
    assert np.array_equal(got, expected)


@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), LAWS)
def test_bytes_and_arrays_give_the_same_codes(encode, decode, ref_encode, ref_decode):
    pcm = np.array([0, 1, -1, 1000, -1000, 32767, -32768], dtype=np.int16)
    as_bytes = pcm.astype("<i2").tobytes()
    assert np.array_equal(encode(pcm), encode(as_bytes))
    assert np.array_equal(encode(pcm), encode(bytearray(as_bytes)))
    codes = encode(pcm)
    assert np.array_equal(decode(codes), decode(codes.tobytes()))
    assert np.array_equal(decode(codes), decode(memoryview(codes.tobytes())))


@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), LAWS)
def test_decode_then_encode_is_identity_on_codes(encode, decode, ref_encode, ref_decode):
    codes = np.arange(256, dtype=np.uint8)
    round_tripped = encode(decode(codes))
    # Both laws have two codes for zero in one of the encodings (mu-law 0x7F and
    # 0xFF both decode to 0); every other code must come back unchanged.
    zero_codes = codes[decode(codes) == 0]
    keep = ~np.isin(codes, zero_codes)
    assert np.array_equal(round_tripped[keep], codes[keep])


@pytest.mark.parametrize(
    ("codec", "silence_code"),
    [(g711.PCMU, 0xFF), (g711.PCMA, 0xD5)],
)
def test_silence_code_is_what_zero_encodes_to(codec, silence_code):
    assert codec.silence == silence_code
    assert codec.encode(np.zeros(160, dtype=np.int16)).tobytes() == bytes([silence_code]) * 160
    # A-law has no code for zero: its quietest level decodes to +8.
    assert np.abs(codec.decode(bytes([silence_code]) * 4)).max() <= 8


@pytest.mark.parametrize(("payload_type", "name"), [(0, "PCMU"), (8, "PCMA")])
def test_codec_for_payload_type(payload_type, name):
    assert g711.codec_for_payload_type(payload_type).name == name


def test_unknown_payload_type_is_a_key_error():
    with pytest.raises(KeyError):
        g711.codec_for_payload_type(18)


def test_encode_into_preallocated_output():
    out = np.empty(160, dtype=np.uint8)
    pcm = np.full(160, 1234, dtype=np.int16)
    result = g711.ulaw_encode(pcm, out=out)
    assert result is out
    assert out.tobytes() == audioop.lin2ulaw(pcm.tobytes(), 2)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (np.zeros(4, dtype=np.int32), TypeError),
        (b"\x00\x01\x02", ValueError),
    ],
)
def test_encode_rejects_wrong_input(bad, error):
    with pytest.raises(error):
        g711.ulaw_encode(bad)


def test_decode_rejects_wrong_dtype():
    with pytest.raises(TypeError):
        g711.alaw_decode(np.zeros(4, dtype=np.int16))


def test_tables_are_read_only():
    with pytest.raises(ValueError):
        g711.ULAW_ENCODE_TABLE[0] = 1

"""RTP packets as round trips on hand-assembled bytes, wrap-around arithmetic, the sender."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.rtp import (
    RtpError,
    RtpPacket,
    RtpSender,
    SequenceExtender,
    pack_rtp,
    pack_rtp_into,
    seq_add,
    seq_diff,
    seq_newer,
    ts_add,
    ts_diff,
    ts_newer,
)

# "Captured" packets, written out octet by octet from the RFC 3550 §5.1 layout.
PCMU_FRAME = (
    bytes.fromhex(
        "80"  # V=2 P=0 X=0 CC=0
        "00"  # M=0 PT=0 (PCMU)
        "1234"  # sequence number
        "00000a00"  # timestamp 2560
        "deadbeef"  # SSRC
    )
    + b"\xff" * 160
)

DTMF_START = bytes.fromhex(
    "80"
    "e5"  # M=1 PT=101
    "fffe"  # sequence number 65534
    "ffffff60"  # timestamp near the 32-bit wrap
    "0badcafe"
    "05"  # event 5
    "0a"  # E=0 R=0 volume 10
    "00a0"  # duration 160
)

EVERYTHING = bytes.fromhex(
    "b2"  # V=2 P=1 X=1 CC=2
    "88"  # M=1 PT=8 (PCMA)
    "0001"
    "00000000"
    "11223344"
    "aaaaaaaa"  # CSRC 1
    "bbbbbbbb"  # CSRC 2
    "bede"  # extension profile (RFC 8285 one-byte headers)
    "0002"  # 2 words of extension data follow
    "10ff0000"
    "00000000"
    "d5d5d5d5"  # payload
    "00000004"  # 4 octets of padding, count last
)


def test_parse_pcmu_frame():
    packet = RtpPacket.parse(PCMU_FRAME)
    assert packet.payload_type == 0
    assert packet.sequence_number == 0x1234
    assert packet.timestamp == 2560
    assert packet.ssrc == 0xDEADBEEF
    assert packet.marker is False
    assert packet.csrc == ()
    assert packet.extension_profile is None
    assert packet.padding_size == 0
    assert packet.payload == b"\xff" * 160
    assert packet.serialize() == PCMU_FRAME
    assert bytes(packet) == PCMU_FRAME


def test_parse_dtmf_start():
    packet = RtpPacket.parse(DTMF_START)
    assert packet.marker is True
    assert packet.payload_type == 101
    assert packet.sequence_number == 65534
    assert packet.timestamp == 0xFFFFFF60
    assert packet.payload == bytes.fromhex("050a00a0")
    assert packet.serialize() == DTMF_START


def test_parse_csrc_extension_and_padding():
    packet = RtpPacket.parse(EVERYTHING)
    assert packet.payload_type == 8
    assert packet.marker is True
    assert packet.csrc == (0xAAAAAAAA, 0xBBBBBBBB)
    assert packet.extension_profile == 0xBEDE
    assert packet.extension == bytes.fromhex("10ff000000000000")
    # The extension was skipped by its length, so the payload starts after it.
    assert packet.payload == b"\xd5" * 4
    assert packet.padding_size == 4
    assert packet.serialize() == EVERYTHING


def test_parse_accepts_memoryview_and_bytearray():
    assert RtpPacket.parse(memoryview(PCMU_FRAME)) == RtpPacket.parse(bytearray(PCMU_FRAME))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (PCMU_FRAME[:11], "shorter than the header"),
        (b"\x40" + PCMU_FRAME[1:], "version 1"),
        (b"\xc0" + PCMU_FRAME[1:], "version 3"),
        (bytes([0x83]) + PCMU_FRAME[1:12] + b"\x00" * 8, "CSRC count past the end"),
        (bytes([0x90]) + PCMU_FRAME[1:12] + b"\xbe\xde", "extension header cut"),
        (bytes([0x90]) + PCMU_FRAME[1:12] + b"\xbe\xde\x00\x05" + b"\x00" * 8, "extension long"),
        (bytes([0xA0]) + PCMU_FRAME[1:12] + b"\x01\x00", "padding count zero"),
        (bytes([0xA0]) + PCMU_FRAME[1:12] + b"\x01\x09", "padding past the header"),
    ],
)
def test_malformed_packets_raise_rtp_error(data, reason):
    with pytest.raises(RtpError):
        RtpPacket.parse(data)


def test_padding_may_take_the_whole_payload():
    data = bytes([0xA0]) + PCMU_FRAME[1:12] + b"\x00\x00\x03"
    packet = RtpPacket.parse(data)
    assert packet.payload == b""
    assert packet.padding_size == 3
    assert packet.serialize() == data


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_parse_never_raises_anything_but_rtp_error(data):
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    # Whatever parses serializes back to the same octets when padding is zeros.
    if packet.padding_size <= 1 or not any(data[-packet.padding_size : -1]):
        assert packet.serialize() == data


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        RtpPacket,
        payload_type=st.integers(0, 127),
        sequence_number=st.integers(0, 0xFFFF),
        timestamp=st.integers(0, 0xFFFFFFFF),
        ssrc=st.integers(0, 0xFFFFFFFF),
        payload=st.binary(max_size=40),
        marker=st.booleans(),
        csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
        extension_profile=st.none() | st.integers(0, 0xFFFF),
        extension=st.binary(max_size=3).map(lambda b: b * 4),
        padding_size=st.integers(0, 255),
    )
)
def test_serialize_then_parse_round_trip(packet):
    if packet.extension_profile is None:
        packet.extension = b""
    assert RtpPacket.parse(packet.serialize()) == packet


@pytest.mark.parametrize("marker", [False, True])
def test_fast_paths_match_the_dataclass(marker):
    payload = bytes(range(160))
    expected = RtpPacket(0, 65535, 0xFFFFFFFF, 0x01020304, payload, marker).serialize()
    assert pack_rtp(0, 65535, 0xFFFFFFFF, 0x01020304, payload, marker) == expected
    buffer = bytearray(1500)
    length = pack_rtp_into(buffer, 0, 65535, 0xFFFFFFFF, 0x01020304, payload, marker)
    assert bytes(buffer[:length]) == expected


@pytest.mark.parametrize(
    ("a", "b", "diff"),
    [
        (5, 3, 2),
        (3, 5, -2),
        (0, 65535, 1),
        (65535, 0, -1),
        (10, 65530, 16),
        (32767, 0, 32767),
        (32768, 0, -32768),
    ],
)
def test_seq_diff(a, b, diff):
    assert seq_diff(a, b) == diff
    assert seq_newer(a, b) is (diff > 0)
    assert seq_add(b, diff) == a


@pytest.mark.parametrize(
    ("a", "b", "diff"),
    [
        (160, 0, 160),
        (0, 0xFFFFFF60, 160),
        (0xFFFFFF60, 0, -160),
        (0x7FFFFFFF, 0, 0x7FFFFFFF),
        (0x80000000, 0, -0x80000000),
    ],
)
def test_ts_diff(a, b, diff):
    assert ts_diff(a, b) == diff
    assert ts_newer(a, b) is (diff > 0)
    assert ts_add(b, diff) == a


@pytest.mark.parametrize(
    ("sequence", "extended"),
    [
        ([1, 2, 3], [1, 2, 3]),
        ([65534, 65535, 0, 1], [65534, 65535, 65536, 65537]),
        ([65535, 1, 0, 2], [65535, 65537, 65536, 65538]),  # reordered across the wrap
        ([2, 65535, 3], [2, -1, 3]),  # a late packet from before the first wrap
        ([0, 30000, 60000, 5000, 35000], [0, 30000, 60000, 70536, 100536]),
    ],
)
def test_sequence_extender(sequence, extended):
    extender = SequenceExtender()
    assert [extender.extend(seq) for seq in sequence] == extended


def test_sender_numbers_frames_and_marks_talkspurts():
    sender = RtpSender(ssrc=0x11111111, payload_type=0, sequence_number=65534, timestamp=1000)
    first = RtpPacket.parse(sender.packet(b"\xff" * 160))
    second = RtpPacket.parse(sender.packet(b"\xff" * 160))
    sender.skip(5)  # 100 ms of silence, nothing sent
    after_silence = RtpPacket.parse(sender.packet(b"\x00" * 160))
    fourth = RtpPacket.parse(sender.packet(b"\x00" * 160))

    assert [p.sequence_number for p in (first, second, after_silence, fourth)] == [
        65534,
        65535,
        0,
        1,
    ]
    assert [p.timestamp for p in (first, second, after_silence, fourth)] == [
        1000,
        1160,
        1320 + 5 * 160,
        1480 + 5 * 160,
    ]
    assert [p.marker for p in (first, second, after_silence, fourth)] == [
        True,
        False,
        True,
        False,
    ]
    assert sender.packet_count == 4
    assert sender.octet_count == 640


def test_sender_timestamp_wraps():
    sender = RtpSender(ssrc=1, payload_type=8, sequence_number=0, timestamp=0xFFFFFFFF - 100)
    sender.packet(b"\xd5" * 160)
    assert sender.timestamp == 59
    sender.skip(0)
    assert RtpPacket.parse(sender.packet(b"\xd5" * 160)).marker is False


def test_sender_event_packets_share_the_sequence_space():
    sender = RtpSender(ssrc=7, payload_type=0, sequence_number=10, timestamp=8000)
    sender.packet(b"\xff" * 160)
    event = RtpPacket.parse(
        sender.event_packet(b"\x01\x0a\x00\xa0", payload_type=101, timestamp=8160, marker=True)
    )
    sender.skip()
    audio = RtpPacket.parse(sender.packet(b"\xff" * 160))
    assert (event.sequence_number, event.timestamp, event.payload_type) == (11, 8160, 101)
    assert (audio.sequence_number, audio.timestamp) == (12, 8320)


def test_skip_rejects_negative():
    with pytest.raises(ValueError):
        RtpSender(ssrc=1, payload_type=0, sequence_number=0, timestamp=0).skip(-1)


@pytest.mark.parametrize(
    "packet",
    [
        RtpPacket(0, 0, 0, 0, csrc=tuple(range(16))),
        RtpPacket(0, 0, 0, 0, extension_profile=1, extension=b"abc"),
        RtpPacket(0, 0, 0, 0, padding_size=256),
    ],
)
def test_serialize_refuses_what_cannot_be_encoded(packet):
    with pytest.raises(RtpError):
        packet.serialize()

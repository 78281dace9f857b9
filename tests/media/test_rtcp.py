"""RTCP as round trips on hand-assembled compound packets; NTP time; report blocks."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.rtcp import (
    NTP_UNIX_OFFSET_S,
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpError,
    SdesChunk,
    SenderReport,
    SourceDescription,
    UnknownRtcp,
    build_report_block,
    fraction_lost,
    ntp_from_unix,
    ntp_middle_32,
    parse_compound,
    round_trip_delay,
    serialize_compound,
    unix_from_ntp,
)

# SR with one report block, then SDES with a CNAME: what a sending peer emits.
SR_SDES = bytes.fromhex(
    # SR: V=2 P=0 RC=1, PT=200, length 12 words
    "81c8000c"
    "deadbeef"  # sender SSRC
    "e9c1d2a0"  # NTP seconds
    "80000000"  # NTP fraction (.5)
    "0001e240"  # RTP timestamp 123456
    "0000012c"  # packet count 300
    "0000bb80"  # octet count 48000
    # report block about 0x0badcafe
    "0badcafe"
    "19"  # fraction lost 25/256
    "000007"  # cumulative lost 7
    "0001000a"  # extended highest sequence: 1 cycle, seq 10
    "00000020"  # jitter 32
    "d2a08000"  # LSR
    "00008000"  # DLSR (0.5 s)
    # SDES: V=2 P=0 SC=1, PT=202, length 5 words
    "81ca0005"
    "deadbeef"
    "010a"  # CNAME, 10 octets
    "6469616c65724068"  # "dialer@h"
    "7374"  # "st": the items end on a 32-bit boundary, so ...
    "00000000"  # ... a whole word of nulls terminates them
)

# Empty RR, SDES, then BYE with a reason: a receiver leaving.
RR_SDES_BYE = bytes.fromhex(
    "80c90001"  # RR, RC=0, length 1
    "0badcafe"
    "81ca0003"  # SDES, one chunk, 3 words
    "0badcafe"
    "010361626300"  # CNAME "abc" then the null terminator ends on the boundary
    "0000"  # ... padded by two more nulls
    "81cb0003"  # BYE, SC=1, length 3
    "0badcafe"
    "0762796520627965"  # reason length 7, "bye bye"
)

# RR followed by an APP packet we do not interpret.
RR_APP = bytes.fromhex(
    "80c90001"
    "00000001"
    "82cc0003"  # APP, subtype 2, length 3
    "00000001"
    "54455354"  # name "TEST"
    "01020304"  # application data
)


def test_parse_sender_report_and_sdes():
    packets = parse_compound(SR_SDES, strict=True)
    assert len(packets) == 2
    sr, sdes = packets
    assert isinstance(sr, SenderReport)
    assert sr.ssrc == 0xDEADBEEF
    assert sr.ntp_timestamp == 0xE9C1D2A0_80000000
    assert sr.rtp_timestamp == 123456
    assert (sr.packet_count, sr.octet_count) == (300, 48000)
    assert sr.reports == (ReportBlock(0x0BADCAFE, 25, 7, 0x1000A, 32, 0xD2A08000, 0x8000),)
    assert isinstance(sdes, SourceDescription)
    assert sdes.chunks[0].ssrc == 0xDEADBEEF
    assert sdes.chunks[0].cname == "dialer@hst"
    assert serialize_compound(packets) == SR_SDES


def test_parse_receiver_report_sdes_and_bye():
    rr, sdes, bye = parse_compound(RR_SDES_BYE, strict=True)
    assert rr == ReceiverReport(0x0BADCAFE)
    assert sdes == SourceDescription.cname_only(0x0BADCAFE, "abc")
    assert bye == Bye((0x0BADCAFE,), b"bye bye")
    assert serialize_compound([rr, sdes, bye]) == RR_SDES_BYE


def test_unknown_packets_survive_a_round_trip():
    rr, app = parse_compound(RR_APP)
    assert app == UnknownRtcp(204, 2, bytes.fromhex("000000015445535401020304"))
    assert serialize_compound([rr, app]) == RR_APP


def test_padding_on_the_last_packet_is_stripped():
    padded = bytes.fromhex("a1cb00020000000100000004")  # BYE, P=1, 4 octets padding
    assert parse_compound(padded) == [Bye((1,))]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x80\xc9\x00", "shorter than a header"),
        (bytes.fromhex("40c90001 00000001"), "version 1"),
        (bytes.fromhex("80c90002 00000001"), "length past the end"),
        (bytes.fromhex("80c90001 00000001 00"), "trailing octets"),
        (bytes.fromhex("81c90001 00000001"), "RR shorter than its block"),
        (bytes.fromhex("81c80001 00000001"), "SR shorter than sender info"),
        (bytes.fromhex("a0c90001 00000001 80c90001 00000001"), "padding not on the last"),
        (bytes.fromhex("a0cb0001 00000000"), "padding count zero"),
        (bytes.fromhex("a0cb0001 00000009"), "padding past the body"),
        (bytes.fromhex("81ca0002 00000001 01050000"), "SDES item truncated"),
        (bytes.fromhex("81ca0002 00000001 01020000"), "SDES list not terminated"),
        (bytes.fromhex("82cb0001 00000001"), "BYE shorter than its sources"),
        (bytes.fromhex("80cb0001 09000000"), "BYE reason truncated"),
    ],
)
def test_malformed_compounds_raise_rtcp_error(data, reason):
    with pytest.raises(RtcpError):
        parse_compound(data)


def test_strict_mode_wants_a_report_first():
    with pytest.raises(RtcpError):
        parse_compound(RR_SDES_BYE[24:], strict=True)
    assert len(parse_compound(RR_SDES_BYE[24:])) == 1


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=96))
def test_parse_never_raises_anything_but_rtcp_error(data):
    with contextlib.suppress(RtcpError):
        parse_compound(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=4, max_size=64), st.integers(0, 255))
def test_parse_structured_noise(body, first):
    # Bodies behind well-formed common headers reach the per-type parsers.
    header = bytes([0x80 | (first & 0x1F), 200 + (first % 5)]) + (len(body) // 4).to_bytes(2)
    with contextlib.suppress(RtcpError):
        parse_compound(header + body[: len(body) // 4 * 4])


report_blocks = st.builds(
    ReportBlock,
    ssrc=st.integers(0, 0xFFFFFFFF),
    fraction_lost=st.integers(0, 255),
    cumulative_lost=st.integers(-0x800000, 0x7FFFFF),
    highest_sequence=st.integers(0, 0xFFFFFFFF),
    jitter=st.integers(0, 0xFFFFFFFF),
    lsr=st.integers(0, 0xFFFFFFFF),
    dlsr=st.integers(0, 0xFFFFFFFF),
)
rtcp_packets = st.one_of(
    st.builds(
        SenderReport,
        ssrc=st.integers(0, 0xFFFFFFFF),
        ntp_timestamp=st.integers(0, 2**64 - 1),
        rtp_timestamp=st.integers(0, 0xFFFFFFFF),
        packet_count=st.integers(0, 0xFFFFFFFF),
        octet_count=st.integers(0, 0xFFFFFFFF),
        reports=st.lists(report_blocks, max_size=3).map(tuple),
    ),
    st.builds(
        ReceiverReport, st.integers(0, 0xFFFFFFFF), st.lists(report_blocks, max_size=3).map(tuple)
    ),
    st.builds(
        SourceDescription,
        st.lists(
            st.builds(
                SdesChunk,
                st.integers(0, 0xFFFFFFFF),
                st.lists(st.tuples(st.integers(1, 8), st.binary(max_size=20)), max_size=3).map(
                    tuple
                ),
            ),
            max_size=3,
        ).map(tuple),
    ),
    st.builds(
        Bye,
        st.lists(st.integers(0, 0xFFFFFFFF), max_size=3).map(tuple),
        st.none() | st.binary(max_size=20),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(rtcp_packets, min_size=1, max_size=4))
def test_serialize_then_parse_round_trip(packets):
    assert parse_compound(serialize_compound(packets)) == packets


@pytest.mark.parametrize(
    ("unix", "ntp"),
    [
        (0.0, NTP_UNIX_OFFSET_S << 32),
        (1.5, ((NTP_UNIX_OFFSET_S + 1) << 32) | 0x80000000),
        (1_700_000_000.25, ((1_700_000_000 + NTP_UNIX_OFFSET_S) << 32) | 0x40000000),
    ],
)
def test_ntp_conversion(unix, ntp):
    assert ntp_from_unix(unix) == ntp
    assert unix_from_ntp(ntp) == pytest.approx(unix, abs=1e-9)


def test_ntp_middle_32():
    assert ntp_middle_32(0xE9C1D2A0_80000000) == 0xD2A08000


@pytest.mark.parametrize(
    ("expected", "received", "fraction"),
    [
        (100, 100, 0),
        (100, 75, 64),  # a quarter lost
        (100, 0, 255),  # everything lost saturates below 256
        (100, 110, 0),  # duplicates: negative loss reports zero
        (0, 0, 0),
        (3, 2, 85),
    ],
)
def test_fraction_lost(expected, received, fraction):
    assert fraction_lost(expected, received) == fraction


@pytest.mark.parametrize(
    ("cumulative", "wire"),
    [(0, 0), (7, 7), (-1, 0xFFFFFF), (10**9, 0x7FFFFF), (-(10**9), 0x800000)],
)
def test_cumulative_lost_is_24_bit_signed_and_clamped(cumulative, wire):
    block = ReportBlock(1, 0, cumulative, 0, 0, 0, 0)
    data = block.serialize()
    assert int.from_bytes(data[5:8]) == wire
    assert ReportBlock.parse(data).cumulative_lost == max(-0x800000, min(0x7FFFFF, cumulative))


def test_build_report_block_before_any_sender_report():
    block = build_report_block(
        ssrc=5,
        expected_interval=50,
        received_interval=45,
        cumulative_lost=12,
        extended_highest_sequence=0x1_0005,
        jitter=40,
        last_sr_ntp=None,
        last_sr_arrival=None,
        now=100.0,
    )
    assert block == ReportBlock(5, 25, 12, 0x10005, 40, 0, 0)


def test_round_trip_delay_from_lsr_and_dlsr():
    # We send an SR at t0; the peer gets it 40 ms later, holds it 250 ms, and its
    # RR reaches us 60 ms after that: the round trip is 100 ms.
    t0 = 1_700_000_000.0
    sr_ntp = ntp_from_unix(t0)
    block = build_report_block(
        ssrc=0xDEADBEEF,
        expected_interval=0,
        received_interval=0,
        cumulative_lost=0,
        extended_highest_sequence=0,
        jitter=0,
        last_sr_ntp=sr_ntp,
        last_sr_arrival=t0 + 0.040,
        now=t0 + 0.290,
    )
    assert block.lsr == ntp_middle_32(sr_ntp)
    assert block.dlsr == int(0.250 * 65536)
    rtt = round_trip_delay(block, arrival=t0 + 0.350)
    assert rtt == pytest.approx(0.100, abs=2 / 65536)


def test_round_trip_delay_needs_an_lsr():
    assert round_trip_delay(ReportBlock(1, 0, 0, 0, 0, 0, 0), arrival=1e9) is None


def test_round_trip_delay_rounding_below_zero_is_zero():
    lsr = ntp_middle_32(ntp_from_unix(1000.0))
    assert round_trip_delay(ReportBlock(1, 0, 0, 0, 0, lsr, 10), arrival=1000.0) == 0.0


@pytest.mark.parametrize(
    "packet",
    [
        SourceDescription((SdesChunk(1, ((0, b"x"),)),)),
        SourceDescription((SdesChunk(1, ((1, b"x" * 256),)),)),
        Bye((1,), b"x" * 256),
        ReceiverReport(1, tuple(ReportBlock(i, 0, 0, 0, 0, 0, 0) for i in range(32))),
        UnknownRtcp(204, 0, b"abc"),
    ],
)
def test_serialize_refuses_what_cannot_be_encoded(packet):
    with pytest.raises(RtcpError):
        packet.serialize()

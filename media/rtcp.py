"""RTCP (RFC 3550 §6): SR, RR, SDES, BYE, compound packets, NTP time, report blocks.

Rules of this file:

- Every packet type is a frozen dataclass with ``parse(body, count)`` and
  ``serialize()``; ``parse_compound`` walks the common headers and is the
  only entry point for datagrams. It raises ``RtcpError`` and nothing else.
- Unknown packet types (APP, feedback, XR, ...) survive as ``UnknownRtcp`` so
  a compound packet re-serializes to what arrived.
- Wall time is always handed in (``now``, ``arrival``, Unix seconds as a
  float); this module converts it to NTP format but never reads a clock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "NTP_UNIX_OFFSET_S",
    "RTCP_BYE",
    "RTCP_RR",
    "RTCP_SDES",
    "RTCP_SR",
    "SDES_CNAME",
    "Bye",
    "ReceiverReport",
    "ReportBlock",
    "RtcpError",
    "RtcpPacket",
    "SdesChunk",
    "SenderReport",
    "SourceDescription",
    "UnknownRtcp",
    "build_report_block",
    "fraction_lost",
    "ntp_from_unix",
    "ntp_middle_32",
    "parse_compound",
    "round_trip_delay",
    "serialize_compound",
    "unix_from_ntp",
]

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203

SDES_CNAME = 1  # RFC 3550 §6.5.1

# Seconds from the NTP era 0 epoch (1900-01-01) to the Unix epoch (1970-01-01).
NTP_UNIX_OFFSET_S = 2_208_988_800

_HEADER = struct.Struct("!BBH")
_SSRC = struct.Struct("!I")
_SENDER_INFO = struct.Struct("!IQIII")
_REPORT_BLOCK = struct.Struct("!IIIIII")  # fraction lost and cumulative lost share a word


class RtcpError(ValueError):
    """A datagram that is not valid RTCP (blame: remote)."""


# -- NTP time -------------------------------------------------------------------


def ntp_from_unix(unix_time_s: float) -> int:
    """Return the 64-bit NTP timestamp (32.32 fixed point) for a Unix time."""
    seconds = int(unix_time_s // 1)
    fraction = int((unix_time_s - seconds) * (1 << 32))
    return (((seconds + NTP_UNIX_OFFSET_S) & 0xFFFFFFFF) << 32) | (fraction & 0xFFFFFFFF)


def unix_from_ntp(ntp: int) -> float:
    """Return the Unix time of a 64-bit NTP timestamp (era 0, 1900 to 2036)."""
    return (ntp >> 32) - NTP_UNIX_OFFSET_S + (ntp & 0xFFFFFFFF) / (1 << 32)


def ntp_middle_32(ntp: int) -> int:
    """Return the middle 32 bits of an NTP timestamp: the LSR of RFC 3550 §6.4.1."""
    return (ntp >> 16) & 0xFFFFFFFF


# -- report blocks ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 §6.4.1), 24 octets on the wire.

    ``fraction_lost`` is the 8-bit fixed-point fraction (lost/expected * 256)
    of the last interval; ``cumulative_lost`` is signed (duplicates can make it
    negative); ``jitter`` is in RTP timestamp units; ``lsr`` and ``dlsr`` are
    in NTP short format (``dlsr`` in 1/65536 s).
    """

    ssrc: int
    fraction_lost: int
    cumulative_lost: int
    highest_sequence: int
    jitter: int
    lsr: int
    dlsr: int

    SIZE = 24

    @classmethod
    def parse(cls, data: bytes | memoryview, offset: int = 0) -> ReportBlock:
        """Parse the block that starts at ``offset``."""
        if len(data) - offset < cls.SIZE:
            raise RtcpError("report block truncated")
        ssrc, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:  # 24-bit two's complement
            cumulative -= 0x1000000
        return cls(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr)

    def serialize(self) -> bytes:
        """Return the 24-octet wire form."""
        return _REPORT_BLOCK.pack(
            self.ssrc,
            (self.fraction_lost & 0xFF) << 24 | (_clamp_cumulative_lost(self.cumulative_lost)),
            self.highest_sequence & 0xFFFFFFFF,
            self.jitter & 0xFFFFFFFF,
            self.lsr & 0xFFFFFFFF,
            self.dlsr & 0xFFFFFFFF,
        )


def _clamp_cumulative_lost(lost: int) -> int:
    # RFC 3550 §6.4.1: the 24-bit signed count is clamped at 0x7fffff for positive
    # loss and 0x800000 for negative loss.
    lost = max(-0x800000, min(0x7FFFFF, lost))
    return lost & 0xFFFFFF


def fraction_lost(expected_interval: int, received_interval: int) -> int:
    """Return the 8-bit fraction lost of an interval (RFC 3550 Appendix A.3).

    Zero when nothing was expected or when duplicates made the loss negative.
    """
    lost_interval = expected_interval - received_interval
    if expected_interval <= 0 or lost_interval <= 0:
        return 0
    return min(255, (lost_interval << 8) // expected_interval)


def build_report_block(
    *,
    ssrc: int,
    expected_interval: int,
    received_interval: int,
    cumulative_lost: int,
    extended_highest_sequence: int,
    jitter: int,
    last_sr_ntp: int | None,
    last_sr_arrival: float | None,
    now: float,
) -> ReportBlock:
    """Build the report block about source ``ssrc`` from its receive statistics.

    ``last_sr_ntp`` is the full NTP timestamp of the last SR received from the
    source and ``last_sr_arrival`` when it arrived (same clock as ``now``); both
    ``None`` when no SR has arrived yet, in which case LSR and DLSR are zero as
    RFC 3550 §6.4.1 requires.
    """
    if last_sr_ntp is None or last_sr_arrival is None:
        lsr = dlsr = 0
    else:
        lsr = ntp_middle_32(last_sr_ntp)
        dlsr = max(0, min(0xFFFFFFFF, int((now - last_sr_arrival) * 65536)))
    return ReportBlock(
        ssrc=ssrc,
        fraction_lost=fraction_lost(expected_interval, received_interval),
        cumulative_lost=cumulative_lost,
        highest_sequence=extended_highest_sequence & 0xFFFFFFFF,
        jitter=jitter,
        lsr=lsr,
        dlsr=dlsr,
    )


def round_trip_delay(block: ReportBlock, arrival: float) -> float | None:
    """Return the round-trip time in seconds from a block about our stream.

    RFC 3550 §6.4.1: RTT = A - LSR - DLSR, with A the arrival time of the
    report (Unix seconds, converted to NTP short format here). ``None`` when
    the peer has not received a sender report from us yet (LSR is zero).
    A slightly negative result (rounding of the 1/65536 s units) is 0.
    """
    if block.lsr == 0:
        return None
    arrival_short = ntp_middle_32(ntp_from_unix(arrival))
    units = (arrival_short - block.lsr - block.dlsr) & 0xFFFFFFFF
    if units & 0x80000000:
        return 0.0
    return units / 65536


# -- packets ------------------------------------------------------------------------


def _blocks(data: memoryview, offset: int, count: int) -> tuple[ReportBlock, ...]:
    return tuple(ReportBlock.parse(data, offset + i * ReportBlock.SIZE) for i in range(count))


def _header(packet_type: int, count: int, body: bytes) -> bytes:
    if len(body) % 4:
        raise RtcpError("RTCP packet body must be a multiple of 4 octets")
    if count > 31:
        raise RtcpError("at most 31 items fit in one RTCP packet")
    # RFC 3550 §6.4.1: length in 32-bit words minus one, counting the header.
    return _HEADER.pack(0x80 | count, packet_type, len(body) // 4) + body


@dataclass(frozen=True, slots=True)
class SenderReport:
    """SR (RFC 3550 §6.4.1): sender info and up to 31 report blocks.

    ``ntp_timestamp`` is the full 64-bit NTP time the SR was built, and
    ``rtp_timestamp`` the same instant on the stream's RTP clock.
    """

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    packet_type = RTCP_SR

    @classmethod
    def parse(cls, body: memoryview, count: int) -> SenderReport:
        """Parse the body (after the 4-octet common header) of an SR."""
        if len(body) < 24 + count * ReportBlock.SIZE:
            raise RtcpError("SR shorter than its sender info and report blocks")
        ssrc, ntp, rtp, packets, octets = _SENDER_INFO.unpack_from(body)
        end = 24 + count * ReportBlock.SIZE
        return cls(ssrc, ntp, rtp, packets, octets, _blocks(body, 24, count), bytes(body[end:]))

    def serialize(self) -> bytes:
        """Return the packet with its common header."""
        body = _SENDER_INFO.pack(
            self.ssrc,
            self.ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
            self.rtp_timestamp & 0xFFFFFFFF,
            self.packet_count & 0xFFFFFFFF,
            self.octet_count & 0xFFFFFFFF,
        )
        body += b"".join(block.serialize() for block in self.reports) + self.extension
        return _header(RTCP_SR, len(self.reports), body)


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RR (RFC 3550 §6.4.2): the reporter's SSRC and up to 31 report blocks."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    packet_type = RTCP_RR

    @classmethod
    def parse(cls, body: memoryview, count: int) -> ReceiverReport:
        """Parse the body of an RR."""
        end = 4 + count * ReportBlock.SIZE
        if len(body) < end:
            raise RtcpError("RR shorter than its report blocks")
        (ssrc,) = _SSRC.unpack_from(body)
        return cls(ssrc, _blocks(body, 4, count), bytes(body[end:]))

    def serialize(self) -> bytes:
        """Return the packet with its common header."""
        body = _SSRC.pack(self.ssrc)
        body += b"".join(block.serialize() for block in self.reports) + self.extension
        return _header(RTCP_RR, len(self.reports), body)


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """One SDES chunk: a source and its (item type, value) pairs."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...] = ()

    @property
    def cname(self) -> str | None:
        """The CNAME item decoded as UTF-8, if present."""
        for item_type, value in self.items:
            if item_type == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None

    def serialize(self) -> bytes:
        """Return the chunk, item list terminated and padded to 32 bits."""
        parts = [_SSRC.pack(self.ssrc)]
        for item_type, value in self.items:
            if not 1 <= item_type <= 255 or len(value) > 255:
                raise RtcpError("SDES item type must be 1-255 and its value at most 255 octets")
            parts.append(bytes((item_type, len(value))) + value)
        chunk = b"".join(parts)
        # RFC 3550 §6.5: the item list MUST end with at least one null octet,
        # then nulls up to the next 32-bit boundary.
        return chunk + bytes(4 - len(chunk) % 4)


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """SDES (RFC 3550 §6.5): up to 31 chunks."""

    chunks: tuple[SdesChunk, ...]

    packet_type = RTCP_SDES

    @classmethod
    def cname_only(cls, ssrc: int, cname: str) -> SourceDescription:
        """The SDES every compound packet carries: one chunk with our CNAME."""
        return cls((SdesChunk(ssrc, ((SDES_CNAME, cname.encode()),)),))

    @classmethod
    def parse(cls, body: memoryview, count: int) -> SourceDescription:
        """Parse the body of an SDES packet."""
        chunks = []
        offset = 0
        size = len(body)
        for _ in range(count):
            if offset + 4 > size:
                raise RtcpError("SDES chunk truncated")
            (ssrc,) = _SSRC.unpack_from(body, offset)
            offset += 4
            items = []
            while True:
                if offset >= size:
                    raise RtcpError("SDES item list not terminated")
                item_type = body[offset]
                if item_type == 0:
                    # Skip the null terminator and the padding to 32 bits.
                    offset = (offset + 4) & ~3
                    break
                if offset + 2 > size or offset + 2 + body[offset + 1] > size:
                    raise RtcpError("SDES item truncated")
                length = body[offset + 1]
                items.append((item_type, bytes(body[offset + 2 : offset + 2 + length])))
                offset += 2 + length
            chunks.append(SdesChunk(ssrc, tuple(items)))
        return cls(tuple(chunks))

    def serialize(self) -> bytes:
        """Return the packet with its common header."""
        body = b"".join(chunk.serialize() for chunk in self.chunks)
        return _header(RTCP_SDES, len(self.chunks), body)


@dataclass(frozen=True, slots=True)
class Bye:
    """BYE (RFC 3550 §6.6): the sources leaving and an optional reason."""

    sources: tuple[int, ...]
    reason: bytes | None = None

    packet_type = RTCP_BYE

    @classmethod
    def parse(cls, body: memoryview, count: int) -> Bye:
        """Parse the body of a BYE packet."""
        end = 4 * count
        if len(body) < end:
            raise RtcpError("BYE shorter than its SSRC list")
        sources = struct.unpack_from(f"!{count}I", body)
        reason = None
        if len(body) > end:
            length = body[end]
            if end + 1 + length > len(body):
                raise RtcpError("BYE reason truncated")
            reason = bytes(body[end + 1 : end + 1 + length])
        return cls(tuple(sources), reason)

    def serialize(self) -> bytes:
        """Return the packet with its common header."""
        body = b"".join(_SSRC.pack(ssrc) for ssrc in self.sources)
        if self.reason is not None:
            if len(self.reason) > 255:
                raise RtcpError("BYE reason is at most 255 octets")
            reason = bytes((len(self.reason),)) + self.reason
            body += reason + bytes(-len(reason) % 4)
        return _header(RTCP_BYE, len(self.sources), body)


@dataclass(frozen=True, slots=True)
class UnknownRtcp:
    """Any other RTCP packet, kept whole so it can be forwarded or re-serialized."""

    packet_type: int
    count: int
    body: bytes

    def serialize(self) -> bytes:
        """Return the packet with its common header."""
        return _header(self.packet_type, self.count, self.body)


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye | UnknownRtcp

_PARSERS: dict[int, Callable[[memoryview, int], RtcpPacket]] = {
    RTCP_SR: SenderReport.parse,
    RTCP_RR: ReceiverReport.parse,
    RTCP_SDES: SourceDescription.parse,
    RTCP_BYE: Bye.parse,
}


def parse_compound(
    data: bytes | bytearray | memoryview, *, strict: bool = False
) -> list[RtcpPacket]:
    """Parse a compound RTCP datagram into its packets.

    Always checked (RFC 3550 Appendix A.2): version 2 in every packet, lengths
    that add up to the datagram, padding only on the last packet. With
    ``strict``, also that the first packet is an SR or RR; off by default
    because reduced-size RTCP (RFC 5506) sends other packets alone.
    """
    view = memoryview(data)
    size = len(view)
    if size < 4:
        raise RtcpError("RTCP datagram shorter than a header")
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < size:
        if size - offset < 4:
            raise RtcpError("trailing octets after the last RTCP packet")
        first, packet_type, words = _HEADER.unpack_from(view, offset)
        if first >> 6 != 2:
            raise RtcpError(f"RTCP version {first >> 6}, expected 2")
        end = offset + 4 + 4 * words
        if end > size:
            raise RtcpError("RTCP packet length runs past the end of the datagram")
        body_end = end
        if first & 0x20:
            if end != size:
                raise RtcpError("only the last RTCP packet of a compound may be padded")
            padding = view[end - 1]
            if padding == 0 or padding > 4 * words:
                raise RtcpError(f"RTCP padding count {padding} is invalid")
            body_end = end - padding
        if strict and not packets and packet_type not in (RTCP_SR, RTCP_RR):
            raise RtcpError("a compound RTCP packet must start with an SR or RR")
        count = first & 0x1F
        body = view[offset + 4 : body_end]
        parser = _PARSERS.get(packet_type)
        if parser is None:
            packets.append(UnknownRtcp(packet_type, count, bytes(body)))
        else:
            packets.append(parser(body, count))
        offset = end
    return packets


def serialize_compound(packets: list[RtcpPacket] | tuple[RtcpPacket, ...]) -> bytes:
    """Concatenate packets into one compound datagram (no padding)."""
    return b"".join(packet.serialize() for packet in packets)

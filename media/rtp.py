"""RTP packets (RFC 3550 §5), sequence/timestamp arithmetic, and a pure sender.

Rules of this file:

- ``RtpPacket.parse`` accepts any ``bytes``-like object and either returns a
  packet or raises ``RtpError``; no other exception escapes it, whatever the
  input (a bad packet is dropped and counted by the caller, never fatal).
- Sequence numbers are 16 bits and timestamps 32 bits, and both wrap: every
  comparison goes through the helpers below, never through ``<``.
- Nothing here reads a clock: ``RtpSender`` is told which frames were sent and
  which were silent, and keeps the RTP clock from that.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "RTP_HEADER_SIZE",
    "RTP_VERSION",
    "RtpError",
    "RtpPacket",
    "RtpSender",
    "SequenceExtender",
    "pack_rtp",
    "pack_rtp_into",
    "seq_add",
    "seq_diff",
    "seq_newer",
    "ts_add",
    "ts_diff",
    "ts_newer",
]

RTP_VERSION = 2
RTP_HEADER_SIZE = 12

_HEADER = struct.Struct("!BBHII")
_pack_header = _HEADER.pack
_EXTENSION_HEADER = struct.Struct("!HH")
_CSRC = struct.Struct("!I")


class RtpError(ValueError):
    """A datagram that is not a valid RTP packet (blame: remote)."""


# -- wrap-around arithmetic ---------------------------------------------------


def seq_add(seq: int, delta: int) -> int:
    """Return ``seq + delta`` modulo 2**16."""
    return (seq + delta) & 0xFFFF


def seq_diff(a: int, b: int) -> int:
    """Return the signed distance ``a - b`` across the 16-bit wrap, in [-32768, 32767]."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def seq_newer(a: int, b: int) -> bool:
    """True when sequence number ``a`` comes after ``b`` (RFC 1982 serial arithmetic)."""
    return seq_diff(a, b) > 0


def ts_add(timestamp: int, delta: int) -> int:
    """Return ``timestamp + delta`` modulo 2**32."""
    return (timestamp + delta) & 0xFFFFFFFF


def ts_diff(a: int, b: int) -> int:
    """Return the signed distance ``a - b`` across the 32-bit wrap."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def ts_newer(a: int, b: int) -> bool:
    """True when timestamp ``a`` is later than ``b`` (RFC 1982 serial arithmetic)."""
    return ts_diff(a, b) > 0


@dataclass(slots=True)
class SequenceExtender:
    """Turns 16-bit sequence numbers into an unbounded extended sequence.

    The first number seen is taken as is (cycle 0). Each later number is placed
    at the extended value nearest to the highest one seen so far, so a packet
    from just before a wrap that arrives just after it lands in the previous
    cycle (and may be negative before the first wrap).
    """

    highest: int | None = None

    def extend(self, seq: int) -> int:
        """Return the extended sequence number of ``seq`` and remember the highest."""
        if self.highest is None:
            self.highest = seq
            return seq
        extended = self.highest + seq_diff(seq, self.highest & 0xFFFF)
        if extended > self.highest:
            self.highest = extended
        return extended


# -- packets ------------------------------------------------------------------


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1).

    ``padding_size`` is the number of padding octets after the payload,
    including the final count octet (0 for no padding). ``extension_profile``
    is ``None`` when the X bit is clear; otherwise ``extension`` holds the
    extension data without its 4-octet header (a multiple of 4 octets).
    """

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""
    padding_size: int = 0

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> RtpPacket:
        """Parse one datagram; raise ``RtpError`` when it is not valid RTP."""
        size = len(data)
        if size < RTP_HEADER_SIZE:
            raise RtpError(f"RTP packet of {size} octets is shorter than the 12-octet header")
        first, second, sequence_number, timestamp, ssrc = _HEADER.unpack_from(data)
        if first >> 6 != RTP_VERSION:
            raise RtpError(f"RTP version {first >> 6}, expected 2")
        csrc_count = first & 0x0F
        offset = RTP_HEADER_SIZE + 4 * csrc_count
        if offset > size:
            raise RtpError(f"RTP packet too short for its {csrc_count} CSRC identifiers")
        csrc = struct.unpack_from(f"!{csrc_count}I", data, RTP_HEADER_SIZE) if csrc_count else ()

        extension_profile = None
        extension = b""
        if first & 0x10:
            # RFC 3550 §5.3.1: a 16-bit profile field, a 16-bit length counted in
            # 32-bit words not including the 4-octet extension header itself.
            if offset + 4 > size:
                raise RtpError("RTP packet too short for its header extension")
            extension_profile, words = _EXTENSION_HEADER.unpack_from(data, offset)
            offset += 4
            end = offset + 4 * words
            if end > size:
                raise RtpError("RTP header extension runs past the end of the packet")
            extension = bytes(data[offset:end])
            offset = end

        end = size
        padding_size = 0
        if first & 0x20:
            # RFC 3550 §5.1: the last octet counts the padding octets, itself
            # included, so it can be neither 0 nor more than what follows the header.
            padding_size = data[size - 1]
            if padding_size == 0 or offset + padding_size > size:
                raise RtpError(f"RTP padding count {padding_size} is invalid")
            end = size - padding_size

        return cls(
            payload_type=second & 0x7F,
            sequence_number=sequence_number,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes(data[offset:end]),
            marker=bool(second & 0x80),
            csrc=tuple(csrc),
            extension_profile=extension_profile,
            extension=extension,
            padding_size=padding_size,
        )

    def serialize(self) -> bytes:
        """Return the packet's wire form (padding octets are zeros, then the count)."""
        if len(self.csrc) > 15:
            raise RtpError("at most 15 CSRC identifiers fit in an RTP header")
        if len(self.extension) % 4:
            raise RtpError("RTP header extension length must be a multiple of 4 octets")
        if not 0 <= self.padding_size <= 255:
            raise RtpError("RTP padding must be 0 to 255 octets")
        first = (RTP_VERSION << 6) | len(self.csrc)
        if self.padding_size:
            first |= 0x20
        if self.extension_profile is not None:
            first |= 0x10
        parts = [
            _HEADER.pack(
                first,
                (0x80 if self.marker else 0) | (self.payload_type & 0x7F),
                self.sequence_number & 0xFFFF,
                self.timestamp & 0xFFFFFFFF,
                self.ssrc & 0xFFFFFFFF,
            )
        ]
        parts.extend(_CSRC.pack(csrc) for csrc in self.csrc)
        if self.extension_profile is not None:
            parts.append(_EXTENSION_HEADER.pack(self.extension_profile, len(self.extension) // 4))
            parts.append(self.extension)
        parts.append(self.payload)
        if self.padding_size:
            parts.append(bytes(self.padding_size - 1) + bytes([self.padding_size]))
        return b"".join(parts)

    def __bytes__(self) -> bytes:
        return self.serialize()


def pack_rtp(
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    marker: bool = False,
) -> bytes:
    """Build a plain outgoing packet (no CSRC, extension or padding): the hot path."""
    return (
        _HEADER.pack(
            0x80,
            (0x80 if marker else 0) | payload_type,
            sequence_number & 0xFFFF,
            timestamp & 0xFFFFFFFF,
            ssrc,
        )
        + payload
    )


def pack_rtp_into(
    buffer: bytearray,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    payload: bytes | bytearray | memoryview,
    marker: bool = False,
) -> int:
    """Write a plain packet into a preallocated ``buffer``; return its length.

    The buffer is reused by the caller, so whoever sends it must copy it or send
    it before the next call (a datagram ``sendto`` does).
    """
    _HEADER.pack_into(
        buffer,
        0,
        0x80,
        (0x80 if marker else 0) | payload_type,
        sequence_number & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc,
    )
    end = RTP_HEADER_SIZE + len(payload)
    buffer[RTP_HEADER_SIZE:end] = payload
    return end


# -- sender -------------------------------------------------------------------


@dataclass(slots=True)
class RtpSender:
    """The sending side of one RTP stream: numbering, RTP clock and marker bit.

    The caller steps it once per frame period (20 ms by default): ``packet()``
    for a frame it sends, ``skip()`` for a frame it does not (silence
    suppression, or a frame replaced by telephone events). The RTP timestamp
    advances for both, as RFC 3550 §5.1 wants it to follow the sampling
    clock; the sequence number advances only for packets sent.

    RFC 3551 §4.1: the marker bit is set on the first packet of a talk-spurt,
    i.e. the first packet sent and the first packet after skipped frames.
    ``packet_count`` and ``octet_count`` (payload octets) are the sender's
    counters RFC 3550 §6.4.1 puts into a sender report.
    """

    ssrc: int
    payload_type: int
    sequence_number: int  # the number the next packet will carry
    timestamp: int  # the RTP timestamp of the next frame
    samples_per_frame: int = 160
    packet_count: int = 0
    octet_count: int = 0
    _talkspurt_start: bool = field(default=True, init=False, repr=False)

    def packet(self, payload: bytes) -> bytes:
        """Return the packet for the next frame and step one frame."""
        sequence_number = self.sequence_number
        timestamp = self.timestamp
        # pack_rtp, inline: this runs for every packet of every call.
        if self._talkspurt_start:
            self._talkspurt_start = False
            second = 0x80 | self.payload_type
        else:
            second = self.payload_type
        data = _pack_header(0x80, second, sequence_number, timestamp, self.ssrc) + payload
        self.sequence_number = (sequence_number + 1) & 0xFFFF
        self.timestamp = (timestamp + self.samples_per_frame) & 0xFFFFFFFF
        self.packet_count += 1
        self.octet_count += len(payload)
        return data

    def skip(self, frames: int = 1) -> None:
        """Step ``frames`` frame periods without sending; the next packet is marked."""
        if frames < 0:
            raise ValueError("cannot skip a negative number of frames")
        if frames:
            self.timestamp = (self.timestamp + frames * self.samples_per_frame) & 0xFFFFFFFF
            self._talkspurt_start = True

    def event_packet(
        self, payload: bytes, *, payload_type: int, timestamp: int, marker: bool
    ) -> bytes:
        """Return a packet in this stream's sequence space with a timestamp of its own.

        For RFC 4733 telephone events, which share the SSRC and the sequence
        numbers of the audio but carry the timestamp of the event's start; the
        audio clock is stepped separately with ``skip()``.
        """
        data = pack_rtp(payload_type, self.sequence_number, timestamp, self.ssrc, payload, marker)
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.packet_count += 1
        self.octet_count += len(payload)
        return data

"""DTMF as RFC 4733 telephone events: the payload, a receiver and a sender.

Rules of this file:

- One key press is one event, named by the RTP timestamp of its start: all
  of its packets (the first, the updates, the three end packets) carry that
  timestamp (RFC 4733 §2.5.1). The receiver folds them into one ``DtmfDigit``
  reported exactly once.
- The receiver reports a digit when its end packet arrives; when the end
  packets are lost, when the next event begins or when ``poll(now)`` finds
  the event silent for ``end_timeout_s``. Packets of an event already
  reported (retransmitted ends, stragglers) are ignored.
- The sender returns the whole packet schedule for a digit; the caller sends
  each entry at its offset, through the RTP stream's sequence numbers, and
  steps the audio clock meanwhile (see ``media.rtp.RtpSender``).
- Events longer than one 16-bit duration (8.2 s at 8 kHz: RFC 4733
  segments) are not folded: each segment is reported as its own digit.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from media.rtp import ts_diff

__all__ = [
    "DTMF_DIGITS",
    "DtmfDigit",
    "DtmfError",
    "DtmfReceiver",
    "EventPacket",
    "TelephoneEvent",
    "digit_for_event",
    "dtmf_packets",
    "event_for_digit",
]

# RFC 4733 §3 (DTMF events): codes 0-15 are the DTMF keys in this order.
DTMF_DIGITS = "0123456789*#ABCD"

_EVENT = struct.Struct("!BBH")


class DtmfError(ValueError):
    """A telephone-event payload that cannot be parsed (blame: remote)."""


def event_for_digit(digit: str) -> int:
    """Return the event code of a DTMF key (``'0'``-``'9'``, ``'*'``, ``'#'``, ``'A'``-``'D'``)."""
    index = DTMF_DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return index


def digit_for_event(event: int) -> str | None:
    """Return the key of a DTMF event code, ``None`` for other events (flash, tones)."""
    return DTMF_DIGITS[event] if 0 <= event < len(DTMF_DIGITS) else None


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """The 4-octet telephone-event payload (RFC 4733 §2.3).

    ``volume`` is the power level in -dBm0 (0 to 63); ``duration`` is in RTP
    timestamp units since the event's timestamp.
    """

    event: int
    end: bool
    volume: int
    duration: int

    @classmethod
    def parse(cls, payload: bytes | bytearray | memoryview) -> TelephoneEvent:
        """Parse a payload; with several events in one payload the first is used."""
        if len(payload) < 4 or len(payload) % 4:
            raise DtmfError(f"telephone-event payload of {len(payload)} octets")
        event, flags, duration = _EVENT.unpack_from(payload)
        # RFC 4733 §2.3: the R bit is reserved, and ignored by receivers.
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def serialize(self) -> bytes:
        """Return the 4-octet payload."""
        if not 0 <= self.event <= 255 or not 0 <= self.volume <= 63:
            raise DtmfError("event must be 0-255 and volume 0-63")
        if not 0 <= self.duration <= 0xFFFF:
            raise DtmfError("duration must fit 16 bits")
        return _EVENT.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    """One key press, as received in RTP events or detected in the audio.

    ``timestamp`` is the RTP timestamp of the event (RFC 4733) or the sample
    index where the tone began (in-band detection). ``ended`` is False when
    the end was inferred (end packets lost) rather than seen.
    """

    digit: str | None
    event: int
    duration_ms: float
    timestamp: int
    volume: int | None = None
    ended: bool = True


@dataclass(slots=True)
class _Event:
    timestamp: int
    event: int
    volume: int
    duration: int
    last_seen: float


class DtmfReceiver:
    """Folds the packets of RFC 4733 events into digits, each reported once."""

    def __init__(self, clock_rate: int = 8000, end_timeout_s: float = 0.3) -> None:
        self.clock_rate = clock_rate
        self.end_timeout_s = end_timeout_s
        self._current: _Event | None = None
        self._reported: deque[int] = deque(maxlen=16)
        self._last_reported: int | None = None

    def receive(
        self, *, timestamp: int, payload: bytes, now: float, marker: bool = False
    ) -> list[DtmfDigit]:
        """Take one telephone-event packet; return the digits it completes.

        Raises ``DtmfError`` for a payload that does not parse. ``marker`` is
        accepted for completeness: the RTP timestamp alone tells events apart,
        which keeps working when the marked first packet is lost.
        """
        event = TelephoneEvent.parse(payload)
        if timestamp in self._reported:
            return []  # RFC 4733 §2.5.1: retransmitted end packets
        if self._last_reported is not None and ts_diff(timestamp, self._last_reported) < 0:
            return []  # a straggler from an event already reported
        digits: list[DtmfDigit] = []
        current = self._current
        if current is not None and current.timestamp != timestamp:
            # A new event began before we saw the end of the previous one.
            digits.append(self._finish(current, ended=False))
            current = None
        if current is None:
            current = _Event(timestamp, event.event, event.volume, event.duration, now)
            self._current = current
        else:
            # Updates may arrive out of order: the duration only grows.
            current.duration = max(current.duration, event.duration)
            current.last_seen = now
        if event.end:
            digits.append(self._finish(current, ended=True))
        return digits

    def poll(self, now: float) -> list[DtmfDigit]:
        """Report an event whose packets stopped without an end (end packets lost)."""
        current = self._current
        if current is not None and now - current.last_seen >= self.end_timeout_s:
            return [self._finish(current, ended=False)]
        return []

    def _finish(self, event: _Event, *, ended: bool) -> DtmfDigit:
        self._current = None
        self._reported.append(event.timestamp)
        self._last_reported = event.timestamp
        return DtmfDigit(
            digit=digit_for_event(event.event),
            event=event.event,
            duration_ms=event.duration * 1000 / self.clock_rate,
            timestamp=event.timestamp,
            volume=event.volume,
            ended=ended,
        )


@dataclass(frozen=True, slots=True)
class EventPacket:
    """One packet of a digit's schedule: send ``payload`` at ``offset_ms`` after the start."""

    offset_ms: int
    marker: bool
    payload: bytes
    end: bool


def dtmf_packets(
    digit: str,
    *,
    duration_ms: int = 100,
    volume: int = 10,
    interval_ms: int = 20,
    clock_rate: int = 8000,
    end_repeats: int = 3,
) -> list[EventPacket]:
    """Return the packets that send one digit (RFC 4733 §2.5.1).

    The first packet has the marker bit; one update follows every
    ``interval_ms`` with the duration so far; the final packet has the E bit
    and the full duration and is sent ``end_repeats`` times, one interval
    apart. All of them carry the RTP timestamp of the event start,
    which the caller supplies when it wraps them in RTP.
    """
    event = event_for_digit(digit)
    if duration_ms <= 0 or interval_ms <= 0:
        raise ValueError("duration and interval must be positive")
    total = duration_ms * clock_rate // 1000
    if total > 0xFFFF:
        raise ValueError(f"{duration_ms} ms does not fit one event segment at {clock_rate} Hz")
    updates = -(-duration_ms // interval_ms)  # ceil: packets up to and including the end
    packets = []
    for k in range(updates - 1):
        duration = (k + 1) * interval_ms * clock_rate // 1000
        payload = TelephoneEvent(event, False, volume, duration).serialize()
        packets.append(EventPacket(k * interval_ms, k == 0, payload, False))
    final = TelephoneEvent(event, True, volume, total).serialize()
    for repeat in range(end_repeats):
        offset = (updates - 1 + repeat) * interval_ms
        packets.append(EventPacket(offset, updates == 1 and repeat == 0, final, True))
    return packets

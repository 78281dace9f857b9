"""RTP receive and send statistics (RFC 3550 Appendix A) and an estimated MOS.

Rules of this file:

- ``ReceiveStatistics`` follows RFC 3550 Appendix A.1 (source validation with
  probation, extended sequence numbers, resync after a large jump), A.3
  (expected, lost, fraction lost per report interval) and A.8 (inter-arrival
  jitter) for the one source a call receives. Arrival times are handed in.
- Counts keep the RFC's meaning: ``received`` includes duplicates, so
  ``cumulative_lost`` can go negative, as a report block allows. Duplicates
  and late (reordered) packets are counted on the side.
- A new SSRC means the peer restarted its stream (re-INVITE, transfer, media
  server switch): the per-source state starts over; lifetime totals do not.
- The MOS is an estimate from a simplified E-model, documented at
  ``r_factor``; it is for dashboards and comparisons, not for a contract.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from media.rtcp import ReportBlock, build_report_block
from media.rtp import seq_diff

__all__ = [
    "G711_BPL",
    "G711_BPL_NO_PLC",
    "MAX_DROPOUT",
    "MAX_MISORDER",
    "MIN_SEQUENTIAL",
    "PacketVerdict",
    "ReceiveStatistics",
    "SendStatistics",
    "estimate_mos",
    "mos_from_r",
    "r_factor",
]

# RFC 3550 Appendix A.1 constants.
MAX_DROPOUT = 3000
MAX_MISORDER = 100
MIN_SEQUENTIAL = 2
_SEQ_MOD = 1 << 16

# How far back duplicates are told apart from late packets (a bitmask width).
_HISTORY = 128
_HISTORY_MASK = (1 << _HISTORY) - 1


class PacketVerdict(enum.Enum):
    """What ``ReceiveStatistics.receive`` made of one packet."""

    ACCEPTED = "accepted"  # in order (gaps allowed): play it
    LATE = "late"  # older than the highest seen, first copy: play it if not too late
    DUPLICATE = "duplicate"  # a copy of a packet already seen: drop it
    PROBATION = "probation"  # the source is not yet validated (Appendix A.1)
    BAD_SEQUENCE = "bad_sequence"  # a jump too large to trust yet: drop it
    OLD_SOURCE = "old_source"  # from the SSRC we left for a new one: drop it

    @property
    def playable(self) -> bool:
        """True when the packet's media should go on to the jitter buffer."""
        return self in (PacketVerdict.ACCEPTED, PacketVerdict.LATE)


_ACCEPTED = PacketVerdict.ACCEPTED
_LATE = PacketVerdict.LATE


@dataclass(slots=True)
class ReceiveStatistics:
    """Reception state for the one RTP source of a call.

    Feed every RTP packet to ``receive``; every SR from the source to
    ``on_sender_report``; and ask ``report_block(now)`` when building an RTCP
    report (it closes the A.3 interval).
    """

    clock_rate: int = 8000
    # Lifetime totals, across SSRC changes.
    packets_received: int = 0
    bytes_received: int = 0
    ssrc_changes: int = 0
    # The current source.
    ssrc: int | None = None
    previous_ssrc: int | None = None
    probation: int = MIN_SEQUENTIAL
    max_seq: int = 0
    cycles: int = 0
    base_seq: int = 0
    bad_seq: int = _SEQ_MOD + 1
    received: int = 0
    expected_prior: int = 0
    received_prior: int = 0
    duplicates: int = 0
    late: int = 0
    jitter_units: float = 0.0  # A.8 estimate, in timestamp units
    last_sr_ntp: int | None = None
    last_sr_arrival: float | None = None
    # Bit i set: extended sequence number (highest - i) was received.
    _seen_mask: int = field(default=0, init=False, repr=False)
    _last_arrival_units: float | None = field(default=None, init=False, repr=False)
    _last_timestamp: int = field(default=0, init=False, repr=False)

    # -- receiving ----------------------------------------------------------------

    def receive(
        self, *, ssrc: int, sequence_number: int, timestamp: int, arrival: float, size: int
    ) -> PacketVerdict:
        """Account for one RTP packet of ``size`` octets arriving at ``arrival`` seconds."""
        return self.receive_packet(ssrc, sequence_number, timestamp, arrival, size)

    def receive_packet(
        self, ssrc: int, sequence_number: int, timestamp: int, arrival: float, size: int
    ) -> PacketVerdict:
        """``receive`` with positional arguments: the per-packet path of a session."""
        self.packets_received += 1
        self.bytes_received += size
        if ssrc != self.ssrc:
            if self.ssrc is not None and ssrc == self.previous_ssrc:
                return PacketVerdict.OLD_SOURCE
            self._new_source(ssrc, sequence_number)
        if not self.probation and sequence_number == (self.max_seq + 1) & 0xFFFF:
            # The common case, in order (A.1's first branch with udelta == 1), inline.
            if sequence_number == 0:
                self.cycles += _SEQ_MOD
            self.max_seq = sequence_number
            self._seen_mask = ((self._seen_mask << 1) | 1) & _HISTORY_MASK
            self.received += 1
            verdict = _ACCEPTED
        else:
            verdict = self._update_seq(sequence_number)
            if verdict is not _ACCEPTED and verdict is not _LATE:
                return verdict
        # A.8 inline: D(i,j) = (Rj - Ri) - (Sj - Si) in timestamp units; J += (|D| - J) / 16.
        arrival_units = arrival * self.clock_rate
        last = self._last_arrival_units
        if last is not None:
            transit_change = (arrival_units - last) - (
                ((timestamp - self._last_timestamp + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            )
            if transit_change < 0:
                transit_change = -transit_change
            self.jitter_units += (transit_change - self.jitter_units) / 16
        self._last_arrival_units = arrival_units
        self._last_timestamp = timestamp
        return verdict

    def _new_source(self, ssrc: int, seq: int) -> None:
        if self.ssrc is not None:
            self.ssrc_changes += 1
        self.previous_ssrc = self.ssrc
        self.ssrc = ssrc
        self._init_seq(seq)
        # A.1: a new source is on probation until MIN_SEQUENTIAL packets in a row.
        self.max_seq = (seq - 1) & 0xFFFF
        self.probation = MIN_SEQUENTIAL
        self.jitter_units = 0.0
        self._last_arrival_units = None
        self.last_sr_ntp = self.last_sr_arrival = None

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = _SEQ_MOD + 1  # so seq == bad_seq is false
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0
        self.duplicates = 0
        self.late = 0
        self._seen_mask = 1

    def _update_seq(self, seq: int) -> PacketVerdict:
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return PacketVerdict.ACCEPTED
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return PacketVerdict.PROBATION
        if 0 < udelta < MAX_DROPOUT:
            # In order, with a permissible gap.
            if seq < self.max_seq:
                self.cycles += _SEQ_MOD  # the sequence number wrapped
            self.max_seq = seq
            self._seen_mask = ((self._seen_mask << udelta) | 1) & _HISTORY_MASK
            self.received += 1
            return PacketVerdict.ACCEPTED
        if MAX_DROPOUT <= udelta <= _SEQ_MOD - MAX_MISORDER:
            # A very large jump: believe it only when the next packet follows it
            # (the sender restarted without telling us), as A.1 does.
            if seq == self.bad_seq:
                self._init_seq(seq)
                self.received += 1
                return PacketVerdict.ACCEPTED
            self.bad_seq = (seq + 1) & 0xFFFF
            return PacketVerdict.BAD_SEQUENCE
        # A duplicate or a reordered packet (udelta == 0 is the same as the highest).
        self.received += 1
        behind = -seq_diff(seq, self.max_seq)
        if behind < _HISTORY:
            bit = 1 << behind
            if self._seen_mask & bit:
                self.duplicates += 1
                return PacketVerdict.DUPLICATE
            self._seen_mask |= bit
        self.late += 1
        return PacketVerdict.LATE

    def on_sender_report(self, *, ssrc: int, ntp_timestamp: int, arrival: float) -> None:
        """Remember the source's last SR (for LSR and DLSR in our next report)."""
        if ssrc == self.ssrc:
            self.last_sr_ntp = ntp_timestamp
            self.last_sr_arrival = arrival

    # -- what the counts say ----------------------------------------------------------

    @property
    def validated(self) -> bool:
        """True once the source has passed probation."""
        return self.ssrc is not None and self.probation == 0

    @property
    def extended_highest_sequence(self) -> int:
        """Cycles and highest sequence number received (A.1)."""
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        """Packets expected from the source since it was validated (A.3)."""
        if not self.validated:
            return 0
        return self.extended_highest_sequence - self.base_seq + 1

    @property
    def cumulative_lost(self) -> int:
        """Expected minus received; negative when duplicates outnumber losses."""
        return self.expected - self.received

    @property
    def loss_fraction(self) -> float:
        """Lifetime fraction of expected packets lost, 0.0 to 1.0."""
        expected = self.expected
        if expected <= 0:
            return 0.0
        return max(0.0, self.cumulative_lost / expected)

    @property
    def jitter(self) -> int:
        """Inter-arrival jitter in timestamp units, as a report block carries it."""
        return int(self.jitter_units)

    @property
    def jitter_ms(self) -> float:
        """Inter-arrival jitter in milliseconds."""
        return self.jitter_units * 1000 / self.clock_rate

    def report_block(self, now: float) -> ReportBlock | None:
        """Build the report block about the source and start a new A.3 interval.

        ``None`` while no source has been validated (nothing to report yet).
        """
        if not self.validated or self.ssrc is None:
            return None
        expected = self.expected
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior = expected
        self.received_prior = self.received
        return build_report_block(
            ssrc=self.ssrc,
            expected_interval=expected_interval,
            received_interval=received_interval,
            cumulative_lost=self.cumulative_lost,
            extended_highest_sequence=self.extended_highest_sequence,
            jitter=self.jitter,
            last_sr_ntp=self.last_sr_ntp,
            last_sr_arrival=self.last_sr_arrival,
            now=now,
        )


@dataclass(slots=True)
class SendStatistics:
    """What we sent: packets, octets on the wire, payload octets."""

    packets_sent: int = 0
    bytes_sent: int = 0
    payload_bytes_sent: int = 0

    def on_sent(self, size: int, payload_size: int) -> None:
        """Account for one packet of ``size`` octets carrying ``payload_size`` octets."""
        self.packets_sent += 1
        self.bytes_sent += size
        self.payload_bytes_sent += payload_size


# -- estimated MOS (simplified E-model) ---------------------------------------------

# Packet-loss robustness factors for G.711 (ITU-T G.113 Appendix I): with packet
# loss concealment, and without it.
G711_BPL = 25.1
G711_BPL_NO_PLC = 4.3

# R0 - Is with every G.107 parameter at its default value.
_R_DEFAULTS = 93.2


def r_factor(
    *,
    one_way_delay_ms: float,
    loss_fraction: float,
    ie: float = 0.0,
    bpl: float = G711_BPL,
    burst_ratio: float = 1.0,
) -> float:
    """Return the transmission rating R of a simplified ITU-T G.107 E-model.

    The simplification: R = 93.2 - Id - Ie,eff, with

    - R0 - Is taken at G.107's default parameters (93.2), and the advantage
      factor A = 0;
    - the delay impairment Id reduced to the two-line fit of G.107's Idd for
      an echo-free connection (Cole and Rosenbluth, 2001):
      Id = 0.024 d + 0.11 (d - 177.3) H(d - 177.3), d the mouth-to-ear delay in ms;
    - Ie,eff = Ie + (95 - Ie) Ppl / (Ppl / BurstR + Bpl), exactly as G.107,
      with Ppl the loss in percent (Ie = 0 and Bpl = 25.1 for G.711 with PLC).
    """
    delay = max(0.0, one_way_delay_ms)
    delay_impairment = 0.024 * delay + (0.11 * (delay - 177.3) if delay > 177.3 else 0.0)
    loss_percent = 100.0 * min(1.0, max(0.0, loss_fraction))
    effective_ie = ie + (95.0 - ie) * loss_percent / (loss_percent / burst_ratio + bpl)
    return _R_DEFAULTS - delay_impairment - effective_ie


def mos_from_r(r: float) -> float:
    """Map R to an estimated conversational MOS (ITU-T G.107 Annex B), 1.0 to 4.5."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


def estimate_mos(
    *,
    one_way_delay_ms: float,
    loss_fraction: float,
    ie: float = 0.0,
    bpl: float = G711_BPL,
    burst_ratio: float = 1.0,
) -> float:
    """Estimated MOS of a call leg; see ``r_factor`` for the model and its limits.

    ``one_way_delay_ms`` is mouth to ear: half the RTCP round trip, plus the
    jitter buffer delay and the packetization (20 ms for G.711 at 20 ms ptime).
    """
    return mos_from_r(
        r_factor(
            one_way_delay_ms=one_way_delay_ms,
            loss_fraction=loss_fraction,
            ie=ie,
            bpl=bpl,
            burst_ratio=burst_ratio,
        )
    )

"""Receive statistics (RFC 3550 Appendix A) and the estimated MOS."""

from __future__ import annotations

import pytest

from media.rtcp import ntp_from_unix, ntp_middle_32
from media.stats import (
    G711_BPL_NO_PLC,
    PacketVerdict,
    ReceiveStatistics,
    SendStatistics,
    estimate_mos,
    mos_from_r,
    r_factor,
)

SSRC = 0x1234ABCD
V = PacketVerdict


def feed(stats, seqs, *, ssrc=SSRC, start_ts=0, start_time=0.0, arrivals=None):
    """Send packets with the given sequence numbers; timestamps follow the sequence."""
    verdicts = []
    for i, seq in enumerate(seqs):
        offset = (seq - seqs[0]) & 0xFFFF
        arrival = start_time + (arrivals[i] if arrivals is not None else offset * 0.020)
        verdicts.append(
            stats.receive(
                ssrc=ssrc,
                sequence_number=seq,
                timestamp=(start_ts + offset * 160) & 0xFFFFFFFF,
                arrival=arrival,
                size=172,
            )
        )
    return verdicts


@pytest.mark.parametrize(
    ("seqs", "verdicts", "expected", "received", "lost", "duplicates", "late"),
    [
        ([1], [V.PROBATION], 0, 0, 0, 0, 0),
        ([1, 2], [V.PROBATION, V.ACCEPTED], 1, 1, 0, 0, 0),
        ([1, 2, 3, 4], [V.PROBATION] + [V.ACCEPTED] * 3, 3, 3, 0, 0, 0),
        ([1, 2, 3, 5, 6], [V.PROBATION] + [V.ACCEPTED] * 4, 5, 4, 1, 0, 0),
        (
            [1, 2, 3, 3, 4],
            [V.PROBATION, V.ACCEPTED, V.ACCEPTED, V.DUPLICATE, V.ACCEPTED],
            3,
            4,
            -1,
            1,
            0,
        ),
        ([1, 2, 4, 3, 5], [V.PROBATION, V.ACCEPTED, V.ACCEPTED, V.LATE, V.ACCEPTED], 4, 4, 0, 0, 1),
        (
            [1, 2, 4, 3, 3],
            [V.PROBATION, V.ACCEPTED, V.ACCEPTED, V.LATE, V.DUPLICATE],
            3,
            4,
            -1,
            1,
            1,
        ),
        # Probation restarts when the first two are not consecutive.
        ([1, 5, 6, 7], [V.PROBATION, V.PROBATION, V.ACCEPTED, V.ACCEPTED], 2, 2, 0, 0, 0),
        # A jump past MAX_DROPOUT is distrusted, then believed when the next follows it.
        (
            [1, 2, 3, 9000, 9001, 9002],
            [V.PROBATION, V.ACCEPTED, V.ACCEPTED, V.BAD_SEQUENCE, V.ACCEPTED, V.ACCEPTED],
            2,
            2,
            0,
            0,
            0,
        ),
        # A single stray jump is dropped and the stream goes on.
        (
            [1, 2, 3, 9000, 4],
            [V.PROBATION, V.ACCEPTED, V.ACCEPTED, V.BAD_SEQUENCE, V.ACCEPTED],
            3,
            3,
            0,
            0,
            0,
        ),
    ],
)
def test_sequence_accounting(seqs, verdicts, expected, received, lost, duplicates, late):
    stats = ReceiveStatistics()
    assert feed(stats, seqs) == verdicts
    assert stats.expected == expected
    assert stats.received == received
    assert stats.cumulative_lost == lost
    assert stats.duplicates == duplicates
    assert stats.late == late
    assert stats.packets_received == len(seqs)
    assert stats.bytes_received == 172 * len(seqs)


def test_extended_sequence_across_the_wrap():
    stats = ReceiveStatistics()
    seqs = [(65530 + i) & 0xFFFF for i in range(20)]
    assert set(feed(stats, seqs)[1:]) == {V.ACCEPTED}
    assert stats.extended_highest_sequence == 65536 + seqs[-1]
    assert stats.expected == 19
    assert stats.cumulative_lost == 0


def test_reordered_across_the_wrap_is_late_not_lost():
    stats = ReceiveStatistics()
    verdicts = feed(stats, [65533, 65534, 0, 65535, 1])
    assert verdicts == [V.PROBATION, V.ACCEPTED, V.ACCEPTED, V.LATE, V.ACCEPTED]
    assert stats.cumulative_lost == 0
    assert stats.extended_highest_sequence == 65537


def test_report_blocks_split_loss_into_intervals():
    stats = ReceiveStatistics()
    feed(stats, [i for i in range(1, 101) if i % 10 != 0])  # 1 in 10 lost
    first = stats.report_block(now=10.0)
    assert first is not None
    assert first.ssrc == SSRC
    assert first.cumulative_lost == 9  # 10..90 lost; 100 never came, so not expected
    assert first.fraction_lost == (9 * 256) // 98  # 98 expected from seq 2 to 99
    assert first.highest_sequence == 99
    assert (first.lsr, first.dlsr) == (0, 0)

    feed(stats, list(range(101, 151)), start_ts=101 * 160, start_time=2.02)
    second = stats.report_block(now=20.0)
    assert second.fraction_lost == 1 * 256 // 51  # only seq 100 lost in this interval
    assert second.cumulative_lost == 10


def test_report_block_before_validation_is_none():
    stats = ReceiveStatistics()
    feed(stats, [7])
    assert stats.report_block(now=1.0) is None


def test_report_block_carries_lsr_and_dlsr():
    stats = ReceiveStatistics()
    feed(stats, [1, 2, 3])
    sr_ntp = ntp_from_unix(1_700_000_000.5)
    stats.on_sender_report(ssrc=SSRC, ntp_timestamp=sr_ntp, arrival=100.0)
    stats.on_sender_report(ssrc=0x999, ntp_timestamp=1, arrival=100.5)  # someone else's
    block = stats.report_block(now=101.5)
    assert block.lsr == ntp_middle_32(sr_ntp)
    assert block.dlsr == int(1.5 * 65536)


def test_ssrc_change_resets_the_source_and_drops_the_old_one():
    stats = ReceiveStatistics()
    feed(stats, [100, 101, 102, 104])
    assert stats.cumulative_lost == 1
    verdicts = feed(stats, [5000, 5001, 5002], ssrc=0x55555555, start_time=1.0)
    assert verdicts == [V.PROBATION, V.ACCEPTED, V.ACCEPTED]
    assert stats.ssrc == 0x55555555
    assert stats.ssrc_changes == 1
    assert (stats.expected, stats.received, stats.cumulative_lost) == (2, 2, 0)
    assert feed(stats, [105]) == [V.OLD_SOURCE]  # a straggler from the old stream
    assert stats.ssrc == 0x55555555
    assert stats.packets_received == 8  # lifetime totals survive


def test_jitter_is_zero_for_perfect_pacing_across_the_timestamp_wrap():
    stats = ReceiveStatistics()
    feed(stats, list(range(50)), start_ts=0xFFFFFFFF - 1000)
    assert stats.jitter == 0
    assert stats.jitter_ms == pytest.approx(0.0, abs=1e-9)


def test_jitter_converges_to_the_transit_variation():
    # Every other packet is 5 ms late: each transit change is 5 ms (40 units).
    stats = ReceiveStatistics()
    seqs = list(range(400))
    arrivals = [i * 0.020 + (0.005 if i % 2 else 0.0) for i in seqs]
    feed(stats, seqs, arrivals=arrivals)
    assert stats.jitter_ms == pytest.approx(5.0, rel=1e-3)
    assert stats.jitter == 39  # 39.99... truncated to whole units


def test_jitter_follows_the_a8_recurrence_step_by_step():
    stats = ReceiveStatistics()
    arrivals = [0.0, 0.020, 0.050, 0.060]
    feed(stats, [10, 11, 12, 13], arrivals=arrivals)
    # Jitter counts from the first packet that passed probation (seq 11).
    expected = 0.0
    for previous, current in [(0.020, 0.050), (0.050, 0.060)]:
        transit_change = abs((current - previous) * 8000 - 160)
        expected += (transit_change - expected) / 16
    assert stats.jitter_units == pytest.approx(expected)


def test_send_statistics():
    sent = SendStatistics()
    sent.on_sent(172, 160)
    sent.on_sent(16, 4)
    assert (sent.packets_sent, sent.bytes_sent, sent.payload_bytes_sent) == (2, 188, 164)


@pytest.mark.parametrize(
    ("delay_ms", "loss", "r"),
    [
        (0, 0.0, 93.2),
        (100, 0.0, 93.2 - 2.4),
        (200, 0.0, 93.2 - 4.8 - 0.11 * 22.7),
        (0, 0.01, 93.2 - 95 * 1 / (1 + 25.1)),
        (0, 0.05, 93.2 - 95 * 5 / (5 + 25.1)),
        (0, 1.0, 93.2 - 95 * 100 / (100 + 25.1)),
    ],
)
def test_r_factor(delay_ms, loss, r):
    assert r_factor(one_way_delay_ms=delay_ms, loss_fraction=loss) == pytest.approx(r)


@pytest.mark.parametrize(
    ("r", "mos"),
    [(-5, 1.0), (0, 1.0), (50, 2.58), (93.2, 4.41), (100, 4.5), (120, 4.5)],
)
def test_mos_from_r(r, mos):
    assert mos_from_r(r) == pytest.approx(mos, abs=0.005)


def test_mos_falls_with_loss_and_delay_and_without_plc():
    clean = estimate_mos(one_way_delay_ms=40, loss_fraction=0.0)
    lossy = estimate_mos(one_way_delay_ms=40, loss_fraction=0.03)
    slow = estimate_mos(one_way_delay_ms=400, loss_fraction=0.0)
    no_plc = estimate_mos(one_way_delay_ms=40, loss_fraction=0.03, bpl=G711_BPL_NO_PLC)
    assert 4.3 < clean < 4.45
    assert no_plc < lossy < clean
    assert slow < clean

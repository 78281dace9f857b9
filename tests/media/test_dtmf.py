"""RFC 4733 telephone events (payload, receiver, sender) and in-band Goertzel detection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.dtmf import (
    DtmfError,
    DtmfReceiver,
    TelephoneEvent,
    digit_for_event,
    dtmf_packets,
    event_for_digit,
)
from media.goertzel import (
    COLUMN_FREQUENCIES_HZ,
    KEYPAD,
    ROW_FREQUENCIES_HZ,
    DtmfDetector,
    goertzel_power,
)
from media.rtp import RtpPacket, RtpSender

# -- payload ------------------------------------------------------------------------

# Payloads as they appear on the wire: event, E|R|volume, duration.
PAYLOADS = [
    (bytes.fromhex("05 0a 00a0"), TelephoneEvent(5, False, 10, 160)),
    (bytes.fromhex("0b 8a 0320"), TelephoneEvent(11, True, 10, 800)),
    (bytes.fromhex("00 3f ffff"), TelephoneEvent(0, False, 63, 0xFFFF)),
    (bytes.fromhex("10 80 0000"), TelephoneEvent(16, True, 0, 0)),  # flash
]


@pytest.mark.parametrize(("data", "event"), PAYLOADS)
def test_payload_round_trip(data, event):
    assert TelephoneEvent.parse(data) == event
    assert event.serialize() == data


def test_reserved_bit_is_ignored():
    assert TelephoneEvent.parse(bytes.fromhex("05 4a 00a0")) == TelephoneEvent(5, False, 10, 160)


@pytest.mark.parametrize("data", [b"", b"\x05\x0a\x00", b"\x05\x0a\x00\xa0\x00"])
def test_bad_payload_length(data):
    with pytest.raises(DtmfError):
        TelephoneEvent.parse(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=12))
def test_parse_never_raises_anything_but_dtmf_error(data):
    try:
        event = TelephoneEvent.parse(data)
    except DtmfError:
        return
    assert 0 <= event.volume <= 63


@pytest.mark.parametrize(
    ("digit", "event"),
    [("0", 0), ("9", 9), ("*", 10), ("#", 11), ("A", 12), ("d", 15)],
)
def test_digit_codes(digit, event):
    assert event_for_digit(digit) == event
    assert digit_for_event(event) == digit.upper()


@pytest.mark.parametrize("bad", ["", "E", "12", "+"])
def test_not_a_digit(bad):
    with pytest.raises(ValueError):
        event_for_digit(bad)


def test_non_dtmf_event_has_no_digit():
    assert digit_for_event(16) is None


# -- receiver -----------------------------------------------------------------------


def packets_for(digit, *, timestamp, duration_ms=100):
    """(time offset s, timestamp, marker, payload) for one digit as a sender sends it."""
    return [
        (p.offset_ms / 1000, timestamp, p.marker, p.payload)
        for p in dtmf_packets(digit, duration_ms=duration_ms)
    ]


def deliver(receiver, packets, *, start=0.0):
    digits = []
    for offset, timestamp, marker, payload in packets:
        digits += receiver.receive(
            timestamp=timestamp, payload=payload, now=start + offset, marker=marker
        )
    return digits


def test_one_digit_is_reported_once_despite_three_end_packets():
    receiver = DtmfReceiver()
    digits = deliver(receiver, packets_for("7", timestamp=16000, duration_ms=120))
    assert len(digits) == 1
    (digit,) = digits
    assert (digit.digit, digit.event, digit.duration_ms, digit.timestamp) == ("7", 7, 120.0, 16000)
    assert digit.ended is True
    assert digit.volume == 10
    assert receiver.poll(now=10.0) == []


def test_lost_first_packets_still_report_the_digit():
    receiver = DtmfReceiver()
    digits = deliver(receiver, packets_for("3", timestamp=500, duration_ms=100)[2:])
    assert [(d.digit, d.duration_ms) for d in digits] == [("3", 100.0)]


def test_lost_end_packets_report_on_timeout():
    receiver = DtmfReceiver(end_timeout_s=0.3)
    packets = [p for p in packets_for("#", timestamp=800, duration_ms=100) if p[3][1] & 0x80 == 0]
    assert deliver(receiver, packets) == []
    last_seen = packets[-1][0]
    assert receiver.poll(now=last_seen + 0.29) == []
    (digit,) = receiver.poll(now=last_seen + 0.31)
    assert (digit.digit, digit.ended, digit.duration_ms) == ("#", False, 80.0)
    assert receiver.poll(now=last_seen + 1.0) == []


def test_lost_end_packets_report_when_the_next_event_starts():
    receiver = DtmfReceiver()
    first = [p for p in packets_for("1", timestamp=0) if p[3][1] & 0x80 == 0]
    second = packets_for("2", timestamp=2400)
    digits = deliver(receiver, first) + deliver(receiver, second, start=0.3)
    assert [(d.digit, d.ended) for d in digits] == [("1", False), ("2", True)]


def test_same_digit_twice_is_two_presses():
    receiver = DtmfReceiver()
    digits = deliver(receiver, packets_for("5", timestamp=0)) + deliver(
        receiver, packets_for("5", timestamp=2000), start=0.25
    )
    assert [(d.digit, d.timestamp) for d in digits] == [("5", 0), ("5", 2000)]


def test_reordered_updates_and_stragglers():
    receiver = DtmfReceiver()
    packets = packets_for("9", timestamp=1000, duration_ms=100)
    packets[1], packets[2] = packets[2], packets[1]
    digits = deliver(receiver, packets)
    assert [(d.digit, d.duration_ms) for d in digits] == [("9", 100.0)]
    # An update of that event arriving after it was reported changes nothing.
    assert deliver(receiver, [packets[1]], start=1.0) == []


def test_events_across_the_timestamp_wrap():
    receiver = DtmfReceiver()
    first = packets_for("4", timestamp=0xFFFFFF00)
    second = packets_for("6", timestamp=0x00000400)  # after the wrap
    digits = deliver(receiver, first) + deliver(receiver, second, start=0.3)
    assert [d.digit for d in digits] == ["4", "6"]
    # A straggler of the pre-wrap event is older, not newer.
    assert deliver(receiver, [first[0]], start=0.6) == []


def test_bad_payload_raises_dtmf_error():
    with pytest.raises(DtmfError):
        DtmfReceiver().receive(timestamp=0, payload=b"\x01", now=0.0)


# -- sender -------------------------------------------------------------------------


def test_sender_schedule_for_100_ms():
    packets = dtmf_packets("1", duration_ms=100, volume=10)
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    assert [p.offset_ms for p in packets] == [0, 20, 40, 60, 80, 100, 120]
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in events] == [False] * 4 + [True] * 3
    assert {e.event for e in events} == {1}
    assert {e.volume for e in events} == {10}


def test_sender_short_digit_marks_the_first_end_packet():
    packets = dtmf_packets("0", duration_ms=20)
    assert [(p.marker, p.end) for p in packets] == [(True, True), (False, True), (False, True)]


@pytest.mark.parametrize("duration_ms", [0, 8200])
def test_sender_rejects_durations_it_cannot_send(duration_ms):
    with pytest.raises(ValueError):
        dtmf_packets("1", duration_ms=duration_ms)


def test_sender_and_receiver_over_rtp():
    # The schedule wrapped in RTP by the stream's sender, then parsed and received.
    sender = RtpSender(ssrc=9, payload_type=0, sequence_number=65533, timestamp=0xFFFFFFA0)
    receiver = DtmfReceiver()
    event_timestamp = sender.timestamp
    digits = []
    for entry in dtmf_packets("*", duration_ms=60):
        wire = sender.event_packet(
            entry.payload, payload_type=101, timestamp=event_timestamp, marker=entry.marker
        )
        sender.skip()
        packet = RtpPacket.parse(wire)
        digits += receiver.receive(
            timestamp=packet.timestamp,
            payload=packet.payload,
            now=entry.offset_ms / 1000,
            marker=packet.marker,
        )
    assert [(d.digit, d.duration_ms, d.timestamp) for d in digits] == [("*", 60.0, 0xFFFFFFA0)]
    assert sender.sequence_number == 2  # six packets, across the wrap


# -- in-band detection --------------------------------------------------------------

RATE = 8000


def tone(digit, ms, *, amplitude=8000.0, deviation=0.0, twist_db=0.0):
    row = next(i for i, keys in enumerate(KEYPAD) if digit in keys)
    column = KEYPAD[row].index(digit)
    t = np.arange(int(RATE * ms / 1000)) / RATE
    low = amplitude * np.sin(2 * np.pi * ROW_FREQUENCIES_HZ[row] * (1 + deviation) * t)
    high_amplitude = amplitude * 10 ** (twist_db / 20)
    high = high_amplitude * np.sin(
        2 * np.pi * COLUMN_FREQUENCIES_HZ[column] * (1 + deviation) * t + 1.0
    )
    return low + high


def silence(ms):
    return np.zeros(int(RATE * ms / 1000))


def to_pcm(signal):
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16)


def detect(signal, *, chunk=160):
    detector = DtmfDetector()
    pcm = to_pcm(signal)
    digits = []
    for start in range(0, pcm.size, chunk):
        digits += detector.process(pcm[start : start + chunk])
    return digits + detector.flush()


SEQUENCE = [("1", 100), ("5", 70), ("#", 200), ("D", 45), ("0", 60)]


def keyed(sequence, *, gap_ms=60, lead_ms=30, **tone_args):
    parts = [silence(lead_ms)]
    for digit, ms in sequence:
        parts += [tone(digit, ms, **tone_args), silence(gap_ms)]
    return np.concatenate(parts)


@pytest.mark.parametrize("noise_rms", [0.0, 500.0, 2000.0])
@pytest.mark.parametrize("chunk", [160, 77])
def test_each_key_is_reported_once_with_its_duration(noise_rms, chunk):
    rng = np.random.default_rng(11)
    signal = keyed(SEQUENCE)
    signal = signal + rng.normal(0, noise_rms, signal.size)
    digits = detect(signal, chunk=chunk)
    assert [d.digit for d in digits] == [digit for digit, _ in SEQUENCE]
    for found, (_, ms) in zip(digits, SEQUENCE, strict=True):
        assert abs(found.duration_ms - ms) <= 20
    assert abs(digits[0].timestamp - 30 * 8) <= 80  # started about 30 ms in


@pytest.mark.parametrize("deviation", [-0.015, 0.015])
def test_frequency_deviation_within_tolerance(deviation):
    sequence = [("2", 100), ("9", 100), ("A", 100)]
    assert [d.digit for d in detect(keyed(sequence, deviation=deviation))] == ["2", "9", "A"]


@pytest.mark.parametrize(
    ("twist_db", "found"), [(6.0, True), (-3.0, True), (12.0, False), (-8.0, False)]
)
def test_twist_limits(twist_db, found):
    digits = detect(keyed([("8", 100)], twist_db=twist_db))
    assert [d.digit for d in digits] == (["8"] if found else [])


def test_too_short_a_key_is_ignored():
    assert detect(keyed([("3", 25)])) == []


@pytest.mark.parametrize("lead_ms", [20, 23.5, 27, 30.5])
@pytest.mark.parametrize("digit", ["1", "#"])
def test_a_10ms_dropout_does_not_split_a_key(lead_ms, digit):
    signal = np.concatenate(
        [silence(lead_ms), tone(digit, 80), silence(10), tone(digit, 80), silence(80)]
    )
    digits = detect(signal)
    assert [d.digit for d in digits] == [digit]
    assert digits[0].duration_ms >= 150


@pytest.mark.parametrize("lead_ms", [20, 23.5, 27, 30.5])
@pytest.mark.parametrize("digit", ["1", "#"])
def test_the_same_key_twice_after_a_40ms_pause_is_two_presses(lead_ms, digit):
    digits = detect(keyed([(digit, 80), (digit, 80)], gap_ms=40, lead_ms=lead_ms))
    assert [d.digit for d in digits] == [digit, digit]


@pytest.mark.parametrize("lead_ms", [20, 24.5, 29])
def test_a_40ms_key_is_detected_at_any_alignment(lead_ms):
    assert [d.digit for d in detect(keyed([("C", 40)], lead_ms=lead_ms))] == ["C"]


def test_a_quiet_key_below_the_level_threshold_is_ignored():
    assert detect(keyed([("4", 100)], amplitude=200.0)) == []


def test_pure_1khz_tone_does_not_trigger():
    t = np.arange(RATE * 3) / RATE
    assert detect(12000 * np.sin(2 * np.pi * 1000 * t)) == []


def test_white_noise_does_not_trigger():
    rng = np.random.default_rng(3)
    assert detect(rng.normal(0, 6000, RATE * 5)) == []


def test_speech_like_harmonics_do_not_trigger():
    # A voiced-speech stand-in: a gliding pitch (90-250 Hz) with falling harmonics.
    rng = np.random.default_rng(5)
    blocks = []
    for k in range(400):
        f0 = 170 + 80 * np.sin(k / 9) + rng.uniform(-10, 10)
        t = (np.arange(160) + 160 * k) / RATE
        harmonics = range(1, int(3600 / f0))
        blocks.append(
            sum((4000 / h) * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) for h in harmonics)
        )
    assert detect(np.concatenate(blocks)) == []


def test_single_tone_does_not_trigger():
    t = np.arange(RATE) / RATE
    assert detect(10000 * np.sin(2 * np.pi * 770 * t)) == []


@pytest.mark.parametrize("frequency", [697.0, 941.0, 1209.0, 1633.0, 1000.0])
def test_matrix_form_equals_the_goertzel_recurrence(frequency):
    rng = np.random.default_rng(int(frequency))
    block = to_pcm(rng.normal(0, 3000, 160) + tone("5", 20))
    phase = 2 * np.pi * frequency * np.arange(160) / RATE
    x = block.astype(np.float64)
    dft_power = np.dot(x, np.cos(phase)) ** 2 + np.dot(x, np.sin(phase)) ** 2
    assert goertzel_power(block, frequency) == pytest.approx(dft_power, rel=1e-9)

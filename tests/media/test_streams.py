"""The stream message format: what we send round-trips, what bots send is parsed or refused.

Pure: no event loop, no sockets. The builders' output is also read back
with the standard library's ``json`` (not only ``orjson``) so "well-formed
JSON text" is judged by a second parser.
"""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.streams import (
    FRAME_BYTES,
    AudioPacer,
    BotClear,
    BotHangup,
    BotMark,
    BotMedia,
    BotResult,
    BotTransfer,
    CallConnected,
    CallDtmf,
    CallMark,
    CallMedia,
    CallStart,
    CallStop,
    InvalidFrame,
    MediaFormat,
    StreamEncodeError,
    StreamError,
    StreamWriter,
    UnknownEvent,
    WrongStream,
    bot_media_payload,
    parse_bot_event,
    parse_call_event,
)

SID = "MZ0123456789abcdef0123456789abcdef"


def writer() -> StreamWriter:
    return StreamWriter(SID, "CA42", "AC7")


# -- what we send ------------------------------------------------------------------------


def test_connected_and_start_are_twilios_shape() -> None:
    w = writer()
    connected = json.loads(w.connected())
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = json.loads(w.start({"first_name": "Ada", "meta": {"crm_id": 7}}))
    assert start == {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC7",
            "streamSid": SID,
            "callSid": "CA42",
            "tracks": ["inbound"],
            "customParameters": {"first_name": "Ada", "meta": {"crm_id": 7}},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": SID,
    }


def test_media_counts_from_one_as_strings() -> None:
    w = writer()
    w.connected()
    w.start()
    frames = [json.loads(w.media(bytes([i]) * FRAME_BYTES, i * 20)) for i in range(3)]
    assert [f["sequenceNumber"] for f in frames] == ["2", "3", "4"]
    assert [f["media"]["chunk"] for f in frames] == ["1", "2", "3"]
    assert [f["media"]["timestamp"] for f in frames] == ["0", "20", "40"]
    assert {f["media"]["track"] for f in frames} == {"inbound"}
    assert base64.b64decode(frames[2]["media"]["payload"]) == b"\x02" * FRAME_BYTES


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda w: w.connected(), CallConnected()),
        (
            lambda w: w.start({"k": "v"}),
            CallStart(SID, "CA42", "AC7", ("inbound",), {"k": "v"}, MediaFormat(), 1),
        ),
        (lambda w: w.media(b"\xff\x00\x7f", 140), CallMedia(SID, b"\xff\x00\x7f", 1, 140, 1)),
        (lambda w: w.dtmf("#"), CallDtmf(SID, "#", 1)),
        (lambda w: w.mark('greeting "done"\n'), CallMark(SID, 'greeting "done"\n', 1)),
        (lambda w: w.stop(), CallStop(SID, "CA42", "AC7", 1)),
    ],
)
def test_call_events_round_trip(build, expected) -> None:
    assert parse_call_event(build(writer())) == expected


def test_sequence_numbers_count_every_message_after_connected() -> None:
    w = writer()
    w.connected()
    built = [w.start(), w.media(b"\xff", 0), w.dtmf("1"), w.mark("m"), w.media(b"\xff", 20)]
    built.append(w.stop())
    numbers = [int(json.loads(data)["sequenceNumber"]) for data in built]
    assert numbers == [1, 2, 3, 4, 5, 6]
    assert w.chunk == 2


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda w: w.start({"bad": {1, 2}}), "cannot encode"),
        (lambda w: w.start({"lone": "\ud800"}), "cannot encode"),
        (lambda w: w.dtmf("x"), "not a DTMF digit"),
        (lambda w: w.mark("\udfff"), "cannot encode"),
    ],
)
def test_values_json_cannot_carry_are_refused_here(build, message) -> None:
    with pytest.raises(StreamEncodeError, match=message):
        build(writer())


def test_integers_wider_than_64_bits_reach_the_bot_exactly() -> None:
    # A CRM's order number in the placeholders: JSON carries it, so must we.
    data = writer().start({"order_no": 99999999999999999999, "name": "Zoë"})
    params = json.loads(data)["start"]["customParameters"]
    assert params == {"order_no": 99999999999999999999, "name": "Zoë"}


@settings(max_examples=150, deadline=None)
@given(name=st.text(max_size=40), payload=st.binary(max_size=400))
def test_built_frames_are_always_one_json_text(name: str, payload: bytes) -> None:
    w = writer()
    try:
        frames = [w.mark(name), w.media(payload, 0)]
    except StreamEncodeError:
        # Only names with lone surrogates, which no JSON text can hold.
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in name)
        return
    for data in frames:
        text = data.decode("utf-8")  # strict: raises on anything but UTF-8
        assert isinstance(json.loads(text), dict)


@settings(max_examples=150, deadline=None)
@given(
    sid=st.text(max_size=40),
    payload=st.binary(max_size=400),
    timestamp_ms=st.integers(min_value=0, max_value=10**12),
    before=st.integers(min_value=0, max_value=3),
)
def test_media_template_writes_what_orjson_would(
    sid: str, payload: bytes, timestamp_ms: int, before: int
) -> None:
    # The media frame is made from a template: byte for byte the message
    # orjson writes for the same dict, for any stream id orjson can encode.
    w = StreamWriter(sid, "CA42", "AC7")
    for _ in range(before):
        w.dtmf("1")
    try:
        data = w.media(payload, timestamp_ms)
    except StreamEncodeError:
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in sid)
        return
    assert data == orjson.dumps(
        {
            "event": "media",
            "sequenceNumber": str(before + 1),
            "media": {
                "track": "inbound",
                "chunk": "1",
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(payload).decode(),
            },
            "streamSid": sid,
        }
    )
    assert isinstance(json.loads(data.decode("utf-8")), dict)


# -- what bots send ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        BotMedia(b""),
        BotMedia(b"\x00"),
        BotMedia(bytes(range(256)) * 3),
        BotMark("after-greeting"),
        BotClear(),
        BotHangup(),
        BotHangup("caller asked"),
        BotTransfer("sip:agent@pbx.example.com;transport=tcp"),
        BotTransfer("SIPS:+15551234567@trunk.example.com"),
        BotResult({"intent": "buy", "score": 3, "ratio": 0.5, "ok": True, "none": None}),
        BotResult({}, ("hot", "callback")),
    ],
)
def test_bot_events_round_trip(event) -> None:
    assert parse_bot_event(event.serialize(SID), SID) == event


@pytest.mark.parametrize(
    "data",
    [
        # What pipecat's Twilio serializer writes: a bot we did not write.
        '{"event": "media", "streamSid": "' + SID + '", "media": {"payload": "/38A"}}',
        '{"event": "clear", "streamSid": "' + SID + '"}',
        # Bots that leave streamSid out are accepted.
        '{"event": "mark", "mark": {"name": "m"}}',
    ],
)
def test_bots_written_for_twilio_parse(data: str) -> None:
    assert isinstance(parse_bot_event(data, SID), BotMedia | BotClear | BotMark)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", InvalidFrame),
        (b"not json", InvalidFrame),
        (b"\xff\xfe\x00", InvalidFrame),
        (b'["event", "media"]', InvalidFrame),
        (b'"media"', InvalidFrame),
        (b'{"event": 5}', InvalidFrame),
        (b'{"streamSid": "x"}', InvalidFrame),
        (b'{"event": "media"}', InvalidFrame),
        (b'{"event": "media", "media": []}', InvalidFrame),
        (b'{"event": "media", "media": {}}', InvalidFrame),
        (b'{"event": "media", "media": {"payload": 12}}', InvalidFrame),
        (b'{"event": "media", "media": {"payload": "abc"}}', InvalidFrame),
        (b'{"event": "media", "media": {"payload": "ab!="}}', InvalidFrame),
        (b'{"event": "media", "media": {"payload": "/38A\\n"}}', InvalidFrame),
        (b'{"event": "mark"}', InvalidFrame),
        (b'{"event": "mark", "mark": {"name": ""}}', InvalidFrame),
        (b'{"event": "mark", "mark": {"name": 3}}', InvalidFrame),
        (b'{"event": "mark", "mark": {"name": "' + b"m" * 257 + b'"}}', InvalidFrame),
        (b'{"event": "hangup", "hangup": "now"}', InvalidFrame),
        (b'{"event": "hangup", "hangup": {"reason": 1}}', InvalidFrame),
        (b'{"event": "transfer"}', InvalidFrame),
        (b'{"event": "transfer", "transfer": {"target": "tel:+15551234567"}}', InvalidFrame),
        (b'{"event": "transfer", "transfer": {"target": "http://x"}}', InvalidFrame),
        (b'{"event": "transfer", "transfer": {"target": "sip:a b@c"}}', InvalidFrame),
        (b'{"event": "result", "result": {"values": []}}', InvalidFrame),
        (b'{"event": "result", "result": {"values": {"k": {"nested": 1}}}}', InvalidFrame),
        (b'{"event": "result", "result": {"values": {"k": [1]}}}', InvalidFrame),
        (b'{"event": "result", "result": {"values": {"": 1}}}', InvalidFrame),
        (b'{"event": "result", "result": {"tags": "hot"}}', InvalidFrame),
        (b'{"event": "result", "result": {"tags": [""]}}', InvalidFrame),
        (b'{"event": "result", "result": {"tags": [1]}}', InvalidFrame),
        (orjson.dumps({"event": "result", "result": {"tags": ["t"] * 33}}), InvalidFrame),
        (
            orjson.dumps({"event": "result", "result": {"values": {str(i): i for i in range(65)}}}),
            InvalidFrame,
        ),
        (b'{"event": "media", "streamSid": "MZother", "media": {"payload": ""}}', WrongStream),
        (b'{"event": "clear", "streamSid": "MZother"}', WrongStream),
        (b'{"event": "start", "streamSid": "%s"}' % SID.encode(), UnknownEvent),
        (b'{"event": "dance"}', UnknownEvent),
    ],
)
def test_bad_bot_frames_raise_named_errors(data: bytes, error: type[StreamError]) -> None:
    with pytest.raises(error):
        parse_bot_event(data, SID)


def test_unknown_event_carries_its_name() -> None:
    with pytest.raises(UnknownEvent) as caught:
        parse_bot_event(b'{"event": "dance"}')
    assert caught.value.event == "dance"
    assert caught.value.blame == "remote"


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["event", "media", "payload", "mark", "name", "result", "x"]),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_any_frame_is_an_event_or_a_stream_error(data: bytes) -> None:
    try:
        event = parse_bot_event(data, SID)
    except StreamError as error:
        # The media fast path refuses what the full parser refuses (or, for
        # an event that is not media, leaves it to the full parser).
        try:
            assert bot_media_payload(data, SID) is None
        except StreamError as fast_error:
            assert type(fast_error) is type(error)
        return
    assert isinstance(event, BotMedia | BotMark | BotClear | BotHangup | BotTransfer | BotResult)
    payload = bot_media_payload(data, SID)
    assert payload == (event.payload if type(event) is BotMedia else None)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (BotMedia(b"\x01\x02").serialize(SID), b"\x01\x02"),
        (b'{"event": "media", "media": {"payload": "//8="}}', b"\xff\xff"),  # no streamSid
        (BotMark("m").serialize(SID), None),
        (b'{"event": "dance"}', None),
        (b'{"event": 7}', None),
    ],
)
def test_bot_media_payload_reads_media_only(data: bytes, expected: bytes | None) -> None:
    assert bot_media_payload(data, SID) == expected


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"not json", InvalidFrame),
        (b"[]", InvalidFrame),
        (b'{"event": "media", "streamSid": "MZother", "media": {"payload": ""}}', WrongStream),
        (b'{"event": "media", "media": "x"}', InvalidFrame),
        (b'{"event": "media", "media": {"payload": "!!"}}', InvalidFrame),
        (b'{"event": "media", "media": {}}', InvalidFrame),
    ],
)
def test_bot_media_payload_refuses_bad_media(data: bytes, error: type[StreamError]) -> None:
    with pytest.raises(error):
        bot_media_payload(data, SID)


@pytest.mark.parametrize(
    "data",
    [
        b'{"event": "media", "streamSid": "s", "sequenceNumber": "x", "media": {}}',
        b'{"event": "media", "streamSid": "s", "sequenceNumber": "-1", "media": {}}',
        b'{"event": "dtmf", "streamSid": "s", "sequenceNumber": "2", "dtmf": {"digit": "E"}}',
        b'{"event": "start", "streamSid": "s", "sequenceNumber": "1", "start": {}}',
        b'{"event": "connected"}',
        b'{"event": "stop", "sequenceNumber": "1", "stop": {}}',
    ],
)
def test_bad_call_frames_raise(data: bytes) -> None:
    with pytest.raises(InvalidFrame):
        parse_call_event(data)


# -- the pacer -------------------------------------------------------------------------------


def test_pacer_releases_one_frame_per_20_ms() -> None:
    pacer = AudioPacer()
    pacer.push(bytes(400), now=10.0)  # two frames and an 80-octet tail
    assert pacer.queued_frames == 2 and pacer.queued_bytes == 400
    assert pacer.pull(10.0) == [bytes(160)]
    assert pacer.pull(10.019) == []
    assert pacer.next_deadline() == pytest.approx(10.02)
    assert pacer.pull(10.020) == [bytes(160)]
    assert pacer.pull(10.100) == []  # the tail waits for more audio
    pacer.flush()
    assert pacer.pull(10.100) == [bytes(80) + b"\xff" * 80]
    assert pacer.frames_released == 3


@pytest.mark.parametrize(
    ("second_push_at", "first_pull_due"),
    [
        (10.045, 10.060),  # dry but early: the run goes on, 20 ms after the last frame
        (11.000, 11.000),  # dry and late: a new run starts at once, no catch-up burst
    ],
)
def test_pacer_after_running_dry(second_push_at: float, first_pull_due: float) -> None:
    pacer = AudioPacer()
    pacer.push(bytes(480), now=10.0)
    assert len(pacer.pull(10.040)) == 3
    pacer.push(bytes(480), now=second_push_at)
    assert pacer.next_deadline() == pytest.approx(first_pull_due)
    assert pacer.pull(first_pull_due - 0.001) == []
    assert len(pacer.pull(first_pull_due)) == 1


def test_pacer_clear_drops_everything() -> None:
    pacer = AudioPacer()
    pacer.push(bytes(500), now=0.0)
    assert pacer.clear() == 500
    assert pacer.pull(1.0) == [] and pacer.next_deadline() is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 0.2), st.integers(0, 700), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_pacer_is_never_faster_than_real_time(steps: list[tuple[float, int, bool]]) -> None:
    pacer = AudioPacer()
    now = 0.0
    released: list[float] = []
    pushed = 0
    for advance, size, push in steps:
        now += advance
        if push:
            pacer.push(bytes(size), now)
            pushed += size
        released.extend(now for _ in pacer.pull(now))
    # However pushes and pulls interleave, frame n goes no sooner than n * 20 ms
    # after the first (a late pull may catch up, never get ahead).
    for n, at in enumerate(released):
        assert at - released[0] >= n * 0.020 - 1e-9
    assert len(released) * FRAME_BYTES + pacer.queued_bytes == pushed

"""SDP parsing, serialization and offer/answer (dialer.sip.sdp)."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialer.sip.sdp import (
    Attribute,
    Codec,
    Connection,
    MediaAnswer,
    SdpError,
    SessionDescription,
    _ipv4_first_octet,  # the fast path checked against ipaddress
    build_answer,
    build_offer,
    build_offer_description,
    negotiate_answer,
    negotiate_offer,
)


def sdp(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


OFFER = build_offer("192.0.2.10", 40000, session_id=7000, session_version=1)
OFFER_V6 = build_offer("2001:db8::10", 40000, session_id=7000, session_version=1)

# Answers written the way the named stacks write them (addresses from the RFC 5737
# documentation ranges).
ASTERISK = sdp(
    "v=0",
    "o=- 1730392834 1730392835 IN IP4 203.0.113.5",
    "s=Asterisk",
    "c=IN IP4 203.0.113.5",
    "t=0 0",
    "m=audio 17536 RTP/AVP 0 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "a=maxptime:150",
    "a=sendrecv",
)
FREESWITCH = sdp(
    "v=0",
    "o=FreeSWITCH 1730370000 1730370001 IN IP4 198.51.100.20",
    "s=FreeSWITCH",
    "c=IN IP4 198.51.100.20",
    "t=0 0",
    "m=audio 24680 RTP/AVP 8 101",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:30",
    "a=rtcp:24681 IN IP4 198.51.100.20",
)
SIPP_DEFAULT = sdp(
    "v=0",
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "m=audio 6000 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
)
# A carrier SBC: G.729 first, media-level c= overriding the session one, b= lines.
CARRIER_SBC = sdp(
    "v=0",
    "o=Sonus_UAC 245919 262541 IN IP4 192.0.2.40",
    "s=SIP Media Capabilities",
    "c=IN IP4 192.0.2.40",
    "b=AS:80",
    "t=0 0",
    "m=audio 27114 RTP/AVP 18 0 101",
    "c=IN IP4 192.0.2.41",
    "b=TIAS:64000",
    "a=rtpmap:18 G729/8000",
    "a=fmtp:18 annexb=no",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=sendrecv",
    "a=ptime:20",
)
# No c= at session level: every media description has its own (RFC 4566 §5.7).
MEDIA_LEVEL_C_ONLY = sdp(
    "v=0",
    "o=- 42 42 IN IP4 198.51.100.7",
    "s=-",
    "t=0 0",
    "m=audio 4000 RTP/AVP 8 0",
    "c=IN IP4 198.51.100.8",
    "a=silenceSupp:off - - - -",
)
IPV6_ANSWER = sdp(
    "v=0",
    "o=- 3 4 IN IP6 2001:db8::5",
    "s=-",
    "c=IN IP6 2001:db8::5",
    "t=0 0",
    "m=audio 30000 RTP/AVP 8 96",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:96 telephone-event/8000",
    "a=fmtp:96 0-15",
)
REAL_WORLD = [ASTERISK, FREESWITCH, SIPP_DEFAULT, CARRIER_SBC, MEDIA_LEVEL_C_ONLY, IPV6_ANSWER]


def with_direction(answer: bytes, direction: str) -> bytes:
    return answer.replace(b"a=sendrecv\r\n", f"a={direction}\r\n".encode())


# --- parse and serialize --------------------------------------------------------------------


@pytest.mark.parametrize("data", [OFFER, OFFER_V6, *REAL_WORLD])
def test_round_trip_is_byte_exact(data: bytes) -> None:
    assert SessionDescription.parse(data).serialize() == data


def test_parse_fields() -> None:
    sd = SessionDescription.parse(CARRIER_SBC)
    assert sd.origin.username == "Sonus_UAC"
    assert (sd.origin.session_id, sd.origin.session_version) == (245919, 262541)
    assert sd.session_name == "SIP Media Capabilities"
    assert sd.connection == Connection("IP4", "192.0.2.40")
    assert sd.other_lines == (("b", "AS:80"),)
    (audio,) = sd.media
    assert (audio.media, audio.port, audio.proto) == ("audio", 27114, "RTP/AVP")
    assert audio.formats == ("18", "0", "101")
    assert audio.connection == Connection("IP4", "192.0.2.41")
    assert sd.media_connection(0) == Connection("IP4", "192.0.2.41")
    assert audio.other_lines == (("b", "TIAS:64000"),)
    assert [m.encoding_name for m in audio.rtpmaps().values()] == [
        "G729",
        "PCMU",
        "telephone-event",
    ]
    assert audio.fmtp(18) == "annexb=no"
    assert audio.fmtp(0) is None
    assert audio.ptime_ms() == 20
    assert audio.direction() == "sendrecv"


def test_static_payload_type_without_rtpmap() -> None:
    sd = SessionDescription.parse(sdp("v=0", "o=- 1 1 IN IP4 h", "s=-", "c=IN IP4 192.0.2.1",
                                      "t=0 0", "m=audio 5000 RTP/AVP 8 0 96"))  # fmt: skip
    rtpmaps = sd.media[0].rtpmaps()
    assert (rtpmaps[8].encoding_name, rtpmaps[8].clock_rate) == ("PCMA", 8000)
    assert rtpmaps[0].encoding_name == "PCMU"
    assert 96 not in rtpmaps  # dynamic and unmapped: unknown


def test_lf_only_and_trailing_blank_lines_are_accepted() -> None:
    crlf = SessionDescription.parse(ASTERISK)
    lf_only = ASTERISK.replace(b"\r\n", b"\n") + b"\n\n"
    assert SessionDescription.parse(lf_only) == crlf


def test_last_line_without_line_end() -> None:
    assert SessionDescription.parse(SIPP_DEFAULT.rstrip(b"\r\n")) == SessionDescription.parse(
        SIPP_DEFAULT
    )


def test_unknown_attributes_are_kept_in_order() -> None:
    data = sdp(
        "v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0",
        "a=group:BUNDLE 0", "a=X-custom",
        "m=audio 5000 RTP/AVP 0", "a=mid:0", "a=rtcp-mux", "a=ssrc:1 cname:x",
    )  # fmt: skip
    sd = SessionDescription.parse(data)
    assert sd.attributes == (Attribute("group", "BUNDLE 0"), Attribute("X-custom"))
    assert [a.name for a in sd.media[0].attributes] == ["mid", "rtcp-mux", "ssrc"]
    assert sd.serialize() == data


def test_every_line_type_in_rfc_order_round_trips() -> None:
    data = sdp(
        "v=0", "o=jdoe 2890844526 2890842807 IN IP4 198.51.100.1", "s=SDP Seminar",
        "i=A Seminar on the session description protocol", "u=http://www.example.com/seminar",
        "e=j.doe@example.com (Jane Doe)", "p=+1 617 555-6011", "c=IN IP4 198.51.100.1",
        "b=CT:128", "t=2873397496 2873404696", "r=7d 1h 0 25h", "z=2882844526 -1h",
        "k=prompt", "a=recvonly",
        "m=audio 49170 RTP/AVP 0", "i=voice", "c=IN IP4 198.51.100.2", "b=AS:64", "k=prompt",
        "a=ptime:20",
    )  # fmt: skip
    parsed = SessionDescription.parse(data)
    assert parsed.serialize() == data
    assert parsed.direction() == "recvonly" and parsed.media_direction(0) == "recvonly"
    assert [t for t, _ in parsed.other_lines] == list("iuepbrzk")
    assert [t for t, _ in parsed.media[0].other_lines] == ["i", "b", "k"]


def test_non_utf8_session_name_survives_round_trip() -> None:
    data = SIPP_DEFAULT.replace(b"s=-", b"s=\xe5\xe4\xf6")
    assert SessionDescription.parse(data).serialize() == data


def test_port_count_and_multicast_ttl_are_kept() -> None:
    data = sdp("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 233.252.0.1/127", "t=0 0",
               "m=audio 5000/2 RTP/AVP 0")  # fmt: skip
    sd = SessionDescription.parse(data)
    assert sd.connection is not None and sd.connection.host == "233.252.0.1"
    assert sd.media[0].port_count == 2
    assert sd.serialize() == data


BASE = ["v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0"]
AUDIO = ["m=audio 5000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000"]


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ([], "empty session description"),
        (BASE[1:] + AUDIO, "missing v= line"),
        (["v=1", *BASE[1:], *AUDIO], "unsupported SDP version '1'"),
        ([BASE[0], *BASE[2:], *AUDIO], "missing o= line"),
        ([*BASE[:2], *BASE[3:], *AUDIO], "missing s= line"),
        ([*BASE[:3], BASE[4], *AUDIO], "missing c= line"),
        ([*BASE, "m=audio x RTP/AVP 0"], "bad port 'x'"),
        ([*BASE, "m=audio 65536 RTP/AVP 0"], "bad port '65536'"),
        ([*BASE, "m=audio -1 RTP/AVP 0"], "bad port '-1'"),
        ([*BASE, "m=audio 5000 RTP/AVP PCMU"], "payload type 'PCMU' is not a number"),
        ([*BASE, "m=audio 5000 RTP/AVP 128"], "payload type '128' out of range"),
        ([*BASE, "m=audio 5000 RTP/AVP"], "m= line without formats"),
        ([*BASE, "m=audio 5000"], "m= needs media, port, proto and formats"),
        (["v=0", "o=- x 1 IN IP4 h", *BASE[2:], *AUDIO], "session id 'x' is not a number"),
        (["v=0", "o=- 1 1 IN", *BASE[2:], *AUDIO], "o= needs 6 fields"),
        ([*BASE[:3], "c=IN IP4", *BASE[4:], *AUDIO], "c= needs 3 fields"),
        ([*BASE[:3], "c=ATM NSAP x", *BASE[4:], *AUDIO], "unsupported network type 'ATM'"),
        ([*BASE[:3], "c=IN IP5 x", *BASE[4:], *AUDIO], "unsupported address type 'IP5'"),
        ([*BASE[:3], "c=IN IP4 10.10.10.256", *BASE[4:], *AUDIO], "bad IP4 address"),
        ([*BASE[:3], "c=IN IP4 2001:db8::1", *BASE[4:], *AUDIO], "'2001:db8::1' is not IP4"),
        ([*BASE[:3], "c=IN IP6 192.0.2.1", *BASE[4:], *AUDIO], "'192.0.2.1' is not IP6"),
        ([*BASE[:3], "c=IN IP4 bad_host!", *BASE[4:], *AUDIO], "bad connection address"),
        ([*BASE, *AUDIO, "a=rtpmap:0 PCMU"], "bad rtpmap '0 PCMU'"),
        ([*BASE, *AUDIO[:1], "a=rtpmap:0 PCMU/0"], "rtpmap clock rate 0 out of range"),
        ([*BASE, *AUDIO, "a=rtpmap:0 PCMA/8000"], "conflicting rtpmap for payload type 0"),
        ([*BASE, *AUDIO, "a=ptime:abc"], "bad packet time 'abc'"),
        ([*BASE, *AUDIO, "a=ptime:0"], "bad packet time '0'"),
        ([*BASE, *AUDIO, "a=sendonly", "a=recvonly"], "conflicting direction attributes"),
        ([*BASE, *AUDIO, "a=sendrecv:1"], "a=sendrecv takes no value"),
        ([*BASE, *AUDIO, "a="], "bad attribute name ''"),
        ([*BASE, *AUDIO, "x=unknown"], "unknown line type 'x'"),
        ([*BASE, *AUDIO, "junk"], "not a '<type>=<value>' line"),
        ([*BASE, *AUDIO, "A=sendrecv"], "not a '<type>=<value>' line"),
        ([*BASE, "", *AUDIO], "empty line"),
        ([*BASE, *AUDIO, "a=rtpmap:0 PCMU/8000\x00"], "NUL or CR inside a line"),
        ([*BASE, "o=- 1 1 IN IP4 h", *AUDIO], "second o= line"),
        ([*BASE, *AUDIO, "o=- 1 1 IN IP4 h"], "o= line not allowed in a media description"),
        ([*BASE, *AUDIO, "c=IN IP4 192.0.2.1", "c=IN IP4 192.0.2.2"], "second c= line"),
    ],
)
def test_broken_descriptions_are_rejected(lines: list[str], reason: str) -> None:
    data = ("\r\n".join(lines) + "\r\n").encode() if lines else b""
    with pytest.raises(SdpError, match=re.escape(reason)) as caught:
        SessionDescription.parse(data)
    assert caught.value.status_hint == 400


def test_error_reason_is_short_even_for_huge_fields() -> None:
    data = sdp(*BASE, "m=audio " + "9" * 5000 + " RTP/AVP 0")
    with pytest.raises(SdpError) as caught:
        SessionDescription.parse(data)
    assert len(str(caught.value)) < 100


# --- our offer -----------------------------------------------------------------------------


def test_build_offer_ipv4() -> None:
    expected = sdp(
        "v=0",
        "o=- 7000 1 IN IP4 192.0.2.10",
        "s=-",
        "c=IN IP4 192.0.2.10",
        "t=0 0",
        "m=audio 40000 RTP/AVP 0 8 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    )
    assert expected == OFFER


def test_build_offer_ipv6_options() -> None:
    offer = build_offer(
        "2001:0db8:0000::0010", 5004, 1, 2, codecs=("PCMA",), telephone_event_pt=None,
        ptime_ms=None, direction="sendonly",
    )  # fmt: skip
    assert offer == sdp(
        "v=0",
        "o=- 1 2 IN IP6 2001:db8::10",
        "s=-",
        "c=IN IP6 2001:db8::10",
        "t=0 0",
        "m=audio 5004 RTP/AVP 8",
        "a=rtpmap:8 PCMA/8000",
        "a=sendonly",
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"address": "sbc.example.com"},
        {"port": 0},
        {"port": 70000},
        {"codecs": ("G729",)},
        {"codecs": ()},
        {"telephone_event_pt": 8},
        {"direction": "both"},
        {"session_version": -1},
        {"ptime_ms": 0},
    ],
)
def test_build_offer_rejects_bad_arguments(kwargs: dict) -> None:
    arguments = {"address": "192.0.2.10", "port": 4000, "session_id": 1, "session_version": 1}
    with pytest.raises(ValueError):
        build_offer(**(arguments | kwargs))


# --- their answer --------------------------------------------------------------------------


PCMU = Codec("PCMU", 0, 8000)
PCMA = Codec("PCMA", 8, 8000)


@pytest.mark.parametrize(
    ("offer", "answer", "expected"),
    [
        pytest.param(OFFER, ASTERISK, MediaAnswer(
            PCMU, "203.0.113.5", 17536, 20, "sendrecv", send=True, receive=True, on_hold=False,
            telephone_event_pt=101, maxptime_ms=150), id="asterisk"),
        pytest.param(OFFER, FREESWITCH, MediaAnswer(
            PCMA, "198.51.100.20", 24680, 30, "sendrecv", send=True, receive=True,
            on_hold=False, telephone_event_pt=101), id="freeswitch"),
        pytest.param(OFFER, SIPP_DEFAULT, MediaAnswer(
            PCMU, "127.0.0.1", 6000, 20, "sendrecv", send=True, receive=True, on_hold=False),
            id="sipp-default"),
        pytest.param(OFFER, CARRIER_SBC, MediaAnswer(
            PCMU, "192.0.2.41", 27114, 20, "sendrecv", send=True, receive=True, on_hold=False,
            telephone_event_pt=101), id="carrier-media-level-c"),
        pytest.param(OFFER, MEDIA_LEVEL_C_ONLY, MediaAnswer(
            PCMA, "198.51.100.8", 4000, 20, "sendrecv", send=True, receive=True,
            on_hold=False), id="media-level-c-only"),
        pytest.param(OFFER_V6, IPV6_ANSWER, MediaAnswer(
            PCMA, "2001:db8::5", 30000, 20, "sendrecv", send=True, receive=True, on_hold=False,
            telephone_event_pt=96), id="ipv6"),
        pytest.param(OFFER, with_direction(ASTERISK, "sendonly"), MediaAnswer(
            PCMU, "203.0.113.5", 17536, 20, "sendonly", send=False, receive=True, on_hold=True,
            telephone_event_pt=101, maxptime_ms=150), id="hold-sendonly"),
        pytest.param(OFFER, with_direction(ASTERISK, "inactive"), MediaAnswer(
            PCMU, "203.0.113.5", 17536, 20, "inactive", send=False, receive=False,
            on_hold=True, telephone_event_pt=101, maxptime_ms=150), id="hold-inactive"),
        pytest.param(OFFER, with_direction(ASTERISK, "recvonly"), MediaAnswer(
            PCMU, "203.0.113.5", 17536, 20, "recvonly", send=True, receive=False,
            on_hold=False, telephone_event_pt=101, maxptime_ms=150), id="peer-recvonly"),
        pytest.param(OFFER, ASTERISK.replace(b"c=IN IP4 203.0.113.5", b"c=IN IP4 0.0.0.0"),
            MediaAnswer(PCMU, "0.0.0.0", 17536, 20, "sendrecv", send=False, receive=True,
            on_hold=True, telephone_event_pt=101, maxptime_ms=150), id="hold-rfc2543"),
        pytest.param(
            build_offer("192.0.2.10", 40000, 1, 2, direction="sendonly"),
            with_direction(ASTERISK, "recvonly"), MediaAnswer(
            PCMU, "203.0.113.5", 17536, 20, "recvonly", send=True, receive=False,
            on_hold=False, telephone_event_pt=101, maxptime_ms=150), id="we-hold"),
        pytest.param(
            build_offer("192.0.2.10", 40000, 1, 2, telephone_event_pt=None), ASTERISK,
            MediaAnswer(PCMU, "203.0.113.5", 17536, 20, "sendrecv", send=True, receive=True,
            on_hold=False, maxptime_ms=150), id="telephone-event-not-offered"),
        pytest.param(OFFER, sdp(*BASE, "a=sendonly", "m=audio 5000 RTP/AVP 8"), MediaAnswer(
            PCMA, "192.0.2.1", 5000, 20, "sendonly", send=False, receive=True, on_hold=True),
            id="session-level-direction"),
        pytest.param(OFFER, sdp(*BASE, "a=sendonly", "m=audio 5000 RTP/AVP 8", "a=sendrecv"),
            MediaAnswer(PCMA, "192.0.2.1", 5000, 20, "sendrecv", send=True, receive=True,
            on_hold=False), id="media-level-direction-wins"),
        pytest.param(OFFER, sdp(*BASE, "m=audio 5000 RTP/AVP 13 8", "a=rtpmap:8 pcma/8000"),
            MediaAnswer(PCMA, "192.0.2.1", 5000, 20, "sendrecv", send=True, receive=True,
            on_hold=False), id="comfort-noise-skipped-case-insensitive-name"),
    ],
)  # fmt: skip
def test_negotiate_answer(offer: bytes, answer: bytes, expected: MediaAnswer) -> None:
    assert negotiate_answer(offer, answer) == expected
    assert negotiate_answer(SessionDescription.parse(offer), answer) == expected


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (sdp(*BASE, "m=audio 0 RTP/AVP 0"), "media port 0 (rejected)"),
        (sdp(*BASE, "m=audio 0 RTP/AVP"), "media port 0 (rejected)"),
        (sdp(*BASE, "m=audio 5000 RTP/AVP 18", "a=rtpmap:18 G729/8000"), "no common codec"),
        (sdp(*BASE, "m=audio 5000 RTP/AVP 101", "a=rtpmap:101 telephone-event/8000"),
         "no common codec"),
        (sdp(*BASE, "m=audio 5000 RTP/AVP 96", "a=rtpmap:96 PCMU/16000"), "no common codec"),
        # Static type 0 is PCMU (RFC 3551): an rtpmap calling it PCMA is not guessed at.
        (sdp(*BASE, "m=audio 5000 RTP/AVP 0", "a=rtpmap:0 PCMA/8000"), "no common codec"),
        (sdp(*BASE, "m=audio 5000 RTP/AVP 0", "m=video 0 RTP/AVP 31"),
         "answer has 2 media lines, offer had 1"),
        (sdp(*BASE), "answer has 0 media lines, offer had 1"),
        (sdp(*BASE, "m=video 5000 RTP/AVP 0"), "does not match"),
        (sdp(*BASE, "m=audio 5000 RTP/SAVP 0"), "does not match"),
        (sdp(*BASE[:3], "c=IN IP4 sbc.example.com", BASE[4], *AUDIO), "is not an IP address"),
        (sdp(*BASE[:3], "c=IN IP4 233.252.0.1/32", BASE[4], *AUDIO), "multicast"),
        (b"", "empty session description"),
        (ASTERISK.replace(b"c=IN IP4 203.0.113.5\r\n", b""), "missing c= line"),
    ],
)  # fmt: skip
def test_negotiate_answer_failures(answer: bytes, reason: str) -> None:
    with pytest.raises(SdpError) as caught:
        negotiate_answer(OFFER, answer)
    assert reason in caught.value.reason


# --- answering a re-INVITE ------------------------------------------------------------------


def reinvite(direction: str | None, *, address: str = "203.0.113.5", formats: str = "0 8 101"):
    lines = [
        "v=0",
        "o=- 1730392834 1730392836 IN IP4 203.0.113.5",
        "s=Asterisk",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio 17536 RTP/AVP {formats}",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
    ]
    if direction is not None:
        lines.append(f"a={direction}")
    return sdp(*lines)


def answer_media(answer: bytes):
    parsed = SessionDescription.parse(answer)
    return parsed, parsed.media[0]


@pytest.mark.parametrize(
    ("offer", "local_direction", "answered", "on_hold"),
    [
        (reinvite("sendonly"), "sendrecv", "recvonly", True),
        (reinvite("inactive"), "sendrecv", "inactive", True),
        (reinvite("sendrecv"), "sendrecv", "sendrecv", False),
        (reinvite(None), "sendrecv", "sendrecv", False),
        (reinvite("recvonly"), "sendrecv", "sendonly", False),
        (reinvite("sendrecv", address="0.0.0.0"), "sendrecv", "recvonly", True),
        (reinvite("sendrecv"), "sendonly", "sendonly", False),
        (reinvite("sendonly"), "sendonly", "inactive", True),
        (reinvite("recvonly"), "inactive", "inactive", False),
    ],
)
def test_build_answer_direction(
    offer: bytes, local_direction: str, answered: str, on_hold: bool
) -> None:
    answer = build_answer(offer, "192.0.2.10", 40000, 7000, 2, local_direction=local_direction)
    parsed, media = answer_media(answer)
    assert media.direction() == answered
    assert (parsed.origin.session_id, parsed.origin.session_version) == (7000, 2)
    assert negotiate_offer(offer, local_direction=local_direction).on_hold is on_hold


def test_build_answer_full_text() -> None:
    answer = build_answer(reinvite("sendonly"), "192.0.2.10", 40000, 7000, 3)
    assert answer == sdp(
        "v=0",
        "o=- 7000 3 IN IP4 192.0.2.10",
        "s=-",
        "c=IN IP4 192.0.2.10",
        "t=0 0",
        "m=audio 40000 RTP/AVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=recvonly",
    )


@pytest.mark.parametrize(
    ("formats", "current", "chosen"),
    [
        ("0 8 101", None, "PCMU"),
        ("8 0 101", None, "PCMA"),
        ("8 0 101", "PCMU", "PCMU"),
        ("0 8 101", "pcma", "PCMA"),
        ("8 101", "PCMU", "PCMA"),  # the current codec is gone: take what is offered
    ],
)
def test_build_answer_keeps_the_codec_in_use(formats: str, current: str | None, chosen: str):
    answer = build_answer(
        reinvite("sendrecv", formats=formats), "192.0.2.10", 40000, 1, 2, current_codec=current
    )
    _, media = answer_media(answer)
    assert media.rtpmaps()[int(media.formats[0])].encoding_name == chosen
    assert media.formats[1:] == ("101",)


def test_build_answer_declines_other_streams_with_port_zero() -> None:
    offer = sdp(
        *BASE,
        "m=audio 6000 RTP/SAVP 0",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        "m=video 6002 RTP/AVP 31",
        "m=audio 6004 RTP/AVP 18 8",
        "m=image 6006 udptl t38",
    )
    parsed, _ = answer_media(build_answer(offer, "192.0.2.10", 40000, 1, 2))
    ports = [(m.media, m.port, m.proto, m.formats) for m in parsed.media]
    assert ports == [
        ("audio", 0, "RTP/SAVP", ("0",)),
        ("video", 0, "RTP/AVP", ("31",)),
        ("audio", 40000, "RTP/AVP", ("8",)),
        ("image", 0, "udptl", ("t38",)),
    ]
    assert negotiate_offer(offer).media_index == 2


def test_build_answer_telephone_event_range_and_ipv6() -> None:
    offer = IPV6_ANSWER  # an IPv6 description with events 0-15 on payload type 96
    parsed, media = answer_media(build_answer(offer, "2001:db8::10", 40000, 1, 2))
    assert parsed.connection == Connection("IP6", "2001:db8::10")
    assert media.formats == ("8", "96")
    assert media.fmtp(96) == "0-15"


@pytest.mark.parametrize(
    ("offer", "reason"),
    [
        (sdp(*BASE, "m=audio 5000 RTP/AVP 18", "a=rtpmap:18 G729/8000"), "no common codec"),
        (sdp(*BASE, "m=video 5000 RTP/AVP 31"), "no audio stream in offer"),
        (sdp(*BASE, "m=audio 0 RTP/AVP 0"), "no audio stream in offer"),
    ],
)
def test_build_answer_refuses_unacceptable_offers(offer: bytes, reason: str) -> None:
    with pytest.raises(SdpError, match=reason) as caught:
        build_answer(offer, "192.0.2.10", 40000, 1, 2)
    assert caught.value.status_hint == 488


# --- robustness -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parse_random_bytes_raises_only_sdp_error(data: bytes) -> None:
    try:
        parsed = SessionDescription.parse(data)
    except SdpError:
        return
    assert SessionDescription.parse(parsed.serialize()) == parsed


SDP_ALPHABET = st.sampled_from(
    [
        *"vosctmab=0123456789 .:/-\r\nINP46RTAVPCMUsendrcvonlyiat\x00\xe5",
        "v=0\r\n",
        "m=audio ",
        " RTP/AVP ",
        "c=IN IP4 ",
        "a=rtpmap:",
        "\r\n",
        "o=- 1 1 IN IP4 h",
    ]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real description with a few bytes or lines deleted, replaced or inserted."""
    data = bytearray(draw(st.sampled_from([OFFER, *REAL_WORLD])))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["delete", "insert", "replace", "cut-line"]))
        chunk = draw(SDP_ALPHABET).encode("utf-8", "surrogateescape")
        if action == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        elif action == "insert":
            data[position:position] = chunk
        elif action == "replace":
            data[position : position + len(chunk)] = chunk
        else:
            end = data.find(b"\n", position)
            del data[position : len(data) if end < 0 else end + 1]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_answers_give_a_media_answer_or_sdp_error(data: bytes) -> None:
    try:
        result = negotiate_answer(OFFER, data)
    except SdpError as error:
        assert error.reason
        return
    # One we play, on its static payload type or a dynamic one (never 0 as PCMA).
    assert result.codec.name in ("PCMU", "PCMA") and result.codec.clock_rate == 8000
    static = PCMU if result.codec.name == "PCMU" else PCMA
    assert result.codec.payload_type == static.payload_type or result.codec.payload_type >= 96
    assert 0 < result.remote_port <= 0xFFFF


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_offers_give_an_answer_or_sdp_error(data: bytes) -> None:
    try:
        answer = build_answer(data, "192.0.2.10", 40000, 1, 2)
    except SdpError:
        return
    SessionDescription.parse(answer)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(SDP_ALPHABET, max_size=12).map("".join), max_size=12))
def test_line_soup_raises_only_sdp_error(lines: list[str]) -> None:
    try:
        result = negotiate_answer(OFFER, "\r\n".join(["v=0", *lines]))
    except SdpError:
        return
    assert isinstance(result, MediaAnswer)


# --- PROTOS c07-sip: the SDP group ------------------------------------------------------------


def shared_testdata() -> Path:
    configured = os.environ.get("DIALER_TESTDATA")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3] / ".." / "shared" / "testdata"


PROTOS_CASES = shared_testdata() / "protos-c07-sip" / "cases"
PROTOS_SDP_GROUP = range(2427, 4527)
PLACEHOLDERS = {b"<From-Address>": b"192.0.2.77", b"<From-IP>": b"192.0.2.77"}


def protos_sdp_body(number: int) -> bytes:
    """The body of the case's INVITE: two length-prefixed messages, the first one is it."""
    data = (PROTOS_CASES / f"{number:07d}").read_bytes()
    length, _, rest = data.partition(b" ")
    invite = rest[: int(length)]
    body = invite.split(b"\r\n\r\n", 1)[1]
    for placeholder, value in PLACEHOLDERS.items():
        body = body.replace(placeholder, value)
    return body


needs_protos = pytest.mark.skipif(
    not PROTOS_CASES.is_dir(), reason=f"PROTOS c07-sip cases not found at {PROTOS_CASES}"
)


@needs_protos
def test_protos_reference_case_is_accepted() -> None:
    result = negotiate_answer(OFFER, protos_sdp_body(0))
    assert (result.codec, result.remote_address, result.remote_port) == (PCMU, "192.0.2.77", 9876)


@needs_protos
def test_protos_sdp_group_answers_or_sdp_error() -> None:
    outcomes: dict[str, list[int]] = {"accepted": [], "rejected": []}
    unexpected = []
    for number in PROTOS_SDP_GROUP:
        body = protos_sdp_body(number)
        try:
            negotiate_answer(OFFER, body)
            build_answer(body, "192.0.2.10", 40000, 1, 2)
        except SdpError:
            outcomes["rejected"].append(number)
        except Exception as error:  # the point of the test: report, never crash
            unexpected.append((number, repr(error)[:80]))
        else:
            outcomes["accepted"].append(number)
    assert unexpected == []
    # Cases that break the grammar must be refused, not silently accepted.
    for broken in (2437, 2453, 2428):  # "=0" first line, non-ASCII type, NUL after rtpmap
        assert broken in outcomes["rejected"]
    assert len(outcomes["accepted"]) + len(outcomes["rejected"]) == len(PROTOS_SDP_GROUP)


# --- the fast paths agree with the slow ones --------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "192.0.2.10",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "239.255.255.255",
        "01.2.3.4",  # leading zeros are refused by ipaddress too
        "1.2.3.04",
        "256.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        "1..3.4",
        " 1.2.3.4",
        "1.2.3.4 ",
        "+1.2.3.4",
        "\u0661.2.3.4",  # an Arabic-Indic digit: isdigit() but not ASCII
        "::1",
        "example.com",
        "",
    ],
)
def test_dotted_quad_fast_path_agrees_with_ipaddress(host: str) -> None:
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        parsed = None
    first = _ipv4_first_octet(host)
    if parsed is not None and parsed.version == 4:
        assert first == int(host.split(".")[0])
    else:
        assert first is None


@pytest.mark.parametrize(
    ("address", "kwargs"),
    [
        ("192.0.2.10", {}),
        ("2001:db8::10", {}),
        ("192.0.2.10", {"codecs": ["pcma"], "telephone_event_pt": None, "ptime_ms": None}),
        ("192.0.2.10", {"direction": "sendonly", "ptime_ms": 30}),
    ],
)
def test_offer_description_is_the_offer(address: str, kwargs: dict) -> None:
    description, data = build_offer_description(address, 40000, 7000, 3, **kwargs)
    assert data == build_offer(address, 40000, 7000, 3, **kwargs)
    assert data == description.serialize()
    assert SessionDescription.parse(data).serialize() == data
    answer = build_answer(data, "192.0.2.20", 30000, 1, 1)
    # Read against the description or against the bytes: the same agreement.
    assert negotiate_answer(description, answer) == negotiate_answer(data, answer)


def test_rtpmaps_hands_out_copies() -> None:
    description, _ = build_offer_description("192.0.2.10", 40000, 1, 1)
    maps = description.media[0].rtpmaps()
    maps.clear()
    assert set(description.media[0].rtpmaps()) == {0, 8, 101}


@pytest.mark.parametrize("address", ["192.0.2.10", "2001:db8::10"])
def test_offers_on_other_ports_share_the_template_but_carry_their_own_port(address: str) -> None:
    """The cached template holds no port: each offer is its own port's, bytes and description."""
    seen = set()
    for port in (40000, 40002, 9, 65534, 40000):
        description, data = build_offer_description(address, port, 7, 1)
        assert description.media[0].port == port
        assert data == description.serialize()
        parsed = SessionDescription.parse(data)
        assert parsed.media[0].port == port and parsed.serialize() == data
        assert description.media[0].rtpmaps() == parsed.media[0].rtpmaps()
        seen.add(data)
    assert len(seen) == 4


def test_answer_codecs_on_static_and_dynamic_payload_types() -> None:
    contradiction = sdp(*BASE, "m=audio 5000 RTP/AVP 0 8", "a=rtpmap:0 PCMA/8000")
    assert negotiate_answer(OFFER, contradiction).codec == PCMA
    dynamic = sdp(*BASE, "m=audio 5000 RTP/AVP 97", "a=rtpmap:97 PCMA/8000")
    assert negotiate_answer(OFFER, dynamic).codec == Codec("PCMA", 97, 8000)

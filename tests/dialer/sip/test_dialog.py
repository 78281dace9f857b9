"""Dialogs (dialer.sip.dialog): creation, routing, in-dialog answers, DTMF, SDP versions."""

from __future__ import annotations

import pytest

from dialer.sip.dialog import (
    AckReceived,
    ByeReceived,
    Dialog,
    DialogError,
    DialogState,
    DtmfReceived,
    LocalMedia,
    MediaSession,
    OfferAnswered,
    parse_dtmf_info,
)
from dialer.sip.errors import LocalProtocolError
from dialer.sip.headers import Via
from dialer.sip.message import Request, Response, make_response
from dialer.sip.parser import parse_message
from dialer.sip.sdp import SessionDescription, build_offer
from dialer.sip.uri import SipUri, parse_uri

VIA = Via("UDP", "192.0.2.10", 5060, (("branch", "z9hG4bKnew"),))
OFFER = build_offer("192.0.2.10", 20000, 7, 0)


def invite() -> Request:
    return Request(
        "INVITE",
        parse_uri("sip:+15551234567@trunk.example"),
        (
            ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKinv"),
            ("Max-Forwards", "70"),
            ("From", '"Dialer" <sip:dialer@192.0.2.10>;tag=ours'),
            ("To", "<sip:+15551234567@trunk.example>"),
            ("Call-ID", "call-1"),
            ("CSeq", "5 INVITE"),
            ("Contact", "<sip:dialer@192.0.2.10:5060>"),
            ("Proxy-Authorization", 'Digest username="u"'),
        ),
        OFFER,
    )


def answer(status: int = 200, record_route: tuple[str, ...] = (), contact: bool = True) -> Response:
    headers = [("Record-Route", rr) for rr in record_route]
    if contact:
        headers.append(("Contact", "<sip:callee@198.51.100.7:5062;transport=udp>"))
    return make_response(invite(), status, to_tag="theirs", headers=headers)


def uac(record_route: tuple[str, ...] = ("<sip:p1.example;lr>", "<sip:p2.example;lr>")) -> Dialog:
    return Dialog.from_uac(invite(), answer(record_route=record_route))


def peer_request(
    dialog: Dialog, method: str, seq: int, body: bytes = b"", content_type: str | None = None
) -> Request:
    """A request from the callee in ``dialog``, parsed from bytes as it would arrive."""
    headers = [
        ("Via", "SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKpeer"),
        ("From", f"<sip:+15551234567@trunk.example>;tag={dialog.remote_tag}"),
        ("To", f"<sip:dialer@192.0.2.10>;tag={dialog.local_tag}"),
        ("Call-ID", dialog.call_id),
        ("CSeq", f"{seq} {method}"),
        ("Contact", "<sip:callee@198.51.100.7:5062>"),
    ]
    if content_type:
        headers.append(("Content-Type", content_type))
    request = Request(method, parse_uri("sip:dialer@192.0.2.10:5060"), tuple(headers), body)
    parsed = parse_message(request.serialize())
    assert isinstance(parsed, Request)
    return parsed


# --- creation (§12.1) ---------------------------------------------------------------------------


def test_uac_dialog_from_2xx() -> None:
    dialog = uac()
    assert dialog.id.call_id == "call-1"
    assert (dialog.local_tag, dialog.remote_tag) == ("ours", "theirs")
    assert dialog.state is DialogState.CONFIRMED
    # §12.1.2: route set is the Record-Route list reversed.
    assert [str(r.uri) for r in dialog.route_set] == ["sip:p2.example;lr", "sip:p1.example;lr"]
    assert str(dialog.remote_target) == "sip:callee@198.51.100.7:5062;transport=udp"
    assert dialog.local_seq == 5 and dialog.remote_seq is None
    assert dialog.local_uri.display_name == "Dialer" and dialog.local_uri.tag is None


def test_early_dialog_then_confirm_recomputes_routes() -> None:
    early = Dialog.from_uac(invite(), answer(183, contact=False))
    assert early.state is DialogState.EARLY
    assert str(early.remote_target) == "sip:+15551234567@trunk.example"
    early.confirm(answer(record_route=("<sip:p9.example;lr>",)))
    assert early.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in early.route_set] == ["sip:p9.example;lr"]
    assert isinstance(early.remote_target, SipUri) and early.remote_target.port == 5062
    with pytest.raises(LocalProtocolError):
        early.confirm(answer(486))


@pytest.mark.parametrize(
    "response",
    [
        answer(contact=False),  # a 2xx without Contact
        make_response(invite(), 200),  # no To tag
    ],
)
def test_responses_that_cannot_make_a_dialog(response: Response) -> None:
    with pytest.raises(DialogError):
        Dialog.from_uac(invite(), response)


def test_uas_dialog_from_request() -> None:
    request = invite().with_header("Record-Route", "<sip:p1.example;lr>")
    dialog = Dialog.from_uas(request, "mine", Dialog.from_uac(invite(), answer()).remote_uri)  # type: ignore[arg-type]
    assert (dialog.local_tag, dialog.remote_tag) == ("mine", "ours")
    assert dialog.remote_seq == 5 and dialog.local_seq == 0
    assert [str(r.uri) for r in dialog.route_set] == ["sip:p1.example;lr"]  # not reversed
    assert str(dialog.remote_target) == "sip:dialer@192.0.2.10:5060"


# --- requests we build (§12.2.1.1, §13.2.2.4) -----------------------------------------------------


def test_loose_routing() -> None:
    dialog = uac()
    bye = dialog.create_request("BYE", VIA)
    assert str(bye.uri) == "sip:callee@198.51.100.7:5062;transport=udp"
    assert bye.get_all("Route") == ["<sip:p2.example;lr>", "<sip:p1.example;lr>"]
    assert bye.cseq.seq == 6 and bye.cseq.method == "BYE"
    assert (bye.from_tag, bye.to_tag, bye.call_id) == ("ours", "theirs", "call-1")
    assert bye.branch == "z9hG4bKnew"
    assert "Contact" not in bye
    assert str(dialog.next_hop) == "sip:p2.example;lr"
    reinvite = dialog.create_request("INVITE", VIA, body=OFFER)
    assert reinvite.cseq.seq == 7 and reinvite.media_type == "application/sdp"
    assert reinvite.contacts[0].uri == parse_uri("sip:dialer@192.0.2.10:5060")


def test_strict_routing() -> None:
    dialog = uac(record_route=("<sip:p1.example;lr>", "<sip:strict.example;method=INVITE>"))
    request = dialog.create_request("INFO", VIA)
    # The strict router's URI becomes the Request-URI (method stripped) and the
    # remote target goes last in Route.
    assert str(request.uri) == "sip:strict.example"
    assert request.get_all("Route") == [
        "<sip:p1.example;lr>",
        "<sip:callee@198.51.100.7:5062;transport=udp>",
    ]


def test_no_route_set() -> None:
    request = uac(record_route=()).create_request("OPTIONS", VIA)
    assert "Route" not in request
    assert str(request.uri) == "sip:callee@198.51.100.7:5062;transport=udp"


def test_ack_for_2xx() -> None:
    dialog = uac()
    dialog.create_request("INFO", VIA)  # the counter moves on; the ACK must not
    ack = dialog.create_ack(invite(), VIA)
    assert ack.method == "ACK" and ack.cseq.seq == 5 and ack.cseq.method == "ACK"
    assert ack.branch == "z9hG4bKnew"  # a new branch, not the INVITE's
    assert ack.get("Proxy-Authorization") == 'Digest username="u"'
    assert ack.get_all("Route") == ["<sip:p2.example;lr>", "<sip:p1.example;lr>"]
    with pytest.raises(LocalProtocolError):
        dialog.create_request("ACK", VIA)


# --- requests we answer (§12.2.2) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "body", "content_type", "status", "event"),
    [
        ("BYE", b"", None, 200, ByeReceived()),
        ("OPTIONS", b"", None, 200, None),
        (
            "INFO",
            b"Signal=5\r\nDuration=160\r\n",
            "application/dtmf-relay",
            200,
            DtmfReceived("5", 160),
        ),
        ("INFO", b"#", "application/dtmf", 200, DtmfReceived("#", None)),
        ("INFO", b"Signal=11\r\n", "application/dtmf-relay", 200, DtmfReceived("#", None)),
        ("INFO", b"Signal=X\r\n", "application/dtmf-relay", 400, None),
        ("INFO", b"hello", "text/plain", 415, None),
        ("INFO", b"", None, 200, None),
        ("UPDATE", b"", None, 200, None),
        ("NOTIFY", b"", None, 405, None),
        ("FROBNICATE", b"", None, 501, None),
    ],
)
def test_in_dialog_requests(
    method: str, body: bytes, content_type: str | None, status: int, event: object
) -> None:
    dialog = uac()
    result = dialog.handle_request(peer_request(dialog, method, 1, body, content_type), None)
    assert result.response is not None and result.response.status == status
    assert result.response.to_tag == "ours"  # the request's tag, untouched
    assert result.event == event
    assert (dialog.state is DialogState.TERMINATED) is (method == "BYE")
    if status in (405, 501):
        assert "BYE" in (result.response.get("Allow") or "")


def test_wrong_tag_is_481_and_ack_is_silent() -> None:
    dialog = uac()
    stranger = peer_request(dialog, "BYE", 1).replace_header("To", "<sip:d@192.0.2.10>;tag=zz")
    result = dialog.handle_request(stranger, None)  # type: ignore[arg-type]
    assert result.response is not None and result.response.status == 481
    assert dialog.state is DialogState.CONFIRMED
    ack = peer_request(dialog, "ACK", 1).replace_header("To", "<sip:d@192.0.2.10>;tag=zz")
    assert dialog.handle_request(ack, None).response is None  # type: ignore[arg-type]


def test_lower_cseq_is_500() -> None:
    dialog = uac()
    assert dialog.handle_request(peer_request(dialog, "INFO", 10), None).response.status == 200  # type: ignore[union-attr]
    late = dialog.handle_request(peer_request(dialog, "INFO", 9), None)
    assert late.response is not None and late.response.status == 500
    assert dialog.remote_seq == 10
    # A CANCEL shares its INVITE's number and skips the order check.
    cancel = dialog.handle_request(peer_request(dialog, "CANCEL", 3), None)
    assert cancel.response is not None and cancel.response.status == 200


def media_session() -> MediaSession:
    session = MediaSession(LocalMedia("192.0.2.10", 20000), 7)
    session.make_offer()
    session.take_answer(build_offer("198.51.100.7", 40000, 1, 1, codecs=("PCMU",)))
    return session


@pytest.mark.parametrize(
    ("their_direction", "our_direction", "on_hold"),
    [
        ("sendonly", "recvonly", True),
        ("inactive", "inactive", True),
        ("sendrecv", "sendrecv", False),
        ("recvonly", "sendonly", False),
    ],
)
def test_reinvite_hold_and_unhold(their_direction: str, our_direction: str, on_hold: bool) -> None:
    dialog = uac()
    session = media_session()
    # A first sendrecv re-INVITE: our answer differs from our offer, so the version moves.
    baseline = build_offer("198.51.100.7", 40000, 1, 2, codecs=("PCMU",))
    dialog.handle_request(peer_request(dialog, "INVITE", 2, baseline, "application/sdp"), session)
    version = session.session_version
    assert version == 1
    offer = build_offer("198.51.100.7", 40000, 1, 3, codecs=("PCMU",), direction=their_direction)
    request = peer_request(dialog, "INVITE", 3, offer, "application/sdp")
    result = dialog.handle_request(request, session, extra_headers=[("Require", "timer")])
    response = result.response
    assert response is not None and response.status == 200
    assert response.get("Require") == "timer" and response.contacts
    sdp = SessionDescription.parse(response.body)
    assert sdp.media_direction(0) == our_direction
    assert isinstance(result.event, OfferAnswered)
    assert result.event.media.on_hold is on_hold
    assert result.event.previous is not None and not result.event.previous.on_hold
    assert session.on_hold is on_hold
    # RFC 3264 §8: the o= version goes up exactly when our description changed.
    changed = our_direction != "sendrecv"
    assert sdp.origin.session_version == version + int(changed)
    # Remote target refreshed from the re-INVITE's Contact.
    assert str(dialog.remote_target) == "sip:callee@198.51.100.7:5062"


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"v=0\r\nnonsense", "application/sdp", 400),
        (
            build_offer("198.51.100.7", 40000, 1, 2, codecs=("PCMA",)).replace(b"PCMA", b"G729"),
            "application/sdp",
            488,
        ),
        (b"<xml/>", "application/xml", 415),
    ],
)
def test_bad_offers(body: bytes, content_type: str, status: int) -> None:
    dialog = uac()
    session = media_session()
    before = session.current
    result = dialog.handle_request(peer_request(dialog, "INVITE", 2, body, content_type), session)
    assert result.response is not None and result.response.status == status
    assert result.event is None and session.current == before


def test_offerless_reinvite_offers_in_200_and_reads_answer_in_ack() -> None:
    dialog = uac()
    session = media_session()
    result = dialog.handle_request(peer_request(dialog, "INVITE", 2), session)
    assert result.response is not None and result.response.body == session.local_sdp
    answer_sdp = build_offer("198.51.100.7", 40002, 1, 3, codecs=("PCMU",))
    ack = dialog.handle_request(
        peer_request(dialog, "ACK", 2, answer_sdp, "application/sdp"), session
    )
    assert ack.response is None
    assert isinstance(ack.event, AckReceived) and ack.event.cseq == 2
    assert ack.event.media is not None and ack.event.media.remote_port == 40002


def test_offer_without_media_session_is_488() -> None:
    dialog = uac()
    result = dialog.handle_request(
        peer_request(dialog, "INVITE", 2, OFFER, "application/sdp"), None
    )
    assert result.response is not None and result.response.status == 488


# --- DTMF bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "body", "expected"),
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", ("5", 160)),
        ("application/dtmf-relay", b"signal = *\nduration=100", ("*", 100)),
        ("application/dtmf-relay", b"Signal=10\r\n", ("*", None)),
        ("application/dtmf-relay", b"Signal=15\r\n", ("D", None)),
        ("application/dtmf-relay", b"Signal=a\r\n", ("A", None)),
        ("application/dtmf-relay", b"Duration=100\r\n", None),
        ("application/dtmf-relay", b"Signal=16\r\n", None),
        ("application/dtmf", b"7", ("7", None)),
        ("application/dtmf", b"77", None),
        ("text/plain", b"7", None),
    ],
)
def test_parse_dtmf_info(media_type: str, body: bytes, expected) -> None:
    assert parse_dtmf_info(media_type, body) == expected


def test_media_session_versions() -> None:
    session = MediaSession(LocalMedia("192.0.2.10", 20000), 7, 3)
    first = session.make_offer()
    assert session.make_offer() == first  # a refresh repeats the same bytes and version
    held = session.make_offer("sendonly")
    assert SessionDescription.parse(held).origin.session_version == 4
    with pytest.raises(LocalProtocolError):
        MediaSession(LocalMedia("192.0.2.10", 20000), 1).take_answer(first)

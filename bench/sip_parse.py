"""The SIP core's work for one outbound call, in a loop: for instruction counts.

Our side only, as ``dialer worker`` does it for each call: place the call
(the INVITE built, its client transaction started, serialised), parse and
handle the trunk's 100, 180 and 200 OK with SDP (ACK built and serialised,
the answer negotiated), hang up (BYE), parse and handle the 200 to the BYE,
then fire the timers left (Timer M, K and the like) so that nothing is kept
from one call to the next. The trunk's responses are made from a template;
no sockets, no event loop, no clock but a counter.

Run it under callgrind twice, with two call counts, and subtract to leave
start-up out::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/sip_parse.py --calls 2000    # and --calls 200

Without valgrind it prints the calls per second of CPU time (noisy on a
loaded machine; the instruction counts are the figure to compare), and
whether the SIP modules ran compiled.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import dialer.sip.call as sip_call
from dialer.sip.actions import Action, Address, CancelTimer, Send, StartTimer
from dialer.sip.call import (
    Answered,
    CallRouter,
    Dial,
    Ended,
    IdGenerators,
    UserAgentConfig,
)
from dialer.sip.dialog import LocalMedia
from dialer.sip.message import Request
from dialer.sip.parser import parse_message
from dialer.sip.uri import SipUri, parse_uri

TRUNK: Address = ("192.0.2.20", 5060)
NOW = 1000.0

_SDP = (
    "v=0\r\n"
    "o=trunk 1 1 IN IP4 192.0.2.20\r\n"
    "s=-\r\n"
    "c=IN IP4 192.0.2.20\r\n"
    "t=0 0\r\n"
    "m=audio 30000 RTP/AVP 0 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)

_RESPONSE = (
    "SIP/2.0 {status} {reason}\r\n"
    "Via: {via};received=192.0.2.10\r\n"
    "From: {from_}\r\n"
    "To: {to}{to_tag}\r\n"
    "Call-ID: {call_id}\r\n"
    "CSeq: {cseq}\r\n"
    "{extra}"
    "Server: trunk\r\n"
    "Content-Length: {length}\r\n"
    "\r\n"
    "{body}"
)


def _ids() -> IdGenerators:
    counter = itertools.count(1)
    return IdGenerators(
        tag=lambda: f"tag{next(counter)}",
        branch=lambda: f"z9hG4bKbr{next(counter)}",
        call_id=lambda: f"call{next(counter)}@192.0.2.10",
        cnonce=lambda: f"cn{next(counter)}",
    )


def _response(request: Request, status: int, reason: str, to_tag: str, body: str = "") -> bytes:
    extra = ""
    if status == 200 and request.method == "INVITE":
        extra = "Contact: <sip:callee@192.0.2.20:5060>\r\nContent-Type: application/sdp\r\n"
    text = _RESPONSE.format(
        status=status,
        reason=reason,
        via=request.get("Via"),
        from_=request.get("From"),
        to=request.get("To"),
        to_tag=f";tag={to_tag}" if to_tag else "",
        call_id=request.get("Call-ID"),
        cseq=request.get("CSeq"),
        extra=extra,
        length=len(body),
        body=body,
    )
    return text.encode()


class Driver:
    """One CallRouter, the trunk's answers, and the timers its actions start."""

    def __init__(self) -> None:
        config = UserAgentConfig(
            local_uri=SipUri("192.0.2.10", "dialer"),
            contact=SipUri("192.0.2.10", "dialer", port=5060),
            via_host="192.0.2.10",
            via_port=5060,
            proxy=TRUNK,
            transport="UDP",
            ring_timeout_s=30.0,
            session_expires_s=None,
            max_duration_s=3600.0,
        )
        self.router = CallRouter(config, _ids())
        self.timers: dict[tuple[object, str], float] = {}
        self.sent: list[Send] = []
        self.answered = 0
        self.ended = 0
        self.target = parse_uri("sip:+15551234567@192.0.2.20")
        self.media = LocalMedia("192.0.2.10", 20000)

    def _take(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.sent.append(action)
            elif isinstance(action, StartTimer):
                self.timers[(action.key, action.timer)] = action.at
            elif isinstance(action, CancelTimer):
                self.timers.pop((action.key, action.timer), None)
            elif isinstance(action, Answered):
                self.answered += 1
            elif isinstance(action, Ended):
                self.ended += 1

    def _last_request(self, method: str) -> Request:
        for send in reversed(self.sent):
            message = send.message
            if isinstance(message, Request) and message.method == method:
                return message
        raise AssertionError(f"no {method} sent")

    def _arrive(self, data: bytes) -> None:
        self._take(self.router.receive(parse_message(data), TRUNK, "UDP", NOW))

    def one_call(self) -> None:
        self.sent.clear()
        call, actions = self.router.place(Dial(self.target, self.media), NOW)
        self._take(actions)
        invite = self._last_request("INVITE")
        self._arrive(_response(invite, 100, "Trying", ""))
        self._arrive(_response(invite, 180, "Ringing", "callee1"))
        self._arrive(_response(invite, 200, "OK", "callee1", _SDP))
        self._last_request("ACK")
        self._take(self.router.hangup(call.call_id, NOW))
        bye = self._last_request("BYE")
        self._arrive(_response(bye, 200, "OK", ""))
        # What is left runs out (Timer M of the INVITE, Timer K of the BYE).
        while self.timers:
            (key, timer), _ = min(self.timers.items(), key=lambda item: item[1])
            del self.timers[(key, timer)]
            self._take(self.router.timer_fired(key, timer, NOW))
        if self.router.calls or len(self.router.layer):
            raise AssertionError("a call or transaction outlived its call")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    driver = Driver()
    driver.one_call()  # first-call set-up (caches, lazy imports) out of the loop
    start = time.process_time()
    for _ in range(args.calls):
        driver.one_call()
    spent = time.process_time() - start
    if driver.answered != args.calls + 1 or driver.ended != args.calls + 1:
        raise SystemExit(f"answered {driver.answered}, ended {driver.ended}")
    compiled = not sip_call.__file__.endswith(".py")
    print(
        f"calls={args.calls} compiled={compiled} cpu={spent:.3f}s "
        f"({args.calls / spent:.0f} calls/s CPU) load={os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()

"""The user agent's request policy and answers, and call placement, over loopback sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from dialer.sip.dialog import LocalMedia
from dialer.sip.message import Request, Response, make_response
from dialer.sip.parser import parse_message
from dialer.sip.timers import TimerConfig
from dialer.sip.uri import SipUri
from dialer.transport import TransportConfig
from dialer.trunk import TrunkConfig
from dialer.user_agent import (
    _COMPACT_AFTER,
    LOOPBACK,
    Admission,
    RequestPolicy,
    SourcePolicy,
    TrunkBusy,
    UserAgent,
    UserAgentClosed,
    UserAgentOptions,
    Verdict,
    _TimerQueue,
    answer_out_of_dialog,
    target_uri,
)

MEDIA = LocalMedia("127.0.0.1", 40000)


def request(method: str, *, extra: str = "", to_tag: str = "", uri: str = "sip:dialer@127.0.0.1"):
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-ua-{method};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:probe@127.0.0.1>;tag=p1\r\n"
        f"To: <sip:dialer@127.0.0.1>{to_tag}\r\n"
        f"Call-ID: ua-test-{method}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).replace("{method}", method)
    return text.encode()


@pytest.mark.parametrize(
    ("method", "extra", "to_tag", "uri", "status"),
    [
        ("OPTIONS", "", "", "sip:dialer@127.0.0.1", 200),
        ("INVITE", "", "", "sip:dialer@127.0.0.1", 603),
        ("INVITE", "", ";tag=x", "sip:dialer@127.0.0.1", 481),  # re-INVITE for no dialog
        ("BYE", "", ";tag=x", "sip:dialer@127.0.0.1", 481),
        ("CANCEL", "", "", "sip:dialer@127.0.0.1", 481),
        ("INFO", "", "", "sip:dialer@127.0.0.1", 481),
        ("REGISTER", "", "", "sip:127.0.0.1", 405),
        ("MESSAGE", "", "", "sip:dialer@127.0.0.1", 405),
        ("FOO", "", "", "sip:dialer@127.0.0.1", 501),
        ("OPTIONS", "Require: 100rel\r\n", "", "sip:dialer@127.0.0.1", 420),
        ("OPTIONS", "Require: timer\r\n", "", "sip:dialer@127.0.0.1", 200),
        ("OPTIONS", "", "", "http://example.com/", 416),
        ("ACK", "", ";tag=x", "sip:dialer@127.0.0.1", None),
    ],
)
def test_answer_out_of_dialog(
    method: str, extra: str, to_tag: str, uri: str, status: int | None
) -> None:
    parsed = parse_message(request(method, extra=extra, to_tag=to_tag, uri=uri))
    assert isinstance(parsed, Request)
    response = answer_out_of_dialog(parsed, "ourtag")
    assert (None if response is None else response.status) == status
    if response is not None and to_tag == "":
        assert response.to_tag == "ourtag"


def test_options_and_invite_answers_say_enough() -> None:
    options = answer_out_of_dialog(parse_message(request("OPTIONS")), "t")  # type: ignore[arg-type]
    assert options is not None
    assert "INVITE" in options.get("Allow") and options.get("Accept") == "application/sdp"
    assert options.get("Supported") == "timer"
    invite = answer_out_of_dialog(parse_message(request("INVITE")), "t")  # type: ignore[arg-type]
    assert invite is not None and (invite.get("Warning") or "").startswith("399 ")
    cancel = answer_out_of_dialog(
        parse_message(request("CANCEL")),  # type: ignore[arg-type]
        "t",
        cancels_found=True,
    )
    assert cancel is not None and cancel.status == 200


@pytest.mark.parametrize(
    ("policy", "source", "agent", "verdicts"),
    [
        (RequestPolicy(trusted=LOOPBACK), "127.0.0.5", "friendly-scanner", [Verdict.ANSWER] * 30),
        (RequestPolicy(), "192.0.2.1", "friendly-scanner", [Verdict.DROP_SCANNER]),
        (RequestPolicy(), "192.0.2.1", "SIPVicious 0.3", [Verdict.DROP_SCANNER]),
        (RequestPolicy(), "192.0.2.1", "sipcli/v1.8", [Verdict.DROP_SCANNER]),
        (RequestPolicy(answer_strangers=False), "192.0.2.1", "Phone", [Verdict.DROP_STRANGER]),
        (
            RequestPolicy(stranger_rate_per_s=1.0, stranger_burst=2),
            "192.0.2.1",
            "Phone",
            [Verdict.ANSWER, Verdict.ANSWER, Verdict.DROP_FLOOD, Verdict.DROP_FLOOD],
        ),
        (RequestPolicy(trusted=("192.0.2.0/24",)), "192.0.2.99", None, [Verdict.ANSWER] * 30),
    ],
)
def test_source_policy(
    policy: RequestPolicy, source: str, agent: str | None, verdicts: list[Verdict]
) -> None:
    judge = SourcePolicy(policy)
    assert [judge.verdict((source, 5060), agent, 0.0) for _ in verdicts] == verdicts


def test_source_policy_trusts_trunks_and_refills() -> None:
    judge = SourcePolicy(RequestPolicy(stranger_rate_per_s=1.0, stranger_burst=1))
    assert judge.verdict(("192.0.2.1", 5060), None, 0.0) is Verdict.ANSWER
    assert judge.verdict(("192.0.2.1", 5060), None, 0.5) is Verdict.DROP_FLOOD
    assert judge.verdict(("192.0.2.1", 5060), None, 1.5) is Verdict.ANSWER
    assert judge.verdict(("192.0.2.2", 5060), None, 1.5) is Verdict.ANSWER  # per source
    judge.trust("192.0.2.1")
    assert all(judge.verdict(("192.0.2.1", 1), None, 1.5) is Verdict.ANSWER for _ in range(9))


def test_source_policy_forgets_oldest_sources() -> None:
    judge = SourcePolicy(RequestPolicy(max_tracked_sources=3))
    for n in range(10):
        judge.verdict((f"192.0.2.{n}", 5060), None, 0.0)
    assert len(judge._buckets) == 3


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("+12025550123", "sip:+12025550123@trunk.example.com:5080"),
        ("1000", "sip:1000@trunk.example.com:5080"),
        ("sip:alice@example.org", "sip:alice@example.org"),
        ("tel:+12025550123", "sip:+12025550123@trunk.example.com:5080;user=phone"),
    ],
)
def test_target_uri(target: str, expected: str) -> None:
    trunk = TrunkConfig.from_uri("sip:trunk.example.com:5080")
    assert target_uri(target, trunk).serialize() == expected


@pytest.mark.parametrize("target", ["", "a b", "<sip:x>", "x@y"])
def test_bad_target(target: str) -> None:
    with pytest.raises(ValueError):
        target_uri(target, TrunkConfig.from_uri("sip:127.0.0.1"))


# --- over real sockets ------------------------------------------------------------------


def udp_peer() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def recv(sock: socket.socket, timeout: float = 2.0) -> bytes:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        return await loop.sock_recv(sock, 65536)


def options(trusted: tuple[str, ...] = LOOPBACK, **policy: object) -> UserAgentOptions:
    return UserAgentOptions(
        transport=TransportConfig("127.0.0.1", 0),
        policy=RequestPolicy(trusted=trusted, **policy),  # type: ignore[arg-type]
        timers=TimerConfig(t1_s=0.02, t2_s=0.2, t4_s=0.2, timer_d_s=0.2),
    )


@pytest.fixture
async def agent() -> AsyncIterator[UserAgent]:
    async with UserAgent(options()) as ua:
        yield ua


@pytest.mark.parametrize(
    ("method", "status"),
    [("OPTIONS", 200), ("INVITE", 603), ("BYE", 481), ("FOO", 501), ("REGISTER", 405)],
)
async def test_answers_over_udp(agent: UserAgent, method: str, status: int) -> None:
    peer = udp_peer()
    to_tag = ";tag=x" if method == "BYE" else ""
    peer.sendto(request(method, to_tag=to_tag), agent.address)
    response = parse_message(await recv(peer))
    assert isinstance(response, Response) and response.status == status
    assert agent.stats.answered == {status: 1}
    if method == "INVITE":
        peer.sendto(
            request("ACK", to_tag=f";tag={response.to_tag}").replace(
                b"z9hG4bK-ua-ACK", b"z9hG4bK-ua-INVITE"
            ),
            agent.address,
        )
    peer.close()


async def test_answers_over_tcp(agent: UserAgent) -> None:
    reader, writer = await asyncio.open_connection(*agent.address)
    writer.write(request("OPTIONS").replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"SIP/2.0 200 OK")
    writer.close()


async def test_malformed_request_gets_400_and_listener_lives(agent: UserAgent) -> None:
    peer = udp_peer()
    peer.sendto(
        request("OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: lots"), agent.address
    )
    response = parse_message(await recv(peer))
    assert isinstance(response, Response) and response.status == 400
    peer.sendto(b"\x00\xffgarbage\r\n\r\n", agent.address)  # nothing to answer
    peer.sendto(request("OPTIONS"), agent.address)
    response = parse_message(await recv(peer))
    assert isinstance(response, Response) and response.status == 200
    assert agent.stats.malformed_answered == 1 and agent.stats.malformed_dropped == 1
    peer.close()


@pytest.mark.parametrize(
    ("policy", "agent_header", "counter"),
    [
        ({"trusted": ()}, "friendly-scanner", "dropped_scanner"),
        ({"trusted": (), "answer_strangers": False}, "Phone", "dropped_stranger"),
    ],
)
async def test_drops_by_policy(policy: dict, agent_header: str, counter: str) -> None:
    async with UserAgent(options(**policy)) as ua:
        peer = udp_peer()
        for method in ("OPTIONS", "INVITE", "REGISTER"):
            peer.sendto(request(method, extra=f"User-Agent: {agent_header}\r\n"), ua.address)
        # A trusted probe afterwards proves the earlier datagrams were handled.
        await _wait(lambda: getattr(ua.stats, counter) == 3)
        with pytest.raises(TimeoutError):
            await recv(peer, 0.05)
        assert len(ua.layer) == 0  # dropped requests leave no transaction behind
        peer.close()


async def test_flood_from_a_stranger_is_cut(agent: UserAgent) -> None:
    async with UserAgent(options(trusted=(), stranger_rate_per_s=0.001, stranger_burst=3)) as ua:
        peer = udp_peer()
        for n in range(10):
            peer.sendto(request("OPTIONS").replace(b"ua-OPTIONS", b"flood-%d" % n), ua.address)
        answers = [parse_message(await recv(peer)) for _ in range(3)]
        assert all(isinstance(a, Response) and a.status == 200 for a in answers)
        await _wait(lambda: ua.stats.dropped_flood == 7)
        peer.close()


async def _wait(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


# --- placing calls against a scripted callee ----------------------------------------------


class Callee:
    """A tiny UAS on a socket: answers every INVITE with ``status`` (and ACKs nothing).

    With 180 it rings until CANCELled, then answers 200 to the CANCEL and 487 to
    the INVITE. ``invites`` and ``arrivals`` (loop time) note each new INVITE,
    not its retransmissions.
    """

    def __init__(self, status: int) -> None:
        self.status = status
        self.sock = udp_peer()
        self.invites: list[Request] = []
        self.arrivals: list[float] = []
        self._by_call: dict[str, Request] = {}
        self.task: asyncio.Task[None] | None = None

    @property
    def uri(self) -> str:
        host, port = self.sock.getsockname()
        return f"sip:{host}:{port}"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data, addr = await loop.sock_recvfrom(self.sock, 65536)
            now = loop.time()
            message = parse_message(data)
            if not isinstance(message, Request):
                continue
            replies = []
            if message.method == "INVITE":
                if message.call_id not in self._by_call:
                    self._by_call[message.call_id] = message
                    self.invites.append(message)
                    self.arrivals.append(now)
                replies.append(make_response(message, self.status, to_tag="callee"))
            elif message.method == "CANCEL":
                replies.append(make_response(message, 200, to_tag="callee"))
                invite = self._by_call.get(message.call_id)
                if invite is not None:
                    replies.append(make_response(invite, 487, to_tag="callee"))
            for reply in replies:
                await loop.sock_sendto(self.sock, reply.serialize(), addr)

    async def __aenter__(self) -> Callee:
        self.task = asyncio.create_task(self.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        self.sock.close()


async def test_call_rejected_busy_and_everything_cleaned_up() -> None:
    async with Callee(486) as callee:
        trunk = TrunkConfig.from_uri(callee.uri)
        async with UserAgent(options(), [trunk]) as ua:
            handle = await ua.place_call("1000", media=MEDIA)
            result = await handle.ended()
            assert (result.disposition, result.sip_status, result.hangup_by) == ("busy", 486, None)
            assert await handle.answered() is None and await handle.ringing() is None
            events = [type(event).__name__ async for event in handle]
            assert events == ["Ended"]
            assert await ua.drain(2.0)
            await _wait(lambda: ua.pending_timers == 0)  # Timer D ran out
            assert ua.active_calls == 0 and len(ua.layer) == 0
            invite = callee.invites[0]
            assert invite.top_via.has_rport and invite.uri.serialize().startswith("sip:1000@")


async def test_channel_limit_and_cps() -> None:
    async with Callee(480) as callee:
        trunk = TrunkConfig.from_uri(callee.uri, max_channels=1, cps=20.0)
        async with UserAgent(options(), [trunk]) as ua:
            first = await ua.place_call("1", media=MEDIA)
            with pytest.raises(TrunkBusy):
                await ua.place_call("2", media=MEDIA, wait=False)
            second = await ua.place_call("3", media=MEDIA)  # waits for the first to end
            results = [await first.ended(), await second.ended()]
            assert [r.disposition for r in results] == ["no_answer", "no_answer"]
            gap = results[1].invite_sent_at - results[0].invite_sent_at  # type: ignore[operator]
            assert gap >= 0.049  # 20 calls a second at most
            assert ua.trunks["default"].channels.in_use == 0


async def test_a_call_that_may_not_wait_longer_gives_up_on_a_full_trunk() -> None:
    async with Callee(180) as callee:
        trunk = TrunkConfig.from_uri(callee.uri, max_channels=1)
        async with UserAgent(options(), [trunk]) as ua:
            first = await ua.place_call("1", media=MEDIA, ring_timeout_s=30)
            started = asyncio.get_running_loop().time()
            with pytest.raises(TrunkBusy) as caught:
                await ua.place_call("2", media=MEDIA, wait_s=0.2)
            waited = asyncio.get_running_loop().time() - started
            assert caught.value.waited and 0.19 <= waited < 1.0
            assert ua.trunks["default"].channels.in_use == 1  # nothing leaked
            await asyncio.sleep(0.05)
            assert len(callee.invites) == 1
            first.hangup()
            await asyncio.wait_for(first.ended(), 5)
            # A free channel needs no waiting, whatever the limit.
            third = await ua.place_call("3", media=MEDIA, wait_s=0.0)
            third.hangup()
            await asyncio.wait_for(third.ended(), 5)
            assert ua.trunks["default"].channels.in_use == 0


async def test_timer_b_ends_a_call_nobody_answers() -> None:
    silent = udp_peer()
    host, port = silent.getsockname()
    trunk = TrunkConfig.from_uri(f"sip:{host}:{port}")
    async with UserAgent(options(), [trunk]) as ua:
        handle = await ua.place_call("1000", media=MEDIA)
        result = await asyncio.wait_for(handle.ended(), 10)  # 64 * T1 = 1.28 s
        assert (result.disposition, result.sip_status, result.end_reason) == (
            "no_answer",
            408,
            "timer_b",
        )
        retransmits = 0
        with pytest.raises(TimeoutError):
            while True:
                await recv(silent, 0.01)
                retransmits += 1
        assert retransmits >= 5  # Timer A doubled from 20 ms until Timer B
    silent.close()


async def test_ping_marks_trunk_up_and_down() -> None:
    responder = udp_peer()
    host, port = responder.getsockname()
    trunk = TrunkConfig.from_uri(f"sip:{host}:{port}", down_after_failures=1)
    async with UserAgent(options(), [trunk]) as ua:
        ping = asyncio.create_task(ua.ping())
        data, addr = await asyncio.wait_for(
            asyncio.get_running_loop().sock_recvfrom(responder, 65536), 2
        )
        sent = parse_message(data)
        assert isinstance(sent, Request) and sent.method == "OPTIONS"
        responder.sendto(make_response(sent, 200, to_tag="t").serialize(), addr)
        assert await ping == 200 and ua.trunks["default"].status.value == "up"
        assert await ua.ping(timeout_s=0.1) is None
        assert ua.trunks["default"].status.value == "down"
    responder.close()


async def test_place_call_checks_its_arguments(agent: UserAgent) -> None:
    with pytest.raises(ValueError):
        await agent.place_call("1000", media=MEDIA)  # no trunk at all
    await agent.add_trunk(TrunkConfig.from_uri("sip:127.0.0.1:9"))
    with pytest.raises(ValueError):
        await agent.place_call("1000", media=MEDIA, trunk="nope")
    assert isinstance(target_uri("1000", agent.trunks["default"].config), SipUri)


async def test_close_cuts_off_calls_without_leaving_waiters_hanging() -> None:
    silent = udp_peer()
    host, port = silent.getsockname()
    trunk = TrunkConfig.from_uri(f"sip:{host}:{port}")
    agent = UserAgent(options(), [trunk])
    await agent.start()
    handle = await agent.place_call("1000", media=MEDIA)
    await agent.close()
    with pytest.raises(UserAgentClosed):
        await handle.ended()
    with pytest.raises(UserAgentClosed):
        await handle.answered()
    assert agent.pending_timers == 0 and agent.active_calls == 0
    silent.close()


# --- admission control -------------------------------------------------------------------


async def test_admission_holds_calls_while_too_many_invites_are_unanswered() -> None:
    silent = udp_peer()
    loop = asyncio.get_running_loop()
    host, port = silent.getsockname()
    trunk = TrunkConfig.from_uri(f"sip:{host}:{port}")
    admission = Admission(max_unanswered=2, max_loop_lag_s=None, check_interval_s=0.005)
    slow = dataclasses.replace(options(), timers=TimerConfig(t1_s=1.0), admission=admission)
    async with UserAgent(slow, [trunk]) as ua:
        first = await ua.place_call("1", media=MEDIA)
        await ua.place_call("2", media=MEDIA)
        assert ua.layer.unanswered == 2
        third = asyncio.create_task(ua.place_call("3", media=MEDIA))
        fourth = asyncio.create_task(ua.place_call("4", media=MEDIA))
        invites = [parse_message(await recv(silent)) for _ in range(2)]
        await asyncio.sleep(0.05)  # ten checks: still over the bound
        assert not third.done() and not fourth.done()
        assert ua.stats.calls_held_back == 2
        # A 180 to the first INVITE: one request less without an answer, one call goes.
        ringing = make_response(invites[0], 180, to_tag="callee")  # type: ignore[arg-type]
        await loop.sock_sendto(silent, ringing.serialize(), ua.address)
        await asyncio.wait_for(first.ringing(), 2)
        await asyncio.wait_for(third, 2)
        assert not fourth.done()  # the oldest waiter first, and only as many as fit
        third_invite = parse_message(await recv(silent))
        assert isinstance(third_invite, Request) and third_invite.uri.user == "3"  # type: ignore[union-attr]
        assert ua.layer.unanswered == 2
    with pytest.raises(RuntimeError):
        await fourth  # the agent closed while it waited
    silent.close()


async def test_admission_bounds_can_be_lifted() -> None:
    silent = udp_peer()
    host, port = silent.getsockname()
    trunk = TrunkConfig.from_uri(f"sip:{host}:{port}")
    open_gate = Admission(max_unanswered=None, max_loop_lag_s=None)
    async with UserAgent(dataclasses.replace(options(), admission=open_gate), [trunk]) as ua:
        for n in range(20):
            await asyncio.wait_for(ua.place_call(str(n), media=MEDIA), 1)
        assert ua.layer.unanswered == 20 and ua.stats.calls_held_back == 0
    silent.close()


@pytest.mark.parametrize(
    ("fields", "error"),
    [({"check_interval_s": 0.0}, ValueError), ({"max_released": 0}, ValueError)],
)
def test_admission_checks_its_fields(fields: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        Admission(**fields)


# --- the timer heap ------------------------------------------------------------------------


async def test_timer_queue_fires_in_deadline_order_and_honours_cancel_and_replace() -> None:
    loop = asyncio.get_running_loop()
    fired: list[tuple[object, str]] = []
    done = asyncio.Event()

    def fire(timer: tuple[object, str], now: float) -> None:
        fired.append(timer)
        if timer == ("k", "last"):
            done.set()

    queue = _TimerQueue(loop, fire)
    now = loop.time()
    queue.start(("k", "b"), now + 0.03)
    queue.start(("k", "a"), now + 0.01)
    queue.start(("k", "gone"), now + 0.02)
    queue.cancel(("k", "gone"))
    queue.start(("k", "moved"), now + 0.001)
    queue.start(("k", "moved"), now + 0.04)  # replaced: fires once, at the new time
    queue.start(("k", "last"), now + 0.05)
    assert len(queue) == 4
    await asyncio.wait_for(done.wait(), 2)
    assert fired == [("k", "a"), ("k", "b"), ("k", "moved"), ("k", "last")]
    assert len(queue) == 0


async def test_timer_queue_compacts_cancelled_entries() -> None:
    loop = asyncio.get_running_loop()
    queue = _TimerQueue(loop, lambda timer, now: None)
    far = loop.time() + 3600  # a max-duration timer, cancelled when the call ends
    for n in range(3 * _COMPACT_AFTER):
        queue.start((n, "max_duration"), far)
        queue.cancel((n, "max_duration"))
    queue.start(("live", "K"), far)
    assert len(queue) == 1
    assert len(queue._heap) < 2 * _COMPACT_AFTER  # the dead ones did not pile up
    queue.clear()
    assert len(queue) == 0 and queue._heap == []

"""Trunk configuration, its pure limits and health, and address resolution."""

from __future__ import annotations

import random

import pytest

from dialer.trunk import (
    ChannelLimit,
    RegistrationState,
    ResolveError,
    SrvTarget,
    TokenBucket,
    TrunkConfig,
    TrunkHealth,
    TrunkStatus,
    is_ip_literal,
    order_srv,
    parse_trunk_uri,
    resolve,
)


@pytest.mark.parametrize(
    ("rate", "burst", "times", "expected"),
    [
        (1.0, 1, [0.0, 0.0, 0.5, 1.0], [True, False, False, True]),
        (10.0, 1, [0.0, 0.05, 0.1, 0.1], [True, False, True, False]),
        (2.0, 3, [0.0, 0.0, 0.0, 0.0, 0.5], [True, True, True, False, True]),
        # A clock that steps back never mints tokens.
        (1.0, 1, [5.0, 4.0, 4.5], [True, False, False]),
    ],
)
def test_token_bucket(rate: float, burst: int, times: list[float], expected: list[bool]) -> None:
    bucket = TokenBucket(rate, burst)
    assert [bucket.take(t) for t in times] == expected


def test_token_bucket_wait_is_time_to_next_token() -> None:
    bucket = TokenBucket(4.0, 1)
    assert bucket.take(10.0)
    assert bucket.wait_s(10.0) == pytest.approx(0.25)
    assert bucket.wait_s(10.1) == pytest.approx(0.15)
    assert bucket.wait_s(10.25) == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_token_bucket_rejects_nonsense(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_channel_limit() -> None:
    limit = ChannelLimit(2)
    assert [limit.acquire(), limit.acquire(), limit.acquire()] == [True, True, False]
    limit.release()
    assert limit.free and limit.acquire()
    unlimited = ChannelLimit(None)
    assert all(unlimited.acquire() for _ in range(1000))
    with pytest.raises(ValueError):
        ChannelLimit(1).release()


@pytest.mark.parametrize(
    ("events", "status"),
    [
        ([], TrunkStatus.UNKNOWN),
        (["ok"], TrunkStatus.UP),
        (["fail"], TrunkStatus.UNKNOWN),
        (["fail", "fail"], TrunkStatus.DOWN),
        (["ok", "fail"], TrunkStatus.UP),
        (["ok", "fail", "fail"], TrunkStatus.DOWN),
        (["fail", "fail", "ok"], TrunkStatus.UP),
        (["fail", "ok", "fail"], TrunkStatus.UP),
    ],
)
def test_health(events: list[str], status: TrunkStatus) -> None:
    health = TrunkHealth(down_after=2)
    for t, event in enumerate(events):
        if event == "ok":
            health.answered(200, float(t))
        else:
            health.failed(float(t))
    assert health.status is status


def test_health_reports_changes_only() -> None:
    health = TrunkHealth(down_after=1)
    assert health.answered(404, 0.0) is True  # any answer proves it alive
    assert health.answered(200, 1.0) is False
    assert health.failed(2.0) is True
    assert health.changed_at == 2.0


def test_registration_refreshes_at_half_and_backs_off() -> None:
    state = RegistrationState(3600)
    state.accepted(600, now=100.0)
    assert state.next_at == 400.0 and state.registered(699.0) and not state.registered(700.0)
    state.failed(now=1000.0)
    state.failed(now=1000.0)
    assert state.next_at == 1060.0
    state.failed(now=0.0, retry_after_s=5.0)
    assert state.next_at == 5.0


def test_srv_order_priority_first_weight_drawn() -> None:
    targets = [
        SrvTarget("b", 5060, priority=20, weight=0),
        SrvTarget("a1", 5060, priority=10, weight=90),
        SrvTarget("a2", 5060, priority=10, weight=10),
    ]
    firsts = {order_srv(targets, random.Random(seed))[0].host for seed in range(50)}
    assert firsts == {"a1", "a2"}
    for seed in range(20):
        assert order_srv(targets, random.Random(seed))[-1].host == "b"
    counts = sum(order_srv(targets, random.Random(s))[0].host == "a1" for s in range(400))
    assert 300 < counts < 400


@pytest.mark.parametrize(
    ("text", "host", "port", "transport"),
    [
        ("sip:trunk.example.com", "trunk.example.com", None, "UDP"),
        ("sip:192.0.2.1:5080;transport=tcp", "192.0.2.1", 5080, "TCP"),
        ("sip:[2001:db8::1]:5060", "[2001:db8::1]", 5060, "UDP"),
    ],
)
def test_trunk_uri(text: str, host: str, port: int | None, transport: str) -> None:
    config = TrunkConfig.from_uri(text, username="u", password="s3cret-pw")
    assert (config.uri.host, config.uri.port, config.transport) == (host, port, transport)
    assert config.credentials is not None and "s3cret" not in repr(config.credentials)


@pytest.mark.parametrize("text", ["", "tel:+12025550123", "http://x", "sip:"])
def test_bad_trunk_uri(text: str) -> None:
    with pytest.raises(ValueError):
        parse_trunk_uri(text)


def test_trunk_config_checks() -> None:
    uri = parse_trunk_uri("sip:127.0.0.1")
    with pytest.raises(ValueError):
        TrunkConfig("t", uri, cps=0)
    with pytest.raises(ValueError):
        TrunkConfig("t", uri, max_channels=0)
    with pytest.raises(ValueError):
        TrunkConfig("t", uri, register_expires_s=60)


@pytest.mark.parametrize(
    ("host", "literal"),
    [("127.0.0.1", True), ("::1", True), ("[::1]", True), ("example.com", False), ("1.2.3", False)],
)
def test_ip_literal(host: str, literal: bool) -> None:
    assert is_ip_literal(host) is literal


async def test_resolve_literals_and_names() -> None:
    assert await resolve("192.0.2.7", None) == [("192.0.2.7", 5060)]
    assert await resolve("[::1]", 5070) == [("::1", 5070)]
    assert await resolve("192.0.2.7", None, "TLS") == [("192.0.2.7", 5061)]
    addresses = await resolve("localhost", 5080)
    assert ("127.0.0.1", 5080) in addresses
    srv = [SrvTarget("nonexistent.invalid", 5090, 1), SrvTarget("127.0.0.1", 5091, 2)]
    assert await resolve("trunk.invalid", None, srv=srv) == [("127.0.0.1", 5091)]
    with pytest.raises(ResolveError):
        await resolve("nonexistent.invalid", None)

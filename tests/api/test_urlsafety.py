"""Outbound URL safety: every spelling of a forbidden address is refused, before DNS or after."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.notifier import AddressGuard, RefusedAddress
from api.urlsafety import (
    AllowList,
    UnsafeUrl,
    address_refusal,
    check_addresses,
    check_url,
    parse_legacy_ipv4,
    parse_webhook_url,
)

NONE = AllowList()
LOOPBACK = AllowList.parse(["127.0.0.0/8"])

HOSTILE = [
    ("http://127.0.0.1/", "loopback"),
    ("http://2130706433/", "legacy spelling"),
    ("http://0177.0.0.1/", "legacy spelling"),
    ("http://0x7f.0.0.1/", "legacy spelling"),
    ("http://0x7f000001/", "legacy spelling"),
    ("http://127.1/", "legacy spelling"),
    ("http://127.0.1/", "legacy spelling"),
    ("http://017700000001/", "legacy spelling"),
    ("http://127.0.0.1./", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "inside an IPv6 address"),
    ("http://[::ffff:7f00:1]/", "inside an IPv6 address"),
    ("http://[64:ff9b::7f00:1]/", "inside an IPv6 address"),
    ("http://[2002:7f00:1::]/", "inside an IPv6 address"),
    ("http://[64:ff9b:1::1]/", "NAT64"),
    ("http://[2001::1]/", "Teredo"),
    ("http://[::127.0.0.1]/", "IPv4-compatible"),
    ("http://example.com@127.0.0.1/", "credentials"),
    ("http://user:pw@example.com/", "credentials"),
    ("http://localhost/", "names this machine"),
    ("http://LOCALHOST./", "names this machine"),
    ("http://api.localhost/", "names this machine"),
    ("http://metadata.google.internal/", "metadata"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://100.100.100.200/", "metadata"),
    ("http://[64:ff9b::a9fe:a9fe]/", "metadata"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://100.127.255.254/", "carrier-grade NAT"),
    ("http://169.254.1.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fc00::1]/", "private"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://0/", "legacy spelling"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://192.0.0.192/", "IETF protocol"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "loopback"),  # full-width digits
    ("http://1.2.3.256/", "not a valid IPv4"),
    ("http://foo.0x10/", "neither a host name"),
    ("http://%31%32%37.0.0.1/", "percent-encoded"),
    ("http://[fe80::1%25eth0]/", "percent-encoded"),
    ("http://evil.example\\@127.0.0.1/", "backslashes"),
    ("http://evil .example/", "spaces"),
    ("ftp://example.com/", "http:// or https://"),
    ("javascript:alert(1)", "http:// or https://"),
    ("http:///path", "no host"),
    ("http://example.com:0/", "port 0"),
    ("http://example.com:65536/", "cannot be parsed"),
    ("http://example.com/#frag", "fragment"),
    ("http://exa mple.com/", "spaces"),
    ("http://-bad-.example/", "not a valid host name"),
]


@pytest.mark.parametrize(("url", "why"), HOSTILE)
def test_hostile_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(UnsafeUrl) as info:
        check_url(url, NONE)
    assert why.lower() in info.value.reason.lower()


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("https://Hooks.Example.COM/a?b=1", "https://hooks.example.com/a?b=1"),
        ("https://hooks.example.com:443/x", "https://hooks.example.com/x"),
        ("http://hooks.example.com:8080", "http://hooks.example.com:8080/"),
        ("https://b\u00fccher.example/", "https://xn--bcher-kva.example/"),
        ("https://hooks.example.com./", "https://hooks.example.com/"),
        ("http://8.8.8.8:8080/hook", "http://8.8.8.8:8080/hook"),
        ("http://[2606:4700:4700::1111]/x", "http://[2606:4700:4700::1111]/x"),
        ("HTTPS://my_host.example/", "https://my_host.example/"),
    ],
)
def test_public_urls_are_normalised(url: str, normalised: str) -> None:
    assert check_url(url, NONE).url == normalised


@pytest.mark.parametrize(
    ("allow", "url", "ok"),
    [
        (["127.0.0.0/8"], "http://127.0.0.1:9000/", True),
        (["127.0.0.0/8"], "http://127.5.6.7/", True),
        (["127.0.0.0/8"], "http://2130706433/", False),  # legacy spelling: never
        (["127.0.0.0/8"], "http://[::1]/", False),
        (["127.0.0.0/8"], "http://10.0.0.1/", False),
        (["10.1.2.3"], "http://10.1.2.3/", True),
        (["internal.corp"], "http://Internal.Corp./", True),
        (["localhost"], "http://localhost:8080/", True),
        (["internal.corp"], "http://10.1.2.3/", False),
    ],
)
def test_allow_list(allow: list[str], url: str, ok: bool) -> None:
    allowed = AllowList.parse(allow)
    if ok:
        check_url(url, allowed)
    else:
        with pytest.raises(UnsafeUrl):
            check_url(url, allowed)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1.258", "10.1.1.2"),
        ("0x0a.0x0.0.1", "10.0.0.1"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),
        ("example.com", None),
        ("1e3.example", None),
    ],
)
def test_legacy_ipv4_matches_inet_aton(host: str, address: str | None) -> None:
    parsed = parse_legacy_ipv4(host)
    assert (str(parsed) if parsed else None) == address
    if address is not None and host != "0x":
        # The C library reads the same address: this is what a resolver would connect to.
        assert socket.inet_ntoa(socket.inet_aton(host)) == address


@given(st.integers(min_value=0, max_value=2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_every_decimal_spelling_decodes_like_the_c_library(number: int) -> None:
    assert parse_legacy_ipv4(str(number)) == ipaddress.IPv4Address(number)
    assert str(parse_legacy_ipv4(oct(number).replace("0o", "0"))) == socket.inet_ntoa(
        number.to_bytes(4, "big")
    )


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("8.8.8.8", False),
        ("1.1.1.1", False),
        ("2606:4700::1", False),
        ("64:ff9b::808:808", False),  # NAT64 of a public address
        ("::ffff:8.8.8.8", False),
        ("127.0.0.1", True),
        ("::ffff:10.0.0.1", True),
        ("169.254.169.254", True),
    ],
)
def test_address_refusal(address: str, refused: bool) -> None:
    assert (address_refusal(ipaddress.ip_address(address)) is not None) == refused


@pytest.mark.parametrize(
    ("answers", "ok"),
    [
        (["93.184.216.34"], True),
        (["93.184.216.34", "2606:2800:220:1::1"], True),
        (["93.184.216.34", "127.0.0.1"], False),  # one bad answer spoils the lot
        ([], False),
        (["not-an-ip"], False),
        (["fe80::1%eth0"], False),
    ],
)
def test_check_addresses(answers: list[str], ok: bool) -> None:
    if ok:
        assert len(check_addresses("hooks.example", answers, NONE)) == len(answers)
    else:
        with pytest.raises(UnsafeUrl):
            check_addresses("hooks.example", answers, NONE)


def test_parse_keeps_path_and_query() -> None:
    url = parse_webhook_url("https://h.example:8443/a/b?x=1&y=%20")
    assert (url.scheme, url.host, url.port, url.url) == (
        "https",
        "h.example",
        8443,
        "https://h.example:8443/a/b?x=1&y=%20",
    )


# ---------------------------------------------------------------- the guard (edge)


class SpyLookup:
    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if not self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


async def test_guard_does_not_resolve_literals_or_blocked_names() -> None:
    spy = SpyLookup(["93.184.216.34"])
    guard = AddressGuard(NONE, spy)
    for url in ("http://2130706433/", "http://127.0.0.1/", "http://localhost/"):
        with pytest.raises(UnsafeUrl):
            await guard.check_url(url)
    assert spy.calls == []
    assert (await guard.check_url("http://hooks.example/x")).host == "hooks.example"
    assert spy.calls == ["hooks.example"]


async def test_guard_refuses_a_name_that_resolves_inward() -> None:
    guard = AddressGuard(NONE, SpyLookup(["10.0.0.7"]))
    with pytest.raises(UnsafeUrl, match="private"):
        await guard.check_url("http://inward.example/")


async def test_guard_reports_names_that_do_not_resolve() -> None:
    guard = AddressGuard(NONE, SpyLookup())
    with pytest.raises(UnsafeUrl, match="does not resolve"):
        await guard.check_url("http://nowhere.example/")


@pytest.mark.parametrize(
    ("address", "allowed"),
    [("127.0.0.1", False), ("10.0.0.1", False), ("::1", False), ("93.184.216.34", True)],
)
def test_socket_factory_judges_the_address_connected_to(address: str, allowed: bool) -> None:
    guard = AddressGuard(NONE, SpyLookup())
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    info = (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, 80))
    if allowed:
        guard.socket_factory(info).close()
    else:
        with pytest.raises(RefusedAddress):
            guard.socket_factory(info)


async def test_socket_factory_accepts_what_an_allowed_name_resolved_to() -> None:
    guard = AddressGuard(AllowList.parse(["internal.corp"]), SpyLookup(["10.9.8.7"]))
    await guard.check_url("http://internal.corp/")
    info = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("10.9.8.7", 80))
    guard.socket_factory(info).close()

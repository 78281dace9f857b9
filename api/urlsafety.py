"""Outbound URL safety: which webhook URLs we may connect to (pure).

A webhook URL is chosen by a tenant, and the notifier connects to it from
inside our network, so a careless check turns the notifier into a way to
reach what only we can reach: the loopback interface, the private networks,
the cloud metadata service. The rules of this file:

Rule 1: a URL is judged by the address it names, not by its spelling. Hosts
are normalised the way a resolver would read them (IDNA, case, one trailing
dot) before anything is compared, and every IPv4 spelling that the C library
accepts (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``) is decoded.
Such legacy spellings are refused outright even when the address they mean
is allowed: a canonical dotted quad costs the tenant nothing.

Rule 2: an IPv6 address that carries an IPv4 address (IPv4-mapped,
NAT64 ``64:ff9b::/96``, 6to4) is judged by the IPv4 address inside it too.

Rule 3: the operator's allow list (``DIALER_WEBHOOK_ALLOW_HOSTS``) names
hosts (exact names, after normalisation) or networks (CIDRs, or single
addresses). A host allowed by name may resolve anywhere; otherwise each
address must be public or inside an allowed network.

Rule 4: nothing here resolves names or opens sockets. The edge resolves the
name, hands the addresses to :func:`check_addresses`, and connects only to
the addresses that passed, so a second, different DNS answer (rebinding) is
never used.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import idna

__all__ = [
    "AllowList",
    "IPAddress",
    "UnsafeUrl",
    "WebhookUrl",
    "address_refusal",
    "check_address",
    "check_addresses",
    "check_url",
    "parse_legacy_ipv4",
    "parse_webhook_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAX_URL_LENGTH = 2048
_SCHEMES = {"http": 80, "https": 443}
# Names that mean "this machine" or "the metadata service" before any DNS:
# RFC 6761 §6.3 lets resolvers answer loopback for localhost and its subdomains.
_BLOCKED_NAMES = frozenset({"localhost", "metadata.google.internal", "metadata.goog"})
_BLOCKED_SUFFIXES = (".localhost",)
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")

# Ranges Python's ipaddress calls global (or forgets) that a webhook must not reach.
_EXTRA_BLOCKED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), reason)
    for net, reason in (
        ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
        ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
        ("198.18.0.0/15", "benchmarking (RFC 2544)"),
        ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
        ("2001::/32", "Teredo (RFC 4380)"),
        ("::/96", "IPv4-compatible IPv6 (deprecated, RFC 4291 §2.5.5.1)"),
        ("fd00:ec2::254/128", "cloud metadata service"),
    )
)
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeUrl(ValueError):
    """A URL we will not connect to; ``reason`` says why, for the tenant to read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AllowList:
    """Hosts (exact normalised names) and networks the operator lets webhooks reach."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, items: Iterable[str]) -> AllowList:
        """From ``DIALER_WEBHOOK_ALLOW_HOSTS`` items: a CIDR, an address, or a host name."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in items:
            item = raw.strip()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                hosts.add(_normalise_name(item))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in net for net in self.networks)


@dataclass(frozen=True, slots=True)
class WebhookUrl:
    """A parsed, normalised webhook URL.

    ``host`` is ASCII, lower case, without a trailing dot (an IPv6 address
    without brackets); ``address`` is set when the host is an IP literal.
    """

    url: str
    scheme: str
    host: str
    port: int
    address: IPAddress | None

    @property
    def is_literal(self) -> bool:
        return self.address is not None


def parse_legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Decode any IPv4 spelling ``inet_aton(3)`` accepts, or None if ``host`` is a name.

    One to four parts separated by dots; each part decimal, octal (a leading
    0) or hexadecimal (0x); the last part fills the remaining bytes, so
    ``127.1`` is 127.0.0.1 and ``2130706433`` is too. A host whose last label
    is numeric but which is not a valid address raises :class:`UnsafeUrl`:
    the WHATWG URL standard (§3.5, "ends in a number") treats it as a failed
    IPv4 address, never as a name.
    """
    labels = host.split(".")
    if not _NUMERIC_LABEL.match(labels[-1]):
        return None
    if len(labels) > 4 or not all(_NUMERIC_LABEL.match(label) for label in labels):
        raise UnsafeUrl(f"{host!r} is neither a host name nor a valid IPv4 address")
    values: list[int] = []
    for label in labels:
        try:
            if label[:2] in ("0x", "0X"):
                values.append(int(label[2:] or "0", 16))
            elif len(label) > 1 and label[0] == "0":
                values.append(int(label[1:], 8))
            else:
                values.append(int(label, 10))
        except ValueError:
            raise UnsafeUrl(f"{host!r} is not a valid IPv4 address") from None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        raise UnsafeUrl(f"{host!r} is not a valid IPv4 address (a part is out of range)")
    number = last
    for i, value in enumerate(head):
        number |= value << (24 - 8 * i)
    return ipaddress.IPv4Address(number)


def _normalise_name(host: str) -> str:
    """Lower case, one trailing dot dropped, IDNA (UTS 46) for non-ASCII names."""
    name = host[:-1] if host.endswith(".") else host
    if not name:
        raise UnsafeUrl("the URL has no host")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise UnsafeUrl(f"the host is not a valid international name ({exc})") from None
    name = name.lower()
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise UnsafeUrl(f"{host!r} is not a valid host name")
    return name


def parse_webhook_url(raw: str) -> WebhookUrl:
    """Parse and normalise an http(s) URL, refusing anything ambiguous.

    Refused here: other schemes, userinfo (``http://example.com@127.0.0.1/``
    names 127.0.0.1, and the spelling exists to fool a reader), control
    characters, spaces and backslashes (which browsers read as slashes),
    percent-encoded hosts, IPv6 zone ids, and legacy IPv4 spellings.
    """
    if not isinstance(raw, str) or not raw:
        raise UnsafeUrl("the URL must be a non-empty string")
    if len(raw) > _MAX_URL_LENGTH:
        raise UnsafeUrl(f"the URL is longer than {_MAX_URL_LENGTH} characters")
    if any(ch <= " " or ch == "\x7f" or ch == "\\" for ch in raw):
        raise UnsafeUrl("the URL contains spaces, control characters or backslashes")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"the URL cannot be parsed ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise UnsafeUrl("the URL must start with http:// or https://")
    if "@" in parts.netloc:
        raise UnsafeUrl("credentials in the URL are not accepted (userinfo before '@')")
    if parts.fragment:
        raise UnsafeUrl("the URL must not carry a fragment (#...)")
    netloc_host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    netloc_host = netloc_host.removesuffix(":")
    if not netloc_host:
        raise UnsafeUrl("the URL has no host")
    if "%" in netloc_host:
        raise UnsafeUrl("percent-encoded hosts and IPv6 zone ids are not accepted")
    if port == 0:
        raise UnsafeUrl("port 0 is not a port one can connect to")
    address: IPAddress | None
    if netloc_host.startswith("["):
        if not netloc_host.endswith("]"):
            raise UnsafeUrl("an IPv6 address must be written in brackets")
        try:
            address = ipaddress.IPv6Address(netloc_host[1:-1])
        except ValueError:
            raise UnsafeUrl("the bracketed host is not an IPv6 address") from None
        host = str(address)
        shown = f"[{host}]"
    else:
        host = _normalise_name(netloc_host)
        address = parse_legacy_ipv4(host)
        if address is not None and str(address) != host:
            raise UnsafeUrl(
                f"{netloc_host!r} is a legacy spelling of {address}; write the address "
                "as four decimal numbers"
            )
        shown = host
    effective_port = port if port is not None else _SCHEMES[scheme]
    netloc = shown if port is None or port == _SCHEMES[scheme] else f"{shown}:{port}"
    url = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    return WebhookUrl(url, scheme, host, effective_port, address)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour


def address_refusal(address: IPAddress) -> str | None:
    """Why a webhook must not reach ``address``, or None when it is a public unicast address."""
    if address in _METADATA:
        return "the cloud metadata service"
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            reason = address_refusal(inner)
            if reason is not None:
                return f"{reason} (as {inner}, inside an IPv6 address)"
            if address.ipv4_mapped is not None or address in _NAT64:
                return None  # only a translation of a public IPv4 address
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    for net, reason in _EXTRA_BLOCKED:
        if address.version == net.version and address in net:
            return reason
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "an address that is not globally routable"
    return None


def check_address(address: IPAddress, allow: AllowList) -> None:
    """Raise :class:`UnsafeUrl` unless ``address`` is public or inside an allowed network."""
    if allow.allows_address(address):
        return
    reason = address_refusal(address)
    if reason is not None:
        raise UnsafeUrl(f"{address} is {reason}; webhooks may not reach it")


def check_url(raw: str, allow: AllowList) -> WebhookUrl:
    """Everything that can be judged before DNS: the spelling, a literal address, a name."""
    url = parse_webhook_url(raw)
    if url.address is not None:
        check_address(url.address, allow)
    elif not allow.allows_host(url.host) and (
        url.host in _BLOCKED_NAMES or url.host.endswith(_BLOCKED_SUFFIXES)
    ):
        raise UnsafeUrl(f"{url.host} names this machine or a metadata service")
    return url


def check_addresses(host: str, addresses: Sequence[str], allow: AllowList) -> tuple[IPAddress, ...]:
    """Judge what ``host`` resolved to; every address must pass, or none is used.

    Refusing the whole answer when one address is bad (rather than keeping
    the good ones) leaves an attacker's name no way to mix in an internal
    address for a later connection attempt to fall back on.
    """
    if not addresses:
        raise UnsafeUrl(f"{host} did not resolve to any address")
    parsed: list[IPAddress] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            raise UnsafeUrl(f"{host} resolved to {text!r}, which is not an address") from None
        if not allow.allows_host(host):
            check_address(address, allow)
        parsed.append(address)
    return tuple(parsed)

"""A SIP trunk: where calls go, with what credentials, how fast, and whether it is up.

Rules of this file:

1. Configuration is a frozen ``TrunkConfig``; the moving parts beside it are
   pure and take ``now``: ``TokenBucket`` (calls per second), ``ChannelLimit``
   (calls at once), ``TrunkHealth`` (OPTIONS pings marking the trunk up or
   down) and ``RegistrationState`` (when to refresh a REGISTER).
2. Only ``resolve`` touches the network, through the event loop's
   ``getaddrinfo`` (A and AAAA). SRV records (RFC 3263 §4.2) are used when the
   configuration gives them (``SrvTarget``); they are ordered by priority and
   weight as RFC 2782 asks, with the random source handed in.
3. An IP-literal host resolves to itself without a lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from dialer.sip.actions import Address
from dialer.sip.auth import Credentials
from dialer.sip.errors import ParseError
from dialer.sip.uri import SipUri, parse_uri

__all__ = [
    "ChannelLimit",
    "RegistrationState",
    "ResolveError",
    "SrvTarget",
    "TokenBucket",
    "TrunkConfig",
    "TrunkHealth",
    "TrunkStatus",
    "is_ip_literal",
    "order_srv",
    "parse_trunk_uri",
    "resolve",
]


class ResolveError(OSError):
    """A trunk host that does not resolve to any address."""


def is_ip_literal(host: str) -> bool:
    """True for ``192.0.2.1``, ``::1`` and ``[::1]``."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        return False
    return True


def parse_trunk_uri(text: str) -> SipUri:
    """A trunk URI (``sip:host[:port][;transport=tcp]``); ValueError if it is not one."""
    try:
        uri = parse_uri(text.strip())
    except ParseError as error:
        raise ValueError(f"not a SIP URI: {text!r} ({error.reason})") from None
    if not isinstance(uri, SipUri):
        raise ValueError(f"a trunk needs a sip: or sips: URI, got {text!r}")
    return uri


@dataclass(frozen=True, slots=True)
class SrvTarget:
    """One SRV record (RFC 2782): where to send, by priority then weight."""

    host: str
    port: int
    priority: int = 0
    weight: int = 0


def order_srv(targets: Sequence[SrvTarget], rng: random.Random) -> list[SrvTarget]:
    """Targets in the order to try them (RFC 2782: lowest priority first, then a
    weighted random draw within a priority, zero weights having a small chance)."""
    out: list[SrvTarget] = []
    for priority in sorted({t.priority for t in targets}):
        group = [t for t in targets if t.priority == priority]
        # Zero-weight records first, as RFC 2782 places them, so that they are
        # chosen only when the draw lands on the running sum's start.
        group.sort(key=lambda t: t.weight != 0)
        while group:
            total = sum(t.weight for t in group)
            draw = rng.randint(0, total) if total else 0
            running = 0
            for index, target in enumerate(group):
                running += target.weight
                if running >= draw:
                    out.append(group.pop(index))
                    break
    return out


@dataclass(frozen=True, slots=True)
class TrunkConfig:
    """One trunk.

    ``uri`` is where INVITEs are addressed (its host is the Request-URI's host
    and the digest target); ``outbound_proxy`` when set is where they are sent
    instead. ``cps`` limits new calls per second (None: no limit), ``burst``
    how many may start back to back; ``max_channels`` limits calls at once.
    ``options_interval_s`` pings the trunk with OPTIONS (None: never);
    ``register_expires_s`` registers ``credentials.username`` (None: never).
    ``limit_key`` names the trunk in the limits every worker shares
    (``dialer.trunk_limits``; None: ``name:host:port``).
    """

    name: str
    uri: SipUri
    outbound_proxy: SipUri | None = None
    credentials: Credentials | None = None
    cps: float | None = None
    burst: int = 1
    max_channels: int | None = None
    options_interval_s: float | None = None
    down_after_failures: int = 2
    register_expires_s: int | None = None
    srv: tuple[SrvTarget, ...] = ()
    limit_key: str | None = None

    def __post_init__(self) -> None:
        if self.cps is not None and self.cps <= 0:
            raise ValueError("cps must be positive")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        if self.max_channels is not None and self.max_channels < 1:
            raise ValueError("max_channels must be at least 1")
        if self.register_expires_s is not None and self.credentials is None:
            raise ValueError("REGISTER needs credentials")

    @classmethod
    def from_uri(
        cls,
        uri: str,
        *,
        name: str = "default",
        username: str | None = None,
        password: str | None = None,
        **options: object,
    ) -> TrunkConfig:
        """Build from text, as settings and command-line options give it."""
        credentials = None
        if username:
            credentials = Credentials(username, password or "")
        return cls(name, parse_trunk_uri(uri), credentials=credentials, **options)  # type: ignore[arg-type]

    @property
    def transport(self) -> str:
        """UDP unless the URI (or the proxy's) says ``transport=tcp``."""
        hop = self.outbound_proxy or self.uri
        value = hop.transport
        return value.upper() if value else "UDP"

    @property
    def next_hop(self) -> SipUri:
        """The URI whose host we resolve and send to."""
        return self.outbound_proxy or self.uri

    @property
    def shared_key(self) -> str:
        """The trunk's key in the limits every worker shares: ``limit_key``, else
        ``name:host:port`` (what every process configured alike computes alike)."""
        if self.limit_key:
            return self.limit_key
        return f"{self.name}:{self.uri.host}:{self.uri.port or ''}"

    @property
    def limited(self) -> bool:
        """True when the trunk has a channel or a calls-per-second limit."""
        return self.cps is not None or self.max_channels is not None


# --- rate and channel limits ---------------------------------------------------------


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full."""

    rate: float
    burst: int = 1
    tokens: float = field(default=-1.0)
    updated_at: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        if self.tokens < 0:
            self.tokens = float(self.burst)

    def _refill(self, now: float) -> None:
        if self.updated_at is not None and now > self.updated_at:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated_at) * self.rate)
        if self.updated_at is None or now > self.updated_at:
            self.updated_at = now

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_s(self, now: float) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


@dataclass(slots=True)
class ChannelLimit:
    """Calls in progress against a ceiling (None: unlimited)."""

    limit: int | None
    in_use: int = 0

    @property
    def free(self) -> bool:
        """True if one more call may start."""
        return self.limit is None or self.in_use < self.limit

    def acquire(self) -> bool:
        """Count one more call if allowed."""
        if not self.free:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        """A call ended."""
        if self.in_use <= 0:
            raise ValueError("release without acquire")
        self.in_use -= 1


# --- health -----------------------------------------------------------------------------


class TrunkStatus(Enum):
    """What the OPTIONS pings say about a trunk."""

    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(slots=True)
class TrunkHealth:
    """Marks a trunk down after ``down_after`` failed pings in a row, up after one answer.

    Any response counts as an answer (RFC 3261 §11: a 4xx to OPTIONS still
    proves the trunk is alive); a timeout or transport error is a failure.
    """

    down_after: int = 2
    status: TrunkStatus = TrunkStatus.UNKNOWN
    failures: int = 0
    changed_at: float | None = None
    last_status_code: int | None = None

    def answered(self, status_code: int, now: float) -> bool:
        """A ping got a response; True if the status changed."""
        self.failures = 0
        self.last_status_code = status_code
        return self._set(TrunkStatus.UP, now)

    def failed(self, now: float) -> bool:
        """A ping timed out or could not be sent; True if the status changed."""
        self.failures += 1
        if self.failures >= self.down_after:
            return self._set(TrunkStatus.DOWN, now)
        return False

    def _set(self, status: TrunkStatus, now: float) -> bool:
        if status is self.status:
            return False
        self.status = status
        self.changed_at = now
        return True


@dataclass(slots=True)
class RegistrationState:
    """When to send the next REGISTER (RFC 3261 §10.2.4: refresh before expiry)."""

    expires_s: int
    registered_until: float | None = None
    next_at: float = 0.0
    failures: int = 0

    def accepted(self, granted_s: int, now: float) -> None:
        """A 2xx granted ``granted_s`` seconds: refresh at half of it, at least 1 s on."""
        self.failures = 0
        self.registered_until = now + granted_s
        self.next_at = now + max(1.0, granted_s / 2)

    def failed(self, now: float, retry_after_s: float | None = None) -> None:
        """The REGISTER failed: retry with back-off (30 s doubling up to 10 min)."""
        self.failures += 1
        backoff = min(600.0, 30.0 * 2 ** (self.failures - 1))
        self.next_at = now + (retry_after_s if retry_after_s is not None else backoff)

    def registered(self, now: float) -> bool:
        """True while the last granted registration lasts."""
        return self.registered_until is not None and now < self.registered_until


# --- resolution -------------------------------------------------------------------------


async def resolve(
    host: str,
    port: int | None,
    transport: str = "UDP",
    *,
    srv: Sequence[SrvTarget] = (),
    rng: random.Random | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> list[Address]:
    """Addresses to try for ``host``, in order (RFC 3263 §4.2 without NAPTR).

    An IP literal is itself. With ``srv`` targets each is resolved in RFC 2782
    order; else ``host`` is looked up for A and AAAA records, IPv4 first.
    Raises ``ResolveError`` when nothing resolves.
    """
    default_port = 5061 if transport.upper() == "TLS" else 5060
    if is_ip_literal(host):
        bare = host[1:-1] if host.startswith("[") else host
        return [(bare, port or default_port)]
    loop = loop or asyncio.get_running_loop()
    if srv:
        out: list[Address] = []
        for target in order_srv(srv, rng or random.Random()):
            try:
                out += await _lookup(loop, target.host, target.port, transport)
            except ResolveError:
                continue
        if not out:
            raise ResolveError(f"no SRV target of {host} resolves")
        return out
    return await _lookup(loop, host, port or default_port, transport)


async def _lookup(
    loop: asyncio.AbstractEventLoop, host: str, port: int, transport: str
) -> list[Address]:
    if is_ip_literal(host):
        return [(host.strip("[]"), port)]
    kind = socket.SOCK_STREAM if transport.upper() in ("TCP", "TLS") else socket.SOCK_DGRAM
    try:
        infos = await loop.getaddrinfo(host, port, type=kind)
    except (OSError, UnicodeError) as error:
        raise ResolveError(f"cannot resolve {host}: {error}") from None
    seen: list[Address] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            if info[0] == family:
                address = (str(info[4][0]), int(info[4][1]))
                if address not in seen:
                    seen.append(address)
    if not seen:
        raise ResolveError(f"{host} has no A or AAAA record")
    return seen

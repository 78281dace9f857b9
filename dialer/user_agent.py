"""The SIP user agent: the pure call core wired to sockets and ``loop.call_at`` timers.

Rules of this file:

1. The core decides, this file carries out. Every message that arrives goes
   through the ``TransactionLayer`` to the ``Call`` it belongs to; every list
   of actions that comes back is executed in order: ``Send`` to the transport,
   ``StartTimer``/``CancelTimer`` to ``loop.call_at`` handles (one per
   ``(key, timer)``, replaced when restarted, cancelled when done), and call
   events to the ``CallHandle`` the application holds. Callbacks never await.
2. Requests that belong to no call are first judged by the ``RequestPolicy``
   (``SourcePolicy``): scanners and floods from strangers are dropped and
   counted before any transaction exists for them, so they cost no memory.
   What is answered gets the answer of ``answer_out_of_dialog``: 200 to
   OPTIONS, 603 to an INVITE (we take no calls), 481 to a BYE or CANCEL that
   matches nothing, 405 or 501 to the rest.
3. A malformed request is answered with the status its error hints at (400,
   505, 513 ...) when the salvage helper can read enough of it to answer and
   the policy would answer its source; else it is dropped. Both are counted.
4. Every task and timer has an owner: the user agent's ``close()`` hangs up
   the calls, cancels the pings, the registrations and every timer, and
   closes the transport. The core's timers live in one heap behind a single
   loop timer (``_TimerQueue``); a call starts nine or so of them.
5. Past its ceiling the agent slows down instead of falling over: while too
   many of our requests have heard nothing, or the loop runs late,
   ``place_call`` waits its turn (``Admission``) rather than sending one more
   INVITE into a queue that is already too long.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import math
import secrets
import socket
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dialer.sip.actions import (
    Action,
    Address,
    CancelTimer,
    Deliver,
    Send,
    StartTimer,
    TimedOut,
    TransactionTerminated,
    TransportFailed,
)
from dialer.sip.auth import Authorize, DigestClient
from dialer.sip.call import (
    Answered,
    Call,
    CallEvent,
    CallResult,
    CallState,
    CallStateError,
    CallTimer,
    CallTimerKey,
    Dial,
    Disposition,
    Dtmf,
    EarlyMedia,
    Ended,
    Held,
    IdGenerators,
    MediaUpdated,
    Resumed,
    Ringing,
    TransferFailed,
    TransferSucceeded,
    UserAgentConfig,
)
from dialer.sip.dialog import ALLOW, LocalMedia
from dialer.sip.errors import BadExtension, ParseError, SipError
from dialer.sip.headers import Header, Via
from dialer.sip.message import Request, Response, make_response, require_supported
from dialer.sip.parser import error_response, parse_message
from dialer.sip.sdp import MediaAnswer
from dialer.sip.timers import DEFAULT_TIMERS, TimerConfig
from dialer.sip.transaction import MAGIC_COOKIE, Role, TransactionKey, TransactionLayer
from dialer.sip.uri import NameAddr, SipUri, TelUri, Uri, parse_uri
from dialer.transport import SipTransport, TransportConfig
from dialer.trunk import (
    ChannelLimit,
    RegistrationState,
    TokenBucket,
    TrunkConfig,
    TrunkHealth,
    TrunkStatus,
    resolve,
)

if TYPE_CHECKING:
    from dialer.trunk_limits import SharedTrunkLimits

__all__ = [
    "LOOPBACK",
    "SCANNER_AGENTS",
    "Admission",
    "CallHandle",
    "RequestPolicy",
    "SourcePolicy",
    "Trunk",
    "TrunkBusy",
    "UserAgent",
    "UserAgentClosed",
    "UserAgentOptions",
    "UserAgentStats",
    "Verdict",
    "answer_out_of_dialog",
    "target_uri",
]

#: Loopback networks: trusted in tests and on a laptop.
LOOPBACK: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

#: User-Agent (or From display name) fragments of SIP scanners, lower case.
SCANNER_AGENTS: tuple[str, ...] = (
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipscan",
    "sundayddr",
    "iwar",
    "smap",
    "pplsip",
    "vaxsipuseragent",
)

_SUPPORTED = ("timer",)
_ACCEPT = "application/sdp"
_MAX_FORWARDS = "70"
# Methods we know but do not serve outside a dialog (§8.2.1: 405, not 501).
_NOT_ALLOWED = frozenset({"REGISTER", "SUBSCRIBE", "MESSAGE", "REFER", "PUBLISH"})
# Methods that only make sense inside a dialog or a transaction: 481 (§12.2.2).
_NEEDS_DIALOG = frozenset({"BYE", "CANCEL", "INFO", "UPDATE", "PRACK", "NOTIFY"})
_SCHEMES = frozenset({"sip", "sips", "tel"})


# --- policy -----------------------------------------------------------------------------


class Verdict(Enum):
    """What to do with a request that belongs to no call."""

    ANSWER = "answer"
    DROP_SCANNER = "drop_scanner"
    DROP_FLOOD = "drop_flood"
    DROP_STRANGER = "drop_stranger"


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """Which sources get answers to requests outside our calls.

    ``trusted`` (networks or addresses) and the configured trunks' addresses
    are always answered. Anyone else (a stranger) is answered only when
    ``answer_strangers`` is set, never when it looks like a scanner, and at
    most ``stranger_rate_per_s`` requests a second (``stranger_burst`` saved
    up) per source address; past that it is a flood and dropped.
    """

    trusted: tuple[str, ...] = ()
    answer_strangers: bool = True
    scanner_agents: tuple[str, ...] = SCANNER_AGENTS
    stranger_rate_per_s: float = 2.0
    stranger_burst: int = 10
    max_tracked_sources: int = 4096


class SourcePolicy:
    """``RequestPolicy`` at work: pure, ``now`` handed in."""

    __slots__ = ("_buckets", "_networks", "_trusted_hosts", "policy")

    def __init__(self, policy: RequestPolicy) -> None:
        self.policy = policy
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in policy.trusted)
        self._trusted_hosts: set[str] = set()
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def trust(self, host: str) -> None:
        """Trust one more address (a trunk's, once resolved)."""
        self._trusted_hosts.add(host)

    def trusted(self, host: str) -> bool:
        """True for a configured trunk or a trusted network."""
        if host in self._trusted_hosts:
            return True
        if not self._networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def is_scanner(self, user_agent: str | None) -> bool:
        """True if the User-Agent names a known scanner."""
        if not user_agent:
            return False
        lowered = user_agent.lower()
        return any(agent in lowered for agent in self.policy.scanner_agents)

    def verdict(self, source: Address, user_agent: str | None, now: float) -> Verdict:
        """Whether to answer a request from ``source`` carrying ``user_agent``."""
        host = source[0]
        if self.trusted(host):
            return Verdict.ANSWER
        policy = self.policy
        if self.is_scanner(user_agent):
            return Verdict.DROP_SCANNER
        if not policy.answer_strangers:
            return Verdict.DROP_STRANGER
        bucket = self._buckets.get(host)
        if bucket is None:
            bucket = TokenBucket(policy.stranger_rate_per_s, policy.stranger_burst)
            self._buckets[host] = bucket
            if len(self._buckets) > policy.max_tracked_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(host)
        return Verdict.ANSWER if bucket.take(now) else Verdict.DROP_FLOOD


def answer_out_of_dialog(
    request: Request, to_tag: str, *, cancels_found: bool = False, host: str = "dialer"
) -> Response | None:
    """The answer to a request that belongs to none of our calls; None for an ACK."""
    method = request.method
    if method == "ACK":
        return None  # §17: an ACK is never answered
    if request.uri.scheme not in _SCHEMES:
        return make_response(request, 416, to_tag=to_tag)  # §8.2.2.1
    if method == "CANCEL":
        # §9.2: a CANCEL for a transaction we have (already answered) gets a 200.
        return make_response(request, 200 if cancels_found else 481, to_tag=to_tag)
    if request.to_tag is not None or method in _NEEDS_DIALOG:
        return make_response(request, 481, to_tag=to_tag)  # §12.2.2
    try:
        require_supported(request, _SUPPORTED)
    except BadExtension as error:  # §8.2.2.3
        unsupported = ", ".join(error.unsupported)
        return make_response(request, 420, to_tag=to_tag, headers=[("Unsupported", unsupported)])
    except ParseError:
        return make_response(request, 400, "Bad Require", to_tag=to_tag)
    if method == "OPTIONS":
        # §11.2: what we would do with an INVITE, and what we support.
        headers = [
            ("Allow", ALLOW),
            ("Accept", _ACCEPT),
            ("Accept-Language", "en"),
            ("Supported", ", ".join(_SUPPORTED)),
        ]
        return make_response(request, 200, to_tag=to_tag, headers=headers)
    if method == "INVITE":
        # An outbound dialer takes no calls: say so plainly (§20.43 Warning 399).
        warning = f'399 {host} "outbound-only user agent: incoming calls are not accepted"'
        return make_response(
            request,
            603,
            to_tag=to_tag,
            headers=[("Warning", warning), ("Reason", 'SIP;cause=603;text="Decline"')],
        )
    if method in _NOT_ALLOWED:
        return make_response(request, 405, to_tag=to_tag, headers=[("Allow", ALLOW)])
    return make_response(request, 501, to_tag=to_tag, headers=[("Allow", ALLOW)])


def target_uri(target: str, trunk: TrunkConfig) -> Uri:
    """The Request-URI for ``target``: a SIP or tel URI as given, else a number
    (or any user part) at the trunk's host."""
    text = target.strip()
    if ":" in text and text.split(":", 1)[0].lower() in ("sip", "sips", "tel"):
        uri = parse_uri(text)
        if isinstance(uri, TelUri):
            return SipUri(
                trunk.uri.host, uri.number, port=trunk.uri.port, params=(("user", "phone"),)
            )
        return uri
    if not text or any(c in text for c in ' <>"@;:?'):
        raise ValueError(f"not a number or SIP URI: {target!r}")
    return SipUri(trunk.uri.host, text, port=trunk.uri.port, params=trunk.uri.params)


# --- options and counters ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admission:
    """When ``place_call`` holds a new call back instead of sending its INVITE at once.

    Past what one process can carry, sending more INVITEs only makes every
    call worse: responses queue behind them, retransmissions (Timer A, the
    peer's 2xx) add load, ring timeouts fire on calls that were answered. So a
    new call waits while ``max_unanswered`` of our requests have heard nothing
    yet (``TransactionLayer.unanswered``), or while the event loop runs its
    timers more than ``max_loop_lag_s`` late; it is let through, oldest first,
    once both are back under their bound (checked every ``check_interval_s``,
    at most ``max_released`` calls per check). None disables a bound.
    """

    max_unanswered: int | None = 500
    max_loop_lag_s: float | None = 0.1
    check_interval_s: float = 0.01
    max_released: int = 64

    def __post_init__(self) -> None:
        if self.check_interval_s <= 0 or self.max_released < 1:
            raise ValueError("check_interval_s must be positive and max_released at least 1")


@dataclass(frozen=True, slots=True)
class UserAgentOptions:
    """How the user agent listens and presents itself.

    ``advertised_host`` goes into Via and Contact; by default the listen host,
    or, when that is a wildcard, the local address the route to each trunk uses.
    ``admission`` bounds the load new calls may add (see ``Admission``).
    """

    transport: TransportConfig = field(default_factory=TransportConfig)
    policy: RequestPolicy = field(default_factory=RequestPolicy)
    timers: TimerConfig = DEFAULT_TIMERS
    user: str = "dialer"
    display_name: str | None = None
    advertised_host: str | None = None
    user_agent: str = "dialer"
    ring_timeout_s: float = 45.0
    max_duration_s: float | None = 3600.0
    session_expires_s: int | None = 1800
    admission: Admission = field(default_factory=Admission)


@dataclass(slots=True)
class UserAgentStats:
    """What the user agent did with what arrived (counters, never reset)."""

    calls_placed: int = 0
    calls_ended: int = 0
    requests_received: int = 0
    responses_received: int = 0
    dropped_scanner: int = 0
    dropped_flood: int = 0
    dropped_stranger: int = 0
    malformed_answered: int = 0
    malformed_dropped: int = 0
    stray_responses: int = 0
    send_failures: int = 0
    calls_held_back: int = 0  # place_call waited for admission (see ``Admission``)
    answered: dict[int, int] = field(default_factory=dict)  # out-of-dialog answers by status

    def as_dict(self) -> dict[str, object]:
        """The counters by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class TrunkBusy(RuntimeError):
    """``place_call(wait=False)`` on a trunk at its channel limit, or ``wait_s``
    ran out before a channel and a CPS token were free (``waited`` is then True)."""

    def __init__(self, message: str, *, waited: bool = False) -> None:
        super().__init__(message)
        self.waited = waited


class UserAgentClosed(RuntimeError):
    """The user agent closed before the call reached its end."""


# --- trunks at run time ------------------------------------------------------------------


class Trunk:
    """One trunk's live state: addresses, limits, health, digest client."""

    def __init__(self, config: TrunkConfig) -> None:
        self.config = config
        self.addresses: list[Address] = []
        self.ua_config: UserAgentConfig | None = None
        self.bucket = TokenBucket(config.cps, config.burst) if config.cps else None
        self.channels = ChannelLimit(config.max_channels)
        self.health = TrunkHealth(config.down_after_failures)
        self.registration = (
            RegistrationState(config.register_expires_s) if config.register_expires_s else None
        )
        self.digest = (
            DigestClient(config.credentials, config.uri.host) if config.credentials else None
        )
        self.lock = asyncio.Lock()
        self.freed = asyncio.Event()

    @property
    def name(self) -> str:
        """The trunk's configured name."""
        return self.config.name

    @property
    def key(self) -> str:
        """The trunk's key in the limits every worker shares (``TrunkConfig.shared_key``)."""
        return self.config.shared_key

    def share_limits(self, previous: Trunk) -> None:
        """Count calls against the same local limits as ``previous``, an earlier
        version of this trunk (an edit) whose calls may still hold channels."""
        self.channels = previous.channels
        self.channels.limit = self.config.max_channels
        same_rate = (previous.config.cps, previous.config.burst) == (
            self.config.cps,
            self.config.burst,
        )
        if previous.bucket is not None and same_rate:
            self.bucket = previous.bucket
        self.lock = previous.lock
        self.freed = previous.freed

    @property
    def status(self) -> TrunkStatus:
        """What the pings say."""
        return self.health.status


# --- calls -------------------------------------------------------------------------------


class CallHandle:
    """One call as the application sees it.

    Wait for phases with ``await handle.ringing()``, ``answered()``, ``ended()``,
    or read every event in order with ``async for event in handle``. ``hangup()``
    ends the call from our side (CANCEL before the answer, BYE after);
    ``await transfer(uri)`` hands an answered call on by REFER. Times in
    the ``CallResult`` are loop-clock seconds; ``wall_time(t)`` turns one into
    Unix time.
    """

    __slots__ = (
        "_agent",
        "_answered",
        "_ended",
        "_events",
        "_reader",
        "_ringing",
        "_transfer",
        "call",
        "call_id",
        "clock_offset",
        "early_media",
        "media",
        "on_event",
        "result",
        "trunk",
    )

    def __init__(self, agent: UserAgent, call: Call, trunk: Trunk) -> None:
        self._agent = agent
        self.call = call
        self.call_id = call.call_id
        self.trunk = trunk.name
        self.clock_offset = agent.clock_offset
        self.media: MediaAnswer | None = None
        self.early_media: MediaAnswer | None = None
        self.result: CallResult | None = None
        self.on_event: Callable[[CallEvent], None] | None = None
        # Plain values until someone waits: a future costs only the waiters that
        # exist (at 1,000 calls a second, three futures and a Queue per call showed).
        self._events: deque[CallEvent] = deque()
        self._reader: asyncio.Future[None] | None = None
        self._ringing: _Outcome[int | None] = _Outcome()
        self._answered: _Outcome[MediaAnswer | None] = _Outcome()
        self._ended: _Outcome[CallResult] = _Outcome()
        self._transfer: tuple[str, _Outcome[TransferSucceeded | TransferFailed]] | None = None

    def __repr__(self) -> str:
        return f"<CallHandle {self.call_id} {self.state.value}>"

    @property
    def state(self) -> CallState:
        """The core's state of the call."""
        return self.call.state

    def wall_time(self, t: float | None) -> float | None:
        """A loop-clock time as Unix time."""
        return None if t is None else t + self.clock_offset

    def hangup(self) -> None:
        """End the call from our side; nothing if it is already ending."""
        self._agent._end(self, Call.hangup)

    def withdraw(self) -> None:
        """CANCEL the call if it has not been answered, keeping an answer that crosses it.

        The answer then arrives as usual (``answered()``) and is the caller's to
        speak to and hang up; see ``Call.withdraw``.
        """
        self._agent._end(self, Call.withdraw)

    def send_info(self, body: bytes, content_type: str = "application/dtmf-relay") -> None:
        """An in-dialog INFO (e.g. ``Signal=5\r\nDuration=160\r\n``); answered calls only."""
        self._agent._in_dialog(
            self,
            lambda call, now: call.send_request("INFO", now, body=body, content_type=content_type),
        )

    def send_options(self) -> None:
        """An in-dialog OPTIONS (a keep-alive); answered calls only."""
        self._agent._in_dialog(self, lambda call, now: call.send_request("OPTIONS", now))

    def hold(self, on_hold: bool = True) -> None:
        """Put the callee on hold (re-INVITE, a=sendonly), or take it off."""
        self._agent._in_dialog(self, lambda call, now: call.hold(now, on_hold=on_hold))

    async def transfer(
        self, target: str | Uri, *, timeout_s: float | None = None
    ) -> TransferSucceeded | TransferFailed:
        """Blind-transfer the answered call to ``target`` by REFER; the verdict.

        On ``TransferSucceeded`` the call is ending (our BYE is out, or the
        callee's came) as ``transferred``; on ``TransferFailed`` it is still up
        unless it ended meanwhile (``reason`` ``call_ended``), for a fallback.
        Raises ``CallStateError`` if the call is not answered, is over, or a
        transfer is already under way; ``ValueError`` for a target that is not
        a SIP URI.
        """
        uri = parse_uri(target) if isinstance(target, str) else target
        if not isinstance(uri, SipUri):
            raise ValueError(f"a transfer target must be a sip: or sips: URI, not {target!r}")
        previous = self._transfer
        outcome: _Outcome[TransferSucceeded | TransferFailed] = _Outcome()
        self._transfer = (uri.serialize(), outcome)
        try:
            self._agent._in_dialog(
                self, lambda call, now: call.transfer(uri, now, timeout_s=timeout_s)
            )
        except Exception:
            self._transfer = previous
            raise
        return await outcome.wait(self._agent.loop)

    async def ringing(self) -> int | None:
        """The status of the first 180/181/182; None if the call ended or was
        answered without one."""
        return await self._ringing.wait(self._agent.loop)

    async def answered(self) -> MediaAnswer | None:
        """The negotiated media once answered; None if the call ended unanswered.

        Raises ``UserAgentClosed`` if the agent closed before either happened
        (likewise ``ringing`` and ``ended``).
        """
        return await self._answered.wait(self._agent.loop)

    async def ended(self) -> CallResult:
        """The result, once the call is over."""
        return await self._ended.wait(self._agent.loop)

    def __aiter__(self) -> AsyncIterator[CallEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[CallEvent]:
        events = self._events
        while True:
            while not events:
                if self._ended.error is not None:
                    raise self._ended.error
                self._reader = self._agent.loop.create_future()
                try:
                    await self._reader
                finally:
                    self._reader = None
            event = events.popleft()
            yield event
            if isinstance(event, Ended):
                return

    def _abort(self) -> None:
        # The agent closed first: whoever waits must not wait forever.
        error = UserAgentClosed(f"call {self.call_id} was cut off")
        for outcome in (self._ringing, self._answered, self._ended):
            outcome.fail(error)
        if self._transfer is not None:
            self._transfer[1].fail(error)
        self._wake_reader()

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _event(self, event: CallEvent) -> None:
        match event:
            case Ringing(status=status):
                self._ringing.resolve(status)
            case EarlyMedia(media=media):
                self.early_media = media
            case Answered(media=media):
                self.media = media
                self._ringing.resolve(None)
                self._answered.resolve(media)
            case Held(media=media) | Resumed(media=media) | MediaUpdated(media=media):
                self.media = media
            case TransferSucceeded() | TransferFailed():
                if self._transfer is not None:
                    self._transfer[1].resolve(event)
            case Ended(result=result):
                self.result = result
                self._ringing.resolve(None)
                self._answered.resolve(None)
                self._ended.resolve(result)
                if self._transfer is not None:
                    # Ended with no verdict (we hung up meanwhile, or it went
                    # over to the target without saying): the result tells.
                    target, outcome = self._transfer
                    if result.disposition is Disposition.TRANSFERRED:
                        outcome.resolve(TransferSucceeded(self.call_id, target, None))
                    else:
                        outcome.resolve(TransferFailed(self.call_id, target, None, "call_ended"))
            case Dtmf():
                pass
        self._events.append(event)
        self._wake_reader()
        if self.on_event is not None:
            self.on_event(event)


_T = TypeVar("_T")


class _Outcome(Generic[_T]):
    """A value that arrives once, for any number of waiters (a cheap shielded future).

    Each waiter awaits a future of its own, so cancelling one waiter never
    cancels the outcome for the others (what ``asyncio.shield`` gave, without
    two futures per wait); once the value is in, waiting costs no future at all.
    """

    __slots__ = ("done", "error", "value", "waiters")

    def __init__(self) -> None:
        self.done = False
        self.value: _T | None = None
        self.error: BaseException | None = None
        self.waiters: list[asyncio.Future[_T]] | None = None

    async def wait(self, loop: asyncio.AbstractEventLoop) -> _T:
        if self.done:
            if self.error is not None:
                raise self.error
            return self.value  # type: ignore[return-value]
        future: asyncio.Future[_T] = loop.create_future()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(future)
        try:
            return await future
        finally:
            if not self.done and self.waiters is not None:
                self.waiters.remove(future)

    def resolve(self, value: _T) -> None:
        if self.done:
            return
        self.done = True
        self.value = value
        for future in self.waiters or ():
            if not future.done():
                future.set_result(value)
        self.waiters = None

    def fail(self, error: BaseException) -> None:
        if self.done:
            return
        self.done = True
        self.error = error
        for future in self.waiters or ():
            if not future.done():
                future.set_exception(error)
        self.waiters = None


class _RandomHex:
    """Hex strings from the OS's cryptographic source, drawn 4 KiB at a time.

    Tags, branches and Call-IDs need real randomness (RFC 3261 §19.3: at least
    32 random bits for a tag); one system call per identifier showed up in
    profiles at 1,000 calls a second, one per 4 KiB does not.
    """

    __slots__ = ("_buffer", "_pos")

    def __init__(self) -> None:
        self._buffer = ""
        self._pos = 0

    def __call__(self, nbytes: int) -> str:
        end = self._pos + 2 * nbytes
        if end > len(self._buffer):
            self._buffer = secrets.token_hex(4096)
            self._pos, end = 0, 2 * nbytes
        out = self._buffer[self._pos : end]
        self._pos = end
        return out


def _new_ids() -> IdGenerators:
    token = _RandomHex()
    return IdGenerators(
        tag=lambda: token(6),
        branch=lambda: MAGIC_COOKIE + token(8),
        call_id=lambda: token(12),
        cnonce=lambda: token(8),
    )


# --- admission ----------------------------------------------------------------------------


class _AdmissionGate:
    """``Admission`` at work: a FIFO of held-back calls and a check that runs while any wait.

    The check is a loop timer; how late it fires is the loop lag. It runs while
    the agent has calls or calls are held back (an idle agent schedules
    nothing), and stops with ``close()``, which also releases every waiter
    (``place_call`` then raises).
    """

    __slots__ = (
        "_busy",
        "_handle",
        "_layer",
        "_loop",
        "_policy",
        "_scheduled_at",
        "_waiters",
        "lag_s",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        policy: Admission,
        layer: TransactionLayer,
        busy: Callable[[], bool],
    ) -> None:
        self._loop = loop
        self._policy = policy
        self._layer = layer
        self._busy = busy
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._handle: asyncio.TimerHandle | None = None
        self._scheduled_at = 0.0
        self.lag_s = 0.0

    def open(self) -> bool:
        """True when a new call may go now (nobody waits before it and load is under
        bounds); starts the lag check if it is not running."""
        if self._handle is None and self._policy.max_loop_lag_s is not None:
            self._schedule()
        return not self._waiters and self._headroom() > 0

    def _headroom(self) -> int:
        policy = self._policy
        if policy.max_loop_lag_s is not None and self.lag_s > policy.max_loop_lag_s:
            return 0
        if policy.max_unanswered is None:
            return policy.max_released
        return min(policy.max_released, policy.max_unanswered - self._layer.unanswered)

    async def wait(self) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(future)
        if self._handle is None:
            self._schedule()
        try:
            await future
        except asyncio.CancelledError:
            if future in self._waiters:
                self._waiters.remove(future)
            raise

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)

    def _schedule(self) -> None:
        self._scheduled_at = self._loop.time() + self._policy.check_interval_s
        self._handle = self._loop.call_at(self._scheduled_at, self._check)

    def _check(self) -> None:
        self._handle = None
        self.lag_s = max(0.0, self._loop.time() - self._scheduled_at)
        for _ in range(max(0, self._headroom())):
            if not self._waiters:
                break
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
        if self._waiters or self._busy():
            self._schedule()
        else:
            self.lag_s = 0.0  # an idle agent measures nothing


# --- timers -------------------------------------------------------------------------------

_TimerKey = tuple[Hashable, str]
# Compact the heap once this many cancelled entries wait in it (and they
# outnumber the live ones two to one): a cancelled max-duration timer would
# otherwise sit there for an hour.
_COMPACT_AFTER = 4096
# uvloop's clock counts whole milliseconds and may wake a timer a little
# early: what is due within this much is due now.
_EARLY_S = 0.001


class _TimerQueue:
    """Every SIP timer of the agent in one heap, behind a single loop timer.

    A call runs nine timers or so (A, B, ring timeout, M, max duration, E, F,
    K ...), most of them cancelled; a ``loop.call_at`` each cost a handle, a
    context and a bound method, and at 1,000 calls a second the live ones (M
    and K wait 32 s and 5 s) were a large part of what the garbage collector
    walked. Here a timer is one heap entry; cancelling it forgets its sequence
    number, and its stale entry is skipped when it comes up (or compacted away).
    Starting a timer that is running replaces it (``actions.py`` rule 2).
    """

    __slots__ = ("_armed", "_armed_at", "_dead", "_fire", "_heap", "_live", "_loop", "_seq")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fire: Callable[[_TimerKey, float], None]
    ) -> None:
        self._loop = loop
        self._fire = fire
        self._heap: list[tuple[float, int, _TimerKey]] = []
        self._live: dict[_TimerKey, int] = {}  # timer -> sequence number of its live entry
        self._seq = 0
        self._dead = 0
        self._armed: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def __len__(self) -> int:
        return len(self._live)

    def start(self, timer: _TimerKey, at: float) -> None:
        self._seq = seq = self._seq + 1
        if self._live.get(timer) is not None:
            self._dead += 1
        self._live[timer] = seq
        heapq.heappush(self._heap, (at, seq, timer))
        if at < self._armed_at:
            self._arm(at)
        elif self._dead > _COMPACT_AFTER and self._dead > 2 * len(self._live):
            self._compact()

    def cancel(self, timer: _TimerKey) -> None:
        if self._live.pop(timer, None) is not None:
            self._dead += 1

    def clear(self) -> None:
        if self._armed is not None:
            self._armed.cancel()
        self._armed = None
        self._armed_at = math.inf
        self._heap.clear()
        self._live.clear()
        self._dead = 0

    def _arm(self, at: float) -> None:
        if self._armed is not None:
            self._armed.cancel()
        self._armed = self._loop.call_at(at, self._run)
        self._armed_at = at

    def _compact(self) -> None:
        live = self._live
        self._heap = [entry for entry in self._heap if live.get(entry[2]) == entry[1]]
        heapq.heapify(self._heap)
        self._dead = 0

    def _run(self) -> None:
        self._armed = None
        self._armed_at = math.inf
        heap = self._heap
        live = self._live
        now = self._loop.time()
        try:
            while heap and heap[0][0] <= now + _EARLY_S:
                _, seq, timer = heapq.heappop(heap)
                if live.get(timer) != seq:
                    self._dead -= 1  # cancelled or replaced
                    continue
                del live[timer]
                self._fire(timer, now)
        finally:
            # Re-armed even if a callback raised (the loop reports that one):
            # the other timers must still fire.
            if heap and heap[0][0] < self._armed_at:
                self._arm(heap[0][0])


# --- the user agent -----------------------------------------------------------------------


class UserAgent:
    """One worker's SIP user agent: listens, places calls through trunks, answers the rest.

    Use::

        agent = UserAgent(options, [trunk_config])
        await agent.start()
        handle = await agent.place_call("+12025550123", media=LocalMedia(host, rtp_port))
        media = await handle.answered()
        ...
        handle.hangup()
        result = await handle.ended()
        await agent.close()

    ``limits`` (``dialer.trunk_limits``) makes the trunks' channel and CPS limits
    hold across every worker, through PostgreSQL (the agent closes it); without it
    (a one-call tool, a test) they hold for this agent only.
    """

    def __init__(
        self,
        options: UserAgentOptions,
        trunks: Sequence[TrunkConfig] = (),
        *,
        ids: IdGenerators | None = None,
        limits: SharedTrunkLimits | None = None,
    ) -> None:
        self.options = options
        self.limits = limits
        # Channel leases in the shared limits, by SIP Call-ID: released at the call's end.
        self._leases: dict[str, uuid.UUID] = {}
        self.loop = asyncio.get_running_loop()
        self.clock_offset = time.time() - self.loop.time()
        self.ids = ids or _new_ids()
        self.layer = TransactionLayer(options.timers)
        self.policy = SourcePolicy(options.policy)
        self.stats = UserAgentStats()
        self.trunks: dict[str, Trunk] = {t.name: Trunk(t) for t in trunks}
        self.transport = SipTransport(options.transport, self, self.loop)
        self._calls: dict[str, tuple[Call, CallHandle, Trunk]] = {}
        self._timers = _TimerQueue(self.loop, self._fire)
        # Keyed by TransactionKey; actions carry their key as a plain Hashable.
        self._own: dict[Hashable, asyncio.Future[Response | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._started = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._admission = _AdmissionGate(
            self.loop, options.admission, self.layer, lambda: bool(self._calls)
        )

    # --- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the transport, resolve the trunks, start their pings and registrations."""
        await self.transport.start()
        self._started = True
        for trunk in self.trunks.values():
            await self._prepare_trunk(trunk)
            if trunk.config.options_interval_s:
                self._spawn(self._ping_loop(trunk))
            if trunk.registration is not None:
                self._spawn(self._register_loop(trunk))

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no call is tracked (BYEs answered); False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, grace_s: float = 0.0) -> None:
        """Hang up every call, wait up to ``grace_s`` for them to end, then cancel
        every task and timer and close the transport."""
        if self._closed:
            return
        now = self.loop.time()
        for call, _, _ in list(self._calls.values()):
            if call.result is None:
                self._execute(call.hangup(now), now)
                self._settle(call)
        if grace_s > 0 and self._calls:
            await self.drain(grace_s)
        self._closed = True
        self._admission.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._timers.clear()
        for future in self._own.values():
            if not future.done():
                future.cancel()
        self._own.clear()
        for _, handle, _ in self._calls.values():
            handle._abort()
        self._calls.clear()
        self._idle.set()
        if self.limits is not None:
            for lease in self._leases.values():
                self.limits.release(lease)
            self._leases.clear()
            await self.limits.close()  # the releases on their way go out first
        await self.transport.close()

    async def __aenter__(self) -> UserAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def address(self) -> Address:
        """The bound (host, port)."""
        return self.transport.address

    @property
    def active_calls(self) -> int:
        """Calls the user agent still tracks (including ones whose BYE is out)."""
        return len(self._calls)

    @property
    def loop_lag_s(self) -> float:
        """How late the loop ran the admission check last time (0 when idle)."""
        return self._admission.lag_s

    @property
    def pending_timers(self) -> int:
        """Timers scheduled on the loop (for tests and metrics)."""
        return len(self._timers)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def add_trunk(self, config: TrunkConfig) -> Trunk:
        """Add a trunk at run time (resolved now).

        A trunk whose ``shared_key`` an earlier one has (an edited version of
        it) counts its calls against the same local limits: the earlier
        version's calls still hold their channels.
        """
        trunk = Trunk(config)
        for other in self.trunks.values():
            if other.key == trunk.key:
                trunk.share_limits(other)
                break
        self.trunks[config.name] = trunk
        if self._started:
            await self._prepare_trunk(trunk)
        return trunk

    async def _prepare_trunk(self, trunk: Trunk) -> None:
        config = trunk.config
        hop = config.next_hop
        trunk.addresses = await resolve(
            hop.host, hop.port, config.transport, srv=config.srv, loop=self.loop
        )
        for address in trunk.addresses:
            self.policy.trust(address[0])
        options = self.options
        host = options.advertised_host or self._local_host_for(trunk.addresses[0])
        port = self.address[1]
        transport = config.transport
        contact_params = (("transport", transport.lower()),) if transport != "UDP" else ()
        user = config.credentials.username if config.credentials else options.user
        # From names us at the trunk's domain: what a carrier checks the
        # credentials and the calling identity against.
        trunk.ua_config = UserAgentConfig(
            local_uri=SipUri(config.uri.host, user, port=config.uri.port),
            contact=SipUri(_uri_host(host), options.user, port=port, params=contact_params),
            via_host=_uri_host(host),
            via_port=port,
            proxy=trunk.addresses[0],
            transport=transport,
            display_name=options.display_name,
            user_agent=options.user_agent,
            ring_timeout_s=options.ring_timeout_s,
            max_duration_s=options.max_duration_s,
            session_expires_s=options.session_expires_s,
            timers=options.timers,
        )

    def _local_host_for(self, remote: Address) -> str:
        host = self.address[0]
        if host not in ("0.0.0.0", "::", ""):
            return host
        # The source address the kernel would use towards the trunk.
        family = socket.AF_INET6 if ":" in remote[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(remote)
                return str(probe.getsockname()[0])
            except OSError:
                return "127.0.0.1" if family == socket.AF_INET else "::1"

    # --- placing calls ------------------------------------------------------------------

    async def place_call(
        self,
        target: str | Uri,
        *,
        media: LocalMedia,
        trunk: str | None = None,
        ring_timeout_s: float | None = None,
        max_duration_s: float | None = None,
        headers: Sequence[Header] = (),
        to: NameAddr | None = None,
        wait: bool = True,
        wait_s: float | None = None,
        on_event: Callable[[CallEvent], None] | None = None,
        lease: str | uuid.UUID | None = None,
    ) -> CallHandle:
        """Send an INVITE through ``trunk`` (the only one when None) and return its handle.

        Waits (in call order) for a free channel and a CPS token of the trunk,
        then, with shared ``limits``, for a channel lease and a send slot every
        worker respects (``lease`` keys the lease: the dial's call id; a fresh
        one when None); with ``wait=False`` a trunk at its channel limit raises
        ``TrunkBusy``, and so does a wait longer than ``wait_s`` (a call that
        must not go out late: its calling window closes). ``target`` is a
        number, a SIP URI or a tel URI (see ``target_uri``).
        """
        if self._closed:
            raise RuntimeError("user agent is closed")
        chosen = self._trunk(trunk)
        uri = target if not isinstance(target, str) else target_uri(target, chosen.config)
        held: uuid.UUID | None = None
        if wait_s is None:
            held = await self._admit(chosen, wait, lease)
        else:
            try:
                async with asyncio.timeout(wait_s):
                    held = await self._admit(chosen, wait, lease)
            except TimeoutError:
                raise TrunkBusy(
                    f"no channel or CPS token of trunk {chosen.name} within {wait_s:.1f} s",
                    waited=True,
                ) from None
        config = chosen.ua_config
        assert config is not None
        dial = Dial(
            target=uri,
            media=media,
            to=to,
            headers=tuple(headers),
            ring_timeout_s=ring_timeout_s,
            max_duration_s=max_duration_s,
        )
        now = self.loop.time()
        call = Call(config, dial, self.ids, self.layer, digest=chosen.digest, now=now)
        handle = CallHandle(self, call, chosen)
        handle.on_event = on_event
        self._calls[call.call_id] = (call, handle, chosen)
        if held is not None:
            self._leases[call.call_id] = held
        self._idle.clear()
        self.stats.calls_placed += 1
        self._execute(call.start(now), now)
        return handle

    def _trunk(self, name: str | None) -> Trunk:
        if name is None:
            if len(self.trunks) != 1:
                raise ValueError(f"name a trunk: there are {len(self.trunks)}")
            return next(iter(self.trunks.values()))
        try:
            return self.trunks[name]
        except KeyError:
            raise ValueError(f"no trunk called {name!r}") from None

    async def _admit(
        self, trunk: Trunk, wait: bool, lease: str | uuid.UUID | None
    ) -> uuid.UUID | None:
        """Wait for the admission gate (overload), then a channel and a CPS token,
        then the shared ones; the shared channel lease held, if any."""
        if not self._admission.open():
            self.stats.calls_held_back += 1
            await self._admission.wait()
            if self._closed:
                raise RuntimeError("user agent is closed")
        limits = self.limits
        config = trunk.config
        if limits is None or not config.limited:
            await self._acquire(trunk, wait)
            return None  # no limit, or this agent's only: no database work
        if lease is None:
            lease = uuid.uuid4()
        elif not isinstance(lease, uuid.UUID):
            lease = uuid.UUID(lease)
        await self._acquire(trunk, wait)
        leased = config.max_channels is not None
        try:
            granted = await limits.acquire(config, lease, wait=wait)
        except BaseException:
            # Not placed: the local channel goes back (acquire released the lease).
            self._unacquire(trunk)
            raise
        if not granted:
            self._unacquire(trunk)
            raise TrunkBusy(f"trunk {trunk.name} has all {config.max_channels} channels busy")
        if self._closed:
            self._unacquire(trunk)
            if leased:
                limits.release(lease)
            raise RuntimeError("user agent is closed")
        return lease if leased else None

    def _unacquire(self, trunk: Trunk) -> None:
        trunk.channels.release()
        trunk.freed.set()

    async def _acquire(self, trunk: Trunk, wait: bool) -> None:
        if not wait and not trunk.channels.free:
            raise TrunkBusy(f"trunk {trunk.name} has all {trunk.config.max_channels} channels busy")
        if trunk.bucket is None and trunk.channels.free and not trunk.lock.locked():
            trunk.channels.acquire()
            return
        # The lock is FIFO: calls leave in the order they asked.
        async with trunk.lock:
            while not trunk.channels.free:
                trunk.freed.clear()
                await trunk.freed.wait()
            bucket = trunk.bucket
            if bucket is not None:
                while not bucket.take(self.loop.time()):
                    await asyncio.sleep(bucket.wait_s(self.loop.time()))
            trunk.channels.acquire()

    def _in_dialog(self, handle: CallHandle, step: Callable[[Call, float], list[Action]]) -> None:
        entry = self._calls.get(handle.call_id)
        if entry is None:
            raise CallStateError(f"call {handle.call_id} is over")
        now = self.loop.time()
        self._execute(step(entry[0], now), now)

    def _end(self, handle: CallHandle, step: Callable[[Call, float], list[Action]]) -> None:
        """Run a step that ends the call (hangup, withdraw); nothing if it is over."""
        entry = self._calls.get(handle.call_id)
        if entry is None:
            return
        now = self.loop.time()
        self._execute(step(entry[0], now), now)
        self._settle(entry[0])

    def _settle(self, call: Call) -> None:
        if call.finished:
            if self._calls.pop(call.call_id, None) is not None:
                call.release()
            if not self._calls:
                self._idle.set()

    # --- pings and registration -----------------------------------------------------------

    async def ping(self, trunk: str | None = None, timeout_s: float | None = None) -> int | None:
        """Send OPTIONS to a trunk; its status code, None on timeout or transport error."""
        chosen = self._trunk(trunk)
        request = self._out_of_dialog("OPTIONS", chosen, [("Accept", _ACCEPT)])
        response = await self._request(request, chosen, timeout_s)
        now = self.loop.time()
        if response is None:
            chosen.health.failed(now)
            return None
        chosen.health.answered(response.status, now)
        return response.status

    async def _ping_loop(self, trunk: Trunk) -> None:
        interval = trunk.config.options_interval_s
        assert interval is not None
        while True:
            await self.ping(trunk.name)
            await asyncio.sleep(interval)

    async def register(self, trunk: str | None = None) -> int | None:
        """REGISTER with the trunk (answering one digest challenge); the final status."""
        chosen = self._trunk(trunk)
        registration = chosen.registration
        config = chosen.config
        expires = registration.expires_s if registration else (config.register_expires_s or 3600)
        assert config.credentials is not None
        contact = chosen.ua_config.contact if chosen.ua_config else None
        call_id = self.ids.call_id()
        tag = self.ids.tag()
        extra: list[Header] = [("Contact", f"<{contact}>"), ("Expires", str(expires))]
        registrar = SipUri(config.uri.host, port=config.uri.port)
        response: Response | None = None
        auth: list[Header] = []
        previous = None
        for seq in (1, 2, 3):
            request = self._out_of_dialog(
                "REGISTER",
                chosen,
                extra + auth,
                uri=registrar,
                call_id=call_id,
                seq=seq,
                tag=tag,
                to_self=True,
            )
            response = await self._request(request, chosen, None)
            if response is None or response.status not in (401, 407) or chosen.digest is None:
                break
            proxy = response.status == 407
            answer = chosen.digest.respond(
                response.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate"),
                proxy=proxy,
                method="REGISTER",
                uri=registrar.serialize(),
                target_host=config.uri.host,
                cnonce=self.ids.cnonce(),
                previous=previous,
            )
            if not isinstance(answer, Authorize):
                break
            previous = answer.attempt
            auth = [(answer.header_name, answer.header_value)]
        now = self.loop.time()
        if registration is not None:
            if response is not None and 200 <= response.status < 300:
                registration.accepted(_granted_expires(response, expires), now)
            else:
                registration.failed(now)
        return None if response is None else response.status

    async def _register_loop(self, trunk: Trunk) -> None:
        registration = trunk.registration
        assert registration is not None
        while True:
            await self.register(trunk.name)
            await asyncio.sleep(max(0.0, registration.next_at - self.loop.time()))

    def _out_of_dialog(
        self,
        method: str,
        trunk: Trunk,
        extra: Sequence[Header],
        *,
        uri: SipUri | None = None,
        call_id: str | None = None,
        seq: int = 1,
        tag: str | None = None,
        to_self: bool = False,
    ) -> Request:
        config = trunk.ua_config
        assert config is not None
        via = Via(
            config.transport,
            config.via_host,
            config.via_port,
            (("rport", None), ("branch", self.ids.branch())),
        )
        from_addr = NameAddr(config.local_uri, params=(("tag", tag or self.ids.tag()),))
        to_uri = config.local_uri if to_self else (uri or trunk.config.uri)
        headers: list[Header] = [
            ("Via", via.serialize()),
            ("Max-Forwards", _MAX_FORWARDS),
            ("From", from_addr.serialize()),
            ("To", NameAddr(to_uri).serialize()),
            ("Call-ID", call_id or self.ids.call_id()),
            ("CSeq", f"{seq} {method}"),
            ("User-Agent", self.options.user_agent),
            *extra,
        ]
        return Request(method, uri or trunk.config.uri, tuple(headers))

    async def _request(
        self, request: Request, trunk: Trunk, timeout_s: float | None
    ) -> Response | None:
        config = trunk.ua_config
        assert config is not None
        now = self.loop.time()
        future: asyncio.Future[Response | None] = self.loop.create_future()
        key, actions = self.layer.send_request(request, config.proxy, config.transport, now)
        self._own[key] = future
        self._execute(actions, now)
        try:
            if timeout_s is None:
                return await future
            try:
                async with asyncio.timeout(timeout_s):
                    return await future
            except TimeoutError:
                return None
        finally:
            self._own.pop(key, None)

    # --- carrying out actions -----------------------------------------------------------

    def _execute(self, actions: list[Action], now: float) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                self.transport.send(action.data, action.addr, action.transport, action.message)  # type: ignore[attr-defined]
            elif kind is StartTimer:
                self._timers.start((action.key, action.timer), action.at)  # type: ignore[attr-defined]
            elif kind is CancelTimer:
                self._timers.cancel((action.key, action.timer))  # type: ignore[attr-defined]
            elif kind is Deliver:
                self._deliver(action, now)  # type: ignore[arg-type]
            elif kind is TimedOut or kind is TransportFailed:
                self._failed(action, now)  # type: ignore[arg-type]
            elif kind is TransactionTerminated:
                future = self._own.get(action.key)  # type: ignore[attr-defined, arg-type]
                if future is not None and not future.done():
                    future.set_result(None)
            elif isinstance(action, CallEvent):
                self._call_event(action)

    def _fire(self, timer_key: _TimerKey, now: float) -> None:
        key, timer = timer_key
        if type(key) is CallTimerKey:
            entry = self._calls.get(key.call_id)
            if entry is not None:
                self._execute(entry[0].timer_fired(CallTimer(timer), now), now)
                self._settle(entry[0])
        elif type(key) is TransactionKey:
            self._execute(self.layer.timer_fired(key, timer, now), now)

    def _deliver(self, action: Deliver, now: float) -> None:
        message = action.message
        key = action.key
        if isinstance(message, Response):
            if key is not None:
                future = self._own.get(key)
                if future is not None:
                    if message.status >= 200 and not future.done():
                        future.set_result(message)
                    return
            entry = self._calls.get(message.call_id)
            if entry is None:
                self.stats.stray_responses += 1
                return
            call = entry[0]
            self._execute(call.on_response(key, message, now), now)  # type: ignore[arg-type]
            self._settle(call)
            return
        entry = self._calls.get(message.call_id)
        if entry is not None:
            call = entry[0]
            self._execute(call.on_request(key, message, now), now)  # type: ignore[arg-type]
            self._settle(call)
            return
        if key is None:
            return  # an ACK for nothing of ours
        response = answer_out_of_dialog(
            message,
            self.ids.tag(),
            cancels_found=action.cancels is not None,
            host=self._warning_host(),
        )
        if response is not None:
            self.stats.answered[response.status] = self.stats.answered.get(response.status, 0) + 1
            self._execute(self.layer.send_response(key, response, now), now)  # type: ignore[arg-type]

    def _warning_host(self) -> str:
        host = self.address[0]
        return f"[{host}]" if ":" in host else host

    def _failed(self, action: TimedOut | TransportFailed, now: float) -> None:
        key = action.key
        future = self._own.get(key)
        if future is not None:
            if not future.done():
                future.set_result(None)
            return
        entry = self._calls.get(action.request.call_id)
        if entry is not None and isinstance(key, TransactionKey):
            call = entry[0]
            transport = isinstance(action, TransportFailed)
            self._execute(call.on_timeout(key, now, transport=transport), now)
            self._settle(call)

    def _call_event(self, event: CallEvent) -> None:
        call_id = event.call_id  # type: ignore[attr-defined]
        entry = self._calls.get(call_id)
        if entry is None:
            return
        _, handle, trunk = entry
        if isinstance(event, Ended):
            self.stats.calls_ended += 1
            trunk.channels.release()
            trunk.freed.set()
            lease = self._leases.pop(call_id, None)
            if lease is not None and self.limits is not None:
                self.limits.release(lease)
        handle._event(event)

    # --- what the transport hands us ------------------------------------------------------

    def message_received(
        self, message: Request | Response, source: Address, transport: str
    ) -> None:
        """A parsed message from the transport."""
        now = self.loop.time()
        if isinstance(message, Response):
            self.stats.responses_received += 1
        else:
            self.stats.requests_received += 1
            if message.method != "ACK" and message.call_id not in self._calls:
                # Judge before the transaction layer sees it: a dropped request
                # must leave no transaction (and no timers) behind.
                verdict = self.policy.verdict(source, message.get("User-Agent"), now)
                if verdict is not Verdict.ANSWER:
                    self._count_drop(verdict)
                    return
        self._execute(self.layer.receive(message, source, transport, now), now)

    def invalid_received(
        self, data: bytes, error: SipError, source: Address, transport: str
    ) -> None:
        """Bytes that did not parse: answer with the error's status, or drop."""
        if not data:
            self.stats.malformed_dropped += 1  # a broken TCP stream: already closed
            return
        now = self.loop.time()
        verdict = self.policy.verdict(source, _sniff_user_agent(data), now)
        if verdict is not Verdict.ANSWER:
            self._count_drop(verdict)
            self.stats.malformed_dropped += 1
            return
        response = error_response(data, error, to_tag=self.ids.tag())
        if response is None:
            self.stats.malformed_dropped += 1
            return
        self.stats.malformed_answered += 1
        self.stats.answered[response.status] = self.stats.answered.get(response.status, 0) + 1
        # Sent back where it came from: the Via that would route it may be
        # the very thing that is broken (RFC 3581 symmetric response).
        self.transport.send(response.serialize(), source, transport)

    def send_failed(self, data: bytes, addr: Address, transport: str) -> None:
        """The transport could not send: a request's transaction fails as for a 503."""
        self.stats.send_failures += 1
        try:
            head = data[:8]
            if head.startswith(b"SIP/"):
                return
            request = parse_message(data)
        except SipError:
            return
        if not isinstance(request, Request) or request.method == "ACK" or not request.branch:
            return
        key = TransactionKey(Role.CLIENT, request.branch, request.method)
        now = self.loop.time()
        self._execute(self.layer.transport_failed(key, now), now)

    def _count_drop(self, verdict: Verdict) -> None:
        stats = self.stats
        if verdict is Verdict.DROP_SCANNER:
            stats.dropped_scanner += 1
        elif verdict is Verdict.DROP_FLOOD:
            stats.dropped_flood += 1
        else:
            stats.dropped_stranger += 1


def _sniff_user_agent(data: bytes) -> str | None:
    lowered = data[:4096].lower()
    index = lowered.find(b"\nuser-agent:")
    if index < 0:
        return None
    end = lowered.find(b"\n", index + 1)
    return lowered[index + 12 : end if end > 0 else None].decode("latin-1").strip()


def _granted_expires(response: Response, asked: int) -> int:
    try:
        for contact in response.contacts:
            value = contact.param("expires")
            if value is not None and value.isdigit():
                return int(value)
        expires = response.expires
    except ParseError:
        return asked
    return asked if expires is None else expires


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host

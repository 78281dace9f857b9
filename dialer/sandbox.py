"""The sandbox carrier: a SIP trunk on loopback that answers like people and machines.

The dialer places its calls against it exactly as against a real carrier (SIP
over UDP or TCP, RTP with G.711 and RFC 4733 DTMF), so its production path
runs with no carrier account; users test their workflows against it too.

Rules of this file:

1. The SIP work is the pure UAS core (``dialer.sip.uas.InboundRouter``) over
   the shared ``SipTransport``; this file carries out its actions
   (``loop.call_at`` timers, sends) and plays one script per call in a task
   the carrier owns. ``close()`` ends every call (BYE, or 480 before the
   answer) and cancels every task, timer and socket.
2. What a call does depends on its number, or on configured shares drawn
   from a seeded random generator (the behaviour table is ``BEHAVIOUR_TABLE``
   below, and the README's). Everything random comes from that generator,
   so a run with a seed repeats call for call.
3. It records nothing. It counts what it did (``SandboxStats``), per
   behaviour.
4. A slow network is a relay between the caller and our RTP session that
   delays, jitters and drops packets in both directions (``NetworkConditions``).

Behaviour by the last digit of the called number (the Request-URI's user part)::

    digit  behaviour    what the caller sees
    0-4    person       180, 200 after 1-4 s ringing; says "Hello, this is <name>?",
                        listens, and presses 1 (yes: digits 0-2) or 2 (no: 3-4) once
                        the caller's prompt is over (0.8 s of quiet after speech),
                        or 8 s after its hello if it heard nothing; hangs up after 60 s
    5-6    voicemail    180, 200 after 1-4 s; a 4-15 s spoken greeting, a 1 kHz beep
                        (500 ms), then silence; hangs up after 30 s
    7      busy         486 Busy Here
    8      no_answer    180, rings until the caller's CANCEL (487); 480 after 120 s
    9      unreachable  404 Not Found, Reason: Q.850;cause=1 (unallocated number)
    -      silent       no response at all (the caller's Timer B): shares only

A number without a digit is a person. With ``ratios`` the digit is ignored:
each call draws its behaviour from the shares, and a person's answer from
``person_yes_share``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from dialer.sip.actions import Action, Address, CancelTimer, Send, StartTimer
from dialer.sip.call import IdGenerators
from dialer.sip.dialog import LocalMedia
from dialer.sip.errors import SipError
from dialer.sip.message import Request, Response
from dialer.sip.parser import error_response, parse_message
from dialer.sip.sdp import MediaAnswer
from dialer.sip.timers import DEFAULT_TIMERS, TimerConfig
from dialer.sip.transaction import MAGIC_COOKIE, Role, TransactionKey
from dialer.sip.uas import (
    Confirmed,
    DtmfInfo,
    InboundEnded,
    InboundRouter,
    Incoming,
    MediaChanged,
    UasConfig,
    UasStateError,
)
from dialer.sip.uri import SipUri
from dialer.transport import SipTransport, TransportConfig
from media.dtmf import DtmfDigit
from media.g711 import PCMA, PCMU
from media.playback import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    PlaybackQueue,
    Prompt,
    PromptError,
    SpeechRenderer,
    espeak_available,
    silence,
)
from media.ports import BoundPair, PortAllocator, PortsExhausted, bind_pair
from media.session import MediaParams, RtpSession, SessionConfig
from media.ticker import FrameTicker

__all__ = [
    "BEHAVIOUR_TABLE",
    "Behaviour",
    "NetworkConditions",
    "SandboxCarrier",
    "SandboxConfig",
    "SandboxStats",
    "babble",
    "behaviour_for_number",
    "parse_ratios",
    "person_digit_for_number",
    "tone",
]


_log = logging.getLogger(__name__)


class Behaviour(StrEnum):
    """How the called party behaves."""

    PERSON = "person"
    VOICEMAIL = "voicemail"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    UNREACHABLE = "unreachable"
    SILENT = "silent"


#: The last digit of the called number -> behaviour (module docstring, README).
BEHAVIOUR_TABLE: Mapping[str, Behaviour] = {
    **dict.fromkeys("01234", Behaviour.PERSON),
    **dict.fromkeys("56", Behaviour.VOICEMAIL),
    "7": Behaviour.BUSY,
    "8": Behaviour.NO_ANSWER,
    "9": Behaviour.UNREACHABLE,
}

_YES, _NO = "1", "2"

_NAMES = (
    "Alice", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiroshi",
    "Ines", "Jamal", "Katya", "Liam", "Maya", "Nikhil", "Olivia", "Pedro",
)  # fmt: skip


def _last_digit(number: str) -> str | None:
    for char in reversed(number):
        if char.isdigit() and char.isascii():
            return char
    return None


def behaviour_for_number(number: str) -> Behaviour:
    """The behaviour of ``number`` by its last digit (a number without digits is a person)."""
    digit = _last_digit(number)
    return BEHAVIOUR_TABLE[digit] if digit is not None else Behaviour.PERSON


def person_digit_for_number(number: str) -> str:
    """What a person at ``number`` presses: 1 (yes) for last digits 0-2, else 2 (no)."""
    digit = _last_digit(number)
    return _YES if digit is None or digit in "012" else _NO


def _name_for(number: str) -> str:
    return _NAMES[zlib.crc32(number.encode()) % len(_NAMES)]


def parse_ratios(text: str) -> dict[Behaviour, float]:
    """``person=0.6,voicemail=0.2,busy=0.1`` -> shares by behaviour (ValueError if bad).

    Shares need not add up to one: each is taken relative to their sum.
    """
    shares: dict[Behaviour, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            behaviour = Behaviour(name.strip().lower())
        except ValueError:
            known = ", ".join(b.value for b in Behaviour)
            raise ValueError(f"unknown behaviour {name.strip()!r} (known: {known})") from None
        try:
            share = float(value) if sep else math.nan
        except ValueError:
            share = math.nan
        if not (share >= 0 and math.isfinite(share)):
            raise ValueError(f"{name.strip()}: expected a share >= 0, got {value!r}")
        if behaviour in shares:
            raise ValueError(f"{behaviour.value} given twice")
        shares[behaviour] = share
    if not shares or sum(shares.values()) <= 0:
        raise ValueError("ratios need at least one share above 0")
    return shares


@dataclass(frozen=True, slots=True)
class NetworkConditions:
    """A slow network on the RTP path, applied to each packet in both directions.

    A packet is dropped with probability ``loss``, else delivered after
    ``delay_ms`` plus a uniform draw in ``[0, jitter_ms]`` (jitter above 20 ms
    reorders packets, as real networks do).
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0 or not 0 <= self.loss < 1:
            raise ValueError("delay and jitter must be >= 0 and loss in [0, 1)")

    @property
    def active(self) -> bool:
        """True when packets are delayed or lost at all."""
        return self.delay_ms > 0 or self.jitter_ms > 0 or self.loss > 0


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Where the sandbox listens and how its people and machines behave (times in s).

    ``ratios`` (shares by behaviour) replaces the per-number table; ``seed``
    makes the draws repeatable. ``speech_cache_dir`` is where espeak-ng
    renderings are kept; None, or no espeak-ng on PATH, uses a synthetic
    voice (voiced babble of the same length) instead.
    """

    host: str = "127.0.0.1"
    port: int = 5080
    media_address: str | None = None  # in SDP; default: host (127.0.0.1 for a wildcard)
    rtp_port_min: int = 31000
    rtp_port_max: int = 31999
    tcp: bool = True
    ratios: tuple[tuple[Behaviour, float], ...] = ()
    seed: int | None = None
    ring_s: tuple[float, float] = (1.0, 4.0)
    reject_delay_s: float = 0.2
    no_answer_max_s: float = 120.0
    early_media: bool = False  # 183 with SDP and a ringback tone before the answer
    person_reply_after_s: float = 8.0
    person_quiet_s: float = 0.8
    person_min_speech_s: float = 0.3
    person_max_s: float = 60.0
    person_yes_share: float = 0.6
    speech_threshold: float = 600.0  # RMS (int16 scale) that counts as the caller talking
    voicemail_greeting_s: tuple[float, float] = (4.0, 15.0)
    beep_hz: float = 1000.0
    beep_ms: int = 500
    voicemail_max_s: float = 30.0
    network: NetworkConditions = NetworkConditions()
    speech_cache_dir: Path | None = None
    voice: str = "en-us"
    words_per_minute: int = 160
    timers: TimerConfig = DEFAULT_TIMERS
    user_agent: str = "dialer-sandbox"

    def __post_init__(self) -> None:
        for name in ("ring_s", "voicemail_greeting_s"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be a range 0 <= low <= high")
        if any(share < 0 for _, share in self.ratios):
            raise ValueError("ratios must not be negative")
        if self.ratios and sum(share for _, share in self.ratios) <= 0:
            raise ValueError("ratios need at least one share above 0")
        if not 0 <= self.person_yes_share <= 1:
            raise ValueError("person_yes_share must be in [0, 1]")

    @property
    def sdp_address(self) -> str:
        """The address our SDP gives for RTP."""
        if self.media_address:
            return self.media_address
        return (
            "127.0.0.1"
            if self.host in ("0.0.0.0", "")
            else "::1"
            if self.host == "::"
            else self.host
        )


@dataclass(slots=True)
class SandboxStats:
    """What the sandbox did, by behaviour (monotonic counters)."""

    calls: dict[str, int] = field(default_factory=dict)  # INVITEs, by behaviour
    answered: dict[str, int] = field(default_factory=dict)
    ended: dict[str, dict[str, int]] = field(default_factory=dict)  # behaviour -> end reason
    digits_sent: dict[str, int] = field(default_factory=dict)  # "1"/"2" -> count
    digits_by_info: int = 0  # the caller took no RFC 4733 events: sent in INFO
    digits_received: int = 0  # from the caller, RTP events or INFO
    beeps: int = 0
    options: int = 0
    answered_outside_calls: dict[int, int] = field(default_factory=dict)
    dropped_silent: int = 0  # requests of "silent" calls, unanswered on purpose
    malformed: int = 0
    speech_fallbacks: int = 0  # texts played with the synthetic voice
    relay_dropped: int = 0  # packets the slow network lost
    active: int = 0

    def as_dict(self) -> dict[str, object]:
        """The counters by name, for logs and the CLI."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "ended":
                value = {behaviour: dict(reasons) for behaviour, reasons in value.items()}
            elif isinstance(value, dict):
                value = dict(value)
            out[f.name] = value
        return out


def _bump(counter: dict, key: object, by: int = 1) -> None:
    counter[key] = counter.get(key, 0) + by


# --- audio ------------------------------------------------------------------------------------

_TWO_PI = 2 * np.pi


def tone(frequencies: tuple[float, ...], duration_ms: int, amplitude: float = 8000.0) -> Prompt:
    """A steady tone (sum of ``frequencies``) as a prompt, with 5 ms ramps against clicks."""
    n = -(-duration_ms * SAMPLE_RATE // 1000 // FRAME_SAMPLES) * FRAME_SAMPLES
    t = np.arange(n) / SAMPLE_RATE
    wave = sum(np.sin(_TWO_PI * f * t) for f in frequencies) / len(frequencies)
    ramp = min(n // 2, SAMPLE_RATE * 5 // 1000)
    envelope = np.ones(n)
    if ramp:
        envelope[:ramp] = np.linspace(0, 1, ramp)
        envelope[n - ramp :] = np.linspace(1, 0, ramp)
    samples = np.rint(wave * envelope * amplitude).astype(np.int16)
    samples.flags.writeable = False
    return Prompt(samples, f"tone:{'+'.join(str(f) for f in frequencies)}:{duration_ms}ms")


def babble(duration_s: float, seed: int) -> Prompt:
    """A voiced, syllabic stand-in for speech (when espeak-ng is not there)."""
    rng = np.random.default_rng(seed)
    n = max(FRAME_SAMPLES, int(duration_s * SAMPLE_RATE) // FRAME_SAMPLES * FRAME_SAMPLES)
    t = np.arange(n) / SAMPLE_RATE
    pitch = 110 + 30 * np.sin(_TWO_PI * 0.7 * t + rng.uniform(0, 6))
    phase = np.cumsum(_TWO_PI * pitch / SAMPLE_RATE)
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = np.clip(np.sin(_TWO_PI * 4.0 * t + rng.uniform(0, 6)), 0, None) ** 0.6
    samples = np.rint(voiced * syllables * 5000).astype(np.int16)
    samples.flags.writeable = False
    return Prompt(samples, f"babble:{duration_s:.1f}s")


_RINGBACK_ON = tone((440.0, 480.0), 2000, 4000.0)  # US ringback: 2 s on, 4 s off
_RINGBACK_OFF = silence(4000)

_VOICEMAIL_SENTENCES = (
    "Hi, you have reached the voicemail of {name}.",
    "I am not able to take your call right now.",
    "Please leave your name, your number and a short message after the tone,",
    "and I will get back to you as soon as I can.",
    "Thank you for calling, and have a great day.",
)


# --- the slow network -----------------------------------------------------------------------


class _RelayLeg(asyncio.DatagramProtocol):
    """One relayed port (RTP or RTCP): the session on one side, the caller on the other."""

    def __init__(self, relay: _Relay, inner: Address, outer: Address) -> None:
        self.relay = relay
        self.inner = inner
        self.outer = outer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        if addr == self.inner:
            destination = self.outer
        else:
            self.outer = (addr[0], addr[1])  # symmetric RTP: answer where it comes from
            destination = self.inner
        self.relay.forward(self, data, destination)

    def error_received(self, exc: Exception) -> None:
        pass  # the caller may not be listening yet: ICMP errors are expected

    def send(self, data: bytes, destination: Address) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.sendto(data, destination)


class _Relay:
    """Delays, jitters and drops RTP and RTCP between our session and the caller."""

    def __init__(
        self,
        ports: BoundPair,
        conditions: NetworkConditions,
        rng: random.Random,
        stats: SandboxStats,
    ) -> None:
        self.ports = ports
        self.conditions = conditions
        self.rng = rng
        self.stats = stats
        self.legs: list[_RelayLeg] = []
        self._loop = asyncio.get_running_loop()

    async def open(self, inner: Address, outer: Address) -> None:
        for sock, offset in ((self.ports.rtp_socket, 0), (self.ports.rtcp_socket, 1)):
            leg = _RelayLeg(self, (inner[0], inner[1] + offset), (outer[0], outer[1] + offset))

            def protocol(leg: _RelayLeg = leg) -> _RelayLeg:
                return leg

            await self._loop.create_datagram_endpoint(protocol, sock=sock)
            self.legs.append(leg)

    def forward(self, leg: _RelayLeg, data: bytes, destination: Address) -> None:
        conditions = self.conditions
        rng = self.rng
        if conditions.loss and rng.random() < conditions.loss:
            self.stats.relay_dropped += 1
            return
        delay_s = (conditions.delay_ms + rng.uniform(0, conditions.jitter_ms)) / 1000
        if delay_s <= 0:
            leg.send(data, destination)
        else:
            self._loop.call_later(delay_s, leg.send, data, destination)

    def close(self) -> None:
        for leg in self.legs:
            if leg.transport is not None:
                leg.transport.close()
        if self.legs:
            self.ports.release()  # the transports closed the sockets
        else:
            self.ports.close()


# --- one call ---------------------------------------------------------------------------------


class _Listener:
    """Hears the caller: speech, then ``quiet_s`` of quiet, means the prompt is over."""

    def __init__(self, threshold: float, min_speech_s: float, quiet_s: float) -> None:
        self.threshold_sq = threshold * threshold * FRAME_SAMPLES
        self.min_frames = max(1, round(min_speech_s / 0.02))
        self.quiet_frames = max(1, round(quiet_s / 0.02))
        self.speech = 0
        self.quiet = 0
        self.enabled = False
        self.prompt_over = asyncio.Event()

    def frame(self, samples: NDArray[np.int16]) -> None:
        if not self.enabled or self.prompt_over.is_set():
            return
        energy = float(np.dot(samples.astype(np.float32), samples.astype(np.float32)))
        if energy >= self.threshold_sq:
            self.speech += 1
            self.quiet = 0
        elif self.speech >= self.min_frames:
            self.quiet += 1
            if self.quiet >= self.quiet_frames:
                self.prompt_over.set()


@dataclass(slots=True)
class _Call:
    call_id: str
    number: str
    behaviour: Behaviour
    digit: str
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    confirmed_media: MediaAnswer | None = None
    task: asyncio.Task[None] | None = None
    session: RtpSession | None = None
    relay: _Relay | None = None
    queue: PlaybackQueue = field(default_factory=PlaybackQueue)
    listener: _Listener | None = None
    answered: bool = False
    offered: bool = True  # the INVITE carried an SDP offer


def _new_ids() -> IdGenerators:
    token = secrets.token_hex
    return IdGenerators(
        tag=lambda: token(6),
        branch=lambda: MAGIC_COOKIE + token(8),
        call_id=lambda: token(12),
        cnonce=lambda: token(8),
    )


def _number_of(request: Request) -> str:
    uri = request.uri
    user = getattr(uri, "user", None)
    if user:
        return user
    return getattr(uri, "number", "") or ""


_TimerKey = tuple[Hashable, str]


class SandboxCarrier:
    """The sandbox carrier: ``await start()``, point the dialer at ``uri``, ``await close()``."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        on_event: Callable[[str, dict[str, object]], None] | None = None,
    ) -> None:
        self.config = config or SandboxConfig()
        self.stats = SandboxStats()
        self.on_event = on_event
        # Two generators: the draws of behaviours and answers depend only on the
        # order calls arrive in, not on how ring times and media interleave.
        seed = self.config.seed
        self._choices = random.Random(seed)
        self._rng = random.Random(None if seed is None else f"{seed}:timing")
        self._transport: SipTransport | None = None
        self._router: InboundRouter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: dict[_TimerKey, asyncio.TimerHandle] = {}
        self._calls: dict[str, _Call] = {}
        self._decided: OrderedDict[str, Behaviour] = OrderedDict()
        self._allocator = PortAllocator(self.config.rtp_port_min, self.config.rtp_port_max)
        self._ticker: FrameTicker | None = None
        self._speech: SpeechRenderer | None = None
        if self.config.speech_cache_dir is not None and espeak_available():
            self._speech = SpeechRenderer(
                self.config.speech_cache_dir,
                voice=self.config.voice,
                words_per_minute=self.config.words_per_minute,
            )
        self._closed = False

    # --- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the SIP sockets and start answering."""
        config = self.config
        self._loop = asyncio.get_running_loop()
        transport_config = TransportConfig(config.host, config.port, tcp=config.tcp)
        self._transport = SipTransport(transport_config, self)
        await self._transport.start()
        host, port = self._transport.address
        contact = SipUri(
            _uri_host(config.sdp_address if host in ("0.0.0.0", "::") else host),
            "sandbox",
            port=port,
        )
        uas = UasConfig(
            contact=contact,
            via_host=contact.host,
            via_port=port,
            user_agent=config.user_agent,
            timers=config.timers,
        )
        self._router = InboundRouter(uas, _new_ids())
        # One 20 ms clock for every call's RTP, as in a worker.
        self._ticker = FrameTicker(self._loop)
        # The router counts what it answers outside calls; the stats show that dict.
        self.stats.answered_outside_calls = self._router.answered

    async def close(self) -> None:
        """End every call (BYE, or 480 before the answer), then close the sockets."""
        if self._closed:
            return
        self._closed = True
        router = self._router
        if router is not None and self._loop is not None:
            now = self._loop.time()
            for call_id in list(router.calls):
                self._execute(router.hangup(call_id, now))
        tasks = [call.task for call in self._calls.values() if call.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for call in list(self._calls.values()):
            self._release_media(call)
        self._calls.clear()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._transport is not None:
            await self._transport.close()
        if self._ticker is not None:
            self._ticker.close()

    async def __aenter__(self) -> SandboxCarrier:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def address(self) -> Address:
        """The bound SIP address (host, port)."""
        if self._transport is None:
            return (self.config.host, self.config.port)
        return self._transport.address

    @property
    def uri(self) -> str:
        """The trunk URI to give the dialer (``DIALER_TRUNK_URI``)."""
        host, port = self.address
        return f"sip:{_uri_host(host)}:{port}"

    @property
    def active_calls(self) -> int:
        """Calls in progress."""
        return len(self._calls)

    # --- deciding ---------------------------------------------------------------------------

    def behaviour_for(self, call_id: str, number: str) -> Behaviour:
        """The behaviour of call ``call_id`` to ``number``, decided once per Call-ID.

        By the number's last digit, or, with ``ratios``, drawn from the
        carrier's seeded generator (so a seed repeats a run call for call).
        """
        known = self._decided.get(call_id)
        if known is not None:
            return known
        ratios = self.config.ratios
        if ratios:
            total = sum(share for _, share in ratios)
            draw = self._choices.random() * total
            behaviour = ratios[-1][0]
            for candidate, share in ratios:
                if draw < share:
                    behaviour = candidate
                    break
                draw -= share
        else:
            behaviour = behaviour_for_number(number)
        self._decided[call_id] = behaviour
        if len(self._decided) > 4096:
            self._decided.popitem(last=False)
        return behaviour

    def _person_digit(self, number: str) -> str:
        if self.config.ratios:
            return _YES if self._choices.random() < self.config.person_yes_share else _NO
        return person_digit_for_number(number)

    # --- what the transport hands us ---------------------------------------------------------

    def message_received(
        self, message: Request | Response, source: Address, transport: str
    ) -> None:
        """A parsed message from the transport."""
        router = self._router
        if router is None or self._closed:
            return
        if isinstance(message, Request):
            call_id = message.call_id
            if self._decided.get(call_id) is Behaviour.SILENT:
                self.stats.dropped_silent += 1
                return
            if (
                message.method == "INVITE"
                and message.to_tag is None
                and call_id not in router.calls
                and call_id not in self._decided
                and self.behaviour_for(call_id, _number_of(message)) is Behaviour.SILENT
            ):
                _bump(self.stats.calls, Behaviour.SILENT.value)
                _bump(self.stats.ended.setdefault(Behaviour.SILENT.value, {}), "silent")
                self.stats.dropped_silent += 1
                self._emit("call", call_id=call_id, behaviour="silent")
                return
            if message.method == "OPTIONS" and message.to_tag is None:
                self.stats.options += 1
        now = self._loop.time()  # type: ignore[union-attr]
        self._execute(router.receive(message, source, transport, now))

    def invalid_received(
        self, data: bytes, error: SipError, source: Address, transport: str
    ) -> None:
        """Bytes that did not parse: answered with the error's status when possible."""
        self.stats.malformed += 1
        if not data or self._transport is None:
            return
        response = error_response(data, error, to_tag=secrets.token_hex(6))
        if response is not None:
            self._transport.send(response.serialize(), source, transport)

    def send_failed(self, data: bytes, addr: Address, transport: str) -> None:
        """A request we sent could not go out: its transaction fails as for a 503."""
        router = self._router
        if router is None or data.startswith(b"SIP/"):
            return
        try:
            request = parse_message(data)
        except SipError:
            return
        if not isinstance(request, Request) or request.method == "ACK" or not request.branch:
            return
        key = TransactionKey(Role.CLIENT, request.branch, request.method)
        self._execute(router.transport_failed(key, self._loop.time()))  # type: ignore[union-attr]

    # --- carrying out actions ------------------------------------------------------------------

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                if self._transport is not None:
                    self._transport.send(action.data, action.addr, action.transport, action.message)  # type: ignore[attr-defined]
            elif kind is StartTimer:
                key = (action.key, action.timer)  # type: ignore[attr-defined]
                old = self._timers.pop(key, None)
                if old is not None:
                    old.cancel()
                self._timers[key] = self._loop.call_at(action.at, self._fire, key)  # type: ignore[attr-defined, union-attr]
            elif kind is CancelTimer:
                handle = self._timers.pop((action.key, action.timer), None)  # type: ignore[attr-defined]
                if handle is not None:
                    handle.cancel()
            elif kind is Incoming:
                self._incoming(action)  # type: ignore[arg-type]
            elif kind is Confirmed:
                call = self._calls.get(action.call_id)  # type: ignore[attr-defined]
                if call is not None:
                    call.confirmed_media = action.media  # type: ignore[attr-defined]
                    call.confirmed.set()
            elif kind is InboundEnded:
                self._ended(action)  # type: ignore[arg-type]
            elif kind is DtmfInfo:
                self.stats.digits_received += 1
            elif kind is MediaChanged:
                call = self._calls.get(action.call_id)  # type: ignore[attr-defined]
                if call is not None and call.session is not None and call.session.started:
                    call.session.update(self._params(call, action.media))  # type: ignore[attr-defined]

    def _fire(self, key: _TimerKey) -> None:
        if self._timers.pop(key, None) is None or self._router is None:
            return
        self._execute(self._router.timer_fired(key[0], key[1], self._loop.time()))  # type: ignore[union-attr]

    def _emit(self, event: str, **fields_: object) -> None:
        if self.on_event is not None:
            self.on_event(event, fields_)

    # --- calls -----------------------------------------------------------------------------------

    def _incoming(self, event: Incoming) -> None:
        number = _number_of(event.invite)
        behaviour = self.behaviour_for(event.call_id, number)
        digit = self._person_digit(number) if behaviour is Behaviour.PERSON else ""
        call = _Call(event.call_id, number, behaviour, digit, offered=event.offer is not None)
        self._calls[call.call_id] = call
        _bump(self.stats.calls, behaviour.value)
        self.stats.active = len(self._calls)
        self._emit("call", call_id=call.call_id, number=number, behaviour=behaviour.value)
        call.task = self._loop.create_task(self._script(call))  # type: ignore[union-attr]

    def _ended(self, event: InboundEnded) -> None:
        call = self._calls.pop(event.call_id, None)
        if call is None:
            return
        call.ended.set()
        self._release_media(call)
        reason = event.result.end_reason
        _bump(self.stats.ended.setdefault(call.behaviour.value, {}), reason)
        self.stats.active = len(self._calls)
        self._emit(
            "ended",
            call_id=call.call_id,
            behaviour=call.behaviour.value,
            end_reason=reason,
            status=event.result.final_status,
        )

    def _release_media(self, call: _Call) -> None:
        if call.session is not None:
            call.session.close()
            call.session = None
        if call.relay is not None:
            call.relay.close()
            call.relay = None

    def _do(self, call: _Call, step: Callable[[InboundRouter, float], list[Action]]) -> bool:
        """Run one step of the UAS core for a live call; False once the call is over."""
        router = self._router
        if call.ended.is_set() or router is None or call.call_id not in router.calls:
            return False
        try:
            actions = step(router, self._loop.time())  # type: ignore[union-attr]
        except UasStateError:
            return False  # the caller got there first (CANCEL, BYE)
        self._execute(actions)
        return not call.ended.is_set()

    async def _pause(self, call: _Call, seconds: float) -> bool:
        """Wait ``seconds`` unless the call ends first; True when still on."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.ended.wait(), seconds)
        return not call.ended.is_set()

    async def _script(self, call: _Call) -> None:
        try:
            match call.behaviour:
                case Behaviour.BUSY:
                    if await self._pause(call, self.config.reject_delay_s):
                        self._do(call, lambda r, now: r.reject(call.call_id, now, 486))
                case Behaviour.UNREACHABLE:
                    if await self._pause(call, self.config.reject_delay_s):
                        reason = ("Reason", 'Q.850;cause=1;text="Unallocated number"')
                        self._do(
                            call, lambda r, now: r.reject(call.call_id, now, 404, headers=[reason])
                        )
                case Behaviour.NO_ANSWER:
                    if await self._ring(call) and await self._pause(
                        call, self.config.no_answer_max_s
                    ):
                        self._do(call, lambda r, now: r.reject(call.call_id, now, 480))
                case Behaviour.PERSON:
                    await self._person(call)
                case Behaviour.VOICEMAIL:
                    await self._voicemail(call)
        except (OSError, PortsExhausted):
            # No media ports or sockets: a carrier would say it is congested.
            if not call.answered:
                self._do(call, lambda r, now: r.reject(call.call_id, now, 503))
        except Exception:
            # A bug in a script must not take the carrier down; the call ends.
            _log.exception("sandbox call %s (%s) failed", call.call_id, call.behaviour.value)
        finally:
            if not call.ended.is_set() and call.behaviour in (
                Behaviour.PERSON,
                Behaviour.VOICEMAIL,
            ):
                self._do(call, lambda r, now: r.hangup(call.call_id, now))

    async def _ring(self, call: _Call) -> bool:
        """Send 180, or 183 with SDP and a ringback tone when early media is on."""
        if not self.config.early_media or not call.offered:
            return self._do(call, lambda r, now: r.ring(call.call_id, now))
        media = await self._open_media(call)
        if not self._do(call, lambda r, now: r.ring(call.call_id, now, status=183, media=media)):
            return False
        for _ in range(60):  # six minutes of cadence, more than any ring
            call.queue.enqueue(_RINGBACK_ON)
            call.queue.enqueue(_RINGBACK_OFF)
        return await self._start_media(call)

    async def _answer(self, call: _Call) -> bool:
        media = await self._open_media(call)
        if not self._do(call, lambda r, now: r.answer(call.call_id, now, media)):
            return False
        call.answered = True
        call.queue.clear()
        _bump(self.stats.answered, call.behaviour.value)
        self._emit("answered", call_id=call.call_id, behaviour=call.behaviour.value)
        if self._router is not None and self._router.calls[call.call_id].agreed is None:
            # An offerless INVITE: the answer comes in the ACK.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    call.confirmed.wait(), self.config.timers.transaction_timeout_s
                )
        return await self._start_media(call)

    async def _open_media(self, call: _Call) -> LocalMedia:
        address = self.config.sdp_address
        if call.session is None:
            ports = bind_pair(self._allocator, self.config.host)
            call.session = await RtpSession.create(
                ports,
                SessionConfig(media_timeout_s=None, cname="sandbox"),
                ticker=self._ticker,
                source=call.queue,
                on_audio=self._on_audio(call),
                on_dtmf=self._on_dtmf,
                rng=random.Random(self._rng.getrandbits(64)),
            )
            if self.config.network.active:
                relay_ports = bind_pair(self._allocator, self.config.host)
                call.relay = _Relay(
                    relay_ports,
                    self.config.network,
                    random.Random(self._rng.getrandbits(64)),
                    self.stats,
                )
        port = call.relay.ports.rtp_port if call.relay is not None else call.session.local_rtp_port
        return LocalMedia(address, port, codecs=("PCMU", "PCMA"), telephone_event_pt=101)

    def _on_audio(self, call: _Call) -> Callable[[NDArray[np.int16]], None]:
        def hear(samples: NDArray[np.int16]) -> None:
            if call.listener is not None:
                call.listener.frame(samples)

        return hear

    def _on_dtmf(self, digit: DtmfDigit) -> None:
        self.stats.digits_received += 1

    def _params(self, call: _Call, agreed: MediaAnswer) -> MediaParams:
        codec = PCMA if agreed.codec.name == "PCMA" else PCMU
        remote = (agreed.remote_address, agreed.remote_port)
        if call.relay is not None:
            host = self.config.sdp_address
            remote = (host, call.relay.ports.rtp_port)
        return MediaParams(
            remote_rtp=remote, codec=codec, dtmf_payload_type=agreed.telephone_event_pt
        )

    async def _start_media(self, call: _Call) -> bool:
        router = self._router
        session = call.session
        if call.ended.is_set() or router is None or session is None:
            return False
        inbound = router.calls.get(call.call_id)
        agreed = call.confirmed_media or (inbound.agreed if inbound is not None else None)
        if agreed is None:
            self._do(call, lambda r, now: r.hangup(call.call_id, now))
            return False
        if session.started:
            return True
        if call.relay is not None and not call.relay.legs:
            inner = (self.config.sdp_address, session.local_rtp_port)
            await call.relay.open(inner, (agreed.remote_address, agreed.remote_port))
            if call.ended.is_set() or call.session is not session:
                return False
        session.start(self._params(call, agreed))
        return True

    async def _speak(self, text: str, seed: int) -> Prompt:
        if self._speech is not None:
            try:
                return await self._speech.render(text)
            except (PromptError, OSError):
                pass
        self.stats.speech_fallbacks += 1
        return babble(0.065 * len(text), seed)

    async def _person(self, call: _Call) -> None:
        config = self.config
        name = _name_for(call.number)
        greeting = asyncio.ensure_future(
            self._speak(f"Hello, this is {name}?", zlib.crc32(name.encode()))
        )
        try:
            ring_s = self._rng.uniform(*config.ring_s)
            if not (await self._ring(call) and await self._pause(call, ring_s)):
                return
            hello = await greeting
        finally:
            if not greeting.done():
                greeting.cancel()
        if not await self._answer(call):
            return
        answered_at = self._loop.time()  # type: ignore[union-attr]
        call.queue.enqueue(silence(300))
        call.queue.enqueue(hello)
        listener = call.listener = _Listener(
            config.speech_threshold, config.person_min_speech_s, config.person_quiet_s
        )
        # Listen from the start (the caller may talk over the hello), but
        # answer only once the hello is out, as a person would.
        listener.enabled = True
        if not await self._pause(call, hello.duration_s + 0.3):
            return
        deadline = config.person_reply_after_s
        waiter = asyncio.ensure_future(listener.prompt_over.wait())
        ended = asyncio.ensure_future(call.ended.wait())
        try:
            await asyncio.wait(
                {waiter, ended}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            ended.cancel()
        if call.ended.is_set():
            return
        self._press(call, call.digit)
        talked_s = self._loop.time() - answered_at  # type: ignore[union-attr]
        await self._pause(call, max(0.0, config.person_max_s - talked_s))

    def _press(self, call: _Call, digit: str) -> None:
        session = call.session
        router = self._router
        if session is None or router is None:
            return
        inbound = router.calls.get(call.call_id)
        agreed = call.confirmed_media or (inbound.agreed if inbound is not None else None)
        _bump(self.stats.digits_sent, digit)
        self._emit("digit", call_id=call.call_id, digit=digit)
        if agreed is not None and agreed.telephone_event_pt is not None:
            session.send_dtmf(digit, duration_ms=160)
            return
        # The caller takes no RFC 4733 events: relay the key in an INFO.
        self.stats.digits_by_info += 1
        body = f"Signal={digit}\r\nDuration=160\r\n".encode()
        self._do(call, lambda r, now: r.send_info(call.call_id, now, body))

    async def _voicemail(self, call: _Call) -> None:
        config = self.config
        name = _name_for(call.number)
        length_s = self._rng.uniform(*config.voicemail_greeting_s)
        greeting = asyncio.ensure_future(self._greeting(name, length_s))
        try:
            ring_s = self._rng.uniform(*config.ring_s)
            if not (await self._ring(call) and await self._pause(call, ring_s)):
                return
            prompt = await greeting
        finally:
            if not greeting.done():
                greeting.cancel()
        if not await self._answer(call):
            return
        beep = tone((config.beep_hz,), config.beep_ms, 12000.0)

        def on_mark(mark: str, played: bool) -> None:
            if played and mark == "beep":
                self.stats.beeps += 1
                self._emit("beep", call_id=call.call_id)

        call.queue.on_mark = on_mark
        call.queue.enqueue(prompt)
        call.queue.enqueue(silence(300))  # the greeting ends, then the tone
        call.queue.enqueue(beep)
        call.queue.mark("beep")
        await self._pause(call, prompt.duration_s + 0.3 + beep.duration_s + config.voicemail_max_s)

    async def _greeting(self, name: str, length_s: float) -> Prompt:
        """Spoken sentences, in order, cut at ``length_s`` (a greeting of that length)."""
        parts: list[NDArray[np.int16]] = []
        total = 0
        want = max(FRAME_SAMPLES, int(length_s * SAMPLE_RATE) // FRAME_SAMPLES * FRAME_SAMPLES)
        gap = silence(300).samples
        index = 0
        while total < want:
            text = _VOICEMAIL_SENTENCES[index % len(_VOICEMAIL_SENTENCES)].format(name=name)
            prompt = await self._speak(text, index)
            parts += [prompt.samples, gap]
            total += prompt.samples.shape[0] + gap.shape[0]
            index += 1
        joined = np.concatenate(parts)[:want]
        joined.flags.writeable = False
        return Prompt(joined, f"voicemail:{name}")


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host

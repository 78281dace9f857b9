"""An RTP session of one call over UDP: the asyncio edge of the media core.

Rules of this file:

- The pure core does the protocol work (``media.rtp``, ``media.rtcp``,
  ``media.stats``, ``media.jitter``, ``media.dtmf``, ``media.clock``); this
  file feeds it datagrams and deadlines and carries out what it returns.
  It works the same on the default event loop and on uvloop (the
  application chooses the loop).
- One clock drives the call: frame ``n`` is due at ``origin + n * 20 ms``
  (see ``media.clock.FramePacer`` for catch-up and skip). The clock is a
  ``media.ticker.FrameTicker``: one per worker, shared by its calls, when
  the application passes one (one timer per 1 ms slot instead of one per
  call every 20 ms); else the session makes its own. Each wake-up sends the
  frames due and plays out the same number of frames from the jitter
  buffer, so both legs move on one clock. The peer may send packets of any
  duration: the jitter buffer cuts them into 20 ms frames.
- Symmetric RTP (RFC 4961): we send to the address the SDP gave until the
  peer's first valid packet arrives, then latch to the address it really
  came from (NAT) and drop, and count, packets from anywhere else. RTCP
  latches the same way, on its own port.
- The RTP socket is not an event-loop transport: the clock's
  ``media.receive_poller.ReceivePoller`` reads it at each wake-up (one
  ``epoll_wait`` for every call of the worker instead of a loop wake-up
  per packet), and frames go out with a plain non-blocking ``sendto``: a
  packet the kernel cannot take now is dropped and counted (RTP is never
  queued to be sent late). RTCP, a packet every few seconds, keeps its
  transport.
- ``on_payload`` gets every played frame as 160 bytes in the call's codec
  (``codec``): a frame that is one whole packet as it came off the wire,
  anything the jitter buffer made up (silence, concealment, a frame cut
  from two packets) encoded. A caller that wants G.711 (a voicebot stream)
  takes this instead of ``on_audio`` and nothing is decoded for it.
- Callbacks (``on_audio``, ``on_payload``, ``on_dtmf``, ``on_timeout``) are plain functions
  called from the datagram handler or the timer: they must not block and
  cannot await. Arrays handed to them are valid only during the call.
- The per-packet path parses only the fixed RTP header (a ``struct``
  unpack) unless CSRCs, an extension or padding are present, logs nothing
  and allocates little.
- ``close()`` leaves the clock, cancels every timer the session owns and
  closes its sockets.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from media.clock import FramePacer, LatenessHistogram
from media.dtmf import DtmfDigit, DtmfError, DtmfReceiver, dtmf_packets, event_for_digit
from media.g711 import (
    ALAW_DECODE_TABLE,
    ALAW_ENCODE_TABLE,
    PCMA,
    PCMU,
    ULAW_DECODE_TABLE,
    ULAW_ENCODE_TABLE,
    G711Codec,
)
from media.goertzel import DtmfDetector
from media.jitter import FrameKind, JitterBuffer, JitterConfig
from media.ports import BoundPair
from media.receive_poller import ReceivePoller
from media.rtcp import (
    Bye,
    ReceiverReport,
    RtcpError,
    SenderReport,
    SourceDescription,
    ntp_from_unix,
    parse_compound,
    round_trip_delay,
    serialize_compound,
)
from media.rtp import RtpError, RtpPacket, RtpSender
from media.stats import PacketVerdict, ReceiveStatistics, SendStatistics, estimate_mos
from media.ticker import FrameTicker
from media.udp_association import associate, can_dissolve, dissolve
from media.wav import Leg

__all__ = [
    "MEDIA_TIMEOUT",
    "AudioSource",
    "FrameRecorder",
    "MediaParams",
    "RtpSession",
    "SessionConfig",
    "SessionStats",
]

MEDIA_TIMEOUT = "media_timeout"
FRAME_S = 0.020
SAMPLES_PER_FRAME = 160
_CALLEE = int(Leg.CALLEE)
_OURS = int(Leg.OURS)

_HEADER = struct.Struct("!BBHII")
_unpack_header = _HEADER.unpack_from
_monotonic = time.monotonic
_ENCODE_TABLES = {PCMU.payload_type: ULAW_ENCODE_TABLE, PCMA.payload_type: ALAW_ENCODE_TABLE}
_DECODE_TABLES = {PCMU.payload_type: ULAW_DECODE_TABLE, PCMA.payload_type: ALAW_DECODE_TABLE}


def _table_decoder(table: NDArray[np.int16]) -> Callable[[bytes], NDArray[np.int16]]:
    # The jitter buffer decodes every packet it plays: one table gather,
    # without media.g711's argument checks (the payload is always bytes here).
    def decode(payload: bytes) -> NDArray[np.int16]:
        return table.take(np.frombuffer(payload, dtype=np.uint8))

    return decode


_DECODERS = {pt: _table_decoder(table) for pt, table in _DECODE_TABLES.items()}
# A tuple: membership is an identity check (an enum's hash is a Python call).
_DROPPED_VERDICTS = (PacketVerdict.DUPLICATE, PacketVerdict.OLD_SOURCE, PacketVerdict.BAD_SEQUENCE)

Address = tuple[str, int]


class AudioSource(Protocol):
    """Where a session takes the audio it sends (``media.playback.PlaybackQueue``).

    A source may also offer ``read_payload(encode_table) -> bytes | None``:
    the next frame already encoded with that G.711 table (a prompt is then
    encoded once, not a frame at a time); the session uses it when present.
    """

    def read_frame(self) -> NDArray[np.int16] | None:
        """Return the next 20 ms frame of 8 kHz int16 audio, or ``None`` for nothing."""
        ...


class FrameRecorder(Protocol):
    """Where a session hands both legs' frames (``media.recording.CallRecorder``)."""

    def frame(self, leg: Leg | int, index: int, samples: NDArray[np.int16]) -> None:
        """Take one frame of ``leg`` at frame index ``index``."""
        ...

    def frame_payload(
        self, leg: Leg | int, index: int, payload: bytes, decode_table: NDArray[np.int16]
    ) -> None:
        """Take one frame of ``leg`` as its G.711 payload, with the table that decodes it."""
        ...


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Local media policy, the same for every call of a worker."""

    # With nothing to send: True sends encoded silence (comfort silence);
    # False stops sending, and the next packet is marked as the start of a
    # talk-spurt (RFC 3551 §4.1), which RtpSender does after skipped frames.
    send_silence: bool = True
    # No RTP from the peer for this long: on_timeout(MEDIA_TIMEOUT). None: never.
    media_timeout_s: float | None = 30.0
    rtcp: bool = True
    rtcp_interval_s: float = 5.0
    cname: str = "dialer"
    socket_buffer_bytes: int = 4 * 1024 * 1024
    # Frames sent back to back after a stall; older ones are skipped (a
    # shared FrameTicker has its own setting).
    max_burst_frames: int = 3
    dtmf_duration_ms: int = 100
    dtmf_gap_ms: int = 60
    dtmf_volume: int = 10
    # Also look for DTMF tones in the received audio (off once the peer is
    # seen sending RFC 4733 events, so a key is not reported twice).
    inband_dtmf: bool = False
    jitter: JitterConfig | None = None
    # Connect the RTP socket to the peer once its packets latch the address:
    # cheaper sends and receives, and the kernel drops other sources (which
    # are then not counted in dropped_foreign). Off: filtered and counted here.
    associate: bool = True


@dataclass(frozen=True, slots=True)
class MediaParams:
    """What the SDP offer/answer settled for this call."""

    remote_rtp: Address
    codec: G711Codec = PCMU
    dtmf_payload_type: int | None = 101
    # Where to send RTCP; by default the RTP port + 1 (RFC 3550 §11).
    remote_rtcp: Address | None = None


@dataclass(frozen=True, slots=True)
class SessionStats:
    """A snapshot of a session's counters (packets and octets on the wire)."""

    packets_sent: int
    bytes_sent: int
    packets_received: int
    bytes_received: int
    packets_expected: int
    packets_lost: int
    loss_fraction: float
    jitter_ms: float
    late: int  # arrived after their playout time (dropped by the jitter buffer)
    reordered: int  # arrived after a later packet (RFC 3550 A.1), played if in time
    duplicates: int
    concealed_frames: int
    dropped_foreign: int  # from an address other than the latched one
    dropped_invalid: int  # not RTP, or an unknown payload type
    dropped_early: int  # before start()
    frames_sent: int
    frames_skipped: int  # our send timer fell so far behind that frames were skipped
    send_lateness_p99_ms: float
    rtt_ms: float | None
    remote_loss_fraction: float | None
    remote_jitter_ms: float | None
    dtmf_sent: int
    dtmf_received: int
    mos: float


class _Datagrams(asyncio.DatagramProtocol):
    """Hands datagrams to a session method, and tells it when the socket closes."""

    def __init__(self, receive: Callable[[bytes, Address], None]) -> None:
        # An instance attribute: the loop calls the session's method directly.
        self.datagram_received = receive  # type: ignore[method-assign,assignment]
        self.errors = 0

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the peer may not be up yet.
        self.errors += 1


@dataclass(slots=True)
class _DtmfSend:
    schedule: dict[int, list[tuple[bytes, bool]]]  # frame offset -> (payload, marker)
    last_offset: int
    start_index: int
    timestamp: int


class RtpSession:
    """The RTP and RTCP of one call: sends 20 ms frames, receives, records, reports.

    Life: ``await RtpSession.create(ports, ...)`` binds the transports (the
    ports go into the SDP); ``start(params)`` once the answer is known begins
    the clock; ``update(params)`` after a re-INVITE; ``close()`` at hang-up.
    """

    def __init__(
        self,
        ports: BoundPair,
        config: SessionConfig | None = None,
        *,
        source: AudioSource | None = None,
        recorder: FrameRecorder | None = None,
        on_audio: Callable[[NDArray[np.int16]], None] | None = None,
        on_payload: Callable[[bytes], None] | None = None,
        on_dtmf: Callable[[DtmfDigit], None] | None = None,
        on_timeout: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
        ticker: FrameTicker | None = None,
    ) -> None:
        self.ports = ports
        self.config = config or SessionConfig()
        self._read_payload: Callable[[NDArray[np.uint8]], bytes | None] | None = None
        self._record_payload: Callable[[int, int, bytes, NDArray[np.int16]], None] | None = None
        self.source = source
        self.recorder = recorder
        self.on_audio = on_audio
        self.on_payload = on_payload
        self.on_dtmf = on_dtmf
        self.on_timeout = on_timeout
        self._rng = rng or random.SystemRandom()
        self._wall_clock = wall_clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rtp_sendto: Callable[[bytes, Address], int] | None = None
        # The RTP socket's send once it is associated with the latched peer.
        self._rtp_send: Callable[[bytes], int] | None = None
        self._associate_with: Address | None = None
        self._receiver: ReceivePoller | None = None
        self._rtcp_transport: asyncio.DatagramTransport | None = None
        self._params: MediaParams | None = None
        self._closed = False
        self._ticker = ticker
        self._own_ticker: FrameTicker | None = None
        self._rtcp_timer: asyncio.TimerHandle | None = None

        self.sender = RtpSender(
            ssrc=self._rng.getrandbits(32),
            payload_type=PCMU.payload_type,
            sequence_number=self._rng.getrandbits(16),
            timestamp=self._rng.getrandbits(32),
            samples_per_frame=SAMPLES_PER_FRAME,
        )
        self.send_stats = SendStatistics()
        self.receive_stats = ReceiveStatistics()
        self.lateness = LatenessHistogram()
        self.jitter = JitterBuffer(self.config.jitter, _DECODERS[PCMU.payload_type], samples_in=len)
        self._dtmf_receiver = DtmfReceiver()
        self._detector = DtmfDetector() if self.config.inband_dtmf else None
        self._pacer: FramePacer | None = None

        # Addresses: where the SDP says, until the peer's packets say otherwise.
        self._send_to: Address | None = None
        self._rtcp_send_to: Address | None = None
        self.latched: Address | None = None
        self.rtcp_latched: Address | None = None

        # Hot-path state, kept as plain attributes.
        self._audio_pt = -1
        self._dtmf_pt = -1
        self._encode_table = _ENCODE_TABLES[PCMU.payload_type]
        self._decode_table = _DECODE_TABLES[PCMU.payload_type]
        self._encoded = np.zeros(SAMPLES_PER_FRAME, dtype=np.uint8)
        self._silence_payload = bytes([PCMU.silence]) * SAMPLES_PER_FRAME
        self._last_rx = 0.0
        self._receiving = False  # an audio packet has arrived
        self._timed_out = False
        self._peer_sends_events = False

        self.dropped_foreign = 0
        self.send_errors = 0
        self.dropped_invalid = 0
        self.dropped_early = 0
        self.dtmf_received = 0
        self.dtmf_sent = 0
        self.rtt_s: float | None = None
        self.remote_loss_fraction: float | None = None
        self.remote_jitter_ms: float | None = None
        self.peer_bye = False

        self._dtmf_queue: deque[tuple[str, int]] = deque()
        self._dtmf_current: _DtmfSend | None = None
        self._dtmf_resume_index = 0
        self._rtcp_packets_at_last_report = 0

    @property
    def source(self) -> AudioSource | None:
        """Where the audio we send comes from; may be swapped at any time."""
        return self._source

    @source.setter
    def source(self, source: AudioSource | None) -> None:
        self._source = source
        self._read_payload = getattr(source, "read_payload", None)

    @property
    def recorder(self) -> FrameRecorder | None:
        """Where both legs' frames go (``None``: not recorded)."""
        return self._recorder

    @recorder.setter
    def recorder(self, recorder: FrameRecorder | None) -> None:
        self._recorder = recorder
        self._record_payload = getattr(recorder, "frame_payload", None)

    # -- life -------------------------------------------------------------------------

    @classmethod
    async def create(
        cls, ports: BoundPair, config: SessionConfig | None = None, **kwargs: Any
    ) -> RtpSession:
        """Make a session and open its transports; see ``__init__`` for the arguments."""
        session = cls(ports, config, **kwargs)
        await session.open()
        return session

    async def open(self) -> None:
        """Set up the bound sockets (4 MiB buffers) and the RTCP transport."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        for sock in (self.ports.rtp_socket, self.ports.rtcp_socket):
            _set_buffers(sock, self.config.socket_buffer_bytes)
        self.ports.rtp_socket.setblocking(False)
        self._rtp_sendto = self.ports.rtp_socket.sendto
        if self._ticker is not None:
            # On a shared clock the socket is read from now on, and what comes
            # before start() is dropped and counted (early media is not played).
            self._ticker.receiver.add(self.ports.rtp_socket, self._on_rtp)
            self._receiver = self._ticker.receiver
        rtcp, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._on_rtcp), sock=self.ports.rtcp_socket
        )
        self._rtcp_transport = rtcp  # type: ignore[assignment]

    @property
    def codec(self) -> G711Codec:
        """The audio codec in use (PCMU until ``start`` says otherwise)."""
        return PCMU if self._params is None else self._params.codec

    @property
    def local_rtp_port(self) -> int:
        """The RTP port to put in the SDP."""
        return self.ports.rtp_port

    @property
    def local_rtcp_port(self) -> int:
        """The RTCP port (RTP + 1)."""
        return self.ports.rtcp_port

    @property
    def started(self) -> bool:
        """True between ``start`` and ``close``."""
        return self._pacer is not None and not self._closed

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed

    @property
    def frame_index(self) -> int:
        """The index of the next frame on the session clock (0 before start)."""
        return self._pacer.next_index if self._pacer is not None else 0

    def start(self, params: MediaParams) -> None:
        """Begin sending and playing out on the negotiated parameters."""
        if self._loop is None or self._rtp_sendto is None:
            raise RuntimeError("open() the session before start()")
        if self._closed:
            raise RuntimeError("the session is closed")
        if self._pacer is not None:
            raise RuntimeError("the session is already started; use update()")
        self._apply(params)
        now = self._loop.time()
        self._last_rx = now
        ticker = self._ticker
        if ticker is None:
            ticker = self._own_ticker = FrameTicker(
                self._loop, slots=1, max_burst=self.config.max_burst_frames, epoch=now
            )
        self._pacer = ticker.join(self, now)
        if self._receiver is None:
            # What is queued now arrived around the answer: it is this call's.
            ticker.receiver.add(self.ports.rtp_socket, self._on_rtp)
            self._receiver = ticker.receiver
        if self.config.rtcp:
            self._schedule_rtcp()

    def update(self, params: MediaParams) -> None:
        """New negotiated parameters (re-INVITE): new address, codec or event type.

        The latch is released, so the next packets from the new address win.
        """
        self._apply(params)

    def _apply(self, params: MediaParams) -> None:
        codec = params.codec
        if codec.payload_type not in _ENCODE_TABLES:
            raise ValueError(f"codec {codec.name} is not G.711 PCMU or PCMA")
        old = self._params
        self._params = params
        self._send_to = params.remote_rtp
        self._rtcp_send_to = params.remote_rtcp or (params.remote_rtp[0], params.remote_rtp[1] + 1)
        self._dissociate()
        self._associate_with = None
        self.latched = None
        self.rtcp_latched = None
        self._audio_pt = codec.payload_type
        self._dtmf_pt = -1 if params.dtmf_payload_type is None else params.dtmf_payload_type
        self.sender.payload_type = codec.payload_type
        self._encode_table = _ENCODE_TABLES[codec.payload_type]
        self._decode_table = _DECODE_TABLES[codec.payload_type]
        self._silence_payload = bytes([codec.silence]) * SAMPLES_PER_FRAME
        # The buffer made with the session decodes PCMU: kept unless the codec differs.
        if (PCMU if old is None else old.codec) is not codec:
            self.jitter = JitterBuffer(
                self.config.jitter, _DECODERS[codec.payload_type], samples_in=len
            )

    def close(self) -> None:
        """Stop: cancel the timers, send an RTCP BYE, close the sockets (idempotent)."""
        if self._closed:
            return
        if self._pacer is not None and self.config.rtcp:
            self._send_rtcp(bye=True)
        self._closed = True
        if self._own_ticker is not None:
            self._own_ticker.close()
        elif self._ticker is not None:
            self._ticker.leave(self)
        if self._rtcp_timer is not None:
            self._rtcp_timer.cancel()
        self._rtcp_timer = None
        if self._receiver is not None:
            self._receiver.remove(self.ports.rtp_socket)
            self._receiver = None
        self._rtp_sendto = self._rtp_send = None
        self.ports.rtp_socket.close()
        if self._rtcp_transport is not None:
            # The transport closes the RTCP socket; the pair goes back to the
            # allocator now (a pair acquired before it is closed is skipped).
            self._rtcp_transport.close()
            self.ports.release()
        else:
            self.ports.close()

    # -- sending ------------------------------------------------------------------------

    def send_dtmf(self, digits: str, *, duration_ms: int | None = None) -> None:
        """Queue DTMF digits to send as RFC 4733 events, one after another."""
        if self._params is not None and self._params.dtmf_payload_type is None:
            raise ValueError("the peer did not accept telephone-event: cannot send RFC 4733 DTMF")
        duration = duration_ms or self.config.dtmf_duration_ms
        for digit in digits:
            event_for_digit(digit)  # raises ValueError for a non-DTMF character
            self._dtmf_queue.append((digit, duration))

    @property
    def ticking(self) -> bool:
        """True while the session is on a clock (between ``start`` and ``close``)."""
        return self.started

    @property
    def dtmf_pending(self) -> int:
        """Digits queued or being sent."""
        return len(self._dtmf_queue) + (self._dtmf_current is not None)

    def on_frames(self, skip: int, send: int, now: float, deadline: float) -> None:
        """The clock's call: skip ``skip`` frames, then send ``send``; play out as many."""
        if self._closed:
            return
        pacer = self._pacer
        assert pacer is not None
        first = pacer.next_index
        index = first + skip
        end = index + send
        pacer.next_index = end
        pacer.frames_skipped += skip
        pacer.frames_sent += send
        for skipped in range(first, index):
            self._skip_frame(skipped)
            self._play_frame(skipped, now)
        origin = pacer.origin
        while index < end:
            self._send_frame(index, origin + index * FRAME_S)
            self._play_frame(index, now)
            index += 1

        if self._associate_with is not None:
            self._associate(self._associate_with)
        if self._peer_sends_events:
            for digit in self._dtmf_receiver.poll(now):
                self._report_dtmf(digit)
        timeout = self.config.media_timeout_s
        if timeout is not None and not self._timed_out and now - self._last_rx >= timeout:
            self._timed_out = True
            if self.on_timeout is not None:
                self.on_timeout(MEDIA_TIMEOUT)

    def _skip_frame(self, index: int) -> None:
        # Fallen too far behind: this frame's time has gone. Its audio is
        # dropped so the prompt stays on time, and the RTP clock moves on.
        if (
            (self._dtmf_queue or self._dtmf_current is not None)
            and self._dtmf_pt >= 0
            and self._dtmf_frame(index, send=False)
        ):
            return
        if self._source is not None:
            self._source.read_frame()
        self.sender.skip(1)

    def _send_frame(self, index: int, deadline: float) -> None:
        if (
            (self._dtmf_queue or self._dtmf_current is not None)
            and self._dtmf_pt >= 0
            and self._dtmf_frame(index, send=True)
        ):
            return
        read_payload = self._read_payload
        if read_payload is not None:
            payload = read_payload(self._encode_table)
        else:
            source = self._source
            pcm = source.read_frame() if source is not None else None
            # The codec's table indexed by the samples as uint16: what
            # media.g711 does, without its argument checks on the hot path.
            payload = (
                None
                if pcm is None
                else self._encode_table.take(pcm.view(np.uint16), out=self._encoded).tobytes()
            )
        if payload is None:
            if not self.config.send_silence:
                self.sender.skip(1)
                return
            payload = self._silence_payload
        elif self._record_payload is not None:
            # What went on the wire is what is recorded, decoded a chunk at a time.
            self._record_payload(_OURS, index, payload, self._decode_table)
        elif self._recorder is not None:
            self._recorder.frame(
                _OURS, index, self._decode_table.take(np.frombuffer(payload, dtype=np.uint8))
            )
        data = self.sender.packet(payload)
        send = self._rtp_send
        try:
            if send is not None:
                send(data)
            elif self._rtp_sendto is not None:
                self._rtp_sendto(data, self.latched or self._send_to)  # type: ignore[arg-type]  # set by start()
        except OSError:
            # Buffer full (EAGAIN), no route, ICMP refusal: this packet is lost.
            self.send_errors += 1
        # SendStatistics.on_sent, inline: this runs for every packet of every call.
        send_stats = self.send_stats
        send_stats.packets_sent += 1
        send_stats.bytes_sent += len(data)
        send_stats.payload_bytes_sent += SAMPLES_PER_FRAME
        self.lateness.record(_monotonic() - deadline)

    def _dtmf_frame(self, index: int, *, send: bool) -> bool:
        """Send this frame's event packets, if a digit is on; True when the frame was one."""
        current = self._dtmf_current
        if current is None:
            if not self._dtmf_queue or index < self._dtmf_resume_index:
                return False
            digit, duration_ms = self._dtmf_queue.popleft()
            schedule: dict[int, list[tuple[bytes, bool]]] = {}
            for packet in dtmf_packets(
                digit, duration_ms=duration_ms, volume=self.config.dtmf_volume
            ):
                offset = packet.offset_ms // 20
                schedule.setdefault(offset, []).append((packet.payload, packet.marker))
            current = _DtmfSend(schedule, max(schedule), index, self.sender.timestamp)
            self._dtmf_current = current
            self.dtmf_sent += 1
        offset = index - current.start_index
        sendto = self._rtp_sendto
        if send and sendto is not None:
            # RFC 4733 §2.5.1: every packet of the event carries the timestamp
            # of its start; the sequence numbers are the stream's own.
            for payload, marker in current.schedule.get(offset, ()):
                data = self.sender.event_packet(
                    payload,
                    payload_type=self._dtmf_pt,
                    timestamp=current.timestamp,
                    marker=marker,
                )
                try:
                    if self._rtp_send is not None:
                        self._rtp_send(data)
                    else:
                        sendto(data, self.latched or self._send_to)  # type: ignore[arg-type]  # set by start()
                except OSError:
                    self.send_errors += 1
                    continue
                self.send_stats.on_sent(len(data), len(payload))
        self.sender.skip(1)
        if offset >= current.last_offset:
            self._dtmf_current = None
            self._dtmf_resume_index = index + 1 + self.config.dtmf_gap_ms // 20
        return True

    # -- receiving ----------------------------------------------------------------------

    def _on_rtp(self, data: bytes, addr: Address) -> None:
        if addr != self.latched:
            if self.latched is not None:
                self.dropped_foreign += 1
                return
            if self._pacer is None or self._closed:
                self.dropped_early += 1
                return
        size = len(data)
        if size < 12:
            self.dropped_invalid += 1
            return
        first, second, sequence_number, timestamp, ssrc = _unpack_header(data)
        if first & 0xC0 != 0x80:
            self.dropped_invalid += 1
            return
        payload_type = second & 0x7F
        if first & 0x3F:
            # CSRCs, an extension or padding: the full parser finds the payload.
            try:
                payload = RtpPacket.parse(data).payload
            except RtpError:
                self.dropped_invalid += 1
                return
        else:
            payload = data[12:]
        if payload_type != self._audio_pt and payload_type != self._dtmf_pt:
            self.dropped_invalid += 1
            return
        if self.latched is None:
            self.latched = addr
            if self.config.associate:
                self._associate_with = addr  # at the next frame, outside the poller's pass
        now = self._loop.time()  # type: ignore[union-attr]
        self._last_rx = now
        if self._timed_out:
            self._timed_out = False
        verdict = self.receive_stats.receive_packet(ssrc, sequence_number, timestamp, now, size)
        if payload_type == self._audio_pt:
            if verdict not in _DROPPED_VERDICTS:
                self.jitter.put(sequence_number, timestamp, payload, now, ssrc)
                self._receiving = True
            return
        if verdict is PacketVerdict.OLD_SOURCE:
            return
        self._peer_sends_events = True
        try:
            digits = self._dtmf_receiver.receive(
                timestamp=timestamp, payload=payload, now=now, marker=bool(second & 0x80)
            )
        except DtmfError:
            self.dropped_invalid += 1
            return
        for digit in digits:
            self._report_dtmf(digit)

    def _report_dtmf(self, digit: DtmfDigit) -> None:
        self.dtmf_received += 1
        if self.on_dtmf is not None:
            self.on_dtmf(digit)

    def _play_frame(self, index: int, now: float) -> None:
        if not self._receiving:
            return
        jitter = self.jitter
        # G.711 (samples_in=len): a frame that is one whole packet comes as its
        # payload, decoded here only for whoever needs the samples.
        frame = jitter.next_payload(now)
        detector = self._detector
        on_audio = self.on_audio
        payload: bytes | None = None
        samples: NDArray[np.int16] | None = None
        if isinstance(frame, bytes):
            payload = frame
            if on_audio is not None or detector is not None:
                samples = self._decode_table.take(np.frombuffer(frame, dtype=np.uint8))
        else:
            samples = frame
        if on_audio is not None and samples is not None:
            on_audio(samples)
        kind = jitter.kind
        on_payload = self.on_payload
        if on_payload is not None:
            if payload is not None:
                on_payload(payload)  # as it came off the wire: no decode, no encode
            elif kind is FrameKind.SILENCE or samples is None:
                on_payload(self._silence_payload)
            else:  # made up by the jitter buffer (parts of packets, concealment)
                on_payload(self._encode_table.take(samples.view(np.uint16)).tobytes())
        if kind is FrameKind.SILENCE:
            return  # a hole the recorder fills with zeros
        recorder = self._recorder
        if recorder is not None:
            if samples is not None:
                recorder.frame(_CALLEE, index, samples)
            elif payload is not None:
                if self._record_payload is not None:
                    self._record_payload(_CALLEE, index, payload, self._decode_table)
                else:
                    recorder.frame(
                        _CALLEE,
                        index,
                        self._decode_table.take(np.frombuffer(payload, dtype=np.uint8)),
                    )
        if (
            kind is FrameKind.AUDIO
            and detector is not None
            and samples is not None
            and not self._peer_sends_events
        ):
            for digit in detector.process(samples):
                self._report_dtmf(digit)

    # -- the association with the latched peer ------------------------------------------

    def _associate(self, addr: Address) -> None:
        # Symmetric RTP, done by the kernel from here on: the socket sends to
        # and takes datagrams from the latched address only (media.udp_association).
        self._associate_with = None
        if addr != self.latched or not can_dissolve() or self._receiver is None:
            return
        sock = self.ports.rtp_socket
        try:
            associate(sock, addr)
        except OSError:
            return  # stay unconnected: the session works the same, a little dearer
        self._rtp_send = sock.send
        # What arrived before the association is still queued, from whoever
        # sent it: read it with its source before the poller reads by recv.
        while True:
            try:
                data, source = sock.recvfrom(2048)
            except OSError:
                break
            self._on_rtp(data, source)
        self._receiver.connected(sock, addr)

    def _dissociate(self) -> None:
        if self._rtp_send is None:
            return
        sock = self.ports.rtp_socket
        self._rtp_send = None
        if self._receiver is not None:
            self._receiver.connected(sock, None)
        dissolve(sock)

    # -- RTCP ---------------------------------------------------------------------------

    def _schedule_rtcp(self) -> None:
        assert self._loop is not None
        # RFC 3550 §6.3.5: the interval is randomized over [0.5, 1.5] times the
        # nominal one, so calls set up together do not report together.
        delay = self.config.rtcp_interval_s * (0.5 + self._rng.random())
        self._rtcp_timer = self._loop.call_later(delay, self._rtcp_tick)

    def _rtcp_tick(self) -> None:
        self._schedule_rtcp()
        self._send_rtcp(bye=False)

    def _send_rtcp(self, *, bye: bool) -> None:
        transport = self._rtcp_transport
        destination = self.rtcp_latched or self._rtcp_send_to
        if transport is None or destination is None or self._loop is None:
            return
        now = self._loop.time()
        block = self.receive_stats.report_block(now)
        blocks = () if block is None else (block,)
        sender = self.sender
        report: SenderReport | ReceiverReport
        if sender.packet_count != self._rtcp_packets_at_last_report:
            # RFC 3550 §6.4: an SR when we sent since the last report. The RTP
            # timestamp is the sending clock at this instant, not at a frame.
            self._rtcp_packets_at_last_report = sender.packet_count
            ahead = 0.0
            if self._pacer is not None:
                ahead = self._pacer.deadline() - now
            rtp_now = (sender.timestamp - int(ahead * 8000)) & 0xFFFFFFFF
            report = SenderReport(
                ssrc=sender.ssrc,
                ntp_timestamp=ntp_from_unix(self._wall_clock()),
                rtp_timestamp=rtp_now,
                packet_count=sender.packet_count,
                octet_count=sender.octet_count,
                reports=blocks,
            )
        else:
            report = ReceiverReport(ssrc=sender.ssrc, reports=blocks)
        packets: list = [report, SourceDescription.cname_only(sender.ssrc, self.config.cname)]
        if bye:
            packets.append(Bye((sender.ssrc,)))
        transport.sendto(serialize_compound(packets), destination)

    def _on_rtcp(self, data: bytes, addr: Address) -> None:
        if self.rtcp_latched is not None and addr != self.rtcp_latched:
            self.dropped_foreign += 1
            return
        if self._pacer is None or self._closed:
            return
        try:
            packets = parse_compound(data)
        except RtcpError:
            self.dropped_invalid += 1
            return
        if self.rtcp_latched is None:
            self.rtcp_latched = addr
        now = self._loop.time()  # type: ignore[union-attr]
        wall = self._wall_clock()
        ours = self.sender.ssrc
        for packet in packets:
            if isinstance(packet, SenderReport):
                self.receive_stats.on_sender_report(
                    ssrc=packet.ssrc, ntp_timestamp=packet.ntp_timestamp, arrival=now
                )
            if isinstance(packet, SenderReport | ReceiverReport):
                for block in packet.reports:
                    if block.ssrc != ours:
                        continue
                    rtt = round_trip_delay(block, wall)
                    if rtt is not None:
                        self.rtt_s = rtt
                    self.remote_loss_fraction = block.fraction_lost / 256
                    self.remote_jitter_ms = block.jitter * 1000 / 8000
            elif isinstance(packet, Bye):
                self.peer_bye = True

    # -- statistics ---------------------------------------------------------------------

    def stats(self) -> SessionStats:
        """A snapshot of the counters, with an estimated MOS of the received leg."""
        receive = self.receive_stats
        jitter_stats = self.jitter.stats
        pacer = self._pacer
        rtt_ms = None if self.rtt_s is None else self.rtt_s * 1000
        delay_ms = (rtt_ms or 0.0) / 2 + self.jitter.target_delay_ms + FRAME_S * 1000
        return SessionStats(
            packets_sent=self.send_stats.packets_sent,
            bytes_sent=self.send_stats.bytes_sent,
            packets_received=receive.packets_received,
            bytes_received=receive.bytes_received,
            packets_expected=receive.expected,
            packets_lost=max(0, receive.cumulative_lost),
            loss_fraction=receive.loss_fraction,
            jitter_ms=receive.jitter_ms,
            late=jitter_stats.late,
            reordered=receive.late,
            duplicates=receive.duplicates,
            concealed_frames=jitter_stats.concealed,
            dropped_foreign=self.dropped_foreign,
            dropped_invalid=self.dropped_invalid,
            dropped_early=self.dropped_early,
            frames_sent=0 if pacer is None else pacer.frames_sent,
            frames_skipped=0 if pacer is None else pacer.frames_skipped,
            send_lateness_p99_ms=self.lateness.percentile(0.99) * 1000,
            rtt_ms=rtt_ms,
            remote_loss_fraction=self.remote_loss_fraction,
            remote_jitter_ms=self.remote_jitter_ms,
            dtmf_sent=self.dtmf_sent,
            dtmf_received=self.dtmf_received,
            mos=estimate_mos(one_way_delay_ms=delay_ms, loss_fraction=receive.loss_fraction),
        )


def _set_buffers(sock: socket.socket, size: int) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            # The kernel caps the size at net.core.[rw]mem_max; what it grants
            # is still the best we can have.
            continue

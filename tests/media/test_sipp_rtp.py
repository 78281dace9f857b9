"""RtpSession against SIPp, an independent RTP peer (Debian package sip-tester).

SIPp runs as a UAS with a small scenario written here; the test is the UAC,
with a hand-written INVITE/ACK/BYE over a plain UDP socket whose SDP points
SIPp's media at our session. Three calls:

- SIPp plays speech from its own ``g711a.pcap`` (30 ms packets, and the same
  audio re-cut into 20 ms packets): it arrives, sample for sample.
- SIPp plays a tone in 30 ms packets into a recorded call: the WAV holds
  it for its length, at its frequency.
- SIPp plays its RFC 4733 pcaps (one per key): each digit is reported once.
- SIPp echoes (``-rtp_echo``) what we send: it comes back intact.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import struct
import uuid
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from media.dtmf import DtmfDigit
from media.g711 import PCMA, PCMU, alaw_decode, ulaw_decode, ulaw_encode
from media.playback import PlaybackQueue, prompt_from_samples
from media.ports import PortAllocator, bind_pair
from media.recording import CallRecorder
from media.session import MediaParams, RtpSession, SessionConfig

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("sipp") is None, reason="sipp is not installed (Debian package sip-tester)"
    ),
]

HOST = "127.0.0.1"
PCAP_DIR = Path("/usr/share/sip-tester")
WAIT_S = 15.0

_PCAP_HEADER = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")


# -- pcap files ---------------------------------------------------------------------------


def read_pcap(path: Path) -> list[tuple[float, bytes]]:
    """(time, frame) records of a little-endian Ethernet pcap, as sip-tester ships them."""
    data = path.read_bytes()
    magic, *_, linktype = _PCAP_HEADER.unpack_from(data)
    assert magic == 0xA1B2C3D4 and linktype == 1, f"{path}: not a little-endian Ethernet pcap"
    records = []
    offset = _PCAP_HEADER.size
    while offset < len(data):
        seconds, micros, length, _ = _PCAP_RECORD.unpack_from(data, offset)
        offset += _PCAP_RECORD.size
        records.append((seconds + micros / 1e6, data[offset : offset + length]))
        offset += length
    return records


def write_pcap(path: Path, records: list[tuple[float, bytes]]) -> None:
    parts = [_PCAP_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for when, frame in records:
        seconds = int(when)
        parts.append(
            _PCAP_RECORD.pack(seconds, round((when - seconds) * 1e6), len(frame), len(frame))
        )
        parts.append(frame)
    path.write_bytes(b"".join(parts))


def rtp_of(frame: bytes) -> bytes:
    """The UDP payload of an Ethernet/IPv4/UDP frame."""
    ip = frame[14:]
    return ip[(ip[0] & 0x0F) * 4 + 8 :]


def udp_frame(rtp: bytes, source_port: int = 10002, destination_port: int = 10000) -> bytes:
    udp = struct.pack("!HHHH", source_port, destination_port, 8 + len(rtp), 0) + rtp
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
        socket.inet_aton(HOST), socket.inet_aton(HOST),
    )  # fmt: skip
    words = struct.unpack("!10H", header)
    total = sum(words)
    total = (total & 0xFFFF) + (total >> 16)
    checksum = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
    header = header[:10] + struct.pack("!H", checksum) + header[12:]
    return b"\x00" * 12 + b"\x08\x00" + header + udp


def recut_pcap(target: Path, first: int, count: int, ptime_ms: int) -> bytes:
    """Packets ``first..first+count`` of g711a.pcap re-cut into ``ptime_ms`` packets.

    The shipped capture uses 30 ms packets; the same A-law bytes are sent in
    packets of the duration asked for. Returns the A-law bytes sent.
    """
    records = read_pcap(PCAP_DIR / "g711a.pcap")[first : first + count]
    audio = b"".join(rtp_of(frame)[12:] for _, frame in records)
    return write_rtp_pcap(target, audio, payload_type=8, ptime_ms=ptime_ms)


def write_rtp_pcap(target: Path, audio: bytes, *, payload_type: int, ptime_ms: int) -> bytes:
    """G.711 ``audio`` as an RTP stream of ``ptime_ms`` packets; returns the bytes sent."""
    size = 8 * ptime_ms
    audio = audio[: len(audio) // size * size]
    packets = []
    for k in range(len(audio) // size):
        rtp = (
            struct.pack("!BBHII", 0x80, payload_type, 1000 + k, size * k, 0x5151)
            + audio[size * k : size * (k + 1)]
        )
        packets.append((1000.0 + ptime_ms / 1000 * k, udp_frame(rtp)))
    write_pcap(target, packets)
    return audio


def dtmf_pcap(target: Path, keys: list[str], spacing_s: float = 0.25) -> None:
    """sip-tester's one-key RFC 4733 pcaps, back to back ``spacing_s`` apart."""
    records = []
    for n, key in enumerate(keys):
        key_records = read_pcap(PCAP_DIR / f"dtmf_2833_{key}.pcap")
        base = key_records[0][0]
        records += [(n * spacing_s + when - base, frame) for when, frame in key_records]
    write_pcap(target, records)


# -- SIPp and a hand-written UAC --------------------------------------------------------------

SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="media peer for RtpSession tests">
  <recv request="INVITE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=sipp 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP {payload_type} 101
      a=rtpmap:101 telephone-event/8000

    ]]>
  </send>
  <recv request="ACK"/>
  {media}
  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


def free_udp_port(count: int = 1) -> int:
    """An even port with ``count`` free ports from it (SIPp echoes on media port + 2)."""
    allocator = PortAllocator(46000, 46999, start_port=46000 + 2 * (uuid.uuid4().int % 400))
    while True:
        pair = allocator.acquire()
        sockets = []
        try:
            for port in range(pair.rtp, pair.rtp + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind((HOST, port))
            return pair.rtp
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()


class SipUdp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.responses: asyncio.Queue[str] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.responses.put_nowait(data.decode(errors="replace"))


class Call:
    """A minimal UAC: INVITE (retransmitted until answered), ACK, BYE."""

    def __init__(self, transport: asyncio.DatagramTransport, sip: SipUdp, sipp_port: int) -> None:
        self.transport = transport
        self.sip = sip
        self.remote = (HOST, sipp_port)
        self.local_port = transport.get_extra_info("sockname")[1]
        self.call_id = f"{uuid.uuid4().hex}@{HOST}"
        self.from_tag = uuid.uuid4().hex[:8]
        self.to_tag = ""

    def _request(self, method: str, cseq: int, body: str = "") -> bytes:
        lines = [
            f"{method} sip:service@{HOST}:{self.remote[1]} SIP/2.0",
            f"Via: SIP/2.0/UDP {HOST}:{self.local_port};branch=z9hG4bK{uuid.uuid4().hex[:12]}",
            "Max-Forwards: 70",
            f"From: <sip:test@{HOST}:{self.local_port}>;tag={self.from_tag}",
            f"To: <sip:service@{HOST}:{self.remote[1]}>"
            + (f";tag={self.to_tag}" if self.to_tag else ""),
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:test@{HOST}:{self.local_port}>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    async def invite(self, rtp_port: int, payload_type: int) -> tuple[str, int]:
        """Send the offer until a 200 arrives; return SIPp's media address from its answer."""
        sdp = "\r\n".join(
            [
                "v=0",
                f"o=test 1 1 IN IP4 {HOST}",
                "s=-",
                f"c=IN IP4 {HOST}",
                "t=0 0",
                f"m=audio {rtp_port} RTP/AVP {payload_type} 101",
                "a=rtpmap:101 telephone-event/8000",
                "",
            ]
        )
        invite = self._request("INVITE", 1, sdp)
        for _ in range(int(WAIT_S / 0.5)):
            self.transport.sendto(invite, self.remote)  # RFC 3261 timer A, simplified
            try:
                response = await asyncio.wait_for(self.sip.responses.get(), 0.5)
            except TimeoutError:
                continue
            if response.startswith("SIP/2.0 200"):
                break
        else:
            pytest.fail("SIPp never answered the INVITE")
        tag = re.search(r"^To:.*;tag=([^;\s]+)", response, re.MULTILINE | re.IGNORECASE)
        media_ip = re.search(r"^c=IN IP4 (\S+)", response, re.MULTILINE)
        media_port = re.search(r"^m=audio (\d+)", response, re.MULTILINE)
        assert tag and media_ip and media_port, response
        self.to_tag = tag.group(1)
        self.transport.sendto(self._request("ACK", 1), self.remote)
        return media_ip.group(1), int(media_port.group(1))

    async def bye(self) -> None:
        self.transport.sendto(self._request("BYE", 2), self.remote)
        response = await asyncio.wait_for(self.sip.responses.get(), WAIT_S)
        assert response.startswith("SIP/2.0 200"), response


class Sipp:
    """One SIPp UAS process for one call."""

    def __init__(self, tmp_path: Path, media: str, payload_type: int, *, echo: bool = False):
        self.tmp_path = tmp_path
        self.scenario = tmp_path / "uas.xml"
        self.scenario.write_text(
            SCENARIO.replace("{media}", media).replace("{payload_type}", str(payload_type))
        )
        self._pick_ports()
        self.echo = echo
        self.process: asyncio.subprocess.Process | None = None

    def _pick_ports(self) -> None:
        self.media_port = free_udp_port(count=4)
        self.sip_port = free_udp_port()
        while self.media_port <= self.sip_port < self.media_port + 4:
            self.sip_port = free_udp_port()

    async def __aenter__(self) -> Sipp:
        # SIPp exits at once when a port it wants is taken between our probe and
        # its bind; start again on fresh ports rather than wait out the test.
        failures = []
        for _ in range(3):
            self.process = await self._spawn()
            status = await self._listening()
            if status is None:
                await asyncio.sleep(0.1)  # a port taken by someone else looks bound too
                if self.process.returncode is None:
                    return self
                status = self.process.returncode
            assert self.process.stderr is not None
            failures.append(f"status {status}: {(await self.process.stderr.read()).decode()}")
            self.sip_port = free_udp_port()
            self.media_port = free_udp_port(count=4)
        pytest.fail("SIPp did not start:\n" + "\n".join(failures))

    async def _spawn(self) -> asyncio.subprocess.Process:
        arguments = [
            "-sf", str(self.scenario), "-i", HOST, "-p", str(self.sip_port),
            "-mi", HOST, "-mp", str(self.media_port), "-m", "1",
            "-timeout", "30s", "-nostdin", "-trace_err",
        ]  # fmt: skip
        if self.echo:
            arguments.append("-rtp_echo")
        return await asyncio.create_subprocess_exec(
            "sipp",
            *arguments,
            cwd=self.tmp_path,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )

    async def _listening(self) -> int | None:
        """None once SIPp holds its SIP port; its exit status if it ended first."""
        assert self.process is not None
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while asyncio.get_running_loop().time() < deadline:
            if self.process.returncode is not None:
                return self.process.returncode
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((HOST, self.sip_port))
                except OSError:
                    return None
            await asyncio.sleep(0.02)
        self.process.kill()
        return await self.process.wait()

    async def __aexit__(self, error_type: type | None, *exc_info: object) -> None:
        assert self.process is not None
        if error_type is not None and self.process.returncode is None:
            self.process.kill()  # the test already failed: do not wait out SIPp's timeout
        try:
            status = await asyncio.wait_for(self.process.wait(), WAIT_S)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise
        if error_type is not None:
            assert self.process.stderr is not None
            stderr = (await self.process.stderr.read()).decode(errors="replace")
            print(f"SIPp ended with status {status}; its stderr:\n{stderr}")

    async def succeeded(self) -> bool:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), WAIT_S) == 0


async def sip_socket() -> tuple[asyncio.DatagramTransport, SipUdp]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(SipUdp, local_addr=(HOST, 0))
    return transport, protocol  # type: ignore[return-value]


async def until(condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Wait for a condition the session's callbacks make true, checked each frame."""
    event = asyncio.Event()

    def check() -> None:
        if condition():
            event.set()
        else:
            handle[0] = loop.call_later(0.02, check)

    loop = asyncio.get_running_loop()
    handle = [loop.call_soon(check)]
    try:
        await asyncio.wait_for(event.wait(), timeout)
    finally:
        handle[0].cancel()


def peak_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.shape[0])))
    return float(np.argmax(spectrum)) * 8000 / samples.shape[0]


def find_frames(received: np.ndarray, expected: np.ndarray) -> int | None:
    """Frame-aligned offset at which ``expected`` appears in ``received``, if it does."""
    for offset in range(0, received.shape[0] - expected.shape[0] + 1, 160):
        if np.array_equal(received[offset : offset + expected.shape[0]], expected):
            return offset
    return None


@pytest.fixture
def allocator() -> PortAllocator:
    return PortAllocator(44000, 44999)


# -- the calls ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ptime_ms", [20, 30])
async def test_audio_sipp_plays_arrives_sample_for_sample(tmp_path, allocator, ptime_ms):
    pcap = tmp_path / "speech.pcap"
    alaw = recut_pcap(pcap, first=20, count=70, ptime_ms=ptime_ms)  # 2.1 s of speech
    expected = alaw_decode(alaw)
    frames: list[np.ndarray] = []
    session = await RtpSession.create(
        bind_pair(allocator, HOST), SessionConfig(), on_audio=lambda s: frames.append(s.copy())
    )
    transport, sip = await sip_socket()
    media = f'<nop><action><exec play_pcap_audio="{pcap}"/></action></nop>'
    try:
        async with Sipp(tmp_path, media, PCMA.payload_type) as sipp:
            call = Call(transport, sip, sipp.sip_port)
            remote = await call.invite(session.local_rtp_port, PCMA.payload_type)
            session.start(MediaParams(remote_rtp=remote, codec=PCMA))
            packets = len(alaw) // (8 * ptime_ms)
            await until(lambda: session.receive_stats.packets_received >= packets)
            await until(
                lambda: len(frames) >= session.frame_index - 1 and session.jitter.depth_frames == 0
            )
            # The last packet may still be half played (30 ms in 20 ms frames).
            end = session.frame_index + 3
            await until(lambda: session.frame_index >= end)
            await call.bye()
            assert await sipp.succeeded()
    finally:
        session.close()
        transport.close()
    stats = session.stats()
    assert stats.packets_received == len(alaw) // (8 * ptime_ms)
    assert stats.packets_lost == 0
    assert session.jitter.ptime_ms == ptime_ms
    received = np.concatenate(frames)
    assert np.sqrt(np.mean(received.astype(float) ** 2)) > 300  # speech, not silence
    assert find_frames(received, expected) is not None, "SIPp's audio did not arrive intact"


async def test_each_rfc4733_digit_from_sipp_is_reported_once(tmp_path, allocator):
    keys = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "star", "pound"]
    pcap = tmp_path / "dtmf.pcap"
    dtmf_pcap(pcap, keys)
    digits: list[DtmfDigit] = []
    session = await RtpSession.create(bind_pair(allocator, HOST), on_dtmf=digits.append)
    transport, sip = await sip_socket()
    media = f'<nop><action><exec play_pcap_audio="{pcap}"/></action></nop>'
    try:
        async with Sipp(tmp_path, media, PCMU.payload_type) as sipp:
            call = Call(transport, sip, sipp.sip_port)
            remote = await call.invite(session.local_rtp_port, PCMU.payload_type)
            session.start(MediaParams(remote_rtp=remote, codec=PCMU, dtmf_payload_type=101))
            await until(lambda: len(digits) >= len(keys))
            # Every packet of every key (each pcap holds 10, the end sent three times).
            await until(lambda: session.receive_stats.packets_received >= 10 * len(keys))
            await call.bye()
            assert await sipp.succeeded()
    finally:
        session.close()
        transport.close()
    assert [d.digit for d in digits] == list("123456789*#")
    assert all(d.ended and d.duration_ms == 280.0 for d in digits)
    assert session.stats().dtmf_received == len(keys)


async def test_audio_sent_to_sipp_echo_comes_back_intact(tmp_path, allocator):
    t = np.arange(8000) / 8000
    sweep = (6000 * np.sin(2 * np.pi * (300 + 1500 * t) * t)).astype(np.int16)  # 1 s chirp
    queue = PlaybackQueue()
    queue.enqueue(prompt_from_samples(sweep))
    frames: list[np.ndarray] = []
    session = await RtpSession.create(
        bind_pair(allocator, HOST), source=queue, on_audio=lambda s: frames.append(s.copy())
    )
    transport, sip = await sip_socket()
    try:
        async with Sipp(tmp_path, "", PCMU.payload_type, echo=True) as sipp:
            call = Call(transport, sip, sipp.sip_port)
            remote = await call.invite(session.local_rtp_port, PCMU.payload_type)
            session.start(MediaParams(remote_rtp=remote, codec=PCMU))
            await until(lambda: queue.idle and len(frames) >= 50 + 10)
            await call.bye()
            assert await sipp.succeeded()
    finally:
        session.close()
        transport.close()
    expected = ulaw_decode(ulaw_encode(sweep))
    received = np.concatenate(frames)
    assert find_frames(received, expected) is not None, "the echo did not come back intact"
    stats = session.stats()
    assert stats.packets_lost == 0
    assert session.latched == remote  # SIPp echoes from its media port


async def test_a_tone_sipp_sends_in_30_ms_packets_is_recorded_at_its_length(tmp_path, allocator):
    seconds = 1.5
    t = np.arange(int(seconds * 8000)) / 8000
    tone = (8000 * np.sin(2 * np.pi * 697.0 * t)).astype(np.int16)
    pcap = tmp_path / "tone30.pcap"
    write_rtp_pcap(pcap, ulaw_encode(tone).tobytes(), payload_type=0, ptime_ms=30)
    recorder = CallRecorder(tmp_path / "call.wav")
    session = await RtpSession.create(bind_pair(allocator, HOST), recorder=recorder)
    transport, sip = await sip_socket()
    media = f'<nop><action><exec play_pcap_audio="{pcap}"/></action></nop>'
    try:
        async with Sipp(tmp_path, media, PCMU.payload_type) as sipp:
            call = Call(transport, sip, sipp.sip_port)
            remote = await call.invite(session.local_rtp_port, PCMU.payload_type)
            session.start(MediaParams(remote_rtp=remote, codec=PCMU))
            packets = int(seconds * 1000) // 30
            await until(lambda: session.receive_stats.packets_received >= packets)
            await until(lambda: session.jitter.depth_frames == 0)
            # Half a second of the silence after it, to see the tone end.
            end = session.frame_index + 25
            await until(lambda: session.frame_index >= end)
            await call.bye()
            assert await sipp.succeeded()
    finally:
        session.close()
        transport.close()
    result = await recorder.close()
    stats = session.stats()
    assert stats.packets_received == packets and stats.packets_lost == 0
    assert stats.concealed_frames <= 3  # the fade after the tone ends, nothing inside it
    with wave.open(str(result.path)) as wav:
        stereo = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    callee = stereo[:, 0]
    # Louder than the concealment that fades the stream out (the last frame at half level).
    loud = np.flatnonzero(np.abs(callee) > 5000)
    heard = callee[loud[0] : loud[-1] + 1]
    # As long as what SIPp sent (to a period of the tone), at its frequency, with
    # no hole inside it (a hole would be a run of quiet samples).
    assert heard.shape[0] == pytest.approx(seconds * 8000, abs=12)
    assert peak_frequency(heard) == pytest.approx(697.0, abs=6.0)
    assert np.diff(np.flatnonzero(np.abs(heard) > 5000)).max() < 12
    # In the file where the call's clock had it: soon after the answer.
    assert 0 < loud[0] / 8000 < 0.5
    assert result.duration_s <= session.frame_index * 0.020

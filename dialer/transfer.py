"""A bot's transfer carried out: REFER first, else a second call that we bridge.

Rules of this file:

1. The callee's leg is asked to go to the target itself by REFER (RFC 3515,
   ``CallHandle.transfer``). If it does (a 2xx sipfrag, or it leaves after
   accepting), the call ends ``transferred`` and our part is over.
2. If the REFER fails (refused, a failure sipfrag, no verdict in time, or
   ``refer`` off), we call the target ourselves through a trunk (the call's
   own unless ``TransferConfig.trunk`` names another) and, once it answers,
   join the two RTP sessions frame by frame (``media.bridge``) until either
   side hangs up; then we hang up the other. The callee's session keeps its
   recorder: the recording goes on with the target's audio as our leg.
3. Every outcome is a ``TransferReport``, never an exception: a target the
   trunk refuses or that does not answer is ``failed`` with the reason, and
   the caller decides what to do with the callee (the runner hangs up).
4. Each task this starts is awaited or cancelled before it returns; the
   second leg's session and ports are closed on every path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Any

from dialer.sip.call import (
    Answered,
    CallEvent,
    MediaUpdated,
    Resumed,
    TransferSucceeded,
)
from dialer.sip.dialog import LocalMedia
from dialer.sip.errors import SipError
from dialer.user_agent import CallHandle, TrunkBusy, UserAgent
from media.bridge import FrameBridge
from media.g711 import PCMA, PCMU
from media.ports import PortAllocator, PortsExhausted, bind_pair
from media.session import MediaParams, RtpSession, SessionConfig

__all__ = ["TransferConfig", "TransferReport", "transfer_call"]

log = logging.getLogger(__name__)

# How long to wait for the second leg's BYE to be answered when we end it.
_HANGUP_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class TransferConfig:
    """How a worker carries out transfers.

    ``refer`` False skips REFER and always bridges (for trunks known to
    refuse it). ``refer_timeout_s`` None: the ring timeout plus 64*T1.
    ``trunk`` carries the bridged leg (None: the call's own trunk; the
    target URI is the Request-URI as given).
    """

    refer: bool = True
    refer_timeout_s: float | None = None
    trunk: str | None = None
    ring_timeout_s: float = 30.0
    max_bridge_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class TransferReport:
    """What became of a transfer, for the call's ``ended`` event.

    ``outcome``: ``referred`` (the callee went to the target by REFER),
    ``bridged`` (we called the target and joined the legs), ``failed``.
    """

    target: str
    outcome: str
    refer_status: int | None = None  # the sipfrag's (or the REFER's) status
    refer_failure: str | None = None  # why the REFER did not do it (TransferFailed.reason)
    bridge_call_id: str | None = None
    bridge_status: int | None = None  # the final status of our INVITE to the target
    bridged_s: float | None = None
    bridge_hangup_by: str | None = None  # "callee" or "target": who left the bridge first
    frames_to_target: int | None = None
    frames_to_callee: int | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The report as plain values."""
        return asdict(self)


async def transfer_call(
    agent: UserAgent,
    handle: CallHandle,
    session: RtpSession,
    target: str,
    *,
    config: TransferConfig,
    rtp_host: str,
    ports: PortAllocator,
    session_config: SessionConfig,
) -> TransferReport:
    """Transfer the answered call ``handle`` (media on ``session``) to ``target``."""
    refer_status: int | None = None
    refer_failure: str | None = None
    if config.refer:
        try:
            verdict = await handle.transfer(target, timeout_s=config.refer_timeout_s)
        except (SipError, ValueError) as error:
            return TransferReport(target, "failed", detail=f"cannot REFER: {error}")
        if isinstance(verdict, TransferSucceeded):
            return TransferReport(target, "referred", refer_status=verdict.status)
        refer_status, refer_failure = verdict.status, verdict.reason
        log.info("REFER to %s failed (%s %s): bridging", target, refer_failure, refer_status)
    if handle.result is not None:
        return TransferReport(
            target,
            "failed",
            refer_status=refer_status,
            refer_failure=refer_failure,
            detail="the callee hung up during the transfer",
        )
    report = await _bridge(agent, handle, session, target, config, rtp_host, ports, session_config)
    return TransferReport(
        **{**report.as_dict(), "refer_status": refer_status, "refer_failure": refer_failure}
    )


async def _bridge(
    agent: UserAgent,
    handle: CallHandle,
    session: RtpSession,
    target: str,
    config: TransferConfig,
    rtp_host: str,
    ports: PortAllocator,
    session_config: SessionConfig,
) -> TransferReport:
    try:
        pair = bind_pair(ports, rtp_host)
    except PortsExhausted as error:
        return TransferReport(target, "failed", detail=f"no RTP ports: {error}")
    leg = await RtpSession.create(pair, session_config)

    def on_event(event: CallEvent) -> None:
        match event:
            case Answered(media=media) | Resumed(media=media) | MediaUpdated(media=media):
                params = MediaParams(
                    (media.remote_address, media.remote_port),
                    PCMA if media.codec.name.upper() == "PCMA" else PCMU,
                    media.telephone_event_pt,
                )
                if leg.started:
                    leg.update(params)
                elif not leg.closed:
                    leg.start(params)

    loop = asyncio.get_running_loop()
    other: CallHandle | None = None
    bridge = FrameBridge(session, leg)
    waits: list[asyncio.Future[Any]] = []
    try:
        try:
            other = await agent.place_call(
                target,
                trunk=config.trunk or handle.trunk,
                media=LocalMedia(rtp_host, leg.local_rtp_port),
                ring_timeout_s=config.ring_timeout_s,
                max_duration_s=config.max_bridge_s,
                on_event=on_event,
                wait=False,
            )
        except (TrunkBusy, ValueError, SipError) as error:
            return TransferReport(target, "failed", detail=f"cannot call the target: {error}")
        callee_gone = asyncio.ensure_future(handle.ended())
        answered = asyncio.ensure_future(other.answered())
        target_gone = asyncio.ensure_future(other.ended())
        waits += (callee_gone, answered, target_gone)
        await asyncio.wait((callee_gone, answered), return_when=asyncio.FIRST_COMPLETED)
        if not answered.done() or answered.result() is None:
            other.hangup()  # the callee left while the target rang: CANCEL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(target_gone), _HANGUP_WAIT_S)
            result = other.result
            if answered.done() and answered.result() is None and result is not None:
                detail = f"the target did not answer: {result.disposition}"
            else:
                detail = "the callee hung up while the target rang"
            return TransferReport(
                target,
                "failed",
                bridge_call_id=other.call_id,
                bridge_status=result.sip_status if result is not None else None,
                detail=detail,
            )
        bridge.join()
        joined_at = loop.time()
        await asyncio.wait((callee_gone, target_gone), return_when=asyncio.FIRST_COMPLETED)
        bridged_s = round(loop.time() - joined_at, 3)
        left = "callee" if callee_gone.done() else "target"
        bridge.close()
        handle.hangup()
        other.hangup()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(target_gone), _HANGUP_WAIT_S)
        stats = bridge.stats()
        return TransferReport(
            target,
            "bridged",
            bridge_call_id=other.call_id,
            bridge_status=other.result.sip_status if other.result is not None else None,
            bridged_s=bridged_s,
            bridge_hangup_by=left,
            frames_to_target=stats.a_to_b.frames_out,
            frames_to_callee=stats.b_to_a.frames_out,
        )
    finally:
        bridge.close()
        if other is not None and other.result is None:
            other.hangup()
        for wait in waits:
            if not wait.done():
                wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        leg.close()
        pair.close()

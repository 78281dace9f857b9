"""One dial job carried out over SIP and RTP: the worker's call runner.

Opens an RTP session on a port pair from the configured range, places the
call through the user agent, and on answer runs the node: answering-machine
detection when the node asks for it, then its handler (a prompt rendered
with espeak-ng and played, then a polite hang-up), recording both legs when
asked. Returns the ``ended`` event's data: disposition, SIP status, who hung
up, every phase's time, media statistics, the AMD verdict and the recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dialer.messages import DialJob
from dialer.seats import SEAT_ERRORS, SeatBook, SeatRules
from dialer.sip.call import (
    Answered,
    CallEvent,
    CallState,
    Dtmf,
    Ended,
    MediaUpdated,
    Resumed,
    Ringing,
)
from dialer.sip.dialog import LocalMedia
from dialer.transfer import TransferConfig, TransferReport, transfer_call
from dialer.trunk import TrunkConfig, parse_trunk_uri
from dialer.user_agent import CallHandle, TrunkBusy, UserAgent
from dialer.worker import Emit
from media.amd import AmdConfig, AmdVerdict, AnsweringMachineDetector
from media.g711 import PCMA, PCMU
from media.playback import PlaybackQueue, SpeechRenderer, silence
from media.ports import PortAllocator, bind_pair
from media.recording import CallRecorder
from media.session import MediaParams, RtpSession, SessionConfig, SessionStats
from media.ticker import FrameTicker
from media.voicebot import (
    CallControl,
    VoicebotCall,
    VoicebotConfig,
    VoicebotResult,
    VoicebotStream,
    new_sid,
    run_voicebot,
)

__all__ = ["SipCallRunner", "TrunkDirectory", "UnknownTrunk"]

log = logging.getLogger(__name__)

# A prompt never plays forever, whatever its length: a bound on the wait.
MAX_PROMPT_S = 120.0
# How long after the abandoned-call message its opt-out key is still listened for.
OPT_OUT_GRACE_S = 3.0


class UnknownTrunk(LookupError):
    """A workflow names a trunk its tenant does not have."""


class TrunkDirectory:
    """Tenants' trunks from the database, added to the user agent on first use.

    A trunk edited through the API is picked up by the next call (its
    ``updated_at`` is part of the agent's trunk name). Its limits are keyed by
    ``tenant_id:name`` alone (``TrunkConfig.limit_key``): the calls placed
    before an edit still count against the edited trunk's channels, in this
    process and across every worker (``dialer.trunk_limits``).
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def ensure(self, agent: UserAgent, tenant_id: str, name: str) -> str:
        row = await self.pool.fetchrow(
            """SELECT * FROM trunks WHERE tenant_id = $1::uuid AND name = $2""", tenant_id, name
        )
        if row is None:
            raise UnknownTrunk(f"tenant has no trunk named {name!r}")
        key = f"{tenant_id}:{name}:{row['updated_at'].timestamp()}"
        if key not in agent.trunks:
            options: dict[str, Any] = {}
            if row["outbound_proxy"]:
                options["outbound_proxy"] = parse_trunk_uri(row["outbound_proxy"])
            for field in ("cps", "max_channels", "options_interval_s", "register_expires_s"):
                if row[field] is not None:
                    options[field] = row[field]
            config = TrunkConfig.from_uri(
                row["uri"],
                name=key,
                username=row["username"],
                password=row["password"],
                limit_key=f"{tenant_id}:{name}",
                **options,
            )
            await agent.add_trunk(config)
        return key


class SipCallRunner:
    def __init__(
        self,
        agent: UserAgent,
        *,
        rtp_host: str,
        ports: PortAllocator,
        speech: SpeechRenderer,
        recording_dir: Path,
        session_config: SessionConfig | None = None,
        control: CallControl | None = None,
        default_trunk: str | None = None,
        trunks: TrunkDirectory | None = None,
        seats: SeatBook | None = None,
        transfer: TransferConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent = agent
        # Unix time, to read a job's ``not_after`` (the worker's clock).
        self.clock = clock
        # Without a seat book every live answer is served (one call tools, tests).
        self.seats = seats
        self.default_trunk = default_trunk
        self.trunks = trunks
        # Calls a bot may end through the Twilio-compatible REST endpoint.
        self.control = control
        self.rtp_host = rtp_host
        self.ports = ports
        self.speech = speech
        self.recording_dir = recording_dir
        self.session_config = session_config or SessionConfig(media_timeout_s=20.0)
        # Voicebot results by call id, taken by run() once the call has ended.
        self.bot_results: dict[str, VoicebotResult] = {}
        # How a bot's transfer is carried out (REFER, else a bridged call).
        self.transfer = transfer or TransferConfig()
        self.transfers: dict[str, TransferReport] = {}
        # One 20 ms clock for every call of this worker (made on the first call,
        # inside the loop); idle, it books no timer.
        self._ticker: FrameTicker | None = None
        # Seat releases still on their way: a call's end does not wait for its own.
        self._releases: set[asyncio.Task[None]] = set()
        # Calls placed and not answered yet, which the pacer may take back;
        # those it took back, until their end is reported.
        self._unanswered: dict[str, CallHandle] = {}
        self._taken_back: set[str] = set()

    def take_back(self, call_id: str) -> bool:
        """Hang up a call the predictive pacer no longer wants, if it is still ringing.

        The scheduler asks (``scheduler.pacing``, rule 5); only a call that has
        had a provisional answer and no final one is touched, by CANCEL. It
        ends as ``no_answer`` with ``end_reason`` ``pacing``. A person whose
        answer crossed our CANCEL hears the identification message, is hung up
        on and counts as ``abandoned``, as one who finds no seat does.
        """
        handle = self._unanswered.get(call_id)
        if handle is None or handle.state is not CallState.PROCEEDING:
            return False
        self._taken_back.add(call_id)
        handle.withdraw()
        return True

    def _dial_within(self, job: DialJob) -> float | None:
        """How long the call may wait for a trunk channel and a CPS token: until the
        job's ``not_after`` (its calling window closes), then it is not dialled."""
        return None if job.not_after is None else max(0.0, job.not_after - self.clock())

    def _frame_ticker(self) -> FrameTicker:
        if self._ticker is None:
            self._ticker = FrameTicker()
        return self._ticker

    async def run(self, job: DialJob, emit: Emit) -> dict[str, Any]:
        queue = PlaybackQueue()
        recorder = None
        recording_path = None
        if job.record:
            recording_path = self.recording_dir / job.tenant_id / f"{job.call_id}.wav"
            recording_path.parent.mkdir(parents=True, exist_ok=True)
            recorder = CallRecorder(recording_path)
        pair = bind_pair(self.ports, self.rtp_host)
        keys = _Keys()
        media_timed_out = asyncio.Event()
        session = await RtpSession.create(
            pair,
            self.session_config,
            source=queue,
            recorder=recorder,
            on_dtmf=lambda d: keys.add({"digit": d.digit, "duration_ms": d.duration_ms}),
            on_timeout=lambda _cause: media_timed_out.set(),
            ticker=self._frame_ticker(),
        )
        pending: set[asyncio.Task[None]] = set()

        def publish(kind: str, data: dict[str, Any]) -> None:
            task = asyncio.ensure_future(emit(kind, data))
            pending.add(task)
            task.add_done_callback(pending.discard)

        def on_event(event: CallEvent) -> None:
            match event:
                case Ringing(status=status):
                    publish("ringing", {"sip_status": status})
                case Answered(media=media) | Resumed(media=media) | MediaUpdated(media=media):
                    params = MediaParams(
                        (media.remote_address, media.remote_port),
                        PCMA if media.codec.name.upper() == "PCMA" else PCMU,
                        media.telephone_event_pt,
                    )
                    if session.started:
                        session.update(params)
                    elif not session.closed:
                        session.start(params)
                case Dtmf(digit=digit):
                    keys.add({"digit": digit, "via": "info"})
                case Ended():
                    pass

        handle: CallHandle | None = None
        amd_verdict: AmdVerdict | None = None
        seat = _Seat()
        stats: SessionStats | None = None
        try:
            trunk = self.default_trunk
            if job.trunk is not None and self.trunks is not None:
                trunk = await self.trunks.ensure(self.agent, job.tenant_id, job.trunk)
            try:
                handle = await self.agent.place_call(
                    job.phone_e164,
                    trunk=trunk,
                    media=LocalMedia(self.rtp_host, session.local_rtp_port),
                    ring_timeout_s=job.ring_timeout_s,
                    max_duration_s=job.max_duration_s,
                    wait_s=self._dial_within(job),
                    on_event=on_event,
                    # The trunk's channel lease, shared by every worker, is the call's.
                    lease=job.call_id,
                )
            except TrunkBusy as busy:
                if not busy.waited:
                    raise
                # The trunk stayed full until the person's calling window closed.
                log.info("not dialled: %s", busy, extra={"call_id": job.call_id})
                return {"disposition": "expired", "hangup_by": "system", "end_reason": "trunk_wait"}
            # The INVITE is out: from now the call is dialled (its dialing_at, its
            # ring time), not while it waited for a channel of its trunk.
            publish("dialing", {})
            self._unanswered[job.call_id] = handle
            answer = await handle.answered()
            self._unanswered.pop(job.call_id, None)
            if answer is not None and job.call_id in self._taken_back:
                # The answer crossed the pacer's CANCEL: nobody is there for it.
                publish("answered", {})
                await self._abandon(job, handle, queue, seat, keys)
                stats = session.stats()
                session.close()
            elif answer is not None:
                publish("answered", {})
                amd_verdict = await self._run_answered(
                    job,
                    handle,
                    session,
                    queue,
                    media_timed_out,
                    seat,
                    keys,
                    # The verdict is news while the call goes on, not after it.
                    on_verdict=lambda v: publish("amd", {"verdict": v.answered_by.value}),
                )
                # The call is over or our BYE is out, and with it the session (RFC 3261
                # §15.1.1): no more frames while the BYE's answer is awaited.
                stats = session.stats()
                session.close()
            result = await handle.ended()
        finally:
            self._unanswered.pop(job.call_id, None)
            taken_back = job.call_id in self._taken_back
            self._taken_back.discard(job.call_id)
            if handle is not None and handle.result is None:
                handle.hangup()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(handle.ended(), 5)
            # Media stops with the call, not after the seat's release.
            if stats is None:
                stats = session.stats()
            session.close()
            if seat.held and self.seats is not None:
                self._release_seat(job.call_id)
            pair.close()
            recording = await recorder.close() if recorder is not None else None
            if recording is not None and not recording.frames:
                # Nothing was recorded (never dialled, never answered): no file
                # that nothing in the database points to.
                recording.path.unlink(missing_ok=True)
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        disposition = str(
            result.disposition.value if hasattr(result.disposition, "value") else result.disposition
        )
        if result.answered_at is not None and disposition == "answered" and amd_verdict is not None:
            disposition = "machine" if amd_verdict.answered_by.is_machine else "human"
        if seat.abandoned and disposition in ("answered", "human"):
            disposition = "abandoned"
        end_reason = result.end_reason
        if taken_back and result.answered_at is not None:
            # The answer crossed our CANCEL: a person was there and got nobody.
            disposition, end_reason = "abandoned", "pacing"
        elif taken_back and disposition == "cancelled":
            # Otherwise a busy, a rejection or a failure that came first stands.
            disposition, end_reason = "no_answer", "pacing"
        if seat.opted_out:
            # Asked, in the abandoned-call message, not to be called again.
            end_reason = "opt_out"
        if media_timed_out.is_set() and result.answered_at is not None:
            disposition = "media_timeout" if disposition in ("answered", "human") else disposition
        bot = self.bot_results.pop(job.call_id, None)
        if bot is not None and result.answered_at is not None and bot.outcome == "bot_failed":
            disposition = "bot_failed"
        transfer = self.transfers.pop(job.call_id, None)
        if transfer is not None and transfer.outcome in ("referred", "bridged"):
            disposition = "transferred"
        wall = handle.wall_time if handle is not None else (lambda t: t)
        data: dict[str, Any] = {
            "disposition": disposition,
            "sip_status": result.sip_status,
            "sip_reason": result.sip_reason,
            "hangup_by": {"caller": "us"}.get(result.hangup_by or "", result.hangup_by),
            "end_reason": end_reason,
            "times": {
                "dialing": wall(result.invite_sent_at),
                "ringing": wall(result.ringing_at),
                "answered": wall(result.answered_at),
                "ended": wall(result.ended_at),
            },
            "ring_s": _span(result.invite_sent_at, result.answered_at or result.ended_at),
            "talk_s": round(result.talk_time_s, 3),
            "amd_verdict": amd_verdict.answered_by.value if amd_verdict is not None else None,
            "dtmf": keys.pressed,
            "bot_result": None
            if bot is None
            else {
                "outcome": str(bot.outcome),
                "reason": bot.reason,
                "values": dict(bot.values),
                "tags": list(bot.tags),
                "transfer_target": bot.transfer_target,
                "latency_to_bot_p99_ms": bot.latency_to_bot.p99_ms,
                "latency_from_bot_p99_ms": bot.latency_from_bot.p99_ms,
            },
            "media_stats": {
                "packets_sent": stats.packets_sent,
                "packets_received": stats.packets_received,
                "packets_lost": stats.packets_lost,
                "loss_fraction": round(stats.loss_fraction, 4),
                "jitter_ms": round(stats.jitter_ms, 2),
                "mos": round(stats.mos, 2) if stats.mos is not None else None,
            },
        }
        if transfer is not None:
            data["transfer"] = transfer.as_dict()
        if recording is not None and recording.frames:
            data["recording"] = {
                # Relative to the recording directory, which every process names
                # alike (a relative one is read from each process's own directory).
                "path": str(recording.path.relative_to(self.recording_dir)),
                "duration_s": round(recording.duration_s, 3),
                "bytes": recording.size_bytes,
                "sha256": recording.sha256,
            }
        return data

    def _release_seat(self, call_id: str) -> None:
        """Free the call's seat without holding up the call's end.

        The release is batched with others and takes a round trip (in
        bench/pipeline with two workers, 50 ms at the median and 200 at the 99th
        percentile); awaited, it kept the call's slot, delayed its ended event and
        let its held progress events go out. Nothing waits for the order: a seat
        whose call has ended counts for nothing (``seats.py``), so the end may
        reach the database first.
        """
        task = asyncio.get_running_loop().create_task(self._release(call_id))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, call_id: str) -> None:
        assert self.seats is not None
        try:
            await self.seats.release(call_id)
        except SEAT_ERRORS as exc:
            # The seat stops counting once the call is ended in the database.
            log.warning("seat release failed: %s", exc, extra={"call_id": call_id})

    async def _run_answered(
        self,
        job: DialJob,
        handle: CallHandle,
        session: RtpSession,
        queue: PlaybackQueue,
        media_timed_out: asyncio.Event,
        seat: _Seat,
        keys: _Keys,
        on_verdict: Callable[[AmdVerdict], None],
    ) -> AmdVerdict | None:
        verdict: AmdVerdict | None = None
        amd = job.amd or {}
        if amd.get("enabled"):
            verdict = await self._detect(session, handle, media_timed_out)
            if verdict is not None:
                on_verdict(verdict)
            if verdict is not None and verdict.answered_by.is_machine:
                if amd.get("on_machine", "hangup") == "message" and amd.get("message"):
                    await self._play(queue, handle, amd["message"])
                handle.hangup()
                return verdict
        if self.seats is not None and not await self._take_seat(job, handle, queue, seat, keys):
            return verdict
        handler = job.handler or {}
        if handler.get("type") == "prompt" and handler.get("text"):
            await self._play(queue, handle, handler["text"])
        elif handler.get("type") == "voicebot" and handler.get("url"):
            await self._voicebot(job, handler, handle, session, queue)
        if handle.result is None:
            handle.hangup()
        return verdict

    async def _take_seat(
        self, job: DialJob, handle: CallHandle, queue: PlaybackQueue, seat: _Seat, keys: _Keys
    ) -> bool:
        """Claim a seat for a live answer; with none free in time, abandon the call."""
        assert self.seats is not None
        try:
            rules = await self.seats.rules(job.workflow_id)
            seat.held = await self.seats.claim(
                job.call_id, job.workflow_id, rules, gone=lambda: handle.result is not None
            )
        except SEAT_ERRORS as exc:
            # The seat count is unknown while the database is away: a person
            # who answered is served rather than abandoned for our outage.
            log.warning(
                "seat claim failed, serving anyway: %s", exc, extra={"call_id": job.call_id}
            )
            return True
        if seat.held or handle.result is not None:
            return seat.held
        await self._abandon(job, handle, queue, seat, keys, rules)
        return False

    async def _abandon(
        self,
        job: DialJob,
        handle: CallHandle,
        queue: PlaybackQueue,
        seat: _Seat,
        keys: _Keys,
        rules: SeatRules | None = None,
    ) -> None:
        """Play the identification message to a live answer nobody takes, and hang up.

        While it plays, and for ``OPT_OUT_GRACE_S`` after, the opt-out key ends
        the call at once and marks it ``opt_out``: the scheduler then puts the
        number on the tenant's do-not-call list (47 CFR 64.1200(a)(7)(i)(B)).
        """
        seat.abandoned = True
        if rules is None:
            rules = await self._seat_rules(job)
        if rules.opt_out_digit is None:
            await self._play(queue, handle, rules.abandon_message)
        else:
            pressed = keys.next_press(rules.opt_out_digit)
            play = asyncio.ensure_future(self._play(queue, handle, rules.abandon_message))
            ended = asyncio.ensure_future(handle.ended())
            first: set[asyncio.Future[Any]] = {pressed, play}
            try:
                await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
                if not pressed.done() and not ended.done():
                    # The message is over: the key may still come, for a moment.
                    rest: set[asyncio.Future[Any]] = {pressed, ended}
                    await asyncio.wait(rest, timeout=OPT_OUT_GRACE_S)
            finally:
                for task in (play, ended, pressed):
                    task.cancel()
                keys.forget(pressed)
            seat.opted_out = pressed.done() and not pressed.cancelled()
            if seat.opted_out:
                log.info("opt-out key pressed", extra={"call_id": job.call_id})
        handle.hangup()

    async def _seat_rules(self, job: DialJob) -> SeatRules:
        if self.seats is not None:
            try:
                return await self.seats.rules(job.workflow_id)
            except SEAT_ERRORS as exc:
                log.warning("seat rules unknown: %s", exc, extra={"call_id": job.call_id})
        return SeatRules()

    async def _voicebot(
        self,
        job: DialJob,
        handler: dict[str, Any],
        handle: CallHandle,
        session: RtpSession,
        queue: PlaybackQueue,
    ) -> None:
        """Hand the call to the bot; on failure, play the fallback prompt."""
        config = VoicebotConfig(
            url=handler["url"],
            headers=dict(handler.get("headers", {})),
            connect_timeout_s=float(handler.get("connect_timeout_s", 3.0)),
        )
        context = job.context or {}
        call = VoicebotCall(
            call_sid=new_sid("CA", secrets.randbits),
            account_sid=f"AC{uuid.UUID(job.tenant_id).hex}",
            stream_sid=new_sid("MZ", secrets.randbits),
            custom_parameters={
                "call_id": job.call_id,
                "record_id": job.record_id,
                **{f"record_{k}": v for k, v in context.get("record", {}).items()},
                "placeholders": context.get("placeholders", {}),
                "meta": context.get("meta", {}),
                "script": context.get("script", ""),
            },
        )
        if self.control is not None:
            self.control.register(call.call_sid, call.account_sid, handle.hangup)
        ended = asyncio.ensure_future(handle.ended())
        streams: list[VoicebotStream] = []

        def stop_streams(_ended: object) -> None:
            for stream in streams:
                stream.stop()

        ended.add_done_callback(stop_streams)
        try:
            result = await run_voicebot(
                session,
                queue,
                config,
                call,
                on_hangup=lambda _outcome: handle.hangup(),
                started=streams.append,
            )
        finally:
            if not ended.done():
                ended.cancel()
            if self.control is not None:
                self.control.unregister(call.call_sid)
        self.bot_results[job.call_id] = result
        if result.outcome == "transferred" and result.transfer_target and handle.result is None:
            self.transfers[job.call_id] = await transfer_call(
                self.agent,
                handle,
                session,
                result.transfer_target,
                config=self.transfer,
                rtp_host=self.rtp_host,
                ports=self.ports,
                session_config=self.session_config,
            )
        if result.outcome == "bot_failed" and handle.result is None:
            fallback = handler.get("fallback_prompt")
            if fallback:
                await self._play(queue, handle, fallback)

    async def _detect(
        self, session: RtpSession, handle: CallHandle, media_timed_out: asyncio.Event
    ) -> AmdVerdict | None:
        detector = AnsweringMachineDetector(AmdConfig.fast())
        done: asyncio.Future[AmdVerdict] = asyncio.get_running_loop().create_future()
        elapsed_ms = 0

        def on_audio(frame: Any) -> None:
            nonlocal elapsed_ms
            if done.done():
                return
            verdict = detector.feed(frame, elapsed_ms)
            elapsed_ms += 20
            if verdict is not None:
                done.set_result(verdict)

        session.on_audio = on_audio
        ended = asyncio.ensure_future(handle.ended())
        either: set[asyncio.Future[Any]] = {done, ended}
        try:
            finished, _ = await asyncio.wait(
                either,
                timeout=AmdConfig.fast().total_timeout_s + 1,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if done in finished:
                return done.result()
            return detector.finish(elapsed_ms) if not ended.done() else None
        finally:
            session.on_audio = None
            if not ended.done():
                ended.cancel()

    async def _play(self, queue: PlaybackQueue, handle: CallHandle, text: str) -> None:
        try:
            prompt = await self.speech.render(text)
        except Exception:  # espeak-ng missing or failing: the call goes on silent
            log.exception("prompt could not be rendered")
            return
        played = asyncio.get_running_loop().create_future()

        def on_mark(name: str, was_played: bool) -> None:
            if name == "end" and not played.done():
                played.set_result(was_played)

        queue.on_mark = on_mark
        queue.enqueue(silence(300))
        queue.enqueue(prompt)
        queue.mark("end")
        ended = asyncio.ensure_future(handle.ended())
        try:
            await asyncio.wait(
                {played, ended},
                timeout=min(MAX_PROMPT_S, prompt.duration_s + 5),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            if not ended.done():
                ended.cancel()


class _Seat:
    """What became of one call's seat: held (to release at the end), or abandoned,
    and whether the abandoned person asked not to be called again."""

    __slots__ = ("abandoned", "held", "opted_out")

    def __init__(self) -> None:
        self.held = False
        self.abandoned = False
        self.opted_out = False


class _Keys:
    """The keys a person pressed on a call (RFC 4733 events or SIP INFO), in order,
    and waiters for the next press of a given key."""

    __slots__ = ("_waiters", "pressed")

    def __init__(self) -> None:
        self.pressed: list[dict[str, Any]] = []
        self._waiters: list[tuple[str, asyncio.Future[None]]] = []

    def add(self, entry: dict[str, Any]) -> None:
        self.pressed.append(entry)
        for key, waiter in self._waiters:
            if key == entry["digit"] and not waiter.done():
                waiter.set_result(None)

    def next_press(self, key: str) -> asyncio.Future[None]:
        """A future done when ``key`` is pressed from now on (earlier presses do not count)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((key, waiter))
        return waiter

    def forget(self, waiter: asyncio.Future[None]) -> None:
        self._waiters = [(k, w) for k, w in self._waiters if w is not waiter]


def _span(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, end - start), 3)

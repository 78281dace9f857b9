"""The reference bots through a real call: the scripted bot speaks, hears a key, reports, hangs up.

The same loopback harness as ``test_voicebot``: our session streamed to
the bot, the callee's session pressing keys and hearing the prompt.
"""

# The harness's fixtures are imported by name, so pytest finds them here;
# the tests' parameters then shadow those imports by design.
# ruff: noqa: F811

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from media.bots import PROMPT_MARK, EchoBot, Script, ScriptedBot, tone
from media.playback import SpeechRenderer, espeak_available
from media.voicebot import VoicebotOutcome
from tests.media.test_voicebot import (  # noqa: F401  (fixtures)
    Call,
    allocator,
    bots,
    call,
    peak_frequency,
    rms,
)


async def test_scripted_bot_speaks_waits_for_a_key_reports_it_and_hangs_up(
    call: Call, bots
) -> None:
    bot = ScriptedBot(Script(tone_hz=440, tone_ms=300), listener=call.watch.poke)
    server = await bots(bot)
    stream = call.stream(server.url)
    task = asyncio.ensure_future(stream.run())
    # The callee hears the whole prompt, then the bot waits for a key.
    await call.watch.until(lambda: bool(bot.sessions) and PROMPT_MARK in bot.sessions[0].marks)
    await call.frames_later(10)  # the last frames cross the wire and the callee's jitter buffer
    loud = call.loud_frames()
    skipped = call.ours.stats().frames_skipped  # only when the machine stalls the loop
    assert 14 - skipped <= len(loud) <= 15
    assert loud[-1] - loud[0] + 1 - len(loud) <= skipped
    heard = np.concatenate([call.heard[i] for i in loud])
    assert abs(peak_frequency(heard) - 440) < 15
    call.callee.send_dtmf("5")
    result = await asyncio.wait_for(task, 5)
    assert result.outcome is VoicebotOutcome.BOT_HANGUP
    assert dict(result.values) == {"digit": "5"} and result.tags == ("dtmf",)
    assert stream.hangup.is_set()
    assert bot.sessions[0].digits == ["5"]
    assert bot.sessions[0].stopped


async def test_a_key_during_the_prompt_cuts_it_short(call: Call, bots) -> None:
    bot = ScriptedBot(Script(tone_ms=3000), listener=call.watch.poke)
    server = await bots(bot)
    stream = call.stream(server.url)
    task = asyncio.ensure_future(stream.run())
    await call.watch.until(lambda: len(call.loud_frames()) >= 5)
    call.callee.send_dtmf("9")
    result = await asyncio.wait_for(task, 5)
    assert dict(result.values) == {"digit": "9"}
    assert result.clears == 1
    assert len(call.loud_frames()) < 60  # of 150 frames of prompt


async def test_no_key_is_reported_as_no_input(call: Call, bots) -> None:
    bot = ScriptedBot(Script(tone_ms=100, wait_digit_s=0.1, result_key="choice"))
    server = await bots(bot)
    result = await asyncio.wait_for(call.stream(server.url).run(), 5)
    assert result.outcome is VoicebotOutcome.BOT_HANGUP
    assert dict(result.values) == {"choice": None} and result.tags == ("no_input",)


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
async def test_scripted_bot_speaks_text_through_espeak(call: Call, bots, tmp_path) -> None:
    renderer = SpeechRenderer(tmp_path)
    prompt = await renderer.render("Press one.")
    bot = ScriptedBot(Script(text="Press one.", wait_digit_s=0.1), renderer)
    server = await bots(bot)
    result = await asyncio.wait_for(call.stream(server.url).run(), 10)
    assert result.bot_audio_ms == pytest.approx(prompt.duration_s * 1000)
    assert renderer.renders == 1  # the bot's rendering came from the cache
    speech = [i for i, frame in enumerate(call.heard) if rms(frame) > 300]
    # The callee heard speech over about the prompt's length.
    assert speech and (speech[-1] - speech[0] + 1) * 0.020 <= prompt.duration_s + 0.04
    assert len(speech) >= prompt.frames // 3


async def test_echo_bot_keeps_no_sessions_when_asked(call: Call, bots) -> None:
    bot = EchoBot(keep_sessions=False)
    server = await bots(bot)
    stream = call.stream(server.url)
    task = asyncio.ensure_future(stream.run())
    call.callee_playback.enqueue(tone(900, 200).samples)
    await call.watch.until(lambda: len(call.loud_frames()) >= 9)
    stream.stop()
    result = await task
    assert bot.connections == 1 and bot.sessions == []
    assert result.bot_media_messages > 0


def test_tone_is_whole_frames_at_its_pitch() -> None:
    prompt = tone(1000, 100)
    assert prompt.frames == 5 and not prompt.samples.flags.writeable
    assert abs(peak_frequency(prompt.samples) - 1000) < 10
    assert np.max(np.abs(prompt.samples)) <= 8000

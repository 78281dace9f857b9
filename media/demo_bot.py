"""The demo bot: greets the person by first name, asks a yes/no question, reports the answer.

What ``dialer demo`` streams its calls to. It is a bot as a customer would
write one, in the Twilio Media Streams format: the first name comes from the
stream's ``start`` (``customParameters.placeholders.first_name``, else the
record's ``record_first_name``), the question is spoken through espeak-ng,
and the person answers with a key: 1 is yes, 2 is no. The answer lands on the
call as the result ``{"answer": "yes" | "no" | "none", "digit": ...}``, which
a workflow branches on (``result.answer equals yes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from media.bots import BotSession, Script, ScriptedBot
from media.playback import Prompt, SpeechRenderer
from media.streams import BotResult

__all__ = ["ANSWERS", "DemoBot", "first_name_of", "greeting_for"]

# The key the person presses, and what it means.
ANSWERS = {"1": "yes", "2": "no"}
QUESTION = "Would you like us to send you our offer by text message? Press 1 for yes, or 2 for no."


def first_name_of(parameters: Mapping[str, Any]) -> str:
    """The person's first name from the stream's custom parameters, or '' when unknown."""
    placeholders = parameters.get("placeholders")
    if isinstance(placeholders, Mapping):
        name = placeholders.get("first_name") or placeholders.get("firstName")
        if isinstance(name, str) and name.strip():
            return name.strip()
    name = parameters.get("record_first_name")
    return name.strip() if isinstance(name, str) else ""


def greeting_for(first_name: str) -> str:
    """What the bot says: a greeting by name (when known), then the question."""
    hello = f"Hello {first_name}!" if first_name else "Hello!"
    return f"{hello} This is the dialer demo. {QUESTION}"


class DemoBot(ScriptedBot):
    """A ``ScriptedBot`` whose prompt is the greeting and whose result is the answer."""

    def __init__(self, renderer: SpeechRenderer, *, wait_digit_s: float = 10.0) -> None:
        super().__init__(Script(wait_digit_s=wait_digit_s), renderer)
        self.speech = renderer

    async def _prompt(self, session: BotSession) -> Prompt:
        parameters = session.start.custom_parameters if session.start is not None else {}
        # Rendered once per distinct name: the renderer caches by text.
        return await self.speech.render(greeting_for(first_name_of(parameters)))

    def _result(self, digit: str | None) -> BotResult:
        if digit is None:
            return BotResult({"answer": "none", "digit": None}, ("no_input",))
        return BotResult({"answer": ANSWERS.get(digit, "other"), "digit": digit}, ("dtmf",))

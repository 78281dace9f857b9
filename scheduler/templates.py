"""Built-in workflow templates: starting points a tenant copies and edits."""

from __future__ import annotations

import copy
from typing import Any

from scheduler.definition import validate_definition, validate_settings

__all__ = ["TEMPLATES", "get_template"]

_WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]

TEMPLATES: dict[str, dict[str, Any]] = {
    "voicebot-with-retries": {
        "name": "Voicebot call with retries",
        "description": (
            "Call the person and hand the call to a voicebot; retry busy lines after "
            "15 minutes and unanswered calls after 2 hours, up to 3 attempts."
        ),
        "definition": {
            "start": "call",
            "nodes": [
                {
                    "id": "call",
                    "type": "call",
                    "handler": {"type": "voicebot", "url": "wss://bot.example.com/stream"},
                    "ring_timeout_s": 30,
                    "amd": {"enabled": True, "on_machine": "hangup"},
                    "record": True,
                },
                {"id": "done", "type": "end"},
            ],
            "edges": [{"from": "call", "on": "default", "to": "done"}],
        },
        "settings": {
            "default_timezone": "America/New_York",
            "calling_window": {"days": _WEEKDAYS, "start": "09:00", "end": "20:00"},
            "retry": {
                "busy": {"delay_s": 900, "max_attempts": 3},
                "no_answer": {"delay_s": 7200, "max_attempts": 3},
                "machine": {"delay_s": 7200, "max_attempts": 2},
            },
            "pacing": {"mode": "progressive", "seats": 10},
            "recording": True,
        },
    },
    "call-then-sms": {
        "name": "Call, then SMS if nobody answered",
        "description": (
            "Call with a short prompt; if nobody answers (or a machine does), send an SMS instead."
        ),
        "definition": {
            "start": "call",
            "nodes": [
                {
                    "id": "call",
                    "type": "call",
                    "handler": {
                        "type": "prompt",
                        "text": (
                            "Hello {{record.first_name}}, this is a reminder of your appointment."
                        ),
                    },
                    "ring_timeout_s": 25,
                    "amd": {"enabled": True, "on_machine": "hangup"},
                },
                {
                    "id": "sms",
                    "type": "sms",
                    "text": (
                        "Hi {{record.first_name}}, we tried to call you. Reply CALL for a callback."
                    ),
                },
                {"id": "done", "type": "end"},
            ],
            "edges": [
                {"from": "call", "on": "no_answer", "to": "sms"},
                {"from": "call", "on": "machine", "to": "sms"},
                {"from": "call", "on": "busy", "to": "sms"},
                {"from": "call", "on": "default", "to": "done"},
                {"from": "sms", "on": "default", "to": "done"},
            ],
        },
        "settings": {
            "default_timezone": "America/New_York",
            "calling_window": {"days": _WEEKDAYS, "start": "09:00", "end": "19:00"},
            "pacing": {"mode": "progressive", "seats": 5},
            "recording": False,
        },
    },
}

for _template in TEMPLATES.values():  # a broken template is a bug: fail at import
    validate_definition(_template["definition"])
    validate_settings(_template["settings"])


def get_template(template_id: str) -> dict[str, Any] | None:
    found = TEMPLATES.get(template_id)
    return copy.deepcopy(found) if found is not None else None

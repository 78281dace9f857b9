"""Definition validation: wrong JSON types and loops that never leave a scheduler step."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dialer.demo.run import demo_workflow
from scheduler.definition import DefinitionError, validate_definition, validate_settings
from scheduler.templates import TEMPLATES

PROMPT = {"type": "prompt", "text": "Hello"}
CALL = {"id": "call", "type": "call", "handler": PROMPT}
BRANCH = {
    "id": "b",
    "type": "branch",
    "condition": {"field": "meta.x", "operator": "equals", "value": "1"},
}


def _problems(definition: Any) -> list[dict[str, str]]:
    with pytest.raises(DefinitionError) as caught:
        validate_definition(definition)
    return [p.as_dict() for p in caught.value.problems]


@pytest.mark.parametrize(
    ("node_type", "edge", "field"),
    [
        (["call"], None, "definition.nodes[0].type"),
        ({"call": 1}, None, "definition.nodes[0].type"),
        ("call", {"from": ["call"], "on": "busy", "to": "call"}, "definition.edges[0].from"),
        ("call", {"from": {"a": 1}, "on": "busy", "to": "call"}, "definition.edges[0].from"),
        ("call", {"from": "call", "on": ["busy"], "to": "call"}, "definition.edges[0].on"),
        ("call", {"from": "call", "on": {"busy": 1}, "to": "call"}, "definition.edges[0].on"),
        ("call", {"from": "call", "on": "busy", "to": ["call"]}, "definition.edges[0].to"),
    ],
)
def test_a_list_or_object_where_a_string_belongs_names_the_field(
    node_type: Any, edge: dict[str, Any] | None, field: str
) -> None:
    definition = {
        "start": "call",
        "nodes": [{**CALL, "type": node_type}],
        "edges": [edge] if edge else [],
    }
    problems = _problems(definition)
    assert problems[0]["field"] == field
    assert "must be a string" in problems[0]["message"]


def test_every_mistyped_edge_is_reported_at_once() -> None:
    definition = {
        "start": "call",
        "nodes": [CALL],
        "edges": [
            {"from": "call", "on": ["x"], "to": "call"},
            {"from": "call", "on": "busy", "to": {"id": "call"}},
            {"from": "call", "on": ["x"], "to": "call"},
        ],
    }
    fields = [p["field"] for p in _problems(definition)]
    assert fields == ["definition.edges[0].on", "definition.edges[1].to", "definition.edges[2].on"]


def _graph(nodes: list[dict[str, Any]], edges: list[dict[str, Any]], start: str = "b") -> dict:
    return {"start": start, "nodes": nodes, "edges": edges}


# Requests that may not render for some record (an empty text, an address from the
# record): they can fail at once, in the same step.
SMS = {"id": "s", "type": "sms", "text": "{{placeholders.greeting}}"}
EMAIL = {"id": "e", "type": "email", "subject": "Hi", "body": "Hi", "to": "{{placeholders.email}}"}
WAIT = {"id": "w", "type": "wait", "duration_s": 60}

LOOPS = {
    "branch to itself": (
        _graph(
            [BRANCH, CALL],
            [{"from": "b", "on": "true", "to": "call"}, {"from": "b", "on": "false", "to": "b"}],
        ),
        ["b"],
        "definition.edges[1]",
    ),
    "branch default to itself": (
        _graph([BRANCH], [{"from": "b", "to": "b"}]),
        ["b"],
        "definition.edges[0]",
    ),
    "two branches": (
        _graph(
            [BRANCH, {**BRANCH, "id": "b2"}, CALL],
            [
                {"from": "b", "on": "true", "to": "b2"},
                {"from": "b", "on": "false", "to": "call"},
                {"from": "b2", "on": "default", "to": "b"},
            ],
        ),
        ["b", "b2"],
        "definition.edges[2]",
    ),
    "branch, email, branch": (
        _graph(
            [BRANCH, EMAIL, CALL],
            [
                {"from": "b", "on": "true", "to": "e"},
                {"from": "b", "on": "false", "to": "call"},
                {"from": "e", "on": "default", "to": "b"},
            ],
        ),
        ["b", "e"],
        "definition.edges[2]",
    ),
    "sms failure to an email whose failure goes back": (
        _graph(
            [SMS, EMAIL],
            [{"from": "s", "on": "failed", "to": "e"}, {"from": "e", "on": "failed", "to": "s"}],
            start="s",
        ),
        ["s", "e"],
        "definition.edges[1]",
    ),
}


@pytest.mark.parametrize(("definition", "cycle", "field"), LOOPS.values(), ids=LOOPS.keys())
def test_a_loop_without_a_call_or_wait_is_refused_naming_its_nodes(
    definition: dict[str, Any], cycle: list[str], field: str
) -> None:
    problems = _problems(definition)
    assert len(problems) == 1
    assert problems[0]["field"] == field
    loop = " -> ".join([*cycle, cycle[0]])
    assert loop in problems[0]["message"]
    assert "no call or wait node" in problems[0]["message"]


ALLOWED = {
    "through a wait": _graph(
        [BRANCH, WAIT, CALL],
        [
            {"from": "b", "on": "true", "to": "call"},
            {"from": "b", "on": "false", "to": "w"},
            {"from": "w", "on": "next", "to": "b"},
        ],
    ),
    "through a call": _graph(
        [BRANCH, CALL],
        [{"from": "b", "on": "default", "to": "call"}, {"from": "call", "to": "b"}],
    ),
    "a call retrying itself": _graph([CALL], [{"from": "call", "to": "call"}], start="call"),
    # Sent needs the action runner's request: never in the same step.
    "through an email's sent only": _graph(
        [BRANCH, EMAIL, CALL],
        [
            {"from": "b", "on": "true", "to": "e"},
            {"from": "b", "on": "false", "to": "call"},
            {"from": "e", "on": "sent", "to": "b"},
            {"from": "e", "on": "failed", "to": "call"},
        ],
    ),
    # Its own failure edge wins over the default that closes the loop.
    "an email whose default loops but whose failure does not": _graph(
        [EMAIL, CALL],
        [{"from": "e", "on": "failed", "to": "call"}, {"from": "e", "to": "e"}],
        start="e",
    ),
    # A webhook's request is fixed when the workflow is saved: it never fails at once.
    "a webhook's failure back to itself": _graph(
        [{"id": "h", "type": "webhook", "url": "https://crm.example/{{record.id}}"}],
        [{"from": "h", "on": "failure", "to": "h"}],
        start="h",
    ),
}


@pytest.mark.parametrize("definition", ALLOWED.values(), ids=ALLOWED.keys())
def test_a_loop_that_must_wait_for_a_call_a_timer_or_a_request_is_allowed(
    definition: dict[str, Any],
) -> None:
    assert validate_definition(copy.deepcopy(definition)) == definition


def test_templates_and_the_demo_still_validate() -> None:
    for template in TEMPLATES.values():
        validate_definition(template["definition"])
    validate_definition(demo_workflow("ws://bot", seats=3, pacing="predictive")["definition"])


@pytest.mark.parametrize("headers", ["zz", ["a"], {"X-Key": 5}])
def test_webhook_node_headers_must_be_an_object_of_strings(headers: Any) -> None:
    webhook = {
        "id": "crm",
        "type": "webhook",
        "url": "https://crm.example.com/",
        "headers": headers,
    }
    definition = {
        "start": "crm",
        "nodes": [webhook, {"id": "done", "type": "end"}],
        "edges": [{"from": "crm", "on": "default", "to": "done"}],
    }
    fields = [p["field"] for p in _problems(definition)]
    assert fields == ["definition.nodes[0].headers"]


def test_a_loop_through_requests_that_render_for_everyone_is_allowed() -> None:
    """A static webhook (or SMS) cannot fail at once: its failure edge is taken only
    after the action runner tried it, in a later step."""
    static_hook = {"id": "h", "type": "webhook", "url": "https://crm.example/hook"}
    retry_hook = _graph(
        [static_hook, CALL],
        [{"from": "h", "on": "failure", "to": "h"}, {"from": "h", "on": "success", "to": "call"}],
        start="h",
    )
    assert validate_definition(retry_hook) == retry_hook
    static_sms = {"id": "s", "type": "sms", "text": "Hi"}
    sms_loop = _graph([static_sms, BRANCH], [{"from": "s", "to": "b"}, {"from": "b", "to": "s"}])
    assert validate_definition(sms_loop) == sms_loop
    # A header name no request can carry would fail every time: refused as written.
    for name in ("bad name", "x" * 129):
        bad_header = {**static_hook, "headers": {name: "x"}}
        problems = _problems(
            _graph([bad_header], [{"from": "h", "on": "failure", "to": "h"}], start="h")
        )
        assert [p["field"] for p in problems] == ["definition.nodes[0].headers"]
        assert "is not an HTTP header name" in problems[0]["message"]


@pytest.mark.parametrize("to", ["support-team", "a@b", "two words@example.com"])
def test_a_fixed_email_address_is_checked_when_the_workflow_is_saved(to: str) -> None:
    email = {"id": "e", "type": "email", "subject": "Hi", "body": "Hi", "to": to}
    problems = _problems(_graph([email], [{"from": "e", "on": "failed", "to": "e"}], start="e"))
    assert [p["field"] for p in problems] == ["definition.nodes[0].to"]
    assert "is not an email address" in problems[0]["message"]
    fine = {**email, "to": "Ops <ops@example.com>, a@example.org"}
    assert validate_definition(_graph([fine], [], start="e"))


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        (
            {"start": "call", "nodes": [{**CALL, "ring_timout_s": 5}], "edges": []},
            "definition.nodes[0].ring_timout_s",
        ),
        (
            {"start": "call", "nodes": [{**CALL, "handler": {**PROMPT, "txt": "x"}}], "edges": []},
            "definition.nodes[0].handler.txt",
        ),
        (
            {"start": "call", "nodes": [{**CALL, "amd": {"enabld": True}}], "edges": []},
            "definition.nodes[0].amd.enabld",
        ),
        (
            {
                "start": "b",
                "nodes": [
                    {
                        "id": "b",
                        "type": "branch",
                        "condition": {"field": "meta.x", "operator": "equals", "valu": 1},
                    },
                ],
                "edges": [],
            },
            "definition.nodes[0].condition.valu",
        ),
        (
            {"start": "call", "nodes": [CALL], "edges": [{"from": "call", "too": "call"}]},
            "definition.edges[0].too",
        ),
        ({"start": "call", "nodes": [CALL], "egdes": []}, "definition.egdes"),
    ],
)
def test_a_misspelt_field_is_refused_not_ignored(definition: dict[str, Any], field: str) -> None:
    problems = _problems(definition)
    assert field in [p["field"] for p in problems], problems
    mine = next(p for p in problems if p["field"] == field)
    assert mine["message"].startswith("is not a known field here (known: ")


def test_a_node_may_carry_a_name() -> None:
    named = {"start": "call", "nodes": [{**CALL, "name": "First call"}], "edges": []}
    assert validate_definition(named) == named


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"calling_windw": {"start": "09:00", "end": "17:00"}}, "settings.calling_windw"),
        ({"max_attempt": 2}, "settings.max_attempt"),
        ({"pacing": {"seat": 3}}, "settings.pacing.seat"),
        (
            {"retry": {"busy": {"delay_s": 5, "max_attempts": 2, "backof": 2}}},
            "settings.retry.busy.backof",
        ),
        (
            {"calling_window": {"start": "09:00", "end": "17:00", "day": ["mon"]}},
            "settings.calling_window.day",
        ),
    ],
)
def test_a_misspelt_setting_is_refused_not_ignored(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        validate_settings(settings)
    assert [p.as_dict()["field"] for p in caught.value.problems] == [field]

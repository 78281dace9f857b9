"""The workflow graph: branch conditions, templates, next steps, retries, waits."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from scheduler.definition import validate_definition
from scheduler.policy import WorkflowPolicy
from scheduler.workflow import (
    Context,
    Finish,
    PlaceCall,
    RetryCall,
    RunNode,
    WaitUntil,
    WorkflowGraph,
    evaluate,
    lookup,
    render,
)

CTX = Context(
    record={"first_name": "Anna", "last_name": "Smith", "phone": "+12125550123", "attempts": 2},
    placeholders={"appointment": "Tuesday", "amount": "42.50"},
    meta={"tier": "gold", "tags": ["vip", "east"], "nested": {"score": 7}},
    call={"outcome": "human", "talk_s": 31},
    result={"answer": "yes", "digits": "1"},
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("record.first_name", "Anna"),
        ("record.firstName", "Anna"),
        ("meta.nested.score", 7),
        ("meta.nested.missing", None),
        ("placeholders.appointment", "Tuesday"),
        ("result.answer", "yes"),
        ("nowhere.x", None),
        ("meta.tier.deeper", None),
    ],
)
def test_lookup(path: str, expected: object) -> None:
    assert lookup(CTX, path) == expected


def test_render_snake_and_camel() -> None:
    text = "Hi {{record.first_name}} {{ record.lastName }}, see you "
    text += "{{placeholders.appointment}}{{x.y}}"
    assert render(text, CTX) == "Hi Anna Smith, see you Tuesday"


@pytest.mark.parametrize(
    ("field", "operator", "value", "expected"),
    [
        ("meta.tier", "equals", "gold", True),
        ("meta.tier", "equals", "GOLD", True),
        ("meta.tier", "not_equals", "silver", True),
        ("meta.tags", "contains", "vip", True),
        ("meta.tags", "not_contains", "west", True),
        ("record.first_name", "contains", "nn", True),
        ("record.phone", "starts_with", "+1212", True),
        ("meta.missing", "is_empty", None, True),
        ("meta.tier", "is_not_empty", None, True),
        ("placeholders.amount", "greater_than", 40, True),
        ("placeholders.amount", "less_than", "40", False),
        ("call.talk_s", "greater_or_equal", 31, True),
        ("call.talk_s", "less_or_equal", 30, False),
        ("record.attempts", "equals", "2", True),
        ("result.answer", "in", ["yes", "maybe"], True),
        ("result.answer", "not_in", ["no"], True),
        ("meta.tier", "greater_than", 3, False),  # not a number: never greater
    ],
)
def test_operators(field: str, operator: str, value: object, expected: bool) -> None:
    assert evaluate({"field": field, "operator": operator, "value": value}, CTX) is expected


def test_and_or_nesting() -> None:
    yes = {"field": "result.answer", "operator": "equals", "value": "yes"}
    no = {"field": "result.answer", "operator": "equals", "value": "no"}
    assert evaluate({"join": "and", "conditions": [yes, yes]}, CTX)
    assert not evaluate({"join": "and", "conditions": [yes, no]}, CTX)
    assert evaluate({"join": "or", "conditions": [no, {"conditions": [yes]}]}, CTX)


DEFINITION = validate_definition(
    {
        "start": "call",
        "nodes": [
            {"id": "call", "type": "call", "handler": {"type": "prompt", "text": "Hi"}},
            {
                "id": "said_yes",
                "type": "branch",
                "condition": {"field": "result.answer", "operator": "equals", "value": "yes"},
            },
            {"id": "sms", "type": "sms", "text": "Thanks {{record.first_name}}"},
            {"id": "later", "type": "wait", "duration_s": 3600},
            {"id": "morning", "type": "wait", "until_local_time": "09:30"},
            {"id": "done", "type": "end"},
            {"id": "gave_up", "type": "end", "status": "failed"},
        ],
        "edges": [
            {"from": "call", "on": "answered", "to": "said_yes"},
            {"from": "call", "on": "rejected", "to": "gave_up"},
            {"from": "call", "on": "machine", "to": "morning"},
            {"from": "said_yes", "on": "true", "to": "sms"},
            {"from": "said_yes", "on": "false", "to": "later"},
            {"from": "sms", "on": "default", "to": "done"},
            {"from": "later", "on": "next", "to": "call"},
            {"from": "morning", "on": "next", "to": "call"},
        ],
    }
)
POLICY = WorkflowPolicy.from_settings(
    {
        "retry": {
            "busy": {"delay_s": 600, "max_attempts": 3},
            "machine": {"delay_s": 60, "max_attempts": 5},
        }
    }
)
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=ZoneInfo("UTC")).timestamp()
ZONE = "America/New_York"


def test_start_is_the_call() -> None:
    graph = WorkflowGraph(DEFINITION, POLICY)
    step = graph.first_step(CTX, NOW, ZONE)
    assert isinstance(step, PlaceCall) and step.node_id == "call"


@pytest.mark.parametrize(
    ("disposition", "attempts", "result_answer", "expected"),
    [
        ("human", 1, "yes", RunNode),  # human takes the answered edge, branch true -> sms
        ("transferred", 1, "yes", RunNode),  # so does a call the bot transferred
        ("answered", 1, "no", WaitUntil),  # branch false -> wait an hour
        ("busy", 1, None, RetryCall),  # retry rule, no edge of its own
        ("busy", 3, None, Finish),  # attempts exhausted, no edge -> completed
        ("rejected", 1, None, Finish),  # an edge to a failed end
        ("machine", 1, None, WaitUntil),  # an edge overrides the retry rule
        ("no_answer", 1, None, Finish),  # no rule here, no edge
    ],
)
def test_after_call(
    disposition: str, attempts: int, result_answer: str | None, expected: type
) -> None:
    graph = WorkflowGraph(DEFINITION, POLICY)
    ctx = Context(record=CTX.record, result={"answer": result_answer} if result_answer else {})
    step = graph.after_call("call", disposition, attempts, ctx, NOW, ZONE)
    assert isinstance(step, expected), step
    if isinstance(step, RetryCall):
        assert step.at == NOW + 600 and step.node_id == "call"
    if disposition == "rejected":
        assert step == Finish("failed", "rejected", "gave_up")
    if disposition == "answered":
        assert step == WaitUntil("call", NOW + 3600)
    if disposition == "busy" and attempts == 3:
        assert step.status == "completed" and step.outcome == "busy"


def test_wait_until_local_time_crosses_dst() -> None:
    graph = WorkflowGraph(DEFINITION, POLICY)
    # 2026-03-07 20:00 in New York (EST); the clocks spring forward overnight.
    now = datetime(2026, 3, 7, 20, 0, tzinfo=ZoneInfo(ZONE)).timestamp()
    step = graph.after_call("call", "machine", 1, CTX, now, ZONE)
    assert isinstance(step, WaitUntil)
    local = datetime.fromtimestamp(step.at, ZoneInfo(ZONE))
    assert (local.date().isoformat(), local.hour, local.minute) == ("2026-03-08", 9, 30)
    assert local.utcoffset().total_seconds() == -4 * 3600  # EDT by then


def test_after_call_counts_the_record_s_attempts_against_the_total_cap() -> None:
    policy = WorkflowPolicy.from_settings(
        {"retry": {"busy": {"delay_s": 600, "max_attempts": 3}}, "max_attempts": 2}
    )
    graph = WorkflowGraph(DEFINITION, policy)
    first_here = graph.after_call("call", "busy", 1, CTX, NOW, ZONE, attempts_total=1)
    assert isinstance(first_here, RetryCall)
    # The first busy at this node, but the record's second attempt: the cap of 2 holds.
    capped = graph.after_call("call", "busy", 1, CTX, NOW, ZONE, attempts_total=2)
    assert isinstance(capped, Finish)

"""The workflow graph: branch conditions, templates, next steps, retries, waits."""

from __future__ import annotations

from datetime import datetime, time
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
    next_local_time,
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


def _rule(field: str, operator: str, value: object, **context: dict) -> bool:
    return evaluate({"field": field, "operator": operator, "value": value}, Context(**context))


@pytest.mark.parametrize(
    ("actual", "operator", "value", "expected"),
    [
        # Integers past 2**53 are compared exactly, as numbers and as numeric text.
        (12345678901234567, "equals", 12345678901234568, False),
        ("12345678901234567", "equals", "12345678901234568", False),
        (2**53 + 1, "greater_than", 2**53, True),
        (12345678901234567, "equals", "12345678901234567", True),
        (0.1, "equals", "0.1", True),
        ("1.50", "equals", 1.5, True),
        # Text that merely looks numeric stays text.
        ("01234", "equals", "1234", False),
        ("+12125550123", "equals", "12125550123", False),
        ("1_000", "equals", 1000, False),
        ("1e3", "equals", 1000, True),
        ("01234", "greater_than", 1000, False),
        # A name is a name.
        ("Nan", "equals", "nan", True),
        ("Nan", "in", ["NAN"], True),
        ("Infinity", "equals", "infinity", True),
        # Booleans equal booleans (or their spelling), never numbers.
        (True, "equals", 1, False),
        (False, "equals", 0, False),
        (1, "equals", True, False),
        (True, "equals", "true", True),
        ("TRUE", "equals", True, True),
        ("1", "equals", True, False),
        (False, "not_equals", "false", False),
        # An object contains its keys, not the text of its repr.
        ({"key": 1}, "contains", "key", True),
        ({"key": 1}, "contains", "'key'", False),
        ({"key": 1}, "equals", {"key": 1}, True),
    ],
)
def test_values_compare_exactly_and_by_kind(
    actual: object, operator: str, value: object, expected: bool
) -> None:
    assert _rule("meta.x", operator, value, meta={"x": actual}) is expected


def test_templates_take_keys_in_any_script_and_show_values_as_json_does() -> None:
    ctx = Context(
        placeholders={"prénom": "Zoë", "名前": "花子"},
        meta={"vip": True, "obj": {"a": 1}, "tags": ["x", "y"], "none": None},
    )
    text = "{{placeholders.prénom}} {{placeholders.名前}} {{meta.vip}} {{meta.obj}} "
    text += "{{meta.tags}}|{{meta.none}}|{{ 1bad }}"
    assert render(text, ctx) == 'Zoë 花子 true {"a":1} ["x","y"]||{{ 1bad }}'


LOOPING = validate_definition(
    {
        "start": "call",
        "nodes": [
            {"id": "call", "type": "call", "handler": {"type": "prompt", "text": "Hi"}},
            {"id": "later", "type": "wait", "duration_s": 600},
        ],
        "edges": [
            {"from": "call", "on": "busy", "to": "call"},
            {"from": "call", "on": "no_answer", "to": "later"},
            {"from": "later", "on": "next", "to": "call"},
        ],
    }
)


def test_an_edge_back_to_a_call_stops_at_the_cap_on_all_attempts() -> None:
    graph = WorkflowGraph(LOOPING, WorkflowPolicy.from_settings({"max_attempts": 2}))
    again = graph.after_call("call", "busy", 1, CTX, NOW, ZONE, attempts_total=1)
    assert again == PlaceCall("call", graph.nodes["call"])
    capped = graph.after_call("call", "busy", 2, CTX, NOW, ZONE, attempts_total=2)
    assert capped == Finish("completed", "max_attempts", "call")
    # Through a wait: the wait still happens, the call after it does not.
    waited = graph.after_call("call", "no_answer", 1, CTX, NOW, ZONE, attempts_total=2)
    assert waited == WaitUntil("call", NOW + 600)
    assert graph.enter("call", CTX, NOW, ZONE, attempts_total=2) == capped
    assert isinstance(graph.enter("call", CTX, NOW, ZONE, attempts_total=1), PlaceCall)


def test_the_default_policy_caps_a_looping_graph_too() -> None:
    graph = WorkflowGraph(LOOPING, WorkflowPolicy.from_settings({}))
    cap = graph.policy.retry.max_attempts_total
    assert cap is not None
    assert isinstance(
        graph.after_call("call", "busy", 1, CTX, NOW, ZONE, attempts_total=cap - 1), PlaceCall
    )
    assert (
        graph.after_call("call", "busy", 1, CTX, NOW, ZONE, attempts_total=cap).outcome
        == "max_attempts"
    )


@pytest.mark.parametrize(
    ("disposition", "edge"),
    [
        ("media_timeout", "answered"),
        ("media_negotiation_failed", "failed"),
        ("auth_failed", "failed"),
        ("auth_refused", "failed"),
        ("auth_unsupported", "failed"),
    ],
)
def test_finer_call_outcomes_take_their_broader_edge(disposition: str, edge: str) -> None:
    definition = validate_definition(
        {
            "start": "call",
            "nodes": [
                {"id": "call", "type": "call", "handler": {"type": "prompt", "text": "Hi"}},
                {"id": "answered", "type": "end"},
                {"id": "failed", "type": "end", "status": "failed"},
                {"id": "own", "type": "end"},
            ],
            "edges": [
                {"from": "call", "on": "answered", "to": "answered"},
                {"from": "call", "on": "failed", "to": "failed"},
            ],
        }
    )
    graph = WorkflowGraph(definition, WorkflowPolicy.from_settings({"retry": {}}))
    step = graph.after_call("call", disposition, 1, CTX, NOW, ZONE)
    assert isinstance(step, Finish) and step.node_id == edge
    # And an edge of its own is allowed and wins.
    own = {
        **definition,
        "edges": [*definition["edges"], {"from": "call", "on": disposition, "to": "own"}],
    }
    step = WorkflowGraph(validate_definition(own), graph.policy).after_call(
        "call", disposition, 1, CTX, NOW, ZONE
    )
    assert isinstance(step, Finish) and step.node_id == "own"


def test_finer_failures_are_retried_as_failed() -> None:
    policy = WorkflowPolicy.from_settings({"retry": {"failed": {"delay_s": 60, "max_attempts": 2}}})
    graph = WorkflowGraph(LOOPING, policy)
    assert isinstance(graph.after_call("call", "auth_failed", 1, CTX, NOW, ZONE), RetryCall)
    assert not isinstance(graph.after_call("call", "media_timeout", 1, CTX, NOW, ZONE), RetryCall)


NY = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("now", "until", "expected"),
    [
        # Fall back, 2024-11-03: 01:20 comes twice. In the first pass, the first 01:20;
        # in the second (01:10 EST), the second 01:20, ten minutes on.
        (datetime(2024, 11, 3, 1, 10, tzinfo=NY), "01:20", datetime(2024, 11, 3, 1, 20, tzinfo=NY)),
        (
            datetime(2024, 11, 3, 1, 10, tzinfo=NY, fold=1),
            "01:20",
            datetime(2024, 11, 3, 1, 20, tzinfo=NY, fold=1),
        ),
        # Spring forward, 2024-03-10: 02:30 never shows; the wait ends at the jump
        # (03:00 EDT), and once past it, at the next day's 02:30.
        (datetime(2024, 3, 10, 1, 50, tzinfo=NY), "02:30", datetime(2024, 3, 10, 3, 0, tzinfo=NY)),
        (datetime(2024, 3, 10, 3, 10, tzinfo=NY), "02:30", datetime(2024, 3, 11, 2, 30, tzinfo=NY)),
        # An ordinary day, before and after the time.
        (datetime(2024, 6, 1, 8, 0, tzinfo=NY), "09:30", datetime(2024, 6, 1, 9, 30, tzinfo=NY)),
        (datetime(2024, 6, 1, 9, 30, tzinfo=NY), "09:30", datetime(2024, 6, 2, 9, 30, tzinfo=NY)),
    ],
)
def test_wait_until_local_time_on_the_days_the_clocks_change(
    now: datetime, until: str, expected: datetime
) -> None:
    hour, minute = (int(x) for x in until.split(":"))
    got = next_local_time(now.timestamp(), NY, time(hour, minute))
    assert got == expected.timestamp(), datetime.fromtimestamp(got, NY)


def test_wait_until_a_date_the_zone_skipped() -> None:
    # Samoa went from 2011-12-29 23:59:59 straight to 2011-12-31 00:00: the clock
    # passed the 30th's noon in that jump, so a wait for noon ends there.
    apia = ZoneInfo("Pacific/Apia")
    now = datetime(2011, 12, 29, 23, 0, tzinfo=apia).timestamp()
    got = datetime.fromtimestamp(next_local_time(now, apia, time(12, 0)), apia)
    assert got.isoformat() == "2011-12-31T00:00:00+14:00"

"""Walking a record through its workflow graph: pure decisions, no IO.

Given a validated definition, where a record stands and how its last node
ended, :class:`WorkflowGraph` says what happens next: place a call, wait,
run an action node (sms, email, webhook), or finish. Branch nodes are
decided on the spot from the record's fields, placeholders, meta, the last
call and the bot's result, so they never wait in a queue.

Templates (``{{record.first_name}}``) and branch fields use dotted paths;
``record.firstName`` and ``record.first_name`` are the same field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from dialer import jsonutil
from scheduler.policy import WorkflowPolicy, retry_outcome
from scheduler.retries import Retry, decide_retry

__all__ = [
    "MAX_ATTEMPTS",
    "TEMPLATE",
    "WORKFLOW_ERROR",
    "Context",
    "Finish",
    "PlaceCall",
    "RetryCall",
    "RunNode",
    "Step",
    "WaitUntil",
    "WorkflowGraph",
    "WorkflowLoopError",
    "as_text",
    "evaluate",
    "lookup",
    "next_local_time",
    "render",
]

_MISSING = object()
# ``{{path}}``: a dotted path of words, in any script (``placeholders.prénom``).
TEMPLATE = re.compile(r"\{\{\s*([^\W\d][\w.\-]*)\s*\}\}")
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
# Outcomes that also take the edge of a broader one when they have none of their own.
# An outcome with no edge of its own takes its broader outcome's edge: a call a
# person answered, or one the bot transferred, was answered.
# The SIP layer's finer failures take the failed edge; a call whose media stopped
# after the answer was still answered.
_BROADER = {
    "human": "answered",
    "transferred": "answered",
    "media_timeout": "answered",
    "media_negotiation_failed": "failed",
    "auth_failed": "failed",
    "auth_refused": "failed",
    "auth_unsupported": "failed",
}
MAX_INLINE_STEPS = 50
# The outcome of a record ended as failed because its workflow could not say
# what comes next (branches that loop, a bug): it must not hold back the others.
WORKFLOW_ERROR = "workflow_error"
# The outcome of a record whose graph led back to a call node after the
# workflow's cap on all attempts (``settings.max_attempts``) was spent.
MAX_ATTEMPTS = "max_attempts"


class WorkflowLoopError(RuntimeError):
    """Branch nodes lead into each other without ever reaching a real step."""


@dataclass(frozen=True, slots=True)
class Context:
    """What branch conditions and templates can see of a record."""

    record: Mapping[str, Any] = field(default_factory=dict)
    placeholders: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    call: Mapping[str, Any] = field(default_factory=dict)
    result: Mapping[str, Any] = field(default_factory=dict)


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def lookup(context: Context, path: str) -> Any:
    """The value at a dotted path, or ``None`` when any part is missing."""
    root, _, rest = path.partition(".")
    value: Any = getattr(context, root, _MISSING) if root in _ROOTS else _MISSING
    for part in rest.split(".") if rest else ():
        if not isinstance(value, Mapping):
            return None
        if part in value:
            value = value[part]
        elif _snake(part) in value:
            value = value[_snake(part)]
        else:
            return None
    return None if value is _MISSING else value


_ROOTS = frozenset({"record", "placeholders", "meta", "call", "result"})


def render(template: str, context: Context) -> str:
    """Fill ``{{path}}`` placeholders; a missing value renders as an empty string."""

    return TEMPLATE.sub(lambda match: as_text(lookup(context, match[1])), template)


def as_text(value: Any) -> str:
    """A value as templates show it: JSON's spelling for booleans, objects and lists."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (Mapping, list, tuple)):
        return jsonutil.dumps(value)
    return str(value)


# A string is compared as a number only when written as JSON writes one: "01234"
# (a ZIP code), "+1212..." (a phone), "1_000" or "nan" stay text.
_NUMERIC = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _number(value: Any) -> Decimal | None:
    """The exact number a value holds or spells; None for anything else (booleans too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        # Its shortest spelling, so 0.1 equals "0.1"; nan and infinities are no numbers.
        return Decimal(repr(value)) if value == value and abs(value) != float("inf") else None
    if isinstance(value, str) and len(value) <= 100 and _NUMERIC.fullmatch(value):
        return Decimal(value)
    return None


def _truth(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.lower())
    return None


def _empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, (list, dict)) and not value)


def _compare(op: str, actual: Any, expected: Any) -> bool:
    left, right = _number(actual), _number(expected)
    if left is None or right is None:
        return False
    if op == "greater_than":
        return left > right
    if op == "less_than":
        return left < right
    if op == "greater_or_equal":
        return left >= right
    return left <= right


def _equal(actual: Any, expected: Any) -> bool:
    """Numbers by value, booleans as true/false, text without regard to case."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        left_truth, right_truth = _truth(actual), _truth(expected)
        return left_truth is not None and left_truth == right_truth
    left, right = _number(actual), _number(expected)
    if left is not None and right is not None:
        return left == right
    if isinstance(actual, (Mapping, list, tuple)) or isinstance(expected, (Mapping, list, tuple)):
        return bool(actual == expected)
    if isinstance(expected, str) or isinstance(actual, str):
        return as_text(actual).lower() == as_text(expected).lower()
    return bool(actual == expected)


def evaluate(condition: Mapping[str, Any], context: Context) -> bool:
    """Evaluate a validated branch condition (a rule, or rules joined by and/or)."""
    if "conditions" in condition:
        results = (evaluate(c, context) for c in condition["conditions"])
        return any(results) if condition.get("join", "and") == "or" else all(results)
    op = condition["operator"]
    actual = lookup(context, condition["field"])
    expected = condition.get("value")
    if op == "equals":
        return _equal(actual, expected)
    if op == "not_equals":
        return not _equal(actual, expected)
    if op == "is_empty":
        return _empty(actual)
    if op == "is_not_empty":
        return not _empty(actual)
    if op in ("contains", "not_contains"):
        if isinstance(actual, (list, tuple)):
            found = any(_equal(item, expected) for item in actual)
        elif isinstance(actual, Mapping):
            found = any(_equal(key, expected) for key in actual)  # an object contains its keys
        else:
            found = as_text(expected).lower() in as_text(actual).lower()
        return found if op == "contains" else not found
    if op == "starts_with":
        return as_text(actual).lower().startswith(as_text(expected).lower())
    if op in ("in", "not_in"):
        found = any(_equal(actual, item) for item in expected or ())
        return found if op == "in" else not found
    return _compare(op, actual, expected)


# -- steps -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlaceCall:
    node_id: str
    node: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RetryCall:
    """Call the same node again at ``at`` (the retry policy's delay)."""

    node_id: str
    at: float
    outcome: str


@dataclass(frozen=True, slots=True)
class WaitUntil:
    node_id: str  # the node to run when the wait is over
    at: float


@dataclass(frozen=True, slots=True)
class RunNode:
    """An action node the scheduler runs itself: sms, email or webhook."""

    node_id: str
    node: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Finish:
    status: str  # completed | failed
    outcome: str
    node_id: str | None = None


Step = PlaceCall | RetryCall | WaitUntil | RunNode | Finish


class WorkflowGraph:
    """One version of a workflow, ready to answer "what next?"."""

    def __init__(self, definition: Mapping[str, Any], policy: WorkflowPolicy) -> None:
        self.start = definition["start"]
        self.nodes: dict[str, Mapping[str, Any]] = {n["id"]: n for n in definition["nodes"]}
        self.edges: dict[tuple[str, str], str] = {
            (e["from"], e.get("on", "default")): e["to"] for e in definition.get("edges", [])
        }
        self.policy = policy

    def first_step(
        self, context: Context, now: float, zone: str, *, attempts_total: int = 0
    ) -> Step:
        return self.enter(
            self.start, context, now, zone, outcome="start", attempts_total=attempts_total
        )

    def enter(
        self,
        node_id: str,
        context: Context,
        now: float,
        zone: str,
        *,
        outcome: str = "next",
        attempts_total: int = 0,
    ) -> Step:
        """The step that entering ``node_id`` amounts to (branches decided inline).

        ``attempts_total`` is every call attempt the record has had: a graph that
        leads back to a call node (an edge, or through a wait) stops at the
        workflow's cap on all attempts as the retry rules do.
        """
        cap = self.policy.retry.max_attempts_total
        for _ in range(MAX_INLINE_STEPS):
            node = self.nodes[node_id]
            kind = node["type"]
            if kind == "call":
                if cap is not None and attempts_total >= cap:
                    return Finish("completed", MAX_ATTEMPTS, node_id)
                return PlaceCall(node_id, node)
            if kind in ("sms", "email", "webhook"):
                return RunNode(node_id, node)
            if kind == "end":
                return Finish(node.get("status", "completed"), outcome, node_id)
            if kind == "wait":
                target = self.edge(node_id, "next")
                at = self._wait_until(node, now, zone)
                if target is None:
                    return Finish("completed", "next", node_id)
                return WaitUntil(target, at)
            # branch
            outcome = "true" if evaluate(node["condition"], context) else "false"
            target = self.edge(node_id, outcome)
            if target is None:
                return Finish("completed", outcome, node_id)
            node_id = target
        raise WorkflowLoopError(f"branches loop without reaching a step near {node_id!r}")

    def edge(self, node_id: str, outcome: str) -> str | None:
        for key in (outcome, _BROADER.get(outcome), "default"):
            if key is not None and (node_id, key) in self.edges:
                return self.edges[(node_id, key)]
        return None

    def after(
        self,
        node_id: str,
        outcome: str,
        context: Context,
        now: float,
        zone: str,
        *,
        attempts_total: int = 0,
    ) -> Step:
        """The step after ``node_id`` ended with ``outcome`` (no retry considered)."""
        target = self.edge(node_id, outcome)
        if target is None:
            return Finish("completed", outcome, node_id)
        return self.enter(
            target, context, now, zone, outcome=outcome, attempts_total=attempts_total
        )

    def after_call(
        self,
        node_id: str,
        disposition: str,
        attempts_at_node: int,
        context: Context,
        now: float,
        zone: str,
        *,
        attempts_total: int | None = None,
    ) -> Step:
        """After a call attempt: retry per the policy, else follow the outcome's edge.

        ``attempts_at_node`` counts against the outcome's ``max_attempts``;
        ``attempts_total`` (every attempt on the record; by default
        ``attempts_at_node``) against the total cap, also where an edge leads
        back to a call node.
        """
        total = attempts_at_node if attempts_total is None else attempts_total
        outcome = retry_outcome(disposition)
        # An edge for the very outcome overrides the retry rule: the workflow
        # author asked for something specific to happen on it.
        if outcome is not None and (node_id, disposition) not in self.edges:
            decision = decide_retry(
                self.policy.retry, outcome, attempts_at_node, now, total_attempts=total
            )
            if isinstance(decision, Retry):
                return RetryCall(node_id, decision.at, disposition)
        return self.after(node_id, disposition, context, now, zone, attempts_total=total)

    @staticmethod
    def _wait_until(node: Mapping[str, Any], now: float, zone: str) -> float:
        if "duration_s" in node:
            return now + float(node["duration_s"])
        hour, minute = (int(x) for x in node["until_local_time"].split(":"))
        return next_local_time(now, ZoneInfo(zone), time(hour, minute))


def next_local_time(now: float, tz: ZoneInfo, wall: time) -> float:
    """The first instant after ``now`` at which the clock in ``tz`` reads ``wall``.

    Where the clocks go back and ``wall`` comes twice, the first that is still
    ahead; where they jump over it, the jump (02:30 on a spring-forward night
    is over when the clock leaps from 02:00 to 03:00).
    """
    today = datetime.fromtimestamp(now, tz).date()
    # Two days ahead at most: a zone may skip a whole date (Samoa, 2011-12-30).
    for days in range(3):
        for instant in _instants_reading(today + timedelta(days=days), wall, tz):
            if instant > now:
                return instant
    raise AssertionError("unreachable: every wall time recurs within three days")


def _instants_reading(day: date, wall: time, tz: ZoneInfo) -> list[float]:
    naive = datetime.combine(day, wall)
    first = naive.replace(tzinfo=tz, fold=0).timestamp()
    second = naive.replace(tzinfo=tz, fold=1).timestamp()
    if first <= second:
        return [first] if first == second else [first, second]  # one instant, or a repeat
    # In a gap fold=1 reads it with the later offset, which lands before the jump:
    # the jump is the first whole second whose clock shows ``wall`` or later.
    before, after = int(second), int(first)
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, tz).replace(tzinfo=None) >= naive:
            after = middle
        else:
            before = middle
    return [float(after)]

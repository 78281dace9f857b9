"""Workflow definitions: their shape, and validation that names node and field.

A definition is a graph::

    {"start": "call",
     "nodes": [{"id": "call", "type": "call", "handler": {...}, ...}, ...],
     "edges": [{"from": "call", "on": "busy", "to": "retry_wait"}, ...]}

Each node type has its own fields and the outcomes it can leave by; an edge
``on`` an outcome the node cannot produce is an error, as is an edge to a
node that does not exist. ``on: "default"`` catches every outcome without an
edge of its own. A record whose node ends with an outcome that has no edge
leaves the workflow as completed.

Validation collects every problem rather than stopping at the first, so that
an editor can show them all at once. Pure: no IO.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import phonenumbers

from scheduler.actions import HEADER_NAME, ActionError, email_recipients

__all__ = [
    "BRANCH_OPERATORS",
    "NODE_OUTCOMES",
    "NODE_TYPES",
    "DefinitionError",
    "validate_definition",
    "validate_settings",
]

CALL_OUTCOMES = (
    "answered",
    "human",
    "machine",
    "busy",
    "no_answer",
    "rejected",
    "not_found",
    "unavailable",
    "congestion",
    "failed",
    "cancelled",
    "bot_failed",
    "worker_lost",
    "abandoned",
    "transferred",
    # Finer outcomes: without an edge of their own they take answered's
    # (media_timeout: the media stopped after the answer) or failed's.
    "media_timeout",
    "media_negotiation_failed",
    "auth_failed",
    "auth_refused",
    "auth_unsupported",
)
NODE_OUTCOMES: dict[str, tuple[str, ...]] = {
    "call": CALL_OUTCOMES,
    "wait": ("next",),
    "branch": ("true", "false"),
    "sms": ("sent", "failed"),
    "email": ("sent", "failed"),
    "webhook": ("success", "failure"),
    "end": (),
}
NODE_TYPES = tuple(NODE_OUTCOMES)
BRANCH_OPERATORS = (
    "equals",
    "not_equals",
    "contains",
    "not_contains",
    "starts_with",
    "is_empty",
    "is_not_empty",
    "greater_than",
    "less_than",
    "greater_or_equal",
    "less_or_equal",
    "in",
    "not_in",
)
RETRYABLE = (
    "busy",
    "no_answer",
    "machine",
    "failed",
    "rejected",
    "worker_lost",
    "bot_failed",
    "congestion",
    "unavailable",
    "not_found",
    "invalid_number",
    "abandoned",
)
_UNARY_OPERATORS = frozenset({"is_empty", "is_not_empty"})
_LIST_OPERATORS = frozenset({"in", "not_in"})
BRANCH_FIELD_ROOTS = ("record", "placeholders", "meta", "call", "result")
_NODE_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_LOCAL_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_NODES = 200


@dataclass(frozen=True, slots=True)
class Problem:
    field: str
    message: str
    node: str | None = None

    def as_dict(self) -> dict[str, str]:
        out = {"field": self.field, "message": self.message}
        if self.node is not None:
            out["node"] = self.node
        return out


class DefinitionError(ValueError):
    """A definition or settings document is invalid; ``problems`` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        first = problems[0]
        where = f"node {first.node!r}: " if first.node else ""
        super().__init__(f"{where}{first.field}: {first.message}")
        self.problems = problems


class _Checker:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.problems: list[Problem] = []

    def add(self, path: str, message: str, node: str | None = None) -> None:
        self.problems.append(Problem(f"{self.prefix}{path}", message, node))

    def number(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        low: float,
        high: float,
        node: str | None,
        *,
        required: bool = False,
        integer: bool = False,
    ) -> None:
        if key not in obj:
            if required:
                self.add(f"{path}.{key}", "is required", node)
            return
        value = obj[key]
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            noun = "an integer" if integer else "a number"
            self.add(f"{path}.{key}", f"must be {noun}", node)
        elif not low <= value <= high:
            self.add(f"{path}.{key}", f"must be between {low:g} and {high:g}", node)

    def text(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        node: str | None,
        *,
        required: bool = False,
        max_len: int = 10_000,
    ) -> None:
        if key not in obj:
            if required:
                self.add(f"{path}.{key}", "is required", node)
            return
        value = obj[key]
        if not isinstance(value, str):
            self.add(f"{path}.{key}", "must be a string", node)
        elif required and not value.strip():
            self.add(f"{path}.{key}", "must not be empty", node)
        elif len(value) > max_len:
            self.add(f"{path}.{key}", f"must be at most {max_len} characters", node)

    def url(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        node: str | None,
        schemes: tuple[str, ...],
    ) -> None:
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            self.add(f"{path}.{key}", "is required (a URL)", node)
        elif not value.startswith(tuple(f"{s}://" for s in schemes)):
            self.add(f"{path}.{key}", f"must be a {' or '.join(schemes)} URL", node)

    def boolean(self, obj: Mapping[str, Any], key: str, path: str, node: str | None) -> None:
        if key in obj and not isinstance(obj[key], bool):
            self.add(f"{path}.{key}", "must be true or false", node)

    def known(
        self, obj: Mapping[str, Any], allowed: frozenset[str], path: str, node: str | None
    ) -> None:
        """A misspelt field would be stored and silently ignored: refuse it instead."""
        for key in obj:
            if key not in allowed:
                self.add(
                    f"{path}.{str(key)[:64]}",
                    f"is not a known field here (known: {', '.join(sorted(allowed))})",
                    node,
                )


# The fields each part of a definition and of the settings may have.
_NODE_FIELDS = {
    "call": frozenset({"handler", "ring_timeout_s", "max_duration_s", "record", "script", "amd"}),
    "wait": frozenset({"duration_s", "until_local_time"}),
    "branch": frozenset({"condition"}),
    "sms": frozenset({"text", "sender"}),
    "email": frozenset({"subject", "body", "to"}),
    "webhook": frozenset({"url", "method", "headers", "body"}),
    "end": frozenset({"status"}),
}
_ANY_NODE_FIELDS = frozenset({"id", "type", "name"})
_HANDLER_FIELDS = {
    "voicebot": frozenset({"type", "url", "headers", "fallback_prompt", "connect_timeout_s"}),
    "prompt": frozenset({"type", "text"}),
}
_AMD_FIELDS = frozenset({"enabled", "on_machine", "message"})
_GROUP_FIELDS = frozenset({"join", "conditions"})
_RULE_FIELDS = frozenset({"field", "operator", "value"})
_EDGE_FIELDS = frozenset({"from", "to", "on"})
_DEFINITION_FIELDS = frozenset({"start", "nodes", "edges"})
_SETTINGS_FIELDS = frozenset(
    {
        "default_timezone",
        "recording",
        "trunk",
        "calling_window",
        "retry",
        "pacing",
        "abandon_message",
        "opt_out_digit",
        "callback_number",
        "company_name",
        "max_attempts",
    }
)
_WINDOW_FIELDS = frozenset({"days", "start", "end"})
_RETRY_RULE_FIELDS = frozenset({"delay_s", "max_attempts"})
_PACING_FIELDS = frozenset(
    {"mode", "seats", "ratio", "abandon_target", "max_wait_s", "cancel_ringing_after_s"}
)


def _check_handler(c: _Checker, handler: Any, path: str, node: str) -> None:
    if not isinstance(handler, dict):
        c.add(path, "must be an object with a type (voicebot or prompt)", node)
        return
    kind = handler.get("type")
    if kind in _HANDLER_FIELDS:
        c.known(handler, _HANDLER_FIELDS[kind], path, node)
    if kind == "voicebot":
        c.url(handler, "url", path, node, ("ws", "wss"))
        headers = handler.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            c.add(f"{path}.headers", "must be an object of string values", node)
        c.text(handler, "fallback_prompt", path, node)
        c.number(handler, "connect_timeout_s", path, 0.1, 60, node)
    elif kind == "prompt":
        c.text(handler, "text", path, node, required=True)
    else:
        c.add(f"{path}.type", "must be 'voicebot' or 'prompt'", node)


def _check_condition(c: _Checker, cond: Any, path: str, node: str, depth: int = 0) -> None:
    if depth > 8:
        c.add(path, "conditions are nested too deeply (at most 8 levels)", node)
        return
    if not isinstance(cond, dict):
        c.add(path, "must be an object", node)
        return
    c.known(cond, _GROUP_FIELDS if "conditions" in cond else _RULE_FIELDS, path, node)
    if "conditions" in cond:
        join = cond.get("join", "and")
        if join not in ("and", "or"):
            c.add(f"{path}.join", "must be 'and' or 'or'", node)
        items = cond["conditions"]
        if not isinstance(items, list) or not items:
            c.add(f"{path}.conditions", "must be a non-empty list", node)
            return
        for i, item in enumerate(items):
            _check_condition(c, item, f"{path}.conditions[{i}]", node, depth + 1)
        return
    fld = cond.get("field")
    if not isinstance(fld, str) or not fld:
        c.add(f"{path}.field", "is required (for example 'call.outcome' or 'meta.tier')", node)
    elif fld.split(".", 1)[0] not in BRANCH_FIELD_ROOTS:
        roots = ", ".join(BRANCH_FIELD_ROOTS)
        c.add(f"{path}.field", f"must start with one of {roots}", node)
    op = cond.get("operator")
    if op not in BRANCH_OPERATORS:
        c.add(f"{path}.operator", f"must be one of {', '.join(BRANCH_OPERATORS)}", node)
        return
    if op in _UNARY_OPERATORS:
        return
    if "value" not in cond:
        c.add(f"{path}.value", f"is required for operator {op}", node)
    elif op in _LIST_OPERATORS and not isinstance(cond["value"], list):
        c.add(f"{path}.value", f"must be a list for operator {op}", node)


def _check_node(c: _Checker, node_obj: dict[str, Any], path: str, node: str) -> None:
    kind = node_obj["type"]
    c.known(node_obj, _ANY_NODE_FIELDS | _NODE_FIELDS[kind], path, node)
    c.text(node_obj, "name", path, node, max_len=200)
    if kind == "call":
        _check_handler(c, node_obj.get("handler"), f"{path}.handler", node)
        c.number(node_obj, "ring_timeout_s", path, 5, 300, node)
        c.number(node_obj, "max_duration_s", path, 5, 4 * 3600, node)
        c.boolean(node_obj, "record", path, node)
        c.text(node_obj, "script", path, node)
        amd = node_obj.get("amd", {})
        if not isinstance(amd, dict):
            c.add(f"{path}.amd", "must be an object", node)
        else:
            c.known(amd, _AMD_FIELDS, f"{path}.amd", node)
            c.boolean(amd, "enabled", f"{path}.amd", node)
            on_machine = amd.get("on_machine", "hangup")
            if on_machine not in ("hangup", "message"):
                c.add(f"{path}.amd.on_machine", "must be 'hangup' or 'message'", node)
            if on_machine == "message":
                c.text(amd, "message", f"{path}.amd", node, required=True)
    elif kind == "wait":
        has_duration = "duration_s" in node_obj
        has_until = "until_local_time" in node_obj
        if has_duration == has_until:
            c.add(path, "needs exactly one of duration_s or until_local_time", node)
        c.number(node_obj, "duration_s", path, 1, 90 * 86400, node)
        until = node_obj.get("until_local_time")
        if has_until and (not isinstance(until, str) or not _LOCAL_TIME.match(until)):
            c.add(f"{path}.until_local_time", "must be a local time HH:MM (24-hour)", node)
    elif kind == "branch":
        if "condition" not in node_obj:
            c.add(f"{path}.condition", "is required", node)
        else:
            _check_condition(c, node_obj["condition"], f"{path}.condition", node)
    elif kind == "sms":
        c.text(node_obj, "text", path, node, required=True, max_len=1600)
        c.text(node_obj, "sender", path, node, max_len=32)
    elif kind == "email":
        c.text(node_obj, "subject", path, node, required=True, max_len=998)
        c.text(node_obj, "body", path, node, required=True)
        c.text(node_obj, "to", path, node)
        to = node_obj.get("to")
        if isinstance(to, str) and to.strip() and "{{" not in to:
            # A fixed address is checked now, not when the first record reaches it.
            try:
                email_recipients(to)
            except ActionError as exc:
                c.add(f"{path}.to", exc.reason, node)
    elif kind == "webhook":
        c.url(node_obj, "url", path, node, ("http", "https"))
        method = node_obj.get("method", "POST")
        if method not in ("POST", "PUT", "PATCH", "GET"):
            c.add(f"{path}.method", "must be POST, PUT, PATCH or GET", node)
        if "body" in node_obj and not isinstance(node_obj["body"], (str, dict)):
            c.add(f"{path}.body", "must be a template string or an object", node)
        headers = node_obj.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            c.add(f"{path}.headers", "must be an object of string values", node)
        else:
            for name in headers:
                if not HEADER_NAME.match(name):
                    c.add(
                        f"{path}.headers",
                        f"{name[:40]!r} is not an HTTP header name "
                        "(1-128 letters, digits and !#$%&'*+-.^_`|~)",
                        node,
                    )
                    break


def validate_definition(definition: Any, prefix: str = "definition") -> dict[str, Any]:
    """Return the definition if valid; raise :class:`DefinitionError` listing every problem."""
    c = _Checker(prefix)
    if not isinstance(definition, dict):
        c.add("", "must be an object with start, nodes and edges")
        raise DefinitionError(c.problems)
    c.known(definition, _DEFINITION_FIELDS, "", None)
    nodes = definition.get("nodes")
    edges = definition.get("edges", [])
    if not isinstance(nodes, list) or not nodes:
        c.add(".nodes", "must be a non-empty list")
        raise DefinitionError(c.problems)
    if len(nodes) > MAX_NODES:
        c.add(".nodes", f"at most {MAX_NODES} nodes")
    types: dict[str, str] = {}
    # Action nodes whose request renders for every record: never failed at once.
    steady: set[str] = set()
    for i, node_obj in enumerate(nodes):
        path = f".nodes[{i}]"
        if not isinstance(node_obj, dict):
            c.add(path, "must be an object")
            continue
        node_id = node_obj.get("id")
        if not isinstance(node_id, str) or not _NODE_ID.match(node_id):
            c.add(f"{path}.id", "must be 1-64 letters, digits, '_' or '-'")
            continue
        if node_id in types:
            c.add(f"{path}.id", "is used by another node", node_id)
            continue
        kind = node_obj.get("type")
        # Checked as a string first: a list or object here cannot be looked up.
        if not isinstance(kind, str) or kind not in NODE_OUTCOMES:
            c.add(f"{path}.type", f"must be a string, one of {', '.join(NODE_TYPES)}", node_id)
            continue
        types[node_id] = kind
        _check_node(c, node_obj, path, node_id)
        if kind in _ACTION_TYPES and not _may_fail_at_once(node_obj):
            steady.add(node_id)

    start = definition.get("start")
    if not isinstance(start, str) or not start:
        c.add(".start", "is required (the id of the first node)")
    elif types and start not in types and all(isinstance(n, dict) for n in nodes):
        c.add(".start", f"names no node ({start!r})")

    if not isinstance(edges, list):
        c.add(".edges", "must be a list")
        edges = []
    seen: set[tuple[str, str]] = set()
    targets: dict[tuple[str, str], tuple[str, int]] = {}
    for i, edge in enumerate(edges):
        path = f".edges[{i}]"
        if not isinstance(edge, dict):
            c.add(path, "must be an object with from, on and to")
            continue
        c.known(edge, _EDGE_FIELDS, path, None)
        src, dst, on = edge.get("from"), edge.get("to"), edge.get("on", "default")
        # Types first: a list or object here cannot be looked up among node ids.
        if not isinstance(src, str):
            c.add(f"{path}.from", "must be a string (a node id)")
            continue
        if src not in types:
            c.add(f"{path}.from", f"names no node ({src!r})")
            continue
        if not isinstance(dst, str):
            c.add(f"{path}.to", "must be a string (a node id)", src)
        elif dst not in types:
            c.add(f"{path}.to", f"names no node ({dst!r})", src)
        kind = types[src]
        allowed = NODE_OUTCOMES[kind]
        if not isinstance(on, str):
            c.add(f"{path}.on", "must be a string (an outcome, or default)", src)
        elif kind == "end":
            c.add(f"{path}.from", "an end node has no outgoing edges", src)
        elif on != "default" and on not in allowed:
            c.add(
                f"{path}.on",
                f"a {kind} node ends with one of {', '.join(allowed)} or default; not {on!r}",
                src,
            )
        elif (src, on) in seen:
            c.add(f"{path}.on", f"a second edge for outcome {on!r}", src)
        else:
            seen.add((src, on))
            if isinstance(dst, str) and dst in types:
                targets[(src, on)] = (dst, i)
    # A loop is a property of the whole graph: judged only once its parts are sound.
    if not c.problems:
        for cycle, index in _step_loops(types, targets, steady):
            loop = " -> ".join([*cycle, cycle[0]])
            actions = sorted({types[n] for n in cycle} & _ACTION_TYPES)
            note = (
                f" (a {' or '.join(actions)} node that cannot be sent for a record"
                " fails at once and takes its failure edge in the same step)"
                if actions
                else ""
            )
            c.add(
                f".edges[{index}]",
                f"closes the loop {loop} with no call or wait node in it: a record could go"
                f" round it without end{note}; put a call or wait node in the loop",
                cycle[-1],
            )
    if c.problems:
        raise DefinitionError(c.problems)
    return definition


# The outcomes a node can take in the same scheduler step as it was entered: a
# branch is decided inline, and an action node whose request cannot even be
# rendered for the record (no address, say) fails at once, without parking
# (scheduler/steps.py). Call, wait and end nodes always end the step, and a
# parked action only moves on once the action runner has done its request.
_ACTION_TYPES = frozenset({"sms", "email", "webhook"})
_SAME_STEP_OUTCOMES: dict[str, tuple[str, ...]] = {
    "branch": ("true", "false"),
    "sms": ("failed",),
    "email": ("failed",),
    "webhook": ("failure",),
}


def _may_fail_at_once(node: Mapping[str, Any]) -> bool:
    """Whether an action node's request could fail to render for some record
    (scheduler.actions.render_action): then its failure edge may be taken in
    the same step. A text or an address from a template can render empty or
    bad, and a header name no request can carry fails every time; a static
    request renders the same for everyone."""
    kind = node.get("type")
    if kind == "sms":
        text = node.get("text")
        return not isinstance(text, str) or "{{" in text or not text.strip()
    if kind == "email":
        to = node.get("to")
        return not isinstance(to, str) or "{{" in to or not to.strip()
    if kind == "webhook":
        # Its URL is checked here to be http(s) and stays so once filled in.
        headers = node.get("headers") or {}
        return not isinstance(headers, dict) or not all(
            isinstance(k, str) and HEADER_NAME.match(k) for k in headers
        )
    return True


def _step_loops(
    types: Mapping[str, str],
    targets: Mapping[tuple[str, str], tuple[str, int]],
    steady: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[tuple[list[str], int]]:
    """Loops a record could go round within one step: their nodes, and the closing edge's index.

    Each is found by a depth-first walk over the edges taken in the same step,
    an outcome falling back to its node's default edge as the scheduler does.
    ``steady`` action nodes never fail at once: no edge of theirs is taken in
    the same step.
    """
    follows: dict[str, list[tuple[str, int]]] = {}
    for node, kind in types.items():
        nexts: list[tuple[str, int]] = []
        for outcome in () if node in steady else _SAME_STEP_OUTCOMES.get(kind, ()):
            target = targets.get((node, outcome)) or targets.get((node, "default"))
            if target is not None and target not in nexts:
                nexts.append(target)
        follows[node] = nexts
    on_path: set[str] = set()
    done: set[str] = set()
    loops: list[tuple[list[str], int]] = []
    for root in types:
        if root in done:
            continue
        path = [root]
        on_path.add(root)
        stack = [iter(follows[root])]
        while stack:
            for dst, index in stack[-1]:
                if dst in on_path:
                    loops.append((path[path.index(dst) :], index))
                elif dst not in done:
                    path.append(dst)
                    on_path.add(dst)
                    stack.append(iter(follows[dst]))
                    break
            else:
                stack.pop()
                node = path.pop()
                on_path.discard(node)
                done.add(node)
    return loops


def validate_settings(settings: Any, prefix: str = "settings") -> dict[str, Any]:
    """Validate a workflow's settings: calling window, time zone, retries, pacing, recording."""
    c = _Checker(prefix)
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        c.add("", "must be an object")
        raise DefinitionError(c.problems)
    c.known(settings, _SETTINGS_FIELDS, "", None)
    zone = settings.get("default_timezone")
    if zone is not None:
        try:
            if not isinstance(zone, str):
                raise ValueError
            zoneinfo.ZoneInfo(zone)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            c.add(".default_timezone", f"is not a known IANA time zone ({zone!r})")
    c.boolean(settings, "recording", "", None)
    trunk = settings.get("trunk")
    if trunk is not None and (not isinstance(trunk, str) or not _NODE_ID.match(trunk)):
        c.add(".trunk", "must name one of the tenant's trunks (see /v1/trunks)")
    window = settings.get("calling_window")
    if window is not None:
        if not isinstance(window, dict):
            c.add(".calling_window", "must be an object with days, start and end")
        else:
            c.known(window, _WINDOW_FIELDS, ".calling_window", None)
            days = window.get("days", list(_DAYS[:5]))
            if not isinstance(days, list) or not days or any(d not in _DAYS for d in days):
                c.add(".calling_window.days", f"must be a non-empty list of {', '.join(_DAYS)}")
            for key in ("start", "end"):
                value = window.get(key)
                if not isinstance(value, str) or not _LOCAL_TIME.match(value):
                    c.add(f".calling_window.{key}", "must be a local time HH:MM (24-hour)")
            if (
                isinstance(window.get("start"), str)
                and isinstance(window.get("end"), str)
                and window["start"] >= window["end"]
            ):
                c.add(".calling_window.end", "must be after start")
    retry = settings.get("retry")
    if retry is not None:
        if not isinstance(retry, dict):
            c.add(".retry", "must be an object keyed by outcome")
        else:
            for outcome, rule in retry.items():
                path = f".retry.{outcome}"
                if outcome not in RETRYABLE:
                    c.add(path, f"is not a retryable outcome ({', '.join(RETRYABLE)})")
                    continue
                if not isinstance(rule, dict):
                    c.add(path, "must be an object with delay_s and max_attempts")
                    continue
                c.known(rule, _RETRY_RULE_FIELDS, path, None)
                c.number(rule, "delay_s", path, 0, 30 * 86400, None, required=True)
                c.number(rule, "max_attempts", path, 1, 100, None, required=True, integer=True)
    pacing = settings.get("pacing")
    if pacing is not None:
        if not isinstance(pacing, dict):
            c.add(".pacing", "must be an object")
        else:
            c.known(pacing, _PACING_FIELDS, ".pacing", None)
            mode = pacing.get("mode", "progressive")
            if mode not in ("progressive", "ratio", "predictive"):
                c.add(".pacing.mode", "must be progressive, ratio or predictive")
            c.number(pacing, "seats", ".pacing", 1, 10_000, None, integer=True)
            c.number(pacing, "ratio", ".pacing", 1, 10, None)
            c.number(pacing, "abandon_target", ".pacing", 0, 0.2, None)
            # How long a live answer waits for a free seat before it is abandoned.
            c.number(pacing, "max_wait_s", ".pacing", 0, 10, None)
            # Predictive: when a ringing call may be hung up (null: never); the FCC's
            # floor for telemarketing calls is 15 s (47 CFR 64.1200(a)(6)).
            if pacing.get("cancel_ringing_after_s") is not None:
                c.number(pacing, "cancel_ringing_after_s", ".pacing", 0, 600, None)
    # What an abandoned call hears ({company}: company_name, else the tenant's name):
    # spoken whole before the hang-up, so it is kept short.
    c.text(settings, "abandon_message", "", None, max_len=300)
    _opt_out_settings(c, settings)
    c.text(settings, "company_name", "", None, max_len=100)
    c.number(settings, "max_attempts", "", 1, 100, None, integer=True)
    if c.problems:
        raise DefinitionError(c.problems)
    return settings


def _opt_out_settings(c: _Checker, settings: Mapping[str, Any]) -> None:
    """How a person who hears the abandoned-call message asks not to be called again:
    a key (``opt_out_digit``, null for none) and a number to call (``callback_number``)."""
    digit = settings.get("opt_out_digit", "9")
    if digit is not None and (not isinstance(digit, str) or len(digit) != 1 or digit not in _KEYS):
        c.add(".opt_out_digit", f"must be one key of {_KEYS} or null")
    number = settings.get("callback_number")
    if number is not None and (not isinstance(number, str) or not _is_phone_number(number)):
        c.add(".callback_number", "must be a phone number in E.164 form, like +15551234567")
    message = settings.get("abandon_message")
    if isinstance(message, str):
        if "{callback_number}" in message and number is None:
            c.add(".abandon_message", "uses {callback_number} but callback_number is not set")
        if "{opt_out_digit}" in message and digit is None:
            c.add(".abandon_message", "uses {opt_out_digit} but opt_out_digit is null")


_KEYS = "0123456789*#"


def _is_phone_number(text: str) -> bool:
    if not text.startswith("+"):
        return False
    try:
        return phonenumbers.is_possible_number(phonenumbers.parse(text, None))
    except phonenumbers.NumberParseException:
        return False

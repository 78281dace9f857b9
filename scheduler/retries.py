"""Retry policy: after a call ends without reaching its goal, when to try again.

Rules of this file:

1. A workflow's policy names, for each outcome that may be retried, a delay
   and a maximum number of attempts. An outcome it does not name is not
   retried: a record is only called again when someone asked for it.
2. ``attempts_so_far`` counts the attempts at the call node that just ended
   (that one included): an outcome's ``max_attempts`` caps it. The policy's
   ``max_attempts_total`` caps every attempt on the record, at any call node
   (``total_attempts``, by default the same count): a person who has been
   busy twice and unanswered twice has been rung four times.
3. Time is a float of seconds passed in (``now``); the caller turns the answer
   into the record's due time, then into the calling window's next opening.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "GiveUp",
    "GiveUpReason",
    "Outcome",
    "OutcomeRule",
    "Retry",
    "RetryDecision",
    "RetryPolicy",
    "RetryPolicyError",
    "decide_retry",
]


class Outcome(StrEnum):
    """How one call attempt ended, as far as retrying is concerned."""

    ANSWERED = "answered"  # a person answered and the handler finished
    BUSY = "busy"  # 486 Busy Here / 600 Busy Everywhere
    NO_ANSWER = "no_answer"  # rang until our ring timeout, or 480/408
    MACHINE = "machine"  # answering machine detected
    FAILED = "failed"  # any other final failure from the trunk
    REJECTED = "rejected"  # 603 Decline: the person refused the call
    WORKER_LOST = "worker_lost"  # the worker died mid-attempt
    BOT_FAILED = "bot_failed"  # answered, but the voicebot stream failed
    CONGESTION = "congestion"  # trunk or network congestion (503 with Retry-After, 486 on trunk)
    UNAVAILABLE = "unavailable"  # 503 Service Unavailable / temporarily unreachable
    INVALID_NUMBER = "invalid_number"  # 404 / 484: the number does not exist
    ABANDONED = "abandoned"  # answered but no seat free in time (pacing)


class GiveUpReason(StrEnum):
    """Why a record will not be called again."""

    NOT_RETRYABLE = "not_retryable"  # the policy names no rule for this outcome
    OUTCOME_ATTEMPTS = "outcome_attempts_exhausted"
    TOTAL_ATTEMPTS = "total_attempts_exhausted"


class RetryPolicyError(ValueError):
    """A retry policy that does not validate; ``field`` is its dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class OutcomeRule:
    """Retry one outcome after ``delay_s`` (times ``backoff`` per earlier attempt)."""

    delay_s: float
    max_attempts: int
    backoff: float = 1.0
    max_delay_s: float | None = None

    def delay_for(self, attempts_so_far: int) -> float:
        """The wait before the next attempt, growing geometrically with ``backoff``."""
        delay = self.delay_s * self.backoff ** max(0, attempts_so_far - 1)
        if self.max_delay_s is not None:
            delay = min(delay, self.max_delay_s)
        return delay


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A workflow's retry rules by outcome, with an optional cap on all attempts."""

    rules: Mapping[Outcome, OutcomeRule] = field(default_factory=dict)
    max_attempts_total: int | None = None

    def __post_init__(self) -> None:
        # Read-only view: the policy is shared by every record of a workflow.
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> RetryPolicy:
        """Parse and validate a JSON-like policy; errors name the field.

        Shape::

            {"max_attempts_total": 6,
             "outcomes": {"busy": {"delay_s": 300, "max_attempts": 3},
                          "no_answer": {"delay_s": 3600, "max_attempts": 3,
                                        "backoff": 2, "max_delay_s": 14400}}}
        """
        if not isinstance(data, Mapping):
            raise RetryPolicyError("retry", "expected an object")
        unknown = set(data) - {"max_attempts_total", "outcomes"}
        if unknown:
            raise RetryPolicyError(sorted(unknown)[0], "unknown field")
        total = data.get("max_attempts_total")
        if total is not None:
            total = _positive_int(total, "max_attempts_total")
        outcomes = data.get("outcomes", {})
        if not isinstance(outcomes, Mapping):
            raise RetryPolicyError("outcomes", "expected an object keyed by outcome")
        rules: dict[Outcome, OutcomeRule] = {}
        for name, raw in outcomes.items():
            path = f"outcomes.{name}"
            try:
                outcome = Outcome(name)
            except ValueError:
                choices = ", ".join(o.value for o in Outcome)
                raise RetryPolicyError(
                    path, f"unknown outcome; expected one of {choices}"
                ) from None
            rules[outcome] = _parse_rule(raw, path)
        return cls(rules, total)

    def to_dict(self) -> dict[str, object]:
        """The inverse of `from_dict`."""
        outcomes: dict[str, object] = {}
        for outcome, rule in self.rules.items():
            entry: dict[str, object] = {"delay_s": rule.delay_s, "max_attempts": rule.max_attempts}
            if rule.backoff != 1.0:
                entry["backoff"] = rule.backoff
            if rule.max_delay_s is not None:
                entry["max_delay_s"] = rule.max_delay_s
            outcomes[outcome.value] = entry
        result: dict[str, object] = {"outcomes": outcomes}
        if self.max_attempts_total is not None:
            result["max_attempts_total"] = self.max_attempts_total
        return result


def _is_number(value: object) -> bool:
    # bool is an int subclass; `true` is not a delay.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(value: object, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RetryPolicyError(path, f"expected an integer >= 1, got {value!r}")
    return value


def _parse_rule(raw: object, path: str) -> OutcomeRule:
    if not isinstance(raw, Mapping):
        raise RetryPolicyError(path, "expected an object with delay_s and max_attempts")
    unknown = set(raw) - {"delay_s", "max_attempts", "backoff", "max_delay_s"}
    if unknown:
        raise RetryPolicyError(f"{path}.{sorted(unknown)[0]}", "unknown field")
    for required in ("delay_s", "max_attempts"):
        if required not in raw:
            raise RetryPolicyError(f"{path}.{required}", "required")
    delay = raw["delay_s"]
    if not _is_number(delay) or not 0 <= delay <= 30 * 86_400:
        raise RetryPolicyError(
            f"{path}.delay_s", f"expected seconds in [0, 30 days], got {delay!r}"
        )
    attempts = _positive_int(raw["max_attempts"], f"{path}.max_attempts")
    backoff = raw.get("backoff", 1.0)
    if not _is_number(backoff) or not 1.0 <= backoff <= 10.0:
        raise RetryPolicyError(f"{path}.backoff", f"expected a factor in [1, 10], got {backoff!r}")
    max_delay = raw.get("max_delay_s")
    if max_delay is not None and (not _is_number(max_delay) or max_delay < delay):
        raise RetryPolicyError(
            f"{path}.max_delay_s", f"expected seconds >= delay_s, got {max_delay!r}"
        )
    return OutcomeRule(
        float(delay),
        attempts,
        float(backoff),
        None if max_delay is None else float(max_delay),
    )


@dataclass(frozen=True, slots=True)
class Retry:
    """Call again at ``at`` (same clock as ``now``), ``delay_s`` after now."""

    at: float
    delay_s: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Do not call again."""

    reason: GiveUpReason


RetryDecision = Retry | GiveUp


def decide_retry(
    policy: RetryPolicy,
    outcome: Outcome | str,
    attempts_so_far: int,
    now: float,
    *,
    total_attempts: int | None = None,
) -> RetryDecision:
    """Whether and when to retry after an attempt ended with ``outcome``.

    ``attempts_so_far`` includes the attempt that just ended; ``total_attempts``
    (every attempt on the record, default ``attempts_so_far``) is what
    ``max_attempts_total`` caps. Raises ValueError for an unknown outcome name
    or a count below one.
    """
    if attempts_so_far < 1:
        raise ValueError(f"attempts_so_far must be >= 1, got {attempts_so_far}")
    total = attempts_so_far if total_attempts is None else max(total_attempts, attempts_so_far)
    rule = policy.rules.get(Outcome(outcome))
    if rule is None:
        return GiveUp(GiveUpReason.NOT_RETRYABLE)
    if policy.max_attempts_total is not None and total >= policy.max_attempts_total:
        return GiveUp(GiveUpReason.TOTAL_ATTEMPTS)
    if attempts_so_far >= rule.max_attempts:
        return GiveUp(GiveUpReason.OUTCOME_ATTEMPTS)
    delay = rule.delay_for(attempts_so_far)
    return Retry(now + delay, delay)


# A sensible default for a workflow that says nothing: retry the line states
# that change by themselves, never a refusal or a number that does not exist.
DEFAULT_RETRY_POLICY = RetryPolicy(
    {
        Outcome.BUSY: OutcomeRule(delay_s=600.0, max_attempts=3),
        Outcome.NO_ANSWER: OutcomeRule(delay_s=3600.0, max_attempts=3, backoff=2.0),
        Outcome.MACHINE: OutcomeRule(delay_s=4 * 3600.0, max_attempts=2),
        Outcome.CONGESTION: OutcomeRule(delay_s=60.0, max_attempts=5, backoff=2.0),
        Outcome.UNAVAILABLE: OutcomeRule(delay_s=300.0, max_attempts=3, backoff=2.0),
        Outcome.WORKER_LOST: OutcomeRule(delay_s=120.0, max_attempts=3),
        Outcome.BOT_FAILED: OutcomeRule(delay_s=900.0, max_attempts=2),
        Outcome.ABANDONED: OutcomeRule(delay_s=1800.0, max_attempts=3),
    },
    max_attempts_total=6,
)

"""Retry decisions and policy parsing."""

from __future__ import annotations

import pytest

from scheduler.retries import (
    DEFAULT_RETRY_POLICY,
    GiveUp,
    GiveUpReason,
    Outcome,
    OutcomeRule,
    Retry,
    RetryPolicy,
    RetryPolicyError,
    decide_retry,
)

POLICY = RetryPolicy(
    {
        Outcome.BUSY: OutcomeRule(delay_s=300.0, max_attempts=3),
        Outcome.NO_ANSWER: OutcomeRule(
            delay_s=600.0, max_attempts=5, backoff=2.0, max_delay_s=2000
        ),
    },
    max_attempts_total=4,
)


@pytest.mark.parametrize(
    ("outcome", "attempts", "expected"),
    [
        ("busy", 1, Retry(1300.0, 300.0)),
        (Outcome.BUSY, 2, Retry(1300.0, 300.0)),
        ("busy", 3, GiveUp(GiveUpReason.OUTCOME_ATTEMPTS)),
        ("no_answer", 1, Retry(1600.0, 600.0)),
        ("no_answer", 2, Retry(2200.0, 1200.0)),
        ("no_answer", 3, Retry(3000.0, 2000.0)),  # 2400 capped by max_delay_s
        ("no_answer", 4, GiveUp(GiveUpReason.TOTAL_ATTEMPTS)),  # total cap before its own 5
        ("rejected", 1, GiveUp(GiveUpReason.NOT_RETRYABLE)),
        ("answered", 1, GiveUp(GiveUpReason.NOT_RETRYABLE)),
    ],
)
def test_decide_retry(outcome: str, attempts: int, expected: Retry | GiveUp):
    assert decide_retry(POLICY, outcome, attempts, now=1000.0) == expected


@pytest.mark.parametrize(("outcome", "attempts"), [("exploded", 1), ("busy", 0)])
def test_decide_retry_rejects_bad_input(outcome: str, attempts: int):
    with pytest.raises(ValueError):
        decide_retry(POLICY, outcome, attempts, now=0.0)


def test_default_policy_never_retries_a_refusal():
    assert decide_retry(DEFAULT_RETRY_POLICY, "rejected", 1, 0.0) == GiveUp(
        GiveUpReason.NOT_RETRYABLE
    )
    assert isinstance(decide_retry(DEFAULT_RETRY_POLICY, "busy", 1, 0.0), Retry)


def test_from_dict_round_trip():
    raw = {
        "max_attempts_total": 4,
        "outcomes": {
            "busy": {"delay_s": 300, "max_attempts": 3},
            "no_answer": {"delay_s": 600, "max_attempts": 5, "backoff": 2, "max_delay_s": 2000},
        },
    }
    policy = RetryPolicy.from_dict(raw)
    assert policy == POLICY
    assert RetryPolicy.from_dict(policy.to_dict()) == policy


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([], "retry"),
        ({"outcomes": [], "x": 1}, "x"),
        ({"max_attempts_total": 0}, "max_attempts_total"),
        ({"max_attempts_total": True}, "max_attempts_total"),
        ({"outcomes": []}, "outcomes"),
        ({"outcomes": {"bored": {"delay_s": 1, "max_attempts": 1}}}, "outcomes.bored"),
        ({"outcomes": {"busy": 5}}, "outcomes.busy"),
        ({"outcomes": {"busy": {"max_attempts": 1}}}, "outcomes.busy.delay_s"),
        ({"outcomes": {"busy": {"delay_s": 1}}}, "outcomes.busy.max_attempts"),
        ({"outcomes": {"busy": {"delay_s": -1, "max_attempts": 1}}}, "outcomes.busy.delay_s"),
        ({"outcomes": {"busy": {"delay_s": "5", "max_attempts": 1}}}, "outcomes.busy.delay_s"),
        ({"outcomes": {"busy": {"delay_s": 5, "max_attempts": 1.5}}}, "outcomes.busy.max_attempts"),
        (
            {"outcomes": {"busy": {"delay_s": 5, "max_attempts": 2, "backoff": 0.5}}},
            "outcomes.busy.backoff",
        ),
        (
            {"outcomes": {"busy": {"delay_s": 50, "max_attempts": 2, "max_delay_s": 10}}},
            "outcomes.busy.max_delay_s",
        ),
        (
            {"outcomes": {"busy": {"delay_s": 5, "max_attempts": 2, "jitter": 1}}},
            "outcomes.busy.jitter",
        ),
    ],
)
def test_from_dict_errors_name_the_field(raw: object, field: str):
    with pytest.raises(RetryPolicyError) as caught:
        RetryPolicy.from_dict(raw)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_policy_rules_are_read_only():
    with pytest.raises(TypeError):
        POLICY.rules[Outcome.MACHINE] = OutcomeRule(1.0, 1)  # type: ignore[index]

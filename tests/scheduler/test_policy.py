"""A workflow's settings as the scheduler reads them: the cap on all attempts."""

from __future__ import annotations

from scheduler.policy import WorkflowPolicy
from scheduler.retries import (
    DEFAULT_RETRY_POLICY,
    GiveUp,
    GiveUpReason,
    Retry,
    decide_retry,
)


def test_max_attempts_caps_the_default_retry_rules() -> None:
    policy = WorkflowPolicy.from_settings({"max_attempts": 1})
    assert policy.retry.rules == DEFAULT_RETRY_POLICY.rules
    assert policy.retry.max_attempts_total == 1
    assert decide_retry(policy.retry, "busy", 1, 0.0) == GiveUp(GiveUpReason.TOTAL_ATTEMPTS)


def test_max_attempts_may_raise_the_default_cap_but_not_an_outcome_s_own() -> None:
    policy = WorkflowPolicy.from_settings({"max_attempts": 10})
    assert policy.retry.max_attempts_total == 10
    # Under a total of 10, congestion's own rule (5 attempts) is what stops it.
    assert isinstance(decide_retry(policy.retry, "congestion", 4, 0.0), Retry)
    assert decide_retry(policy.retry, "congestion", 5, 0.0) == GiveUp(GiveUpReason.OUTCOME_ATTEMPTS)


def test_no_settings_keep_the_default_policy() -> None:
    assert WorkflowPolicy.from_settings({}).retry is DEFAULT_RETRY_POLICY
    assert WorkflowPolicy.from_settings(None).retry is DEFAULT_RETRY_POLICY


def test_max_attempts_with_rules_of_the_workflow_s_own() -> None:
    policy = WorkflowPolicy.from_settings(
        {"retry": {"busy": {"delay_s": 60, "max_attempts": 5}}, "max_attempts": 2}
    )
    assert isinstance(decide_retry(policy.retry, "busy", 1, 0.0), Retry)
    assert decide_retry(policy.retry, "busy", 2, 0.0) == GiveUp(GiveUpReason.TOTAL_ATTEMPTS)
    without_cap = WorkflowPolicy.from_settings(
        {"retry": {"busy": {"delay_s": 60, "max_attempts": 5}}}
    )
    assert without_cap.retry.max_attempts_total is None


def test_the_total_cap_counts_attempts_at_every_call_node() -> None:
    """A second call node's first busy, after three attempts at the first node:
    its own rule would retry (1 of 5), the record's total (4 of 4) does not."""
    policy = WorkflowPolicy.from_settings(
        {"retry": {"busy": {"delay_s": 60, "max_attempts": 5}}, "max_attempts": 4}
    )
    assert isinstance(decide_retry(policy.retry, "busy", 1, 0.0, total_attempts=3), Retry)
    assert decide_retry(policy.retry, "busy", 1, 0.0, total_attempts=4) == GiveUp(
        GiveUpReason.TOTAL_ATTEMPTS
    )
    # Under a higher total, the node's own count stops its outcome.
    roomy = WorkflowPolicy.from_settings(
        {"retry": {"busy": {"delay_s": 60, "max_attempts": 2}}, "max_attempts": 10}
    )
    assert decide_retry(roomy.retry, "busy", 2, 0.0, total_attempts=5) == GiveUp(
        GiveUpReason.OUTCOME_ATTEMPTS
    )

"""A workflow's settings as the scheduler uses them: window, zone, retries, pacing.

The API stores settings in their simple JSON form (validated by
:func:`scheduler.definition.validate_settings`); this module turns that form
into the pure cores' types once per workflow version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scheduler.pacing import PacingMode, PacingPolicy
from scheduler.retries import DEFAULT_RETRY_POLICY, Outcome, OutcomeRule, RetryPolicy
from scheduler.windows import CallingWindow

__all__ = ["DEFAULT_SEATS", "DEFAULT_ZONE", "RETRY_OUTCOMES", "WorkflowPolicy", "retry_outcome"]

DEFAULT_ZONE = "America/New_York"
DEFAULT_SEATS = 10  # a workflow that names no seats
# Call dispositions by the names retry rules use; "not_found" is the SIP
# layer's name for a number that does not exist.
RETRY_OUTCOMES: dict[str, Outcome] = {o.value: o for o in Outcome} | {
    "not_found": Outcome.INVALID_NUMBER,
    "human": Outcome.ANSWERED,
}


# The SIP layer's finer failures, retried as the failed rule says.
_FAILED_TOO = frozenset(
    {"media_negotiation_failed", "auth_failed", "auth_refused", "auth_unsupported"}
)


def retry_outcome(disposition: str) -> Outcome | None:
    """The retry outcome of a call disposition; None for one never retried."""
    if disposition in _FAILED_TOO:
        return Outcome.FAILED
    return RETRY_OUTCOMES.get(disposition)


_PACING_MODES = {
    "progressive": PacingMode.PROGRESSIVE,
    "ratio": PacingMode.FIXED_RATIO,
    "predictive": PacingMode.PREDICTIVE,
}


def _cancel_after(raw_pacing: dict[str, Any]) -> float | None:
    """``pacing.cancel_ringing_after_s``: absent means the default, null means never."""
    if "cancel_ringing_after_s" not in raw_pacing:
        return PacingPolicy().cancel_ringing_after_s
    value = raw_pacing["cancel_ringing_after_s"]
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class WorkflowPolicy:
    window: CallingWindow
    default_zone: str
    retry: RetryPolicy
    pacing: PacingPolicy
    seats: int
    recording: bool
    trunk: str | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> WorkflowPolicy:
        settings = settings or {}
        raw_window = settings.get("calling_window")
        if raw_window:
            window = CallingWindow.weekly(
                raw_window["start"],
                raw_window["end"],
                raw_window.get("days", ("mon", "tue", "wed", "thu", "fri")),
            )
        else:
            # No window of its own: only the legal floor (08:00-21:00 for US numbers) applies.
            window = CallingWindow.always()
        raw_retry = settings.get("retry")
        max_attempts = settings.get("max_attempts")
        if raw_retry is None and max_attempts is None:
            retry = DEFAULT_RETRY_POLICY
        elif raw_retry is None:
            # The default rules with the workflow's own cap on all attempts, which
            # replaces the default cap rather than being ignored.
            retry = RetryPolicy(DEFAULT_RETRY_POLICY.rules, int(max_attempts or 0))
        else:
            retry = RetryPolicy(
                {
                    RETRY_OUTCOMES[name]: OutcomeRule(
                        delay_s=float(rule["delay_s"]), max_attempts=int(rule["max_attempts"])
                    )
                    for name, rule in raw_retry.items()
                    if name in RETRY_OUTCOMES
                },
                None if max_attempts is None else int(max_attempts),
            )
        raw_pacing = settings.get("pacing") or {}
        pacing = PacingPolicy(
            mode=_PACING_MODES[raw_pacing.get("mode", "progressive")],
            ratio=float(raw_pacing.get("ratio", 2.0)),
            cancel_ringing_after_s=_cancel_after(raw_pacing),
        )
        return cls(
            window=window,
            default_zone=settings.get("default_timezone", DEFAULT_ZONE),
            retry=retry,
            pacing=pacing,
            seats=int(raw_pacing.get("seats", DEFAULT_SEATS)),
            recording=bool(settings.get("recording", True)),
            trunk=settings.get("trunk"),
        )

"""What ``dialer demo`` draws in the terminal: the live panel and the closing summary (rich)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from dialer.demo.progress import Snapshot

__all__ = ["live_panel", "plain_line", "summary"]


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _counts(counter: Counter[str], limit: int = 8) -> str:
    if not counter:
        return "-"
    return ", ".join(f"{name} {n}" for name, n in counter.most_common(limit))


def _figures(snapshot: Snapshot) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    s = snapshot
    ratio = s.pacing_ratio
    table.add_row("records", f"{s.final} of {s.records} final")
    table.add_row("calls in flight", f"{s.in_flight}  ({_counts(s.call_states)})")
    table.add_row(
        "pacing",
        f"{s.seats} seats, {s.call_states['answered']} talking, "
        f"ratio {'-' if ratio is None else f'{ratio:.2f}'} dials per free seat",
    )
    table.add_row("calls ended", f"{s.calls_ended}  ({_counts(s.dispositions)})")
    table.add_row("answer rate", f"{_rate(s.answer_rate)}   abandonment {_rate(s.abandon_rate)}")
    table.add_row("machines (AMD)", _counts(s.amd_verdicts))
    table.add_row("bot answers", _counts(s.bot_answers))
    table.add_row("record outcomes", _counts(s.record_outcomes))
    table.add_row(
        "webhooks",
        f"{s.webhooks_delivered} delivered, {s.webhooks_pending} pending, "
        f"{s.webhooks_received} verified by the receiver",
    )
    table.add_row("SMS sent", str(s.sms_received))
    table.add_row("recordings", f"{s.recordings} ({s.recorded_s:.0f} s of audio)")
    return table


def live_panel(snapshot: Snapshot, recent: Sequence[str]) -> RenderableType:
    """The panel redrawn while the demo runs: the figures, then the latest live events."""
    events = Text("\n".join(recent[-8:]) or "waiting for the first events...", style="dim")
    return Panel(
        Group(_figures(snapshot), Text(""), Panel(events, title="GET /v1/live", expand=True)),
        title=f"dialer demo - {snapshot.elapsed_s:.0f} s",
    )


def plain_line(snapshot: Snapshot) -> str:
    """One progress line, for output that is not a terminal."""
    s = snapshot
    return (
        f"[{s.elapsed_s:5.0f} s] final {s.final}/{s.records}  in flight {s.in_flight}  "
        f"ended {s.calls_ended}  answer {_rate(s.answer_rate)}  "
        f"webhooks {s.webhooks_delivered} delivered/{s.webhooks_pending} pending  "
        f"sms {s.sms_received}"
    )


def summary(
    snapshot: Snapshot,
    expected: Iterable[tuple[str, str]],
    problems: Sequence[str],
) -> RenderableType:
    """The closing report: what each kind of person got, the figures, the verdict."""
    by_behaviour = Table(title="What happened to whom", show_lines=False)
    by_behaviour.add_column("the sandbox played")
    by_behaviour.add_column("records", justify="right")
    by_behaviour.add_column("ended as")
    for behaviour, outcomes in expected:
        count, _, detail = outcomes.partition(" ")
        by_behaviour.add_row(behaviour, count, detail)
    parts: list[RenderableType] = [by_behaviour, _figures(snapshot)]
    if problems:
        parts.append(Text("\n".join(f"NOT OK: {p}" for p in problems), style="bold red"))
    else:
        parts.append(
            Text("OK: every record is final and every webhook was delivered", style="bold green")
        )
    return Group(*parts)

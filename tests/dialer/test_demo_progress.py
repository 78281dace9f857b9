"""The demo's figures and its terminal view, from snapshots made by hand."""

from __future__ import annotations

import io
from collections import Counter

from rich.console import Console

from dialer.demo.progress import Snapshot
from dialer.demo.view import live_panel, plain_line, summary
from media.demo_bot import first_name_of, greeting_for


def _snapshot(**changes: object) -> Snapshot:
    base: dict[str, object] = {
        "elapsed_s": 12.0,
        "records": 10,
        "record_status": Counter({"completed": 6, "queued": 3, "in_progress": 1}),
        "call_states": Counter({"ringing": 3, "answered": 2, "dialing": 1}),
        "dispositions": Counter({"human": 4, "busy": 2, "machine": 1, "abandoned": 1}),
        "answered": 6,
        "deliveries": Counter({"succeeded": 20, "pending": 2}),
        "seats": 4,
    }
    base.update(changes)
    return Snapshot(**base)  # type: ignore[arg-type]


def test_rates_and_pacing_ratio() -> None:
    s = _snapshot()
    assert s.final == 6 and s.in_flight == 6 and s.calls_ended == 8
    assert s.answer_rate == 6 / 8
    assert s.abandon_rate == 1 / 6
    # 4 dialling or ringing for 2 free seats.
    assert s.pacing_ratio == 2.0
    assert _snapshot(call_states=Counter({"answered": 4})).pacing_ratio is None
    assert _snapshot(dispositions=Counter(), answered=0).answer_rate is None


def test_done_needs_every_record_final_no_open_call_and_no_pending_webhook() -> None:
    finished = {
        "record_status": Counter({"completed": 9, "dnc": 1}),
        "call_states": Counter(),
        "deliveries": Counter({"succeeded": 30}),
    }
    assert _snapshot(**finished).done
    assert not _snapshot(**(finished | {"deliveries": Counter({"pending": 1})})).done
    assert not _snapshot(**(finished | {"call_states": Counter({"ringing": 1})})).done
    assert not _snapshot(**(finished | {"record_status": Counter({"waiting": 10})})).done
    assert not _snapshot(records=0, record_status=Counter()).done


def _text(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(renderable)
    return out.getvalue()


def test_the_live_panel_and_the_summary_show_the_figures() -> None:
    text = _text(live_panel(_snapshot(), ["12:00:01  call.completed  phone=+442079400001"]))
    assert "6 of 10 final" in text
    assert "4 seats, 2 talking, ratio 2.00" in text
    assert "answer rate" in text and "75%" in text and "abandonment 17%" in text
    assert "call.completed  phone=+442079400001" in text
    assert "final 6/10" in plain_line(_snapshot())
    ok = _text(summary(_snapshot(), [("busy", "2 busy 2")], []))
    assert "OK: every record is final" in ok and "busy 2" in ok
    bad = _text(summary(_snapshot(), [], ["3 webhook deliveries failed"]))
    assert "NOT OK: 3 webhook deliveries failed" in bad and "OK: every" not in bad


def test_the_demo_bot_greets_by_first_name() -> None:
    assert first_name_of({"placeholders": {"first_name": " Ada "}}) == "Ada"
    assert first_name_of({"placeholders": {"firstName": "Alan"}}) == "Alan"
    assert first_name_of({"placeholders": {}, "record_first_name": "Grace"}) == "Grace"
    assert first_name_of({}) == ""
    assert greeting_for("Ada").startswith("Hello Ada!")
    assert "Press 1 for yes" in greeting_for("")

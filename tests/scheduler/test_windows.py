"""Calling windows in the person's wall-clock time, across daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.windows import (
    CallingWindow,
    TimeRange,
    WindowError,
    effective_window,
    is_open,
    legal_floor,
    next_open,
    open_until,
)

NY = ("America/New_York",)
PHX = ("America/Phoenix",)
OFFICE = CallingWindow.weekly("09:00", "17:00")
# 2024: New York springs forward on 10 March at 02:00 EST (07:00Z) and falls
# back on 3 November at 02:00 EDT (06:00Z). Phoenix keeps MST (-7) all year.
STRADDLE_SPRING = CallingWindow.weekly("01:30", "03:30")
LOST_HOUR = CallingWindow.weekly("02:00", "03:00")
REPEATED_HOUR = CallingWindow.weekly("01:00", "01:30")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "zones", "instant", "expected"),
    [
        # Office hours move by an hour in UTC across spring forward.
        (OFFICE, NY, utc(2024, 3, 9, 14, 0), True),  # 09:00 EST
        (OFFICE, NY, utc(2024, 3, 9, 13, 59), False),
        (OFFICE, NY, utc(2024, 3, 10, 13, 0), True),  # 09:00 EDT
        (OFFICE, NY, utc(2024, 3, 10, 12, 59, 59), False),
        (OFFICE, NY, utc(2024, 3, 10, 20, 59), True),  # 16:59 EDT
        (OFFICE, NY, utc(2024, 3, 10, 21, 0), False),  # 17:00 EDT: end is exclusive
        # ... and back across fall back.
        (OFFICE, NY, utc(2024, 11, 2, 13, 0), True),  # 09:00 EDT
        (OFFICE, NY, utc(2024, 11, 3, 13, 0), False),  # 08:00 EST
        (OFFICE, NY, utc(2024, 11, 3, 14, 0), True),  # 09:00 EST
        (OFFICE, NY, utc(2024, 11, 3, 22, 0), False),  # 17:00 EST
        # Phoenix has no daylight saving: 09:00 is 16:00Z all year.
        (OFFICE, PHX, utc(2024, 3, 10, 16, 0), True),
        (OFFICE, PHX, utc(2024, 3, 10, 15, 59), False),
        (OFFICE, PHX, utc(2024, 7, 1, 15, 59), False),
        (OFFICE, PHX, utc(2024, 11, 3, 16, 0), True),
        (OFFICE, PHX, utc(2024, 11, 3, 23, 59), True),  # 16:59 MST
        # A window straddling the lost hour: 01:30 EST to the jump, then 03:00-03:30 EDT.
        (STRADDLE_SPRING, NY, utc(2024, 3, 10, 6, 29), False),
        (STRADDLE_SPRING, NY, utc(2024, 3, 10, 6, 30), True),  # 01:30 EST
        (STRADDLE_SPRING, NY, utc(2024, 3, 10, 6, 59, 59), True),  # 01:59:59 EST
        (STRADDLE_SPRING, NY, utc(2024, 3, 10, 7, 0), True),  # 03:00 EDT
        (STRADDLE_SPRING, NY, utc(2024, 3, 10, 7, 29), True),
        (STRADDLE_SPRING, NY, utc(2024, 3, 10, 7, 30), False),  # 03:30 EDT
        # The hour that does not exist is never open.
        (LOST_HOUR, NY, utc(2024, 3, 10, 6, 59), False),
        (LOST_HOUR, NY, utc(2024, 3, 10, 7, 0), False),
        (LOST_HOUR, NY, utc(2024, 3, 11, 6, 0), True),  # 02:00 EDT the next day
        # The hour that happens twice is open twice.
        (REPEATED_HOUR, NY, utc(2024, 11, 3, 5, 0), True),  # 01:00 EDT
        (REPEATED_HOUR, NY, utc(2024, 11, 3, 5, 30), False),
        (REPEATED_HOUR, NY, utc(2024, 11, 3, 6, 0), True),  # 01:00 EST
        (REPEATED_HOUR, NY, utc(2024, 11, 3, 6, 29), True),
        (REPEATED_HOUR, NY, utc(2024, 11, 3, 6, 30), False),
    ],
)
def test_is_open(window: CallingWindow, zones: tuple[str, ...], instant: datetime, expected: bool):
    assert is_open(window, zones, instant) is expected


@pytest.mark.parametrize(
    ("window", "zones", "now", "expected"),
    [
        (OFFICE, NY, utc(2024, 3, 10, 13, 30), utc(2024, 3, 10, 13, 30)),  # open now
        (OFFICE, NY, utc(2024, 3, 9, 23, 0), utc(2024, 3, 10, 13, 0)),  # next day is EDT
        (OFFICE, NY, utc(2024, 11, 2, 23, 0), utc(2024, 11, 3, 14, 0)),  # next day is EST
        (OFFICE, PHX, utc(2024, 3, 10, 1, 0), utc(2024, 3, 10, 16, 0)),  # 18:00 MST
        (STRADDLE_SPRING, NY, utc(2024, 3, 10, 5, 0), utc(2024, 3, 10, 6, 30)),
        (LOST_HOUR, NY, utc(2024, 3, 10, 5, 0), utc(2024, 3, 11, 6, 0)),
        (REPEATED_HOUR, NY, utc(2024, 11, 3, 5, 40), utc(2024, 11, 3, 6, 0)),
        # Wall time jumps back into the range at the fall-back instant itself.
        (
            CallingWindow.weekly("01:10", "01:20"),
            NY,
            utc(2024, 11, 3, 5, 25),
            utc(2024, 11, 3, 6, 10),
        ),
        (
            CallingWindow.weekly("00:00", "01:30"),
            NY,
            utc(2024, 11, 3, 5, 45),  # 01:45 EDT; at 06:00Z it is 01:00 EST again
            utc(2024, 11, 3, 6, 0),
        ),
        # Closed on weekends: Saturday evening waits for Monday.
        (
            CallingWindow.weekly("09:00", "17:00", days=("mon", "tue", "wed", "thu", "fri")),
            NY,
            utc(2024, 6, 8, 22, 0),
            utc(2024, 6, 10, 13, 0),
        ),
    ],
)
def test_next_open(
    window: CallingWindow, zones: tuple[str, ...], now: datetime, expected: datetime
):
    assert next_open(window, zones, now) == expected


# Area code 605: Mountain and Central. Open only where both clocks are 09-17.
DAKOTA = ("America/Denver", "America/North_Dakota/Center")


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        (utc(2024, 6, 3, 14, 30), False),  # 09:30 CDT, 08:30 MDT
        (utc(2024, 6, 3, 15, 0), True),  # 10:00 CDT, 09:00 MDT
        (utc(2024, 6, 3, 21, 59), True),  # 16:59 CDT
        (utc(2024, 6, 3, 22, 0), False),  # 17:00 CDT, 16:00 MDT
    ],
)
def test_open_only_in_all_zones(instant: datetime, expected: bool):
    assert is_open(OFFICE, DAKOTA, instant) is expected


def test_next_open_in_all_zones():
    assert next_open(OFFICE, DAKOTA, utc(2024, 6, 3, 12, 0)) == utc(2024, 6, 3, 15, 0)


@pytest.mark.parametrize(
    ("country_code", "instant", "expected"),
    [
        (None, utc(2024, 6, 3, 11, 59), True),  # 07:59 EDT: no floor without a country
        (1, utc(2024, 6, 3, 11, 59), False),  # TCPA: not before 08:00
        (1, utc(2024, 6, 3, 12, 0), True),
        (1, utc(2024, 6, 4, 0, 59), True),  # 20:59 EDT
        (1, utc(2024, 6, 4, 1, 0), False),  # 21:00 EDT
        (44, utc(2024, 6, 3, 11, 59), True),  # no floor known for +44
    ],
)
def test_legal_floor(country_code: int | None, instant: datetime, expected: bool):
    always = CallingWindow.always()
    assert is_open(always, NY, instant, country_code=country_code) is expected


def test_legal_floor_wins_over_workflow():
    night = CallingWindow.weekly("20:00", "23:00")
    assert effective_window(night, 1) == CallingWindow.weekly("20:00", "21:00")
    assert legal_floor(49) is None
    assert next_open(night, NY, utc(2024, 6, 4, 1, 30), country_code=1) == utc(2024, 6, 5, 0, 0)
    assert (
        next_open(CallingWindow.weekly("05:00", "07:00"), NY, utc(2024, 6, 4), country_code=1)
        is None
    )


def test_several_ranges_per_day():
    window = CallingWindow.from_dict({"mon": [["13:00", "20:00"], ["09:00", "12:00"]]})
    monday_1230 = utc(2024, 6, 3, 16, 30)  # 12:30 EDT
    assert not is_open(window, NY, monday_1230)
    assert next_open(window, NY, monday_1230) == utc(2024, 6, 3, 17, 0)
    assert is_open(window, NY, utc(2024, 6, 3, 13, 0))
    assert not is_open(window, NY, utc(2024, 6, 4, 13, 0))  # Tuesday is closed


def test_touching_ranges_merge_and_round_trip():
    window = CallingWindow.from_dict({"fri": [["09:00", "12:00"], ["12:00", "24:00"]]})
    assert window.days[4] == (TimeRange.of("09:00", "24:00"),)
    assert window.to_dict() == {"fri": [["09:00", "24:00"]]}
    assert CallingWindow.from_dict(window.to_dict()) == window


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"funday": []}, "funday"),
        ({"mon": "09:00-17:00"}, "mon"),
        ({"mon": [["09:00"]]}, "mon[0]"),
        ({"tue": [["09:00", "17:00"], ["10:00", "09:00"]]}, "tue[1]"),
        ({"wed": [["09:00", "25:00"]]}, "wed[0].end"),
        ({"thu": [["9h", "17:00"]]}, "thu[0].start"),
        ({"fri": [["09:60", "17:00"]]}, "fri[0].start"),
        ({"sat": [[9, 17]]}, "sat[0]"),
    ],
)
def test_from_dict_errors_name_the_field(raw: dict[str, object], field: str):
    with pytest.raises(WindowError) as caught:
        CallingWindow.from_dict(raw)
    assert caught.value.field == field


def test_naive_and_empty_inputs_are_errors():
    with pytest.raises(ValueError, match="aware"):
        is_open(OFFICE, NY, datetime(2024, 6, 3, 12, 0))
    with pytest.raises(ValueError, match="zones"):
        next_open(OFFICE, (), utc(2024, 6, 3))
    closed = CallingWindow.weekly("09:00", "17:00", days=())
    assert next_open(closed, NY, utc(2024, 6, 3)) is None


ZONE_SETS = [NY, PHX, DAKOTA, ("Europe/London",), ("Australia/Lord_Howe",), ("Asia/Kolkata",)]


@settings(max_examples=40, deadline=None)
@given(
    start_min=st.integers(0, 23 * 60),
    length_min=st.integers(1, 6 * 60),
    weekdays=st.sets(st.integers(0, 6), min_size=1),
    zones=st.sampled_from(ZONE_SETS),
    offset_min=st.integers(0, 366 * 24 * 60),
)
def test_next_open_is_the_first_open_minute(
    start_min: int, length_min: int, weekdays: set[int], zones: tuple[str, ...], offset_min: int
):
    end_min = min(24 * 60, start_min + length_min)
    rng = TimeRange(start_min * 60, end_min * 60)
    window = CallingWindow(tuple((rng,) if day in weekdays else () for day in range(7)))
    now = utc(2024, 1, 1) + timedelta(minutes=offset_min)
    found = next_open(window, zones, now)
    if found is None:
        # Only zones far enough apart for the ranges never to overlap.
        assert len(zones) > 1
        until = now + timedelta(days=8)
    else:
        assert is_open(window, zones, found)
        until = found
    # Every window edge and offset here is on a whole minute: nothing opens earlier.
    probe = now
    while probe < until:
        assert not is_open(window, zones, probe)
        probe += timedelta(minutes=1)


FIVE_MIN = timedelta(minutes=5)


@pytest.mark.parametrize(
    ("window", "zones", "instant", "country", "expected"),
    [
        # Closed now: closes "now".
        (OFFICE, NY, utc(2024, 6, 3, 12, 0), None, utc(2024, 6, 3, 12, 0)),
        # Open past the horizon: None.
        (OFFICE, NY, utc(2024, 6, 3, 14, 0), None, None),
        # Closes within the horizon: at 17:00 EDT.
        (OFFICE, NY, utc(2024, 6, 3, 20, 57), None, utc(2024, 6, 3, 21, 0)),
        # The legal floor closes a wider window at 21:00 local for a +1 number.
        (CallingWindow.always(), NY, utc(2024, 6, 4, 0, 58), 1, utc(2024, 6, 4, 1, 0)),
        (CallingWindow.always(), NY, utc(2024, 6, 4, 0, 58), None, None),
        # A midnight between two open days is no close.
        (CallingWindow.always(), PHX, utc(2024, 6, 4, 6, 58), None, None),
        # Spring forward jumps the clock out of the range: closed at the jump.
        (
            CallingWindow.weekly("01:00", "02:30"),
            NY,
            utc(2024, 3, 10, 6, 58),
            None,
            utc(2024, 3, 10, 7, 0),
        ),
        # Two zones: the earlier close wins (17:00 EDT before 17:00 MST).
        (OFFICE, (*NY, *PHX), utc(2024, 6, 3, 20, 58), None, utc(2024, 6, 3, 21, 0)),
    ],
)
def test_open_until(
    window: CallingWindow,
    zones: tuple[str, ...],
    instant: datetime,
    country: int | None,
    expected: datetime | None,
) -> None:
    assert open_until(window, zones, instant, FIVE_MIN, country_code=country) == expected


@settings(max_examples=40, deadline=None)
@given(
    start_min=st.integers(0, 23 * 60),
    length_min=st.integers(1, 6 * 60),
    zones=st.sampled_from(ZONE_SETS),
    offset_min=st.integers(0, 366 * 24 * 60),
)
def test_open_until_is_the_first_closed_minute(
    start_min: int, length_min: int, zones: tuple[str, ...], offset_min: int
) -> None:
    end_min = min(24 * 60, start_min + length_min)
    window = CallingWindow.weekly(
        f"{start_min // 60:02d}:{start_min % 60:02d}", f"{end_min // 60:02d}:{end_min % 60:02d}"
    )
    now = utc(2024, 1, 1) + timedelta(minutes=offset_min)
    horizon = timedelta(hours=8)
    found = open_until(window, zones, now, horizon)
    until = now + horizon if found is None else found
    if found is not None and found > now:
        assert not is_open(window, zones, found)
    probe = now
    while probe < until:
        assert is_open(window, zones, probe)
        probe += timedelta(minutes=1)

"""Calling windows: when a person may be called, in their own wall-clock time.

Rules of this file:

1. A window is wall-clock time: ranges of local time per day of the week. It
   is evaluated in each of the person's zones by converting the UTC instant to
   that zone's local time; a daylight-saving jump therefore moves the UTC
   hours of the window, and a local time that does not exist (02:30 on the
   spring-forward day) is never open, while one that happens twice (01:30 on
   the fall-back day) is open both times.
2. When a person may be in several zones (an area code spanning two), the
   window must be open in all of them: calling too early in one of them is
   the mistake we cannot take back.
3. The law caps what a workflow asks for. For NANP (+1) numbers the TCPA rule,
   47 CFR 64.1200(c)(1), forbids calls "before the hour of 8 a.m. or after
   9 p.m. (local time at the called party's location)"; `legal_floor` gives
   that window by country calling code, and `is_open` / `next_open` intersect
   it when given the number's country code.
4. Ranges are half open, ``[start, end)``, in seconds after local midnight;
   ``end`` may be 86400 (24:00) so that a day can be open to its end.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = [
    "DAY_NAMES",
    "CallingWindow",
    "TimeRange",
    "WindowError",
    "effective_window",
    "is_open",
    "legal_floor",
    "next_open",
    "open_until",
]

DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_S = 86_400
# next_open looks this many local days ahead: a week covers every weekday and
# the extra week covers a pattern shifted by a daylight-saving change.
_HORIZON_DAYS = 15


class WindowError(ValueError):
    """A calling window that cannot be built; `field` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _parse_clock(value: str | time, field: str) -> int:
    if isinstance(value, time):
        return value.hour * 3600 + value.minute * 60 + value.second
    parts = value.strip().split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise WindowError(field, f"expected HH:MM or HH:MM:SS, got {value!r}")
    hours, minutes = int(parts[0]), int(parts[1])
    seconds = int(parts[2]) if len(parts) == 3 else 0
    if minutes > 59 or seconds > 59 or hours > 24 or (hours == 24 and minutes + seconds):
        raise WindowError(field, f"not a time of day: {value!r}")
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True, slots=True, order=True)
class TimeRange:
    """Local wall-clock range ``[start_s, end_s)`` in seconds after midnight."""

    start_s: int
    end_s: int

    def __post_init__(self) -> None:
        if not 0 <= self.start_s < self.end_s <= _DAY_S:
            raise WindowError("range", f"need 0 <= start < end <= 24:00, got {self}")

    @classmethod
    def of(cls, start: str | time, end: str | time, field: str = "range") -> TimeRange:
        """Build from ``"HH:MM"`` strings or `datetime.time`; ``"24:00"`` ends the day."""
        start_s = _parse_clock(start, f"{field}.start")
        end_s = _parse_clock(end, f"{field}.end")
        if not start_s < end_s:
            raise WindowError(field, f"start {start} must be before end {end}")
        return cls(start_s, end_s)

    def contains(self, second_of_day: float) -> bool:
        return self.start_s <= second_of_day < self.end_s


def _normalise(ranges: Iterable[TimeRange]) -> tuple[TimeRange, ...]:
    """Sorted, with overlapping or touching ranges merged."""
    merged: list[TimeRange] = []
    for current in sorted(ranges):
        if merged and current.start_s <= merged[-1].end_s:
            last = merged[-1]
            merged[-1] = TimeRange(last.start_s, max(last.end_s, current.end_s))
        else:
            merged.append(current)
    return tuple(merged)


@dataclass(frozen=True, slots=True)
class CallingWindow:
    """Weekly local-time calling window: for each day (Monday first) its open ranges.

    A day with no range is closed. Build it with `weekly` or `from_dict`;
    `intersect` combines two windows (the workflow's and the legal floor).
    """

    days: tuple[tuple[TimeRange, ...], ...]

    def __post_init__(self) -> None:
        if len(self.days) != 7:
            raise WindowError("days", f"need 7 days, got {len(self.days)}")
        object.__setattr__(self, "days", tuple(_normalise(day) for day in self.days))

    @classmethod
    def weekly(
        cls,
        start: str | time,
        end: str | time,
        days: Sequence[str] = DAY_NAMES,
    ) -> CallingWindow:
        """The same range on each of the named days (``"mon"`` ... ``"sun"``)."""
        rng = TimeRange.of(start, end)
        for name in days:
            if name not in DAY_NAMES:
                raise WindowError("days", f"unknown day {name!r}")
        return cls(tuple((rng,) if name in days else () for name in DAY_NAMES))

    @classmethod
    def always(cls) -> CallingWindow:
        """Open all week (only the legal floor then limits calls)."""
        return cls.weekly("00:00", "24:00")

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> CallingWindow:
        """Parse ``{"mon": [["09:00", "12:00"], ["13:00", "20:00"]], ...}``.

        Days left out are closed. Errors name the field, e.g. ``tue[1].end``.
        """
        if not isinstance(data, Mapping):
            raise WindowError("window", "expected an object keyed by day name")
        for key in data:
            if key not in DAY_NAMES:
                raise WindowError(str(key), f"unknown day; expected one of {', '.join(DAY_NAMES)}")
        days: list[tuple[TimeRange, ...]] = []
        for name in DAY_NAMES:
            raw = data.get(name, [])
            if not isinstance(raw, list | tuple):
                raise WindowError(name, "expected a list of [start, end] pairs")
            ranges = []
            for index, pair in enumerate(raw):
                field = f"{name}[{index}]"
                if not isinstance(pair, list | tuple) or len(pair) != 2:
                    raise WindowError(field, "expected a [start, end] pair")
                start, end = pair
                if not isinstance(start, str) or not isinstance(end, str):
                    raise WindowError(field, "start and end must be strings HH:MM")
                ranges.append(TimeRange.of(start, end, field))
            days.append(tuple(ranges))
        return cls(tuple(days))

    def to_dict(self) -> dict[str, list[list[str]]]:
        """The inverse of `from_dict` (closed days left out)."""

        def clock(seconds: int) -> str:
            hours, rest = divmod(seconds, 3600)
            minutes, secs = divmod(rest, 60)
            return f"{hours:02d}:{minutes:02d}" + (f":{secs:02d}" if secs else "")

        return {
            name: [[clock(r.start_s), clock(r.end_s)] for r in ranges]
            for name, ranges in zip(DAY_NAMES, self.days, strict=True)
            if ranges
        }

    def intersect(self, other: CallingWindow) -> CallingWindow:
        """Open exactly when both windows are open."""
        days = []
        for mine, theirs in zip(self.days, other.days, strict=True):
            day = []
            for a in mine:
                for b in theirs:
                    start, end = max(a.start_s, b.start_s), min(a.end_s, b.end_s)
                    if start < end:
                        day.append(TimeRange(start, end))
            days.append(tuple(day))
        return CallingWindow(tuple(days))

    def open_at_local(self, weekday: int, second_of_day: float) -> bool:
        """Whether the window is open at this local weekday (0 = Monday) and time."""
        return any(r.contains(second_of_day) for r in self.days[weekday])


# TCPA, 47 CFR 64.1200(c)(1): no call "before the hour of 8 a.m. or after
# 9 p.m. (local time at the called party's location)" to a US number. Applied
# to all of NANP (+1): Canada's CRTC rules are stricter still on weekends, and
# the workflow's own window carries those.
_LEGAL_FLOORS: dict[int, CallingWindow] = {1: CallingWindow.weekly("08:00", "21:00")}


def legal_floor(country_code: int | None) -> CallingWindow | None:
    """The widest window the law allows for this country calling code, or None."""
    if country_code is None:
        return None
    return _LEGAL_FLOORS.get(country_code)


@lru_cache(maxsize=1024)
def effective_window(window: CallingWindow, country_code: int | None) -> CallingWindow:
    """The workflow's window cut to the legal floor of the number's country."""
    floor = legal_floor(country_code)
    return window if floor is None else window.intersect(floor)


@lru_cache(maxsize=1024)
def _zone(name: str) -> tzinfo:
    return ZoneInfo(name)


def _require_aware(now_utc: datetime) -> datetime:
    if now_utc.tzinfo is None or now_utc.utcoffset() is None:
        raise ValueError("now_utc must be timezone-aware")
    return now_utc.astimezone(UTC)


def _open_in_zone(window: CallingWindow, zone: tzinfo, instant: datetime) -> bool:
    local = instant.astimezone(zone)
    second_of_day = (
        local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1_000_000
    )
    return window.open_at_local(local.weekday(), second_of_day)


def is_open(
    window: CallingWindow,
    zones: Sequence[str],
    now_utc: datetime,
    *,
    country_code: int | None = None,
) -> bool:
    """Whether a person whose clock may be any of ``zones`` may be called now.

    Open only when the window is open in every zone. ``country_code`` (1 for a
    NANP number) applies that country's legal floor on top of the window.
    """
    if not zones:
        raise ValueError("zones must not be empty")
    instant = _require_aware(now_utc)
    effective = effective_window(window, country_code)
    return all(_open_in_zone(effective, _zone(name), instant) for name in zones)


@lru_cache(maxsize=256)
def _transitions_in_year(name: str, year: int) -> tuple[datetime, ...]:
    """UTC instants in the given UTC year where the zone's UTC offset changes."""
    zone = _zone(name)
    found: list[datetime] = []
    step = timedelta(hours=6)  # offsets never change twice within six hours
    left = datetime(year, 1, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    left_offset = left.astimezone(zone).utcoffset()
    while left < end:
        right = left + step
        right_offset = right.astimezone(zone).utcoffset()
        if right_offset != left_offset:
            lo, hi = left, right  # the offset differs between lo and hi: bisect to the second
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(zone).utcoffset() == left_offset:
                    lo = mid
                else:
                    hi = mid
            found.append(hi.replace(microsecond=0))
        left, left_offset = right, right_offset
    return tuple(t for t in found if t < end)


def _transitions(name: str, start: datetime, end: datetime) -> Iterator[datetime]:
    """UTC instants in ``(start, end]`` where the zone's UTC offset changes, in order."""
    for year in range(start.year, end.year + 1):
        for instant in _transitions_in_year(name, year):
            if start < instant <= end:
                yield instant


def _range_starts(window: CallingWindow, zone: tzinfo, now: datetime) -> Iterator[datetime]:
    """UTC instants at which one of the window's ranges starts in this zone, in order.

    Each start is read with both folds: on a fall-back day a local time happens
    twice; a non-existent one (spring forward) maps past the jump, and the jump
    itself is a candidate from `_transitions`.
    """
    first_day = now.astimezone(zone).date() - timedelta(days=1)
    for offset in range(_HORIZON_DAYS + 1):
        day = first_day + timedelta(days=offset)
        instants = []
        for rng in window.days[day.weekday()]:
            hours, rest = divmod(rng.start_s, 3600)
            minutes, seconds = divmod(rest, 60)
            wall = datetime(day.year, day.month, day.day, hours, minutes, seconds, tzinfo=zone)
            instants.append(wall.astimezone(UTC))
            instants.append(wall.replace(fold=1).astimezone(UTC))
        instants.sort()
        yield from instants


def next_open(
    window: CallingWindow,
    zones: Sequence[str],
    now_utc: datetime,
    *,
    country_code: int | None = None,
) -> datetime | None:
    """The earliest UTC instant at or after ``now_utc`` when `is_open` holds.

    None when the window is never open in all the zones at once within the
    next two weeks (a closed window, or zones too far apart for its ranges).
    The answer is exact to the second across daylight-saving changes.
    """
    if not zones:
        raise ValueError("zones must not be empty")
    now = _require_aware(now_utc)
    effective = effective_window(window, country_code)
    tzs = [_zone(name) for name in zones]
    if all(_open_in_zone(effective, tz, now) for tz in tzs):
        return now
    if not any(effective.days):
        return None
    # Where all zones are open is an intersection of unions of intervals; its
    # earliest point after now is where one zone's range starts, or where a
    # daylight-saving jump lands one zone's clock inside a range. Walk those
    # candidates in time order and return the first at which all are open.
    end = now + timedelta(days=_HORIZON_DAYS)
    streams = [_range_starts(effective, tz, now) for tz in tzs]
    streams.extend(_transitions(name, now, end) for name in zones)
    previous = now
    for instant in heapq.merge(*streams):
        if instant > end:
            break
        if instant <= previous:
            continue
        previous = instant
        if all(_open_in_zone(effective, tz, instant) for tz in tzs):
            return instant
    return None


def _range_ends(window: CallingWindow, zone: tzinfo, now: datetime) -> Iterator[datetime]:
    """UTC instants at which one of the window's ranges ends in this zone, in order
    (both folds, as `_range_starts`)."""
    first_day = now.astimezone(zone).date() - timedelta(days=1)
    for offset in range(_HORIZON_DAYS + 1):
        day = first_day + timedelta(days=offset)
        instants = []
        for rng in window.days[day.weekday()]:
            end_day = day + timedelta(days=rng.end_s // _DAY_S)
            hours, rest = divmod(rng.end_s % _DAY_S, 3600)
            minutes, seconds = divmod(rest, 60)
            wall = datetime(
                end_day.year, end_day.month, end_day.day, hours, minutes, seconds, tzinfo=zone
            )
            instants.append(wall.astimezone(UTC))
            instants.append(wall.replace(fold=1).astimezone(UTC))
        instants.sort()
        yield from instants


def open_until(
    window: CallingWindow,
    zones: Sequence[str],
    now_utc: datetime,
    horizon: timedelta,
    *,
    country_code: int | None = None,
) -> datetime | None:
    """The earliest UTC instant at or after ``now_utc`` when `is_open` stops holding.

    ``now_utc`` itself when the window is closed now; None when it stays open
    through ``now_utc + horizon``. A dial job carries it so that a job which
    waited in the queue is not dialled once the person's window has closed.
    """
    if not zones:
        raise ValueError("zones must not be empty")
    now = _require_aware(now_utc)
    effective = effective_window(window, country_code)
    tzs = [_zone(name) for name in zones]
    if not all(_open_in_zone(effective, tz, now) for tz in tzs):
        return now
    # The window closes where one zone's range ends, or where a daylight-saving
    # jump moves one zone's clock out of a range.
    end = now + horizon
    streams = [_range_ends(effective, tz, now) for tz in tzs]
    streams.extend(_transitions(name, now, end) for name in zones)
    for instant in heapq.merge(*streams):
        if instant > end:
            break
        if instant > now and not all(_open_in_zone(effective, tz, instant) for tz in tzs):
            return instant
    return None

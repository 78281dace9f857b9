"""The demo's sample people: valid numbers, in zones inside the calling window, at any hour."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import phonenumbers
import pytest

from dialer.demo.numbers import (
    BEHAVIOUR_BY_DIGIT,
    DIGIT_MIX,
    WINDOW,
    ZONE_PREFIXES,
    open_zones,
    sample_people,
)
from scheduler.timezones import zones_for


@pytest.mark.parametrize(("zone", "prefix"), ZONE_PREFIXES)
def test_every_prefix_makes_valid_numbers_of_its_zone_alone(zone: str, prefix: str) -> None:
    for tail in ("00000", "12345", "99999", "50007", "00019"):
        number = prefix + tail
        assert phonenumbers.is_valid_number(phonenumbers.parse(number)), number
        assert zones_for(number, None, "UTC") == (zone,), number


def _hours_of(day: datetime) -> list[datetime]:
    return [day + timedelta(minutes=30 * i) for i in range(48)]


@pytest.mark.parametrize(
    "day",
    [
        datetime(2026, 1, 15, tzinfo=UTC),
        datetime(2026, 3, 8, tzinfo=UTC),  # US clocks go forward
        datetime(2026, 3, 29, tzinfo=UTC),  # EU clocks go forward
        datetime(2026, 7, 1, tzinfo=UTC),
        datetime(2026, 10, 25, tzinfo=UTC),  # EU clocks go back
        datetime(2026, 11, 1, tzinfo=UTC),  # US clocks go back
    ],
)
def test_several_zones_are_open_at_every_half_hour(day: datetime) -> None:
    for now in _hours_of(day):
        assert len(open_zones(now)) >= 3, now


def test_people_are_called_inside_the_window_with_time_to_spare() -> None:
    start, end = WINDOW
    for now in _hours_of(datetime(2026, 11, 22, tzinfo=UTC)):
        for person in sample_people(40, now, seed=3):
            local = now.astimezone(ZoneInfo(person.zone))
            assert start <= local.time(), (now, person)
            closes = datetime.combine(local.date(), end, tzinfo=local.tzinfo)
            assert closes - local >= timedelta(hours=1), (now, person)
            # The scheduler finds the same zone from the number alone.
            assert zones_for(person.phone_e164, None, "UTC") == (person.zone,)
            # US numbers: never outside 08:00-21:00 local, whatever the workflow says.
            if person.phone_e164.startswith("+1"):
                assert 8 <= local.hour < 20


def test_the_mix_of_behaviours_and_unique_numbers() -> None:
    people = sample_people(200, datetime(2026, 11, 22, 12, tzinfo=UTC), seed=1)
    assert len({p.phone_e164 for p in people}) == 200
    shares = Counter(p.behaviour for p in people)
    per_twenty = Counter(BEHAVIOUR_BY_DIGIT[d] for d in DIGIT_MIX)
    assert shares == Counter({b: n * 10 for b, n in per_twenty.items()})
    assert shares["person (yes)"] == 70 and shares["unreachable"] == 10
    for p in people:
        assert BEHAVIOUR_BY_DIGIT[p.phone_e164[-1]] == p.behaviour


def test_the_draw_repeats_with_its_seed() -> None:
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    assert sample_people(30, now, seed=5) == sample_people(30, now, seed=5)
    assert sample_people(30, now, seed=5) != sample_people(30, now, seed=6)


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sample_people(1, datetime(2026, 11, 22, 12))

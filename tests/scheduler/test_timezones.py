"""Time zones from a US ZIP code, else the number's area code, else the default."""

from __future__ import annotations

import pytest

from scheduler.timezones import zone_for_zip, zones_for, zones_for_number


@pytest.mark.parametrize(
    ("phone", "zip_code", "default", "expected"),
    [
        # Goodland, Kansas keeps Mountain time while area code 785 is Central: ZIP wins.
        ("+17855550100", "67735", "UTC", ("America/Denver",)),
        ("+17855550100", "67735-1234", "UTC", ("America/Denver",)),
        ("+17855550100", None, "UTC", ("America/Chicago",)),
        # Florida panhandle, area code 850: Pensacola is Central, Tallahassee Eastern.
        ("+18504331234", "32501", "UTC", ("America/Chicago",)),
        ("+18504331234", None, "UTC", ("America/Chicago",)),
        ("+18502221234", None, "UTC", ("America/New_York",)),
        ("+18502221234", "32501", "UTC", ("America/Chicago",)),
        # Area codes spanning two zones give both.
        ("+16055550100", None, "UTC", ("America/Denver", "America/North_Dakota/Center")),
        ("+12085550100", None, "UTC", ("America/Boise", "America/Los_Angeles")),
        # A malformed or unknown ZIP falls to the number.
        ("+12125550100", "1234", "UTC", ("America/New_York",)),
        ("+12125550100", "99999", "UTC", ("America/New_York",)),
        ("+12125550100", "", "UTC", ("America/New_York",)),
        # A five-digit postcode on a German number is not a US ZIP code.
        ("+4930123456", "67735", "UTC", ("Europe/Berlin",)),
        # Toll-free and unparseable numbers say nothing: the default zone.
        ("+18005550100", None, "America/Phoenix", ("America/Phoenix",)),
        ("not a number", None, "Europe/Paris", ("Europe/Paris",)),
        ("not a number", "85001", "Europe/Paris", ("Europe/Paris",)),
    ],
)
def test_zones_for(phone: str, zip_code: str | None, default: str, expected: tuple[str, ...]):
    assert zones_for(phone, zip_code, default) == expected


def test_unknown_default_zone_is_an_error():
    with pytest.raises(ValueError, match="default_zone"):
        zones_for("+12125550100", None, "Mars/Olympus_Mons")


@pytest.mark.parametrize(
    ("zip_code", "expected"),
    [
        ("85001", "America/Phoenix"),
        (" 10001 ", "America/New_York"),
        ("96910", "Pacific/Guam"),
        ("09001", None),  # APO Europe: the table gives no zone
        ("abcde", None),
        ("123456", None),
    ],
)
def test_zone_for_zip(zip_code: str, expected: str | None):
    assert zone_for_zip(zip_code) == expected


def test_number_zones_are_cached_and_sorted():
    first = zones_for_number("+19075550100")
    assert first == ("America/Adak", "America/Anchorage")
    assert zones_for_number("+19075550100") is first

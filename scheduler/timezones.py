"""The person's own time zone(s), from a US ZIP code or else the phone number.

Rules of this file:

1. A valid US ZIP code wins for a NANP (+1) number: it names the place where the person lives, and a
   ZIP code lies in one zone. The phone number only names where the line was
   issued, and one NANP area code can span two zones (605 South Dakota, 208
   Idaho, ...); then every zone it may be in is returned, and the calling
   window must be open in all of them. A postal code on a number outside
   NANP is not looked up: five digits are also a German or French postcode.
2. A non-geographic number (toll-free, 5XX personal numbers, ...) says nothing
   about the person's clock: it falls to the workflow's default zone, like an
   unknown number, rather than to every zone of the country.
3. Lookups are cached: this runs once per record, and both libraries are slow
   on a cold key (the ZIP table is scanned linearly).
"""

from __future__ import annotations

import re
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
import zipcodes
from phonenumbers import is_number_type_geographical
from phonenumbers import timezone as phone_timezone

__all__ = ["zone_for_zip", "zones_for", "zones_for_number"]

_ZIP_RE = re.compile(r"^\s*(\d{5})(?:-?\d{4})?\s*$")
# What phonenumbers answers when it knows nothing about a number's zone.
_UNKNOWN_ZONE = phone_timezone.UNKNOWN_TIMEZONE


@lru_cache(maxsize=4096)
def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@lru_cache(maxsize=65536)
def _zone_for_zip5(zip5: str) -> str | None:
    for entry in zipcodes.matching(zip5):
        zone = entry.get("timezone") or ""
        if zone and _is_zone(zone):
            return zone
    return None


def zone_for_zip(zip_code: str) -> str | None:
    """The IANA zone of a US ZIP code (``"12345"`` or ``"12345-6789"``), or None.

    None for a malformed or unknown code, and for the few codes the ZIP table
    gives no zone (military APO/FPO addresses).
    """
    match = _ZIP_RE.match(zip_code)
    if match is None:
        return None
    return _zone_for_zip5(match.group(1))


@lru_cache(maxsize=65536)
def zones_for_number(phone_e164: str) -> tuple[str, ...]:
    """Every IANA zone a geographic phone number may be in; () when unknown."""
    try:
        number = phonenumbers.parse(phone_e164, None)
    except phonenumbers.NumberParseException:
        return ()
    # The number's type, once: it is most of the cost (pattern matching over the
    # region's types), and both is_number_geographical and time_zones_for_number
    # would work it out again. Each record has its own number, so the cache
    # above rarely spares this.
    kind = phonenumbers.number_type(number)
    if kind == phonenumbers.PhoneNumberType.UNKNOWN or not is_number_type_geographical(
        kind, number.country_code or 0
    ):
        return ()
    return _known_zones(tuple(phone_timezone.time_zones_for_geographical_number(number)))


@lru_cache(maxsize=4096)
def _known_zones(zones: tuple[str, ...]) -> tuple[str, ...]:
    """The zones of a prefix's entry that are real zones, sorted (few distinct entries)."""
    return tuple(sorted(zone for zone in zones if zone != _UNKNOWN_ZONE and _is_zone(zone)))


@lru_cache(maxsize=65536)
def zones_for(phone_e164: str, zip_code: str | None, default_zone: str) -> tuple[str, ...]:
    """The zones whose local time governs calls to this person, sorted, never empty.

    From the US ZIP code when it is valid and the number is NANP (+1), else
    from the number (all the zones its area code or prefix spans), else
    ``(default_zone,)``. Raises ValueError
    when ``default_zone`` is not a known IANA zone, since that is a workflow
    configuration error and must not silently pick a clock.
    """
    if not _is_zone(default_zone):
        raise ValueError(f"default_zone: unknown time zone {default_zone!r}")
    if zip_code and phone_e164.startswith("+1"):
        zone = zone_for_zip(zip_code)
        if zone is not None:
            return (zone,)
    zones = zones_for_number(phone_e164)
    if zones:
        return zones
    return (default_zone,)

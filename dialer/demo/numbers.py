"""Sample people for the demo, with numbers whose local time is inside the calling window now.

The demo runs at any hour without switching the compliance rules off: it
picks, at start, the time zones where the workflow's window is open (with an
hour to spare, for retries) and gives each sample person a number of one of
those zones. The scheduler then works out the zone from the number, as it
does for everybody. The last digit picks what the sandbox carrier does with
the call (see ``dialer.sandbox``), so a run has people who say yes and no,
voicemail, busy lines, no answers and unreachable numbers in fixed shares.

Pure: ``now`` is handed in, the draw comes from a seeded generator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = [
    "BEHAVIOUR_BY_DIGIT",
    "DIGIT_MIX",
    "SLACK",
    "WINDOW",
    "ZONE_PREFIXES",
    "SamplePerson",
    "open_zones",
    "sample_people",
]

# The demo workflow's calling window, every day. US numbers are held to
# 08:00-21:00 local by the scheduler whatever a workflow says; this is inside.
WINDOW = (time(9, 0), time(20, 0))
# Room left before the window closes, so retries still fall inside it.
SLACK = timedelta(hours=1)

# A zone and the leading digits of numbers in it: five digits follow (a
# four-digit serial and the behaviour digit), and every such number is a valid
# geographic number that phonenumbers places in that zone alone (tested).
# Spread round the globe so that the window is open in several at any hour.
ZONE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("Pacific/Honolulu", "+180855"),
    ("America/Los_Angeles", "+131055"),
    ("America/Denver", "+130355"),
    ("America/Chicago", "+131255"),
    ("America/New_York", "+121255"),
    ("America/Sao_Paulo", "+5511234"),
    ("Europe/London", "+4420794"),
    ("Europe/Paris", "+331426"),
    ("Africa/Johannesburg", "+272112"),
    ("Europe/Moscow", "+749512"),
    ("Asia/Dubai", "+971431"),
    ("Asia/Calcutta", "+9122234"),
    ("Asia/Bangkok", "+66212"),
    ("Asia/Singapore", "+65651"),
    ("Asia/Tokyo", "+813123"),
    ("Australia/Sydney", "+612555"),
    ("Pacific/Auckland", "+64930"),
)

BEHAVIOUR_BY_DIGIT = {
    "0": "person (yes)",
    "1": "person (yes)",
    "2": "person (yes)",
    "3": "person (no)",
    "4": "person (no)",
    "5": "voicemail",
    "6": "voicemail",
    "7": "busy",
    "8": "no answer",
    "9": "unreachable",
}
# Twenty people: 7 say yes, 5 say no, 3 voicemail, 2 busy, 2 no answer, 1 unreachable.
DIGIT_MIX = "0120120" + "34343" + "565" + "77" + "88" + "9"

FIRST_NAMES = (
    "Ada", "Alan", "Grace", "Linus", "Margaret", "Dennis", "Barbara", "Ken", "Frances",
    "Edsger", "Hedy", "Tim", "Radia", "Vint", "Katherine", "Donald", "Joan", "Guido",
    "Sophie", "Niklaus", "Anita", "John", "Shafi", "Leslie", "Karen", "Bjarne", "Mary",
    "Yukihiro", "Evelyn", "Rasmus",
)  # fmt: skip
LAST_NAMES = (
    "Lovelace", "Turing", "Hopper", "Torvalds", "Hamilton", "Ritchie", "Liskov", "Thompson",
    "Allen", "Dijkstra", "Lamarr", "Berners-Lee", "Perlman", "Cerf", "Johnson", "Knuth",
    "Clarke", "van Rossum", "Wilson", "Wirth", "Borg", "McCarthy", "Goldwasser", "Lamport",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SamplePerson:
    phone_e164: str
    first_name: str
    last_name: str
    zone: str
    behaviour: str


def open_zones(now: datetime, window: tuple[time, time] = WINDOW) -> list[str]:
    """The zones of ``ZONE_PREFIXES`` whose local time is in the window, with slack to spare."""
    start, end = window
    latest = (datetime.combine(now.date(), end) - SLACK).time()
    zones = []
    for zone, _prefix in ZONE_PREFIXES:
        local = now.astimezone(ZoneInfo(zone)).time()
        if start <= local < latest:
            zones.append(zone)
    return zones


def sample_people(count: int, now: datetime, seed: int = 1) -> list[SamplePerson]:
    """``count`` people spread over the zones open at ``now``; raises if none is open."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    zones = open_zones(now)
    if not zones:
        raise RuntimeError("no sample time zone is inside the calling window now")
    prefixes = dict(ZONE_PREFIXES)
    draw = random.Random(seed)
    people = []
    for i in range(count):
        if i % len(DIGIT_MIX) == 0:
            mix = list(DIGIT_MIX)
            draw.shuffle(mix)
        digit = mix[i % len(DIGIT_MIX)]
        zone = zones[i % len(zones)]
        serial = i // len(zones)
        if serial > 9999:
            raise ValueError(f"at most {10000 * len(zones)} sample people now")
        people.append(
            SamplePerson(
                phone_e164=f"{prefixes[zone]}{serial:04d}{digit}",
                first_name=draw.choice(FIRST_NAMES),
                last_name=draw.choice(LAST_NAMES),
                zone=zone,
                behaviour=BEHAVIOUR_BY_DIGIT[digit],
            )
        )
    return people

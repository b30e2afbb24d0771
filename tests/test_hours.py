"""Support hours on the edges customers notice: the opening minute, summer time, holidays.

All instants are given in UTC, as the daemon's clock gives them; the comments name the
Berlin wall-clock time they stand for (CET = UTC+1 in winter, CEST = UTC+2 in summer).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from mailgate import hours as hours_module
from mailgate.config import HoursConfig
from mailgate.errors import ConfigError
from mailgate.hours import SupportHours

BERLIN = ZoneInfo("Europe/Berlin")


def utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


IS_OPEN = [
    # winter (CET): 09:00–17:00 local is 08:00–16:00 UTC; open inclusive, close exclusive
    ("winter, 08:59 Berlin", utc(2026, 1, 13, 7, 59), "DE-BE", False),
    ("winter, 09:00 Berlin", utc(2026, 1, 13, 8, 0), "DE-BE", True),
    ("winter, 16:59 Berlin", utc(2026, 1, 13, 15, 59), "DE-BE", True),
    ("winter, 17:00 Berlin", utc(2026, 1, 13, 16, 0), "DE-BE", False),
    ("winter, 16:30 Berlin (15:30 UTC)", utc(2026, 1, 13, 15, 30), "DE-BE", True),
    # summer (CEST): 09:00–17:00 local is 07:00–15:00 UTC
    ("summer, 08:59 Berlin", utc(2026, 7, 14, 6, 59), "DE-BE", False),
    ("summer, 09:00 Berlin", utc(2026, 7, 14, 7, 0), "DE-BE", True),
    ("summer, 16:59 Berlin", utc(2026, 7, 14, 14, 59), "DE-BE", True),
    ("summer, 17:00 Berlin", utc(2026, 7, 14, 15, 0), "DE-BE", False),
    ("summer, 17:30 Berlin (15:30 UTC)", utc(2026, 7, 14, 15, 30), "DE-BE", False),
    ("first Monday of summer time, 09:00", utc(2026, 3, 30, 7, 0), "DE-BE", True),
    ("late Tuesday UTC is Wednesday 00:30 Berlin", utc(2026, 1, 13, 23, 30), "DE-BE", False),
    # weekend
    ("Saturday 11:00", utc(2026, 1, 17, 10, 0), "DE-BE", False),
    ("Sunday 11:00", utc(2026, 1, 18, 10, 0), "DE-BE", False),
    # Frauentag, 8 March: a holiday in Berlin only (2027: a Monday)
    ("Frauentag 2027 in Berlin", utc(2027, 3, 8, 10, 0), "DE-BE", False),
    ("Frauentag 2027 in Bavaria", utc(2027, 3, 8, 10, 0), "DE-BY", True),
    # Heilige Drei Könige, 6 January: a holiday in Bavaria, not in Berlin (2026: a Tuesday)
    ("Heilige Drei Könige in Berlin", utc(2026, 1, 6, 10, 0), "DE-BE", True),
    ("Heilige Drei Könige in Bavaria", utc(2026, 1, 6, 10, 0), "DE-BY", False),
    # nationwide holidays, closed all day
    ("Christmas Day 2026 (Friday) 10:00", utc(2026, 12, 25, 9, 0), "DE-BE", False),
    ("Christmas Day 2026 at 16:59 Berlin", utc(2026, 12, 25, 15, 59), "DE-BE", False),
    ("Day of German Unity 2028 (Tuesday)", utc(2028, 10, 3, 9, 0), "DE-BE", False),
    ("country only: Christmas", utc(2026, 12, 25, 9, 0), "DE", False),
    # no holiday calendar: only weekday and time count
    ("holidays = None: Christmas is a Friday", utc(2026, 12, 25, 9, 0), None, True),
    ("holidays = None: Sunday stays closed", utc(2026, 12, 27, 9, 0), None, False),
]


@pytest.mark.parametrize(
    ("now", "region", "expected"),
    [case[1:] for case in IS_OPEN],
    ids=[case[0] for case in IS_OPEN],
)
def test_is_open(now: datetime, region: str | None, expected: bool) -> None:
    assert SupportHours(HoursConfig(holidays=region)).is_open(now) is expected


def test_frauentag_2026_is_a_berlin_holiday() -> None:
    """On a Sunday in 2026, so is_open cannot tell; the calendar itself must know it."""
    assert SupportHours(HoursConfig(holidays="DE-BE")).is_holiday(date(2026, 3, 8))
    assert not SupportHours(HoursConfig(holidays="DE-BY")).is_holiday(date(2026, 3, 8))
    assert not SupportHours(HoursConfig(holidays="DE-BE")).is_holiday(date(2026, 1, 6))


def test_other_zone_and_days() -> None:
    """Hours are wall-clock hours of the configured zone, on the configured days only."""
    hours = SupportHours(
        HoursConfig(timezone="America/New_York", open="08:00", close="12:30", days=("sat",))
    )
    # Saturday 2026-01-17, 08:00 in New York (EST = UTC-5) is 13:00 UTC
    assert not hours.is_open(utc(2026, 1, 17, 12, 59))
    assert hours.is_open(utc(2026, 1, 17, 13, 0))
    assert not hours.is_open(utc(2026, 1, 17, 17, 30))
    assert not hours.is_open(utc(2026, 1, 19, 14, 0))  # a Monday


def test_aware_now_in_another_zone_is_converted() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    # 17:00 in Tokyo is 09:00 in Berlin (winter)
    assert SupportHours(HoursConfig()).is_open(datetime(2026, 1, 13, 17, 0, tzinfo=tokyo))


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        SupportHours(HoursConfig()).is_open(datetime(2026, 1, 13, 10, 0))


NEXT_OPEN = [
    ("open now: now itself", utc(2026, 1, 13, 10, 15), datetime(2026, 1, 13, 11, 15)),
    ("before opening: today 09:00", utc(2026, 1, 13, 5, 0), datetime(2026, 1, 13, 9, 0)),
    ("after closing: tomorrow", utc(2026, 1, 13, 16, 0), datetime(2026, 1, 14, 9, 0)),
    ("Friday evening: Monday", utc(2026, 1, 16, 17, 0), datetime(2026, 1, 19, 9, 0)),
    ("Saturday: Monday", utc(2026, 1, 17, 10, 0), datetime(2026, 1, 19, 9, 0)),
    # Christmas Eve is a Thursday, Christmas Day (Friday) a holiday, then the weekend
    ("Christmas Eve evening", utc(2026, 12, 24, 17, 0), datetime(2026, 12, 28, 9, 0)),
    # Maundy Thursday evening: Good Friday, weekend, Easter Monday closed
    ("Easter", utc(2026, 4, 2, 18, 0), datetime(2026, 4, 7, 9, 0)),
    # Frauentag 2027 is a Monday: the weekend is one day longer in Berlin
    ("weekend before Frauentag", utc(2027, 3, 6, 10, 0), datetime(2027, 3, 9, 9, 0)),
    # Friday in winter time, Monday in summer time: the offset changes over the weekend
    ("across the switch to summer time", utc(2026, 3, 27, 17, 0), datetime(2026, 3, 30, 9, 0)),
    # New Year's Eve (Thursday, not a holiday) evening: New Year's Day closed, then weekend
    ("across New Year", utc(2026, 12, 31, 17, 0), datetime(2027, 1, 4, 9, 0)),
]


@pytest.mark.parametrize(
    ("now", "expected"),
    [case[1:] for case in NEXT_OPEN],
    ids=[case[0] for case in NEXT_OPEN],
)
def test_next_open(now: datetime, expected: datetime) -> None:
    result = SupportHours(HoursConfig()).next_open(now)
    assert result == expected.replace(tzinfo=BERLIN)
    assert result.tzinfo is not None
    assert result.tzinfo.key == "Europe/Berlin"  # type: ignore[attr-defined]
    # and the wall-clock reading, not just the instant, is the expected one
    assert result.replace(tzinfo=None) == expected


def test_next_open_offsets_follow_summer_time() -> None:
    hours = SupportHours(HoursConfig())
    assert hours.next_open(utc(2026, 3, 27, 17, 0)).isoformat() == "2026-03-30T09:00:00+02:00"
    assert hours.next_open(utc(2026, 1, 16, 17, 0)).isoformat() == "2026-01-19T09:00:00+01:00"


def test_next_open_without_holidays_ignores_christmas() -> None:
    hours = SupportHours(HoursConfig(holidays=None))
    assert hours.next_open(utc(2026, 12, 24, 17, 0)) == datetime(2026, 12, 25, 9, tzinfo=BERLIN)


def test_next_open_with_no_days_refuses() -> None:
    with pytest.raises(ValueError, match="never open"):
        SupportHours(HoursConfig(days=())).next_open(utc(2026, 1, 13, 10, 0))


@pytest.mark.parametrize(
    ("config", "language", "expected"),
    [
        (
            HoursConfig(),
            "de",
            "Mo–Fr 09:00–17:00 Uhr (Europe/Berlin), außer an Feiertagen in Berlin",
        ),
        (HoursConfig(), "en", "Mon–Fri 09:00–17:00 (Europe/Berlin), except public holidays"),
        (HoursConfig(holidays=None), "de", "Mo–Fr 09:00–17:00 Uhr (Europe/Berlin)"),
        (HoursConfig(holidays=None), "en", "Mon–Fri 09:00–17:00 (Europe/Berlin)"),
        (
            HoursConfig(holidays="DE-BY"),
            "de",
            "Mo–Fr 09:00–17:00 Uhr (Europe/Berlin), außer an Feiertagen in Bayern",
        ),
        (
            HoursConfig(holidays="DE"),
            "de",
            "Mo–Fr 09:00–17:00 Uhr (Europe/Berlin), außer an Feiertagen",
        ),
        (
            HoursConfig(
                open="08:30", close="16:00", days=("mon", "tue", "thu", "sat"), holidays=None
            ),
            "de",
            "Mo, Di, Do, Sa 08:30–16:00 Uhr (Europe/Berlin)",
        ),
        (
            HoursConfig(days=("sun", "mon", "tue", "wed", "fri"), holidays=None),
            "en",
            "Mon–Wed, Fri, Sun 09:00–17:00 (Europe/Berlin)",
        ),
        (HoursConfig(holidays=None), "fr", "Mon–Fri 09:00–17:00 (Europe/Berlin)"),
    ],
)
def test_describe(config: HoursConfig, language: str, expected: str) -> None:
    assert SupportHours(config).describe(language) == expected


def test_holiday_calendar_is_built_once_per_year(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-running daemon asks for every mail; the calendar is cached per year."""
    hours = SupportHours(HoursConfig())
    built: list[object] = []
    original = hours_module.holidays.country_holidays

    def counting(*args: object, **kwargs: object) -> object:
        built.append(kwargs.get("years"))
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hours_module.holidays, "country_holidays", counting)
    for day in (5, 6, 7, 8, 9):
        hours.is_open(utc(2026, 1, day, 10, 0))
    hours.is_open(utc(2026, 12, 25, 10, 0))
    assert built == [2026]
    # a new year is learned without a restart
    assert not hours.is_open(utc(2027, 1, 1, 10, 0))
    assert built == [2026, 2027]


def test_unknown_region_fails_at_startup() -> None:
    with pytest.raises(ConfigError, match=r"\[hours\]\.holidays"):
        SupportHours(HoursConfig(holidays="DE-XX"))
    with pytest.raises(ConfigError, match=r"\[hours\]\.holidays"):
        SupportHours(HoursConfig(holidays="QQ"))

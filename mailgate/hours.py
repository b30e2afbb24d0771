"""Support hours: are we open right now, when do we open next, and how to say so.

Acknowledgements sent outside support hours carry the emergency note, so the answer must
be right on the edges that customers notice: the minute of opening and closing, summer
time, and public holidays of the team's own state (Berlin closes on 8 March, Bavaria does
not; Bavaria closes on 6 January, Berlin does not). Pure: no clock is read here, the
caller passes ``now``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays

from mailgate.config import HoursConfig
from mailgate.errors import ConfigError

DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_DAY_LABELS: dict[str, tuple[str, ...]] = {
    "de": ("Mo", "Di", "Mi", "Do", "Fr", "Sa", "So"),
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
}

# next_open() walks day by day; with at least one open weekday, no holiday calendar closes
# more than a few days in a row, so two years is a generous bound that still terminates.
_SEARCH_DAYS = 2 * 366


class SupportHours:
    """Opening hours of the support team, built once from ``[hours]`` and kept for years.

    The holiday calendar is built lazily per year and cached, because a daemon that runs
    across New Year must learn the next year's holidays without a restart, and building a
    calendar for every incoming mail would be wasteful.
    """

    def __init__(self, config: HoursConfig) -> None:
        self.zone = ZoneInfo(config.timezone)
        self.timezone = config.timezone
        self.open_at = time.fromisoformat(config.open)
        self.close_at = time.fromisoformat(config.close)
        self.weekdays: frozenset[int] = frozenset(DAY_NAMES.index(day) for day in config.days)
        self.country: str | None = None
        self.subdivision: str | None = None
        self.region: str | None = None  # the subdivision's own name, "Berlin"
        if config.holidays:
            country, _, subdivision = config.holidays.partition("-")
            self.country = country
            self.subdivision = subdivision or None
            # Fail at startup, not on the first mail: the config check only sees the shape
            # "XX-YY", not whether the holidays package knows that country and state.
            try:
                calendar = holidays.country_holidays(country, subdiv=self.subdivision, years=[])
            except NotImplementedError as exc:
                raise ConfigError(f"[hours].holidays: {exc}") from None
            if self.subdivision is not None:
                names = calendar.get_subdivision_aliases().get(self.subdivision) or []
                self.region = names[0] if names else self.subdivision
        self._holiday_years: dict[int, frozenset[date]] = {}

    # --- holidays ---------------------------------------------------------------------------

    def is_holiday(self, day: date) -> bool:
        """Whether ``day`` (a local date) is a public holiday in the configured region."""
        if self.country is None:
            return False
        dates = self._holiday_years.get(day.year)
        if dates is None:
            # expand=False: the calendar must not grow silently behind our back; the cache
            # decides which years exist (a handful over the life of a daemon).
            calendar = holidays.country_holidays(
                self.country, subdiv=self.subdivision, years=day.year, expand=False
            )
            dates = frozenset(calendar.keys())
            self._holiday_years[day.year] = dates
        return day in dates

    def is_open_day(self, day: date) -> bool:
        """A configured weekday that is not a public holiday."""
        return day.weekday() in self.weekdays and not self.is_holiday(day)

    # --- the questions the rest of mailgate asks ----------------------------------------------

    def is_open(self, now: datetime) -> bool:
        """Whether support is staffed at ``now`` (aware); open is inclusive, close exclusive.

        The instant is converted to the configured zone first, so 08:30 UTC is 09:30 in
        Berlin in winter (open) but 10:30 in summer; the hours are wall-clock hours.
        """
        local = self._local(now)
        return self.is_open_day(local.date()) and self.open_at <= local.time() < self.close_at

    def next_open(self, now: datetime) -> datetime:
        """When support is next staffed, as an aware datetime in the configured zone.

        When open at ``now``, that is ``now`` itself (in the zone): the answer to "when can
        someone look at this" is "right away".
        """
        local = self._local(now)
        if self.is_open(now):
            return local
        day = local.date()
        if local.time() >= self.open_at:
            day += timedelta(days=1)  # today's opening has passed (or today is closed anyway)
        for _ in range(_SEARCH_DAYS):
            if self.is_open_day(day):
                opening = datetime.combine(day, self.open_at, tzinfo=self.zone)
                # Round trip through UTC so an opening time inside a DST gap still names
                # a real instant (and carries the right offset).
                return opening.astimezone(UTC).astimezone(self.zone)
            day += timedelta(days=1)
        raise ValueError("support is never open: [hours].days names no day")

    def describe(self, language: str) -> str:
        """The hours as one line for customers, e.g. in an acknowledgement.

        "Mo–Fr 09:00–17:00 Uhr (Europe/Berlin), außer an Feiertagen in Berlin". The zone
        is named because customers abroad read "09:00" in their own time otherwise.
        """
        lang = "de" if language.lower().startswith("de") else "en"
        days = _describe_days(self.weekdays, _DAY_LABELS[lang])
        hours = f"{self.open_at:%H:%M}–{self.close_at:%H:%M}"
        if lang == "de":
            text = f"{days} {hours} Uhr ({self.timezone})"
            if self.country is not None:
                text += ", außer an Feiertagen"
                if self.region:
                    text += f" in {self.region}"
        else:
            text = f"{days} {hours} ({self.timezone})"
            if self.country is not None:
                text += ", except public holidays"
        return text

    # --- helpers ----------------------------------------------------------------------------

    def _local(self, now: datetime) -> datetime:
        if now.tzinfo is None or now.utcoffset() is None:
            # A naive time would be read as the server's local zone: a silent hour off.
            raise ValueError("now must be timezone-aware (UTC)")
        return now.astimezone(self.zone)


def _describe_days(weekdays: frozenset[int], labels: tuple[str, ...]) -> str:
    """Runs of three or more consecutive days become ranges: "Mo–Fr", "Mo, Mi, Fr"."""
    parts: list[str] = []
    run: list[int] = []
    for index in sorted(weekdays) + [-1]:
        if run and index == run[-1] + 1:
            run.append(index)
            continue
        if len(run) >= 3:
            parts.append(f"{labels[run[0]]}–{labels[run[-1]]}")
        else:
            parts.extend(labels[i] for i in run)
        run = [index]
    return ", ".join(parts) if parts else "–"

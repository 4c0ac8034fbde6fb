"""The one cron grammar: five fields (minute hour day-of-month month day-of-week) or a
macro (``@daily``), read in a time zone, for scheduled eval runs (settings check it at
load, the scheduler computes due times with it).

Due times are computed by croniter in the schedule's zone, so ``0 2 * * *`` in
``Europe/Berlin`` is 02:00 local time on both sides of a DST change (a time that does
not exist that night runs at the first valid minute after it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

__all__ = ["CronSchedule", "check_cron", "check_timezone"]

_MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)


def check_cron(expression: str) -> str:
    """``expression`` tidied; ValueError naming the problem when it is not cron."""
    text = " ".join(expression.split())
    if text.lower() in _MACROS:
        return text.lower()
    fields = text.split(" ")
    if len(fields) != 5:
        raise ValueError(
            f"cron {expression!r} has {len(fields)} field(s): write five "
            "(minute hour day-of-month month day-of-week, e.g. '0 2 * * *') or a macro "
            f"({', '.join(sorted(_MACROS))})"
        )
    if not croniter.is_valid(text):
        raise ValueError(
            f"cron {expression!r} is not valid: a field is out of range or malformed "
            "(minute 0-59, hour 0-23, day 1-31, month 1-12, weekday 0-7)"
        )
    return text


def check_timezone(name: str) -> str:
    """An IANA zone name (``UTC``, ``Europe/Berlin``); ValueError otherwise."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None
    return name


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A checked cron expression in a zone; times are POSIX seconds."""

    expression: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        object.__setattr__(self, "expression", check_cron(self.expression))
        check_timezone(self.timezone)

    def _at(self, when: float) -> datetime:
        return datetime.fromtimestamp(when, ZoneInfo(self.timezone))

    def next_after(self, when: float) -> float:
        """The first due time strictly after ``when``."""
        return float(croniter(self.expression, self._at(when)).get_next(float))

    def last_at_or_before(self, when: float) -> float:
        """The latest due time at or before ``when``."""
        # croniter's previous time is strictly before its start; a second later makes
        # ``when`` itself count when it is due (cron has no finer resolution than minutes).
        start = self._at(when) + timedelta(seconds=1)
        return float(croniter(self.expression, start).get_prev(float))

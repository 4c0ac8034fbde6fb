"""What a limiter backend is: the protocol both backends implement (in process:
``limits_memory``; Redis: ``limits_redis``) and the values they deal in — subjects with
their limits, the UTC periods of spend, the levels and verdicts of an admission — plus
the one view of a subject's usage both return."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from trellis.errors import InvalidRequestError
from trellis.settings import LimitValues

__all__ = [
    "MICRO",
    "SUBJECT_PATTERN",
    "Crossing",
    "Level",
    "LimitBackend",
    "Periods",
    "Subject",
    "Verdict",
    "format_reset",
    "micro_usd",
    "parse_subject",
    "reset_ms",
    "usage_view",
]

SUBJECT_PATTERN = re.compile(r"^(key|project):([A-Za-z0-9_.\-]{1,128})$")
MICRO = 1_000_000


def parse_subject(subject: str) -> tuple[str, str]:
    """``("key", id)`` or ``("project", id)``; anything else is the caller's mistake."""
    match = SUBJECT_PATTERN.match(subject or "")
    if match is None:
        raise InvalidRequestError(
            f"{subject!r} is not a limit subject; use key:<key id> or project:<project id> "
            "(ids of 1 to 128 letters, digits, '_', '.', '-')",
            param="subject",
            code="invalid_subject",
        )
    return match.group(1), match.group(2)


def format_reset(seconds: float) -> str:
    """A duration as OpenAI's ``x-ratelimit-reset-*`` headers write it: ``12ms``, ``1s``,
    ``1.5s``, ``6m0s``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}m{round(rest):d}s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h{minutes}m{round(rest):d}s"


@dataclass(frozen=True, slots=True)
class Subject:
    """A subject and the limits that apply to it now."""

    name: str
    values: LimitValues

    @property
    def label(self) -> str:
        kind, ident = self.name.split(":", 1)
        return f"{'API key' if kind == 'key' else 'project'} '{ident}'"


@dataclass(frozen=True, slots=True)
class Periods:
    """The UTC day and month a call's spend counts toward, and when each ends."""

    day: str
    month: str
    day_ends_in: float  # seconds
    month_ends_in: float

    @classmethod
    def at(cls, now: float) -> Periods:
        moment = datetime.fromtimestamp(now, tz=UTC)
        day_end = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        month_end = (first + timedelta(days=32)).replace(day=1)
        return cls(
            day=moment.strftime("%Y-%m-%d"),
            month=moment.strftime("%Y-%m"),
            day_ends_in=(day_end - moment).total_seconds(),
            month_ends_in=(month_end - moment).total_seconds(),
        )


@dataclass(slots=True)
class Level:
    """One subject's buckets after (or, when refused, before) this call: whole requests
    and tokens left (-1: no such limit) and milliseconds until each bucket is full."""

    requests: int = -1
    requests_reset_ms: int = 0
    tokens: int = -1
    tokens_reset_ms: int = 0


@dataclass(slots=True)
class Verdict:
    """What a backend answers to an admission: admitted, or the first limit refused
    (index of the subject, the kind, how long to wait), and every subject's levels."""

    admitted: bool
    levels: list[Level]
    refused_index: int = -1
    refused_kind: str = ""
    retry_after_ms: int = 0


@dataclass(slots=True)
class Crossing:
    """Spend that reached a fraction of a budget (sent as an alert once per period)."""

    subject: Subject
    budget: str  # "daily" | "monthly"
    period: str
    threshold: float
    spent_micro: int
    limit_usd: float


class LimitBackend(Protocol):
    """Where the counters live. Both calls are atomic over every subject given."""

    async def admit(
        self,
        subjects: Sequence[Subject],
        tokens: int,
        lease: str,
        lease_seconds: float,
        periods: Periods,
    ) -> Verdict: ...

    async def settle(
        self,
        subjects: Sequence[Subject],
        lease: str,
        token_delta: int,
        spend_micro: int,
        periods: Periods,
    ) -> list[tuple[int, int]]:
        """Add ``token_delta`` to the token buckets (a refund when negative), add the spend,
        release the lease; the day and month totals (micro-USD) of each subject after."""
        ...

    async def claim_alert(self, key: str, ttl_seconds: float) -> bool:
        """True for the first claim of ``key`` (across replicas), False after."""
        ...

    async def usage(self, subject: Subject, periods: Periods) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


def micro_usd(usd: float | None) -> int:
    return -1 if usd is None else int(round(usd * MICRO))


def reset_ms(level: float, capacity: int) -> int:
    return max(0, math.ceil((capacity - level) * 60_000 / capacity))


def usage_view(
    subject: Subject,
    *,
    requests: float | None,
    tokens: float | None,
    concurrent: int,
    day_micro: int,
    month_micro: int,
    periods: Periods,
) -> dict[str, Any]:
    """What ``GET /v1/usage/{subject}`` shows: each limit, what is used and what is left."""
    v = subject.values

    def bucket(level: float | None, capacity: int | None) -> dict[str, Any] | None:
        if level is None or capacity is None:
            return None
        return {
            "limit": capacity,
            "remaining": max(0, math.floor(level)),
            "reset": format_reset(reset_ms(level, capacity) / 1000),
        }

    def budget(spent: int, limit: float | None, period: str, ends_in: float) -> dict[str, Any]:
        return {
            "period": period,
            "spent_usd": spent / MICRO,
            "limit_usd": limit,
            "remaining_usd": None if limit is None else max(0.0, limit - spent / MICRO),
            "resets_in": format_reset(ends_in),
        }

    return {
        "object": "usage",
        "subject": subject.name,
        "requests": bucket(requests, v.rpm),
        "tokens": bucket(tokens, v.tpm),
        "concurrent": {"limit": v.max_concurrent, "in_flight": concurrent},
        "daily": budget(day_micro, v.daily_usd, periods.day, periods.day_ends_in),
        "monthly": budget(month_micro, v.monthly_usd, periods.month, periods.month_ends_in),
        "alert_thresholds": list(v.alert_thresholds),
    }

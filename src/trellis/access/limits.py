"""Rate limits and budgets per API key and per project, enforced before the upstream call.

A *subject* is ``key:<key id>`` or ``project:<project id>``; its limits are a stored row
(``limits`` table, managed by admins) or else the settings' default for its kind. Each
call is admitted for its key **and** its project in one atomic step of the backend, then
settled once its answer (or failure) is known:

* requests and tokens per minute are token buckets: capacity = the per-minute limit,
  refilled continuously at limit/60 per second. A burst of N is admitted at once, then
  one every 60/N seconds; unlike fixed windows there is no doubled burst at a minute's
  edge. Tokens are estimated at admission (prompt tokens + ``max_tokens``, or
  ``limits.output_tokens_estimate``) and the difference to the provider's usage is
  added or refunded at settlement (the bucket may go into debt);
* concurrent requests hold a lease (a slot with an expiry, ``limits.lease_seconds``)
  released at settlement — after a stream's end, after an error — so a replica that
  crashed mid-call frees its slots when the leases run out;
* spend is counted per UTC day and per UTC month in micro-USD; a call is refused once
  a budget is spent (the call in flight when it runs out may overshoot it by its cost).
  Crossing a fraction of a budget (``alert_thresholds``) sends one alert per subject,
  budget, period and fraction, deduplicated in the backend across replicas.

Cached answers count as requests (rpm, concurrency) but use no tokens and cost nothing:
their estimate is refunded. Failed calls are refunded their tokens and cost nothing.
Backends: :class:`MemoryBackend` (this process) and ``limits_redis.RedisBackend`` (Lua
scripts, exact across replicas). A backend that fails lets the call through (logged):
a Redis outage must not become a gateway outage.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, select, update

from trellis.errors import InvalidRequestError, RequestError
from trellis.settings import LimitSettings, LimitValues
from trellis.store.db import Database
from trellis.store.tables import limits as limits_table

__all__ = [
    "Admission",
    "BudgetExceededError",
    "LimitBackend",
    "LimitStore",
    "Limiter",
    "MemoryBackend",
    "Periods",
    "RateLimitExceededError",
    "Subject",
    "Verdict",
    "build_limiter",
    "format_reset",
    "parse_subject",
]

log = logging.getLogger(__name__)

_SUBJECT = re.compile(r"^(key|project):([A-Za-z0-9_.\-]{1,128})$")
MICRO = 1_000_000
_BUDGET_LABEL = {"daily": "daily", "monthly": "monthly"}


def parse_subject(subject: str) -> tuple[str, str]:
    """``("key", id)`` or ``("project", id)``; anything else is the caller's mistake."""
    match = _SUBJECT.match(subject or "")
    if match is None:
        raise InvalidRequestError(
            f"{subject!r} is not a limit subject; use key:<key id> or project:<project id> "
            "(ids of 1 to 128 letters, digits, '_', '.', '-')",
            param="subject",
            code="invalid_subject",
        )
    return match.group(1), match.group(2)


def _usd(amount: float | None) -> str:
    """Dollars as people write them; amounts under a cent keep their digits."""
    amount = amount or 0.0
    return f"${amount:,.2f}" if amount == 0 or amount >= 0.01 else f"${amount:.6g}"


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


# --- errors --------------------------------------------------------------------------


class RateLimitExceededError(RequestError):
    """Over a rate limit: 429 with ``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceededError(RequestError):
    """A budget is spent. 429 like OpenAI's ``insufficient_quota`` (clients that retry
    429s wait ``Retry-After``: until the budget's period ends), with its own code."""

    status_code = 429
    error_type = "insufficient_quota"
    code = "budget_exceeded"


# --- subjects, periods, verdicts -----------------------------------------------------


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


def _micro(usd: float | None) -> int:
    return -1 if usd is None else int(round(usd * MICRO))


# --- the in-process backend ------------------------------------------------------------


@dataclass(slots=True)
class _Bucket:
    level: float
    at_ms: float


def _refill(bucket: _Bucket | None, capacity: int, now_ms: float) -> float:
    if bucket is None:
        return float(capacity)
    return min(float(capacity), bucket.level + (now_ms - bucket.at_ms) * capacity / 60_000)


def _reset_ms(level: float, capacity: int) -> int:
    return max(0, math.ceil((capacity - level) * 60_000 / capacity))


class MemoryBackend:
    """The counters in this process. Each call runs without an ``await`` inside, so it is
    atomic on the event loop; nothing is shared with other processes."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._spend: dict[str, int] = {}
        self._alerts: dict[str, float] = {}

    def _now_ms(self) -> float:
        return self._clock() * 1000

    def _live_leases(self, name: str, now_ms: float) -> dict[str, float]:
        leases = self._leases.setdefault(name, {})
        for lease in [lease for lease, expires in leases.items() if expires <= now_ms]:
            del leases[lease]
        return leases

    async def admit(
        self,
        subjects: Sequence[Subject],
        tokens: int,
        lease: str,
        lease_seconds: float,
        periods: Periods,
    ) -> Verdict:
        now = self._now_ms()
        levels: list[Level] = []
        found: tuple[int, str, int] | None = None
        raw: list[tuple[float, float]] = []
        for index, subject in enumerate(subjects):
            v = subject.values
            level = Level()
            rq = tk = -1.0
            if v.rpm is not None:
                rq = _refill(self._requests.get(subject.name), v.rpm, now)
                level.requests, level.requests_reset_ms = math.floor(rq), _reset_ms(rq, v.rpm)
                if found is None and rq < 1:
                    found = (index, "rpm", math.ceil((1 - rq) * 60_000 / v.rpm))
            if v.tpm is not None:
                tk = _refill(self._tokens.get(subject.name), v.tpm, now)
                level.tokens, level.tokens_reset_ms = math.floor(tk), _reset_ms(tk, v.tpm)
                need = min(tokens, v.tpm)
                if found is None and tk < need:
                    found = (index, "tpm", math.ceil((need - tk) * 60_000 / v.tpm))
            busy = len(self._live_leases(subject.name, now))
            day_spent = self._spend.get(f"{subject.name}:d:{periods.day}", 0)
            if found is None and v.max_concurrent is not None and busy >= v.max_concurrent:
                found = (index, "concurrent", 1000)
            if found is None and v.daily_usd is not None and day_spent >= _micro(v.daily_usd):
                found = (index, "daily", math.ceil(periods.day_ends_in * 1000))
            if found is None and v.monthly_usd is not None:
                spent = self._spend.get(f"{subject.name}:m:{periods.month}", 0)
                if spent >= _micro(v.monthly_usd):
                    found = (index, "monthly", math.ceil(periods.month_ends_in * 1000))
            levels.append(level)
            raw.append((rq, tk))
        if found is not None:
            return Verdict(False, levels, found[0], found[1], found[2])
        for subject, level, (rq, tk) in zip(subjects, levels, raw, strict=True):
            v = subject.values
            if v.rpm is not None:
                self._requests[subject.name] = _Bucket(rq - 1, now)
                level.requests, level.requests_reset_ms = (
                    math.floor(rq - 1),
                    _reset_ms(rq - 1, v.rpm),
                )
            if v.tpm is not None:
                self._tokens[subject.name] = _Bucket(tk - tokens, now)
                level.tokens, level.tokens_reset_ms = (
                    math.floor(tk - tokens),
                    _reset_ms(tk - tokens, v.tpm),
                )
            if v.max_concurrent is not None:
                self._live_leases(subject.name, now)[lease] = now + lease_seconds * 1000
        return Verdict(True, levels)

    async def settle(
        self,
        subjects: Sequence[Subject],
        lease: str,
        token_delta: int,
        spend_micro: int,
        periods: Periods,
    ) -> list[tuple[int, int]]:
        now = self._now_ms()
        totals: list[tuple[int, int]] = []
        for subject in subjects:
            v = subject.values
            if v.tpm is not None and token_delta:
                level = _refill(self._tokens.get(subject.name), v.tpm, now)
                self._tokens[subject.name] = _Bucket(level - token_delta, now)
            self._leases.get(subject.name, {}).pop(lease, None)
            day_key = f"{subject.name}:d:{periods.day}"
            month_key = f"{subject.name}:m:{periods.month}"
            if spend_micro:
                self._spend[day_key] = self._spend.get(day_key, 0) + spend_micro
                self._spend[month_key] = self._spend.get(month_key, 0) + spend_micro
            totals.append((self._spend.get(day_key, 0), self._spend.get(month_key, 0)))
        return totals

    async def claim_alert(self, key: str, ttl_seconds: float) -> bool:
        now = self._clock()
        for stale in [k for k, expires in self._alerts.items() if expires <= now]:
            del self._alerts[stale]
        if key in self._alerts:
            return False
        self._alerts[key] = now + ttl_seconds
        return True

    async def usage(self, subject: Subject, periods: Periods) -> dict[str, Any]:
        now = self._now_ms()
        v = subject.values
        rq = _refill(self._requests.get(subject.name), v.rpm, now) if v.rpm else None
        tk = _refill(self._tokens.get(subject.name), v.tpm, now) if v.tpm else None
        return _usage_view(
            subject,
            requests=rq,
            tokens=tk,
            concurrent=len(self._live_leases(subject.name, now)),
            day_micro=self._spend.get(f"{subject.name}:d:{periods.day}", 0),
            month_micro=self._spend.get(f"{subject.name}:m:{periods.month}", 0),
            periods=periods,
        )

    async def aclose(self) -> None:
        return None


def _usage_view(
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
            "reset": format_reset(_reset_ms(level, capacity) / 1000),
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


# --- stored limits ----------------------------------------------------------------------


def _values(row: Mapping[Any, Any]) -> LimitValues:
    thresholds = row["alert_thresholds"]
    data = {
        name: row[name] for name in ("rpm", "tpm", "max_concurrent", "daily_usd", "monthly_usd")
    }
    if thresholds is not None:
        data["alert_thresholds"] = thresholds
    return LimitValues.model_validate(data)


class LimitStore:
    """The ``limits`` table, read through a short cache (``limits.cache_seconds``): a
    change made here applies at once in this process, elsewhere within the cache time."""

    def __init__(
        self, db: Database, cache_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, LimitValues | None]] = {}
        self.db_lookups = 0

    async def get(self, subject: str) -> LimitValues | None:
        parse_subject(subject)
        self.db_lookups += 1
        async with self.db.engine.connect() as conn:
            row = (
                (await conn.execute(select(limits_table).where(limits_table.c.subject == subject)))
                .mappings()
                .first()
            )
        return None if row is None else _values(row)

    async def cached(self, subject: str) -> LimitValues | None:
        """The stored limits of ``subject``, usually without a query."""
        now = self._clock()
        hit = self._cache.get(subject)
        if hit is not None and hit[0] > now:
            return hit[1]
        values = await self.get(subject)
        if self.cache_seconds > 0:
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[subject] = (now + self.cache_seconds, values)
        return values

    async def list(self) -> list[tuple[str, LimitValues]]:
        async with self.db.engine.connect() as conn:
            rows = (
                (await conn.execute(select(limits_table).order_by(limits_table.c.subject)))
                .mappings()
                .all()
            )
        return [(row["subject"], _values(row)) for row in rows]

    async def put(self, subject: str, values: LimitValues) -> LimitValues:
        """Set ``subject``'s limits (replacing any before)."""
        parse_subject(subject)
        now = time.time()
        data = {
            "rpm": values.rpm,
            "tpm": values.tpm,
            "max_concurrent": values.max_concurrent,
            "daily_usd": values.daily_usd,
            "monthly_usd": values.monthly_usd,
            "alert_thresholds": list(values.alert_thresholds),
            "updated_at": now,
        }
        async with self.db.write() as conn:
            result = await conn.execute(
                update(limits_table).where(limits_table.c.subject == subject).values(**data)
            )
            if result.rowcount == 0:
                await conn.execute(
                    limits_table.insert().values(subject=subject, created_at=now, **data)
                )
        self._cache.pop(subject, None)
        return values

    async def delete(self, subject: str) -> bool:
        parse_subject(subject)
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(limits_table).where(limits_table.c.subject == subject)
            )
        self._cache.pop(subject, None)
        return result.rowcount > 0


# --- the limiter -------------------------------------------------------------------------


@dataclass(slots=True)
class Admission:
    """One admitted call: what it holds until :meth:`Limiter.settle`."""

    subjects: tuple[Subject, ...]
    lease: str
    tokens: int
    periods: Periods
    headers: list[tuple[str, str]] = field(default_factory=list)
    settled: bool = False


def _rate_headers(subjects: Sequence[Subject], levels: Sequence[Level]) -> list[tuple[str, str]]:
    """OpenAI's six ``x-ratelimit-*`` headers, from the tightest subject of each kind."""
    headers: list[tuple[str, str]] = []
    requests = [
        (lv.requests, s.values.rpm, lv.requests_reset_ms)
        for s, lv in zip(subjects, levels, strict=True)
        if s.values.rpm is not None
    ]
    tokens = [
        (lv.tokens, s.values.tpm, lv.tokens_reset_ms)
        for s, lv in zip(subjects, levels, strict=True)
        if s.values.tpm is not None
    ]
    for kind, entries in (("requests", requests), ("tokens", tokens)):
        if not entries:
            continue
        remaining, limit, reset_ms = min(entries, key=lambda e: (e[0], e[1]))
        headers += [
            (f"x-ratelimit-limit-{kind}", str(limit)),
            (f"x-ratelimit-remaining-{kind}", str(max(0, remaining))),
            (f"x-ratelimit-reset-{kind}", format_reset(reset_ms / 1000)),
        ]
    return headers


_KIND_TEXT = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "concurrent": "concurrent requests",
}


class Limiter:
    """Admission and settlement of calls against their key's and project's limits."""

    def __init__(
        self,
        store: LimitStore,
        backend: LimitBackend,
        settings: LimitSettings | None = None,
        *,
        alert: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.backend = backend
        self.settings = settings or LimitSettings()
        #: Where budget-threshold alerts go (the alert manager's webhook path).
        self.alert = alert
        self._clock = clock
        self.backend_errors = 0
        self._periods: tuple[int, Periods] | None = None

    def _now_periods(self) -> Periods:
        """The current day and month, worked out once per second (not per call)."""
        now = self._clock()
        second = int(now)
        if self._periods is None or self._periods[0] != second:
            self._periods = (second, Periods.at(second))
        return self._periods[1]

    async def limits_of(self, subject: str) -> LimitValues | None:
        """The limits that apply to ``subject``: its stored row, else the default of its kind."""
        kind, _ = parse_subject(subject)
        stored = await self.store.cached(subject)
        if stored is not None:
            return stored
        s = self.settings
        return s.default_key if kind == "key" else s.default_project

    async def subjects(self, key_id: str | None, project_id: str | None) -> list[Subject]:
        """The subjects with limits for a call by ``key_id`` in ``project_id``."""
        found: list[Subject] = []
        for name in (
            f"key:{key_id}" if key_id else None,
            f"project:{project_id}" if project_id else None,
        ):
            if name is None or not _SUBJECT.match(name):
                continue
            values = await self.limits_of(name)
            if values is not None and not values.empty:
                found.append(Subject(name, values))
        return found

    async def admit(
        self,
        key_id: str | None,
        project_id: str | None,
        tokens: Callable[[], int],
    ) -> Admission | None:
        """Admit a call or raise 429. None when no limit applies (nothing to settle).
        ``tokens`` is called only when a tokens-per-minute limit needs the estimate."""
        if not self.settings.enabled:
            return None
        subjects = await self.subjects(key_id, project_id)
        if not subjects:
            return None
        estimate = tokens() if any(s.values.tpm is not None for s in subjects) else 0
        periods = self._now_periods()
        lease = secrets.token_hex(8)
        try:
            verdict = await self.backend.admit(
                subjects, estimate, lease, self.settings.lease_seconds, periods
            )
        except Exception as exc:  # the backend is down: let the call through, loudly
            self.backend_errors += 1
            log.error("rate limit backend failed at admission; call let through: %r", exc)
            return None
        headers = _rate_headers(subjects, verdict.levels)
        if not verdict.admitted:
            raise self._refusal(subjects, verdict, estimate, headers)
        return Admission(tuple(subjects), lease, estimate, periods, headers)

    def _refusal(
        self,
        subjects: Sequence[Subject],
        verdict: Verdict,
        estimate: int,
        headers: list[tuple[str, str]],
    ) -> RequestError:
        subject = subjects[verdict.refused_index]
        kind = verdict.refused_kind
        wait = max(1, math.ceil(verdict.retry_after_ms / 1000))
        all_headers = {"retry-after": str(wait), **dict(headers)}
        v = subject.values
        if kind in ("daily", "monthly"):
            limit = v.daily_usd if kind == "daily" else v.monthly_usd
            period = "day" if kind == "daily" else "month"
            return BudgetExceededError(
                f"{subject.label} {kind} budget of {_usd(limit)} is spent; it renews in "
                f"{format_reset(verdict.retry_after_ms / 1000)} (next UTC {period}).",
                headers=all_headers,
            )
        limit_value = {"rpm": v.rpm, "tpm": v.tpm, "concurrent": v.max_concurrent}[kind]
        detail = f"Limit {limit_value}"
        if kind == "tpm":
            detail += f", requested about {estimate}"
        return RateLimitExceededError(
            f"Rate limit reached for {subject.label}: {_KIND_TEXT[kind]}. {detail}. "
            f"Please try again in {format_reset(verdict.retry_after_ms / 1000)}.",
            headers=all_headers,
        )

    async def settle(self, admission: Admission | None, tokens: int, cost_usd: float) -> None:
        """Reconcile an admitted call (once): its real tokens and cost, its slot released.
        Never raises: the answer is already the caller's."""
        if admission is None or admission.settled:
            return
        admission.settled = True
        spend = max(0, int(round(cost_usd * MICRO)))
        try:
            totals = await self.backend.settle(
                admission.subjects,
                admission.lease,
                tokens - admission.tokens,
                spend,
                admission.periods,
            )
            if spend:
                await self._thresholds(admission, totals, spend)
        except Exception as exc:
            self.backend_errors += 1
            log.error("rate limit backend failed at settlement: %r", exc)

    async def _thresholds(
        self, admission: Admission, totals: Sequence[tuple[int, int]], spend: int
    ) -> None:
        periods = admission.periods
        for subject, (day, month) in zip(admission.subjects, totals, strict=True):
            v = subject.values
            for budget, limit, spent, period, ends_in in (
                ("daily", v.daily_usd, day, periods.day, periods.day_ends_in),
                ("monthly", v.monthly_usd, month, periods.month, periods.month_ends_in),
            ):
                if not limit:
                    continue
                for threshold in v.alert_thresholds:
                    bound = threshold * limit * MICRO
                    if not spent - spend < bound <= spent:
                        continue
                    key = f"alert:{subject.name}:{budget}:{period}:{threshold:g}"
                    if await self.backend.claim_alert(key, ends_in + 3600):
                        self._send(Crossing(subject, budget, period, threshold, spent, limit))

    def _send(self, crossing: Crossing) -> None:
        subject = crossing.subject
        spent = crossing.spent_micro / MICRO
        percent = f"{crossing.threshold * 100:g}%"
        message = (
            f"{subject.label} has spent {_usd(spent)} of its {crossing.budget} budget of "
            f"{_usd(crossing.limit_usd)} ({percent} reached) for {crossing.period}"
        )
        now = time.time()
        payload = {
            "object": "alert",
            "id": f"budget:{subject.name}:{crossing.budget}:{crossing.period}:"
            f"{crossing.threshold:g}",
            "status": "firing",
            "rule": {"id": None, "name": f"{crossing.budget} budget {percent}", "kind": "budget"},
            "group": subject.name,
            "subject": subject.name,
            "budget": crossing.budget,
            "period": crossing.period,
            "value": spent,
            "threshold": crossing.threshold * crossing.limit_usd,
            "fraction": crossing.threshold,
            "limit_usd": crossing.limit_usd,
            "message": message,
            "started_at": now,
            "fired_at": now,
            "resolved_at": None,
            "updated_at": now,
        }
        log.warning("budget alert: %s", message)
        if self.alert is not None:
            try:
                self.alert(payload)
            except Exception:
                log.exception("could not queue the budget alert")

    async def usage(self, subject: str) -> dict[str, Any]:
        """Current usage of ``subject`` against its limits (no limits: all unlimited)."""
        parse_subject(subject)
        values = await self.limits_of(subject) or LimitValues()
        stored = await self.store.get(subject)
        view = await self.backend.usage(Subject(subject, values), Periods.at(self._clock()))
        view["limits"] = values.model_dump()
        view["source"] = "stored" if stored is not None else "default"
        view["backend"] = self.settings.backend
        return view

    async def aclose(self) -> None:
        await self.backend.aclose()


def build_limiter(
    db: Database,
    settings: LimitSettings,
    *,
    redis_url: str,
    alert: Callable[[dict[str, Any]], None] | None = None,
) -> Limiter:
    """The limiter the settings describe (``limits.backend``; Redis at ``limits.redis_url``
    or else ``redis_url``, the cache's)."""
    backend: LimitBackend
    if settings.backend == "redis":
        from trellis.access.limits_redis import RedisBackend

        backend = RedisBackend(settings.redis_url or redis_url, prefix=settings.key_prefix)
    else:
        backend = MemoryBackend()
    return Limiter(LimitStore(db, settings.cache_seconds), backend, settings, alert=alert)

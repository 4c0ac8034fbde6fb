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
Backends (``limit_backend.LimitBackend``): ``limits_memory.MemoryBackend`` (this process)
and ``limits_redis.RedisBackend`` (Lua scripts, exact across replicas); the stored limits
are ``limit_store.LimitStore``. This module is the limiter that uses them. A backend that
fails lets the call through (logged): a Redis outage must not become a gateway outage.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trellis.access.limit_backend import (
    MICRO,
    SUBJECT_PATTERN,
    Crossing,
    Level,
    LimitBackend,
    Periods,
    Subject,
    Verdict,
    format_reset,
    parse_subject,
)
from trellis.access.limit_store import LimitStore
from trellis.access.limits_memory import MemoryBackend
from trellis.errors import RequestError
from trellis.settings import LimitSettings, LimitValues
from trellis.store.db import Database

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


def _usd(amount: float | None) -> str:
    """Dollars as people write them; amounts under a cent keep their digits."""
    amount = amount or 0.0
    return f"${amount:,.2f}" if amount == 0 or amount >= 0.01 else f"${amount:.6g}"


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
            if name is None or not SUBJECT_PATTERN.match(name):
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

"""The in-process backend of the limiter: the same buckets, leases and spend counters as
the Redis one, in dicts. Each call runs without an ``await`` inside, so it is atomic on
the event loop; nothing is shared with other processes (each counts for itself)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trellis.access.limit_backend import (
    Level,
    Periods,
    Subject,
    Verdict,
    micro_usd,
    reset_ms,
    usage_view,
)

__all__ = ["MemoryBackend"]


@dataclass(slots=True)
class _Bucket:
    level: float
    at_ms: float


def _refill(bucket: _Bucket | None, capacity: int, now_ms: float) -> float:
    if bucket is None:
        return float(capacity)
    return min(float(capacity), bucket.level + (now_ms - bucket.at_ms) * capacity / 60_000)


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
                level.requests, level.requests_reset_ms = math.floor(rq), reset_ms(rq, v.rpm)
                if found is None and rq < 1:
                    found = (index, "rpm", math.ceil((1 - rq) * 60_000 / v.rpm))
            if v.tpm is not None:
                tk = _refill(self._tokens.get(subject.name), v.tpm, now)
                level.tokens, level.tokens_reset_ms = math.floor(tk), reset_ms(tk, v.tpm)
                need = min(tokens, v.tpm)
                if found is None and tk < need:
                    found = (index, "tpm", math.ceil((need - tk) * 60_000 / v.tpm))
            busy = len(self._live_leases(subject.name, now))
            day_spent = self._spend.get(f"{subject.name}:d:{periods.day}", 0)
            if found is None and v.max_concurrent is not None and busy >= v.max_concurrent:
                found = (index, "concurrent", 1000)
            if found is None and v.daily_usd is not None and day_spent >= micro_usd(v.daily_usd):
                found = (index, "daily", math.ceil(periods.day_ends_in * 1000))
            if found is None and v.monthly_usd is not None:
                spent = self._spend.get(f"{subject.name}:m:{periods.month}", 0)
                if spent >= micro_usd(v.monthly_usd):
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
                    reset_ms(rq - 1, v.rpm),
                )
            if v.tpm is not None:
                self._tokens[subject.name] = _Bucket(tk - tokens, now)
                level.tokens, level.tokens_reset_ms = (
                    math.floor(tk - tokens),
                    reset_ms(tk - tokens, v.tpm),
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
        return usage_view(
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

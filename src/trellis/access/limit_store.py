"""Stored limits: the ``limits`` table admins manage, one row per subject, read through a
short cache because every admitted call looks its key and project up."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import delete, select, update

from trellis.access.audit import AuditEntry, record
from trellis.access.limit_backend import parse_subject
from trellis.settings import LimitValues
from trellis.store.db import Database
from trellis.store.tables import limits as limits_table

__all__ = ["LimitStore"]


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

    async def put(
        self, subject: str, values: LimitValues, *, audit: AuditEntry | None = None
    ) -> LimitValues:
        """Set ``subject``'s limits (replacing any before); ``audit`` is recorded in the same
        transaction."""
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
            if audit is not None:
                await record(conn, audit.with_target(subject))
        self._cache.pop(subject, None)
        return values

    async def delete(self, subject: str, *, audit: AuditEntry | None = None) -> bool:
        """Delete ``subject``'s stored limits (the defaults apply again); False when it had
        none. ``audit`` is recorded in the same transaction, when there was a row."""
        parse_subject(subject)
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(limits_table).where(limits_table.c.subject == subject)
            )
            if audit is not None and result.rowcount > 0:
                await record(conn, audit.with_target(subject))
        self._cache.pop(subject, None)
        return result.rowcount > 0

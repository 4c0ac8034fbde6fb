"""Statistics over stored traces: count, error rate, latency percentiles, tokens and cost,
per group (model, API key or trace kind) and per time bucket.

Percentiles are exact (linear interpolation between the closest ranks, i.e. Postgres'
``percentile_cont`` and numpy's default) on both backends, so the numbers alerts compare
do not depend on the database. Postgres computes them in SQL; SQLite has no percentile
function, so it streams the few needed columns of the window and numpy does the rest
(one vectorised pass, no per-group loop in Python).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import text

from trellis.durations import MAX_DURATION_SECONDS, MAX_TIME_NS
from trellis.errors import InvalidRequestError
from trellis.observe.query import check_time_ns
from trellis.store.db import Database

__all__ = ["StatsQuery", "TraceStats", "GROUP_COLUMNS", "PERCENTILES", "MAX_BUCKETS"]


#: ``group_by`` values and the column each groups on (never interpolated from input).
GROUP_COLUMNS: dict[str, str] = {
    "model": "model",
    "key": "key_id",
    "kind": "kind",
    "none": "NULL",
}
PERCENTILES = (0.5, 0.95, 0.99)
#: Buckets per window: beyond this, a chart has more points than pixels.
MAX_BUCKETS = 2000

_FILTERS = ("model", "key_id", "kind", "project_id")
_MAX_SPAN_NS = int(MAX_DURATION_SECONDS * 1e9)


@dataclass(frozen=True, slots=True)
class StatsQuery:
    since_ns: int
    until_ns: int
    bucket_ns: int
    group_by: str = "model"
    model: str | None = None
    key_id: str | None = None
    kind: str | None = None
    #: Only this project's traces (None: every project's).
    project_id: str | None = None

    def __post_init__(self) -> None:
        if self.group_by not in GROUP_COLUMNS:
            raise InvalidRequestError(
                f"group_by must be one of {', '.join(GROUP_COLUMNS)}, not {self.group_by!r}",
                param="group_by",
                code="invalid_value",
            )
        # Every number reaches the database as a signed 64-bit integer: out of that range
        # SQLite raises an overflow (a 500), so the edges are checked here, once for all callers.
        check_time_ns(self.until_ns, "until")
        if self.until_ns <= self.since_ns:
            raise InvalidRequestError(
                "the window must be longer than 0", param="window", code="invalid_value"
            )
        if self.until_ns - self.since_ns > _MAX_SPAN_NS or self.since_ns < -MAX_TIME_NS:
            raise InvalidRequestError(
                "the window must be at most 100 years", param="window", code="invalid_value"
            )
        if self.bucket_ns <= 0:
            raise InvalidRequestError(
                "bucket must be longer than 0", param="bucket", code="invalid_value"
            )
        if self.bucket_ns > _MAX_SPAN_NS:
            raise InvalidRequestError(
                "bucket must be at most 100 years", param="bucket", code="invalid_value"
            )
        buckets = (self.until_ns - 1) // self.bucket_ns - self.since_ns // self.bucket_ns + 1
        if buckets > MAX_BUCKETS:
            raise InvalidRequestError(
                f"window/bucket gives {buckets} buckets; at most {MAX_BUCKETS} are allowed",
                param="bucket",
                code="invalid_value",
            )


def _where(query: StatsQuery) -> tuple[str, dict[str, Any]]:
    clauses = ["start_ns >= :since", "start_ns < :until"]
    params: dict[str, Any] = {"since": query.since_ns, "until": query.until_ns}
    for name in _FILTERS:
        value = getattr(query, name)
        if value is not None:
            clauses.append(f"{name} = :{name}")
            params[name] = value
    return " AND ".join(clauses), params


def _stat(
    count: float,
    errors: float,
    p: list[float | None],
    input_tokens: float,
    output_tokens: float,
    cost: float,
    cache_hits: float,
) -> dict[str, Any]:
    return {
        "count": int(count),
        "errors": int(errors),
        "error_rate": (errors / count) if count else 0.0,
        "latency_ms": {"p50": p[0], "p95": p[1], "p99": p[2]},
        "input_tokens": int(input_tokens),
        "output_tokens": int(output_tokens),
        "cost": float(cost),
        "cache_hits": int(cache_hits),
    }


class TraceStats:
    """Aggregates over the ``traces`` table (one row per request: no span is read)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def compute(self, query: StatsQuery) -> list[dict[str, Any]]:
        """One entry per group: ``{"group", "totals", "buckets": [{"start_ns", ...}]}``.

        Buckets are aligned to the Unix epoch (so successive calls line up) and only
        buckets with at least one trace are listed. Latency covers every trace, failed
        ones included: a timeout is exactly the slow request a dashboard must show.
        """
        if self.db.is_sqlite:
            return await self._sqlite(query)
        return await self._postgres(query)

    # --- SQLite: fetch the columns, aggregate in numpy ------------------------------

    async def _sqlite(self, query: StatsQuery) -> list[dict[str, Any]]:
        where, params = _where(query)
        group = GROUP_COLUMNS[query.group_by]
        # One pass over the covering index; SQLite sums per cell and hands each cell's
        # durations over as one comma-joined string (parsed in C by numpy), instead of
        # one Python object per trace, which would cost more than the query itself.
        sql = f"""
            SELECT {group} AS g, start_ns / :bucket AS b, count(*), sum(status = 'error'),
                   total(input_tokens), total(output_tokens), total(cost), sum(cache_hit),
                   count(duration_ms), group_concat(duration_ms)
            FROM traces INDEXED BY ix_traces_stats
            WHERE {where}
            GROUP BY g, b
            ORDER BY g, b
        """
        params["bucket"] = query.bucket_ns
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(text(sql), params)).all()
        return _aggregate(rows, query.bucket_ns)

    # --- Postgres: everything in one GROUPING SETS query ---------------------------

    async def _postgres(self, query: StatsQuery) -> list[dict[str, Any]]:
        where, params = _where(query)
        group = GROUP_COLUMNS[query.group_by]
        if group == "NULL":
            group = "CAST(NULL AS TEXT)"
        percentiles = ", ".join(
            f"percentile_cont({p}) WITHIN GROUP (ORDER BY duration_ms)" for p in PERCENTILES
        )
        sql = f"""
            SELECT g, b, GROUPING(b) AS total, count(*),
                   count(*) FILTER (WHERE status = 'error'), {percentiles},
                   coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
                   coalesce(sum(cost), 0), count(*) FILTER (WHERE cache_hit)
            FROM (SELECT *, {group} AS g, div(start_ns, CAST(:bucket AS BIGINT)) AS b
                  FROM traces WHERE {where}) AS t
            GROUP BY GROUPING SETS ((g, b), (g))
            ORDER BY g NULLS FIRST, total DESC, b
        """
        params["bucket"] = query.bucket_ns
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(text(sql), params)).all()
        groups: dict[Any, dict[str, Any]] = {}
        for g, b, total, count, errors, p50, p95, p99, tin, tout, cost, hits in rows:
            entry = groups.setdefault(g, {"group": g, "totals": None, "buckets": []})
            stat = _stat(count, errors, [p50, p95, p99], tin, tout, cost, hits)
            if total:
                entry["totals"] = stat
            else:
                entry["buckets"].append({"start_ns": int(b) * query.bucket_ns, **stat})
        return list(groups.values())


def _aggregate(rows: Sequence[Any], bucket_ns: int) -> list[dict[str, Any]]:
    """Per-cell rows (sorted by group, bucket) into per-group entries with exact totals.

    Vectorised over all cells at once: a window grouped by key can have 10,000+ cells.
    """
    if not rows:
        return []
    g_raw, b_raw, count, errors, tin, tout, cost, hits, n_known, joined = zip(*rows, strict=True)
    lengths = np.asarray(n_known, dtype=np.int64)
    texts = [t for t in joined if t]
    durations = np.fromstring(",".join(texts), sep=",") if texts else np.empty(0)
    # Cells arrive sorted by group: a new group starts wherever the label changes.
    starts_group = np.ones(len(rows), dtype=bool)
    starts_group[1:] = [a != b for a, b in zip(g_raw[1:], g_raw[:-1], strict=True)]
    group_of_cell = np.cumsum(starts_group) - 1
    n_groups = int(group_of_cell[-1]) + 1
    cell_ids = np.repeat(np.arange(len(rows)), lengths)
    cell_p = _segment_percentiles(cell_ids, durations, len(rows))
    group_p = _segment_percentiles(group_of_cell[cell_ids], durations, n_groups)
    sums = np.array([count, errors, tin, tout, cost, hits], dtype=np.float64)
    sums = np.nan_to_num(sums)
    group_sums = np.stack(
        [np.bincount(group_of_cell, weights=column, minlength=n_groups) for column in sums]
    )
    cell_rows = sums.T.tolist()
    cell_percentiles = _none_for_nan(cell_p)
    result: list[dict[str, Any]] = []
    for gi, (c, e, i, o, k, h) in enumerate(group_sums.T.tolist()):
        p = _none_for_nan(group_p[gi : gi + 1])[0]
        result.append({"group": None, "totals": _stat(c, e, p, i, o, k, h), "buckets": []})
    for ci, (c, e, i, o, k, h) in enumerate(cell_rows):
        entry = result[group_of_cell[ci]]
        entry["group"] = g_raw[ci]
        stat = _stat(c, e, cell_percentiles[ci], i, o, k, h)
        entry["buckets"].append({"start_ns": int(b_raw[ci]) * bucket_ns, **stat})
    return result


def _none_for_nan(values: np.ndarray) -> list[list[float | None]]:
    return [[None if v != v else v for v in row] for row in values.tolist()]


def _segment_percentiles(keys: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """``(n, len(PERCENTILES))`` linearly interpolated percentiles (Postgres'
    ``percentile_cont``, numpy's default) of ``values`` per integer key; NaN where none."""
    out = np.full((n, len(PERCENTILES)), np.nan)
    if len(values) == 0:
        return out
    # Sort by value, then stably by key: twice as fast as np.lexsort on these sizes.
    order = np.argsort(values)
    order = order[np.argsort(keys.astype(np.int32)[order], kind="stable")]
    ordered = values[order]
    sizes = np.bincount(keys, minlength=n)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    present = sizes > 0
    size, base = sizes[present], starts[present]
    for j, p in enumerate(PERCENTILES):
        pos = p * (size - 1)
        lower = np.floor(pos).astype(np.int64)
        upper = np.minimum(lower + 1, size - 1)
        low = ordered[base + lower]
        out[present, j] = low + (pos - lower) * (ordered[base + upper] - low)
    return out

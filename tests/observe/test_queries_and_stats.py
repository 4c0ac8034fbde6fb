"""Trace filters, cursor pagination and statistics against SQLite and Postgres."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from trellis.errors import InvalidRequestError
from trellis.observe.query import (
    TraceQuery,
    decode_cursor,
    encode_cursor,
    parse_duration,
    parse_time,
)
from trellis.observe.stats import StatsQuery, TraceStats
from trellis.observe.store import TraceStore
from trellis.observe.tracing import GenAI, Trace
from trellis.observe.writer import TraceWriter
from trellis.settings import TracingSettings
from trellis.store import Database

SECOND = 10**9
T0 = 1_700_000_000 * SECOND  # bucket-aligned for 1 m buckets


def make(
    i: int,
    *,
    start_ns: int,
    duration_ms: float,
    model: str = "gpt-a",
    key_id: str | None = "key_1",
    kind: str = "chat",
    status: str | None = None,
    failed_attempt: bool = False,
    prompt: str = "hello",
) -> Trace:
    trace = Trace(kind=kind, name=f"{kind} {model}")
    root = trace.root
    assert root is not None
    root.start_ns = start_ns
    root.set(GenAI.INPUT_MESSAGES, [{"role": "user", "content": prompt}])
    trace.summary.update(
        model=model, key_id=key_id, input_tokens=10, output_tokens=5, cost=0.5, cache_hit=i % 2 == 0
    )
    attempt = trace.start_span("attempt")
    attempt.start_ns = start_ns
    attempt.end_ns = start_ns + 1000
    if failed_attempt:
        attempt.status = "error"
    root.end_ns = start_ns + int(duration_ms * 1e6)
    if status == "error":
        root.record_error(RuntimeError("upstream exploded"))
    trace.finish(status)
    return trace


async def store(db: Database, made: list[Trace]) -> None:
    writer = TraceWriter(db, TracingSettings(flush_interval=0.01))
    await writer.start()
    for trace in made:
        writer.submit(trace)
    await writer.close()
    assert writer.written_traces == len(made)


async def test_filters_combine(db: Database) -> None:
    made = [
        make(0, start_ns=T0, duration_ms=10, model="gpt-a"),
        make(1, start_ns=T0 + SECOND, duration_ms=900, model="gpt-b", key_id="key_2"),
        make(2, start_ns=T0 + 2 * SECOND, duration_ms=50, status="error", prompt="Zebra 100%"),
        make(3, start_ns=T0 + 3 * SECOND, duration_ms=20, failed_attempt=True, kind="embeddings"),
    ]
    await store(db, made)
    traces = TraceStore(db)

    async def ids(**filters: Any) -> list[int]:
        rows = (await traces.page(TraceQuery(**filters), limit=100)).rows
        return sorted(next(i for i, t in enumerate(made) if t.trace_id == r["id"]) for r in rows)

    assert await ids() == [0, 1, 2, 3]
    assert await ids(model="gpt-b") == [1]
    assert await ids(key_id="key_2") == [1]
    assert await ids(status="error") == [2]
    assert await ids(kind="embeddings") == [3]
    assert await ids(min_latency_ms=50) == [1, 2]
    # has_error also finds a trace whose root succeeded after a failed attempt.
    assert await ids(has_error=True) == [2, 3]
    assert await ids(has_error=False) == [0, 1]
    assert await ids(since_ns=T0 + SECOND, until_ns=T0 + 3 * SECOND) == [1, 2]
    assert await ids(text="zebra") == [2]  # case-insensitive, in the prompt
    assert await ids(text="100%") == [2]  # LIKE wildcards are matched literally
    assert await ids(text="10_%") == []
    assert await ids(text="exploded") == [2]  # the error message
    assert await ids(model="gpt-a", has_error=True, min_latency_ms=30) == [2]


async def test_cursor_pages_cover_everything_once(db: Database) -> None:
    # Several traces share a start time, so the id breaks ties.
    made = [make(i, start_ns=T0 + (i // 3) * SECOND, duration_ms=1) for i in range(20)]
    await store(db, made)
    traces = TraceStore(db)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await traces.page(TraceQuery(), limit=6, cursor=cursor)
        seen += [row["id"] for row in page.rows]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 4
    assert len(seen) == len(set(seen)) == 20
    starts = [(t.root.start_ns, t.trace_id) for t in made]  # type: ignore[union-attr]
    assert seen == [tid for _, tid in sorted(starts, reverse=True)]


def test_invalid_values_are_request_errors() -> None:
    for bad in ("", "abc", "not-base64!", encode_cursor(1, "x';--")):
        with pytest.raises(InvalidRequestError):
            decode_cursor(bad)
    assert decode_cursor(encode_cursor(5, "abc123")) == (5, "abc123")
    with pytest.raises(InvalidRequestError):
        TraceQuery(status="weird")
    with pytest.raises(InvalidRequestError):
        TraceQuery(min_latency_ms=-1)
    with pytest.raises(InvalidRequestError):
        TraceQuery(since_ns=2, until_ns=1)
    for bad in ("", "5", "1y", "-1h", "0s"):
        with pytest.raises(InvalidRequestError):
            parse_duration(bad, "window")
    assert parse_duration("90s", "w") == 90
    assert parse_duration("1.5h", "w") == 5400
    assert parse_time("1h", "since", now=10_000) == 6400 * SECOND
    assert parse_time("1700000000", "since") == T0
    assert parse_time("2023-11-14T22:13:20Z", "since") == T0
    assert parse_time("2023-11-14T22:13:20", "since") == T0  # no zone: UTC
    with pytest.raises(InvalidRequestError):
        parse_time("yesterday", "since")
    with pytest.raises(InvalidRequestError):
        StatsQuery(T0, T0 + 3600 * SECOND, SECOND)  # 3600 buckets
    with pytest.raises(InvalidRequestError):
        StatsQuery(T0, T0 + SECOND, SECOND, group_by="provider")


def test_times_and_durations_stay_in_the_stored_range() -> None:
    """Stored times are signed 64-bit nanoseconds: anything beyond is a 400, not an overflow."""
    for bad in ("99999999999999999999", "9" * 400, "9999-12-31T23:59:59Z", "0001-01-01"):
        with pytest.raises(InvalidRequestError) as raised:
            parse_time(bad, "until")
        assert raised.value.param == "until" and "2262" in raised.value.message
    for bad in ("99999999999d", "9" * 400 + "w", "36501d"):
        with pytest.raises(InvalidRequestError) as raised:
            parse_duration(bad, "window")
        assert "at most 36500d" in raised.value.message
    assert parse_duration("36500d", "window") == 36500 * 86400
    # A duration reaching back before 1970 means "from the start".
    assert parse_time("36500d", "since", now=10_000) == 0
    assert parse_time("2262-04-11T00:00:00Z", "until") > 0
    with pytest.raises(InvalidRequestError):
        decode_cursor(encode_cursor(2**63, "abc"))
    with pytest.raises(InvalidRequestError):
        TraceQuery(since_ns=2**63)
    with pytest.raises(InvalidRequestError):
        StatsQuery(T0, 2**63, SECOND)  # until beyond the range
    with pytest.raises(InvalidRequestError):
        StatsQuery(T0, T0 + SECOND, 2**63)  # bucket beyond the range
    with pytest.raises(InvalidRequestError):
        StatsQuery(-(2**63), T0, 2**62)  # window beyond 100 years


async def test_extreme_but_valid_windows_query_fine(db: Database) -> None:
    await store(db, [make(0, start_ns=T0, duration_ms=10)])
    now_ns = parse_time("2100-01-01T00:00:00Z", "until")
    window = int(parse_duration("36500d", "window") * SECOND)
    query = StatsQuery(now_ns - window, now_ns, window)
    totals = [group["totals"]["count"] for group in await TraceStats(db).compute(query)]
    assert totals == [1]
    page = await TraceStore(db).page(TraceQuery(since_ns=parse_time("36500d", "since")))
    assert len(page.rows) == 1


async def test_stats_match_numpy_on_both_backends(db: Database) -> None:
    rng = random.Random(3)
    made = []
    for i in range(300):
        made.append(
            make(
                i,
                start_ns=T0 + rng.randrange(0, 180) * SECOND,
                duration_ms=round(rng.lognormvariate(4, 1), 3),
                model=rng.choice(["gpt-a", "gpt-b"]),
                key_id=rng.choice(["key_1", "key_2", None]),
                kind=rng.choice(["chat", "embeddings"]),
                status="error" if i % 10 == 0 else None,
            )
        )
    await store(db, made)
    stats = TraceStats(db)
    query = StatsQuery(T0, T0 + 180 * SECOND, 60 * SECOND, group_by="key")
    groups = {g["group"]: g for g in await stats.compute(query)}
    assert set(groups) == {"key_1", "key_2", None}
    for key, group in groups.items():
        mine = [t for t in made if t.summary["key_id"] == key]
        durations = np.array([t.root.duration_ms for t in mine])  # type: ignore[union-attr]
        totals = group["totals"]
        assert totals["count"] == len(mine)
        assert totals["errors"] == sum(t.status == "error" for t in mine)
        assert totals["error_rate"] == pytest.approx(totals["errors"] / len(mine))
        assert totals["input_tokens"] == 10 * len(mine)
        assert totals["cost"] == pytest.approx(0.5 * len(mine))
        assert totals["cache_hits"] == sum(bool(t.summary["cache_hit"]) for t in mine)
        for name, p in (("p50", 50), ("p95", 95), ("p99", 99)):
            assert totals["latency_ms"][name] == pytest.approx(np.percentile(durations, p))
        assert sum(b["count"] for b in group["buckets"]) == len(mine)
        for bucket in group["buckets"]:
            inside = [
                t.root.duration_ms  # type: ignore[union-attr]
                for t in mine
                if bucket["start_ns"] <= t.root.start_ns < bucket["start_ns"] + 60 * SECOND  # type: ignore[union-attr]
            ]
            assert bucket["count"] == len(inside)
            assert bucket["latency_ms"]["p95"] == pytest.approx(np.percentile(inside, 95))
    # Filters and the other groupings.
    by_model = await stats.compute(
        StatsQuery(T0, T0 + 180 * SECOND, 60 * SECOND, "model", kind="chat")
    )
    assert {g["group"] for g in by_model} == {"gpt-a", "gpt-b"}
    assert sum(g["totals"]["count"] for g in by_model) == sum(t.kind == "chat" for t in made)
    overall = await stats.compute(StatsQuery(T0, T0 + 180 * SECOND, 60 * SECOND, "none"))
    assert len(overall) == 1 and overall[0]["totals"]["count"] == 300
    empty = await stats.compute(StatsQuery(T0 - 600 * SECOND, T0, 60 * SECOND))
    assert empty == []


async def test_the_guard_filter_finds_what_each_guard_acted_on(db: Database) -> None:
    """``TraceQuery.guard`` (``GET /v1/traces?guard=``, the UI's Guard page) keys on the
    summary attributes the guards write; ``guard_counts`` counts them per kind."""
    plain, pii, output, injected, both = (
        make(i, start_ns=T0 + i * SECOND, duration_ms=10) for i in range(5)
    )
    pii.summary["pii_kinds"] = ["email", "phone"]
    privacy = pii.start_span("privacy")
    privacy.set("trellis.privacy.action", "redact")
    privacy.end()
    output.summary["guard_output"] = {"redact": 2}
    assert output.root is not None
    output.root.set("trellis.guard.output.hits", ["pii:email"])
    injected.summary.update(guard_flagged=True, guard_score=0.93)
    guard = injected.start_span("guard")
    guard.set("trellis.guard.flagged", True)
    guard.set("trellis.guard.categories", ["override"])
    guard.end()
    both.summary.update(pii_kinds=["email"], guard_output={"flag": 1})
    await store(db, [plain, pii, output, injected, both])
    traces = TraceStore(db)

    async def ids(kind: str) -> set[str]:
        return {r["id"] for r in await traces.list(limit=100, guard=kind)}

    assert await ids("pii") == {pii.trace_id, both.trace_id}
    assert await ids("output") == {output.trace_id, both.trace_id}
    assert await ids("input") == {injected.trace_id}
    assert await ids("any") == {pii.trace_id, output.trace_id, injected.trace_id, both.trace_id}
    window = TraceQuery(since_ns=T0 + 2 * SECOND, guard="any")
    assert {r["id"] for r in (await traces.page(window)).rows} == {
        output.trace_id,
        injected.trace_id,
        both.trace_id,
    }
    counts = await traces.guard_counts(TraceQuery(guard="any"))
    assert counts.traces == 4 and not counts.truncated
    assert counts.pii == {"email": 2, "phone": 1}
    assert counts.output == {"redact": 2, "flag": 1}
    assert counts.input_flagged == 1
    found = await traces.guard_spans([pii.trace_id, injected.trace_id])
    assert {s["name"] for s in found[pii.trace_id]} == {"chat gpt-a", "privacy"}
    assert [
        s["attributes"]["trellis.guard.categories"]
        for s in found[injected.trace_id]
        if s["name"] == "guard"
    ] == [["override"]]
    with pytest.raises(InvalidRequestError, match="guard must be one of"):
        TraceQuery(guard="everything")

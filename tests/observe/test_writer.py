"""The background trace writer and the trace store that reads its rows."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from trellis.observe.store import TraceStore
from trellis.observe.tracing import GenAI, Trace
from trellis.observe.writer import TraceWriter, trace_rows
from trellis.schema import ChatMessage, ResponseMessage
from trellis.settings import TracingSettings
from trellis.store import Database, spans, traces


def make_trace(
    i: int = 0, *, spans_per_trace: int = 8, model: str = "gpt-4o", status: str | None = None
) -> Trace:
    trace = Trace(kind="chat", name="chat.completions")
    trace.summary.update(
        model=model,
        response_model=f"{model}-2024",
        provider="openai",
        key_id=f"key_{i % 3}",
        input_tokens=10 + i,
        output_tokens=20,
        cost=0.001,
        cache_hit=False,
        ttft_ms=12.5,
        route="primary",
    )
    parent = None
    for n in range(spans_per_trace - 1):
        span = trace.start_span(f"stage.{n}", parent, {GenAI.REQUEST_MODEL: model})
        if n == 0:
            span.set(GenAI.INPUT_MESSAGES, [{"role": "user", "content": f"hello {i}"}])
            span.set(GenAI.OUTPUT_MESSAGES, [{"role": "assistant", "content": "hi"}])
            span.add_event("retry", attempt=1)
            parent = span
        span.end()
    trace.finish(status)
    return trace


async def count(db: Database) -> tuple[int, int]:
    async with db.engine.connect() as conn:
        n_traces = (await conn.execute(select(func.count()).select_from(traces))).scalar_one()
        n_spans = (await conn.execute(select(func.count()).select_from(spans))).scalar_one()
    return n_traces, n_spans


def settings(**overrides: object) -> TracingSettings:
    values: dict[str, object] = {"batch_size": 100, "flush_interval": 0.05, "queue_size": 10_000}
    values.update(overrides)
    return TracingSettings.model_validate(values)


async def test_many_traces_are_written_in_batches(db: Database) -> None:
    writer = TraceWriter(db, settings(batch_size=50))
    await writer.start()
    for i in range(300):
        writer.submit(make_trace(i))
        if i % 40 == 0:
            await asyncio.sleep(0)  # let the writer interleave, as a server would
    await writer.close()
    assert (writer.written_traces, writer.written_spans) == (300, 2400)
    assert await count(db) == (300, 2400)
    assert writer.dropped == writer.write_errors == writer.queued == 0
    assert 6 <= writer.batches < 300


async def test_traces_submitted_together_share_a_batch(sqlite_db: Database) -> None:
    writer = TraceWriter(sqlite_db, settings(batch_size=100, flush_interval=0.05))
    await writer.start()
    for i in range(30):
        writer.submit(make_trace(i))
    await writer.flush()
    assert writer.batches == 1 and writer.written_traces == 30
    # A lone trace is written within flush_interval without anyone asking.
    writer.submit(make_trace(99))
    deadline = time.monotonic() + 5
    while writer.written_traces < 31 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert writer.written_traces == 31 and writer.batches == 2
    await writer.close()


async def test_close_flushes_everything_without_waiting_out_the_interval(
    sqlite_db: Database,
) -> None:
    writer = TraceWriter(sqlite_db, settings(batch_size=64, flush_interval=30.0))
    await writer.start()
    for i in range(1000):
        writer.submit(make_trace(i, spans_per_trace=2))
    started = time.perf_counter()
    await writer.close()
    assert time.perf_counter() - started < 10
    assert await count(sqlite_db) == (1000, 2000)
    assert writer.queued == 0


async def test_close_writes_traces_queued_before_start(sqlite_db: Database) -> None:
    writer = TraceWriter(sqlite_db, settings())
    for i in range(5):
        writer.submit(make_trace(i))
    await writer.close()
    assert await count(sqlite_db) == (5, 40)


async def test_overflow_drops_without_blocking_and_warns_once(
    sqlite_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    writer = TraceWriter(sqlite_db, settings(queue_size=10))
    batch = [make_trace(i) for i in range(25)]
    with caplog.at_level(logging.WARNING, logger="trellis.observe.writer"):
        started = time.perf_counter()
        for trace in batch:
            writer.submit(trace)
        assert time.perf_counter() - started < 0.1
    assert (writer.queued, writer.dropped) == (10, 15)
    assert len([r for r in caplog.records if "dropping traces" in r.message]) == 1
    await writer.start()
    await writer.close()
    assert writer.written_traces == 10
    writer.submit(make_trace(100))  # after close: dropped, never raises
    assert writer.dropped == 16


async def test_store_bodies_false_strips_messages(sqlite_db: Database) -> None:
    writer = TraceWriter(sqlite_db, settings(store_bodies=False))
    trace = make_trace(1)
    writer.submit(trace)
    await writer.close()
    stored = await TraceStore(sqlite_db).get(trace.trace_id)
    assert stored is not None
    for span in stored["spans"]:
        attributes = span["attributes"] or {}
        assert GenAI.INPUT_MESSAGES not in attributes
        assert GenAI.OUTPUT_MESSAGES not in attributes
    assert any(GenAI.REQUEST_MODEL in (s["attributes"] or {}) for s in stored["spans"])
    # The in-memory trace is left untouched (other sinks may want the bodies).
    assert GenAI.INPUT_MESSAGES in trace.spans[1].attributes


async def test_bodies_are_kept_by_default(sqlite_db: Database) -> None:
    writer = TraceWriter(sqlite_db, settings())
    trace = make_trace(1)
    writer.submit(trace)
    await writer.close()
    stored = await TraceStore(sqlite_db).get(trace.trace_id)
    assert stored is not None
    first_child = stored["spans"][1]
    assert first_child["attributes"][GenAI.INPUT_MESSAGES][0]["content"] == "hello 1"
    assert first_child["events"][0]["name"] == "retry"


async def test_messages_kept_as_models_are_stored_as_json(sqlite_db: Database) -> None:
    """The gateway leaves message lists as pydantic models; the writer dumps them."""
    writer = TraceWriter(sqlite_db, settings(bodies="redacted"))
    trace = Trace(kind="chat", name="chat")
    asked = ChatMessage(role="user", content="mail ann@example.com")
    trace.root.attributes[GenAI.INPUT_MESSAGES] = [asked]  # type: ignore[union-attr]
    answer = ResponseMessage(content="done")
    trace.root.attributes[GenAI.OUTPUT_MESSAGES] = [answer]  # type: ignore[union-attr]
    trace.finish()
    writer.submit(trace)
    await writer.close()
    stored = await TraceStore(sqlite_db).get(trace.trace_id)
    assert stored is not None
    attributes = stored["spans"][0]["attributes"]
    assert attributes[GenAI.INPUT_MESSAGES] == [{"role": "user", "content": "mail [EMAIL]"}]
    assert attributes[GenAI.OUTPUT_MESSAGES] == [{"role": "assistant", "content": "done"}]
    assert trace.root.attributes[GenAI.INPUT_MESSAGES] == [asked]  # type: ignore[union-attr]


async def test_a_database_error_does_not_kill_the_writer(tmp_path: Path) -> None:
    # Tables missing: every write fails until the schema appears.
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'late.db'}")
    await db.connect(migrate=False)
    writer = TraceWriter(db, settings())
    await writer.start()
    try:
        for i in range(3):
            writer.submit(make_trace(i))
        await writer.flush()
        assert writer.write_errors == 3 and writer.written_traces == 0
        assert writer.running
        await db.migrate()
        writer.submit(make_trace(10))
        await writer.flush()
        assert writer.written_traces == 1
    finally:
        await writer.close()
        await db.close()


async def test_one_bad_trace_does_not_lose_its_batch(db: Database) -> None:
    writer = TraceWriter(db, settings())
    await writer.start()
    duplicate = make_trace(0)
    writer.submit(duplicate)
    await writer.flush()
    for i in range(1, 10):
        writer.submit(make_trace(i))
    writer.submit(duplicate)  # same trace id again: the database refuses it
    await writer.close()
    assert writer.write_errors == 1
    assert writer.written_traces == 10
    assert (await count(db))[0] == 10


async def test_odd_attribute_values_are_stored_as_text(sqlite_db: Database) -> None:
    writer = TraceWriter(sqlite_db, settings())
    trace = make_trace(0)
    trace.spans[1].set("when", object())
    trace.summary["tags"] = {"a", "b"}
    writer.submit(trace)
    await writer.close()
    assert writer.written_traces == 1


def test_trace_row_mapping() -> None:
    trace = make_trace(4, status="error")
    row, span_rows = trace_rows(trace)
    assert row["id"] == trace.trace_id and row["status"] == "error"
    assert row["model"] == "gpt-4o" and row["response_model"] == "gpt-4o-2024"
    assert (row["input_tokens"], row["output_tokens"], row["cost"]) == (14, 20, 0.001)
    assert row["cache_hit"] is False and row["ttft_ms"] == 12.5 and row["key_id"] == "key_1"
    assert row["attributes"] == {"route": "primary"}
    assert row["start_ns"] == trace.root.start_ns and row["end_ns"] == trace.root.end_ns  # type: ignore[union-attr]
    assert row["duration_ms"] >= 0
    assert len(span_rows) == 8 and span_rows[0]["parent_id"] is None


async def test_trace_store_get_and_list(db: Database) -> None:
    writer = TraceWriter(db, settings())
    made = []
    for i in range(6):
        trace = make_trace(i, model="a" if i % 2 else "b", status="error" if i == 5 else None)
        made.append(trace)
        writer.submit(trace)
        await asyncio.sleep(0.001)  # distinct start times
    await writer.close()
    store = TraceStore(db)
    listed = await store.list()
    assert [t["id"] for t in listed] == [t.trace_id for t in reversed(made)]
    assert {t["model"] for t in await store.list(model="a")} == {"a"}
    assert len(await store.list(model="a")) == 3
    assert [t["id"] for t in await store.list(status="error")] == [made[5].trace_id]
    assert len(await store.list(key_id="key_0")) == 2
    assert len(await store.list(limit=2)) == 2
    got = await store.get(made[0].trace_id)
    assert got is not None and got["attributes"] == {"route": "primary"}
    starts = [s["start_ns"] for s in got["spans"]]
    assert starts == sorted(starts) and len(starts) == 8
    assert await store.get("0" * 32) is None

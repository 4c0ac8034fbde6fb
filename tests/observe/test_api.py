"""The user-code tracing API: traces, nested spans, the decorator and scores."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from trellis.observe import api
from trellis.observe.api import configure, current_trace, score, span, trace, traced
from trellis.observe.tracing import NullSink, Trace
from trellis.runtime import Trellis
from trellis.settings import Settings
from trellis.testing.sinks import ListSink


@pytest.fixture
def sink() -> Iterator[ListSink]:
    collected = ListSink()
    previous = configure(collected)
    yield collected
    configure(previous)


def tree(t: Trace) -> dict[str, str | None]:
    names = {s.span_id: s.name for s in t.spans}
    return {s.name: names.get(s.parent_id) if s.parent_id else None for s in t.spans}


def test_nested_spans_and_scores(sink: ListSink) -> None:
    with trace("answer", kind="workflow", user="u1") as t:
        with span("retrieve", k=5), span("embed"):
            pass
        with span("generate"):
            score("groundedness", 0.9, comment="cites both sources")
    assert sink.traces == [t]
    assert t.kind == "workflow" and t.root is not None and t.root.attributes == {"user": "u1"}
    assert tree(t) == {
        "answer": None,
        "retrieve": "answer",
        "embed": "retrieve",
        "generate": "answer",
    }
    assert all(s.end_ns is not None for s in t.spans)
    assert t.scores[0]["name"] == "groundedness" and t.scores[0]["value"] == 0.9
    assert current_trace() is None


def test_errors_mark_the_span_and_trace_and_propagate(sink: ListSink) -> None:
    with pytest.raises(KeyError), trace("job"), span("step"):
        raise KeyError("missing")
    (t,) = sink.traces
    assert t.status == "error" and [s.status for s in t.spans] == ["error", "error"]


def test_decorator_sync_and_async_and_outside_a_trace(sink: ListSink) -> None:
    @traced()
    def parse(x: int) -> int:
        return x + 1

    @traced(name="fetch")
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return parse(x) * 2

    async def main() -> int:
        async with trace("pipeline"):
            return await fetch(1)

    assert asyncio.run(main()) == 4
    assert parse(1) == 2  # outside any trace: a trace of its own
    first, second = sink.traces
    assert tree(first) == {
        "pipeline": None,
        "fetch": "pipeline",
        "test_decorator_sync_and_async_and_outside_a_trace.<locals>.parse": "fetch",
    }
    assert second.name.endswith("parse") and len(second.spans) == 1


def test_concurrent_tasks_keep_their_own_spans(sink: ListSink) -> None:
    async def worker(name: str) -> None:
        with span(name):
            await asyncio.sleep(0.01)
            with span(f"{name}.inner"):
                await asyncio.sleep(0)

    async def main() -> None:
        with trace("fan-out"):
            await asyncio.gather(worker("a"), worker("b"))

    asyncio.run(main())
    assert tree(sink.traces[0]) == {
        "fan-out": None,
        "a": "fan-out",
        "b": "fan-out",
        "a.inner": "a",
        "b.inner": "b",
    }


def test_score_validation(sink: ListSink) -> None:
    with pytest.raises(RuntimeError):
        score("x", 1.0)
    with trace("t"):
        for bad in (float("nan"), float("inf"), "1", True, None):
            with pytest.raises(ValueError):
                score("x", bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            score("", 1.0)
        score("ok", 3)
    assert sink.traces[0].scores[0]["value"] == 3.0


def test_without_a_sink_traces_are_dropped() -> None:
    previous = configure(None)
    try:
        with trace("nobody listens"):
            score("s", 1.0)
    finally:
        configure(previous)


async def test_runtime_records_user_traces_and_scores(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, include_local_models=False)
    async with Trellis(settings) as runtime:
        with trace("user-step", kind="custom"), span("inner"):
            score("feedback", 1.0, comment="mail me at ann@example.com")
        assert runtime.writer is not None and runtime.traces is not None
        await runtime.writer.flush()
        (row,) = await runtime.traces.list(kind="custom")
        stored = await runtime.traces.get(row["id"])
    assert stored is not None
    assert [s["name"] for s in stored["spans"]] == ["user-step", "inner"]
    assert stored["scores"][0]["name"] == "feedback" and stored["scores"][0]["source"] == "api"
    assert stored["scores"][0]["comment"] == "mail me at ann@example.com"
    assert isinstance(api._sink, NullSink)  # restored at close


async def test_runtimes_closed_out_of_order_leave_no_stale_sink(tmp_path: Path) -> None:
    first = Trellis(Settings(data_dir=tmp_path / "a", include_local_models=False))
    second = Trellis(Settings(data_dir=tmp_path / "b", include_local_models=False))
    await first.start()
    await second.start()
    assert api._sink is second.writer
    await first.aclose()
    assert api._sink is second.writer  # the newest open runtime keeps recording
    await second.aclose()
    assert isinstance(api._sink, NullSink)  # not the closed first runtime's writer

"""The runner: every case through the gateway with trace, tokens and cost; bounded
concurrency; resumable after failures and after a kill -9 of the process running it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trellis.errors import ConflictError
from trellis.evals import EvalRunner, EvalStore, build_request, parse_suite
from trellis.evals.datasets import Case
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream, Fault
from trellis.testing.sinks import ListSink

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import PRICES, answer, dataset_of, make_gateway, suite_of  # noqa: E402

HERE = Path(__file__).parent
SRC = HERE.parent.parent / "src"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai", reply=answer).start()
    yield server
    server.stop()


@pytest.mark.parametrize("defer", [False, True], ids=["inline", "deferred-bookkeeping"])
async def test_every_case_has_output_metrics_trace_tokens_and_cost(
    upstream: FakeUpstream, sqlite_db: Database, defer: bool
) -> None:
    sink = ListSink()
    gateway = make_gateway(upstream.base_url, defer=defer, sink=sink)
    seen: list[tuple[int, int]] = []
    report = await EvalRunner(gateway, EvalStore(sqlite_db)).run(
        suite_of(), dataset_of(5), progress=lambda done, total: seen.append((done, total))
    )
    await asyncio.sleep(0)
    assert seen[0] == (0, 10) and seen[-1] == (10, 10)
    assert report["dataset"].startswith("sums@") and report["metrics"] == ["exact", "chrf", "regex"]
    rows = report["cases"]
    assert len(rows) == 10 and {r["candidate"] for r in rows} == {"good", "bad"}
    traces = {t.trace_id: t for t in sink.traces}
    for row in rows:
        assert row["error"] is None
        trace = traces[row["trace_id"]]  # every case links to its trace
        assert trace.summary["input_tokens"] == row["input_tokens"] > 0
        assert trace.summary["output_tokens"] == row["output_tokens"] == 1
        cost = (row["input_tokens"] * PRICES.input + row["output_tokens"] * PRICES.output) / 1e6
        assert row["cost"] == pytest.approx(cost) and row["cost"] == trace.summary["cost"]
        assert row["latency_ms"] > 0
        good = row["candidate"] == "good"
        assert row["metrics"]["exact"] == (1.0 if good else 0.0)
        assert row["metrics"]["regex"] == 1.0
    good, bad = report["candidates"]["good"], report["candidates"]["bad"]
    assert good["metrics"]["exact"] == 1.0 and bad["metrics"]["exact"] == 0.0
    assert good["cases"] == 5 and good["errors"] == 0
    assert good["tokens"]["total"] == sum(
        r["input_tokens"] + r["output_tokens"] for r in rows if r["candidate"] == "good"
    )
    assert good["cost"] == pytest.approx(sum(r["cost"] for r in rows if r["candidate"] == "good"))
    assert set(good["latency_ms"]) == {"mean", "p50", "p95", "p99"}
    # Requests asked for no cache (repeats must reach the model) and carried the params.
    bodies = [r.json for r in upstream.requests]
    assert all(b.get("temperature") == 0 for b in bodies if b["model"] == "bad-model")
    assert all("trellis" not in b for b in bodies)


async def test_concurrency_is_bounded(upstream: FakeUpstream, sqlite_db: Database) -> None:
    upstream.delay = 0.1
    gateway = make_gateway(upstream.base_url)
    started = time.monotonic()
    await EvalRunner(gateway, EvalStore(sqlite_db)).run(suite_of(concurrency=2), dataset_of(4))
    # 8 calls of 0.1 s, two at a time: at least four rounds.
    assert time.monotonic() - started >= 0.4


async def test_a_rerun_redoes_only_the_failed_units(
    upstream: FakeUpstream, sqlite_db: Database
) -> None:
    gateway = make_gateway(upstream.base_url)
    store = EvalStore(sqlite_db)
    runner = EvalRunner(gateway, store)
    upstream.faults.push(Fault.status(400), Fault.status(400))
    first = await runner.run(suite_of(concurrency=1), dataset_of(3))
    assert sum(1 for r in first["cases"] if r["error"]) == 2
    assert first["candidates"]["good"]["errors"] + first["candidates"]["bad"]["errors"] == 2
    before = len(upstream.requests)
    second = await runner.run(suite_of(concurrency=1), dataset_of(3), run_id=first["run_id"])
    assert len(upstream.requests) - before == 2
    assert all(r["error"] is None for r in second["cases"]) and len(second["cases"]) == 6
    assert (await store.run(first["run_id"])).status == "succeeded"
    with pytest.raises(ConflictError, match="keeps its dataset"):
        await runner.run(suite_of(), dataset_of(4), run_id=first["run_id"])


def test_requests_follow_the_candidate() -> None:
    suite = parse_suite(
        {
            "dataset": "x.jsonl",
            "candidates": [
                {
                    "name": "rag",
                    "model": "m",
                    "system": "Topic: {topic}",
                    "prompt": "Q: {input}\nContext: {context}",
                    "collections": ["docs"],
                    "params": {"max_tokens": 5},
                },
                {"name": "chat", "model": "m"},
            ],
        }
    )
    case = Case(id="1", input="Why?", context=["a", "b"], metadata={"topic": "t"})
    request = build_request(suite.candidates[0], case)
    assert [m.content for m in request.messages] == ["Topic: t", "Q: Why?\nContext: a\n\nb"]
    assert request.max_tokens == 5 and request.trellis is not None
    assert request.trellis.collections == ["docs"] and request.trellis.cache is False
    conversation = Case(id="2", input=[{"role": "user", "content": "hi"}])
    assert [m.content for m in build_request(suite.candidates[1], conversation).messages] == ["hi"]
    with pytest.raises(KeyError, match="topic"):
        build_request(suite.candidates[0], Case(id="3", input="x"))


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        ({"name": "a", "model": "m", "prompt": "{input.__class__}"}, "only plain field names"),
        ({"name": "a", "model": "m", "prompt": "{0}"}, "only plain field names"),
        ({"name": "a", "model": "m", "prompt": "{input!r}"}, "conversions"),
        ({"name": "a", "model": "m", "params": {"stream": True}}, "may not set"),
    ],
)
def test_unsafe_templates_and_reserved_params_are_refused(
    candidate: dict[str, object], message: str
) -> None:
    from trellis.evals import SuiteError

    with pytest.raises(SuiteError, match=message):
        parse_suite({"dataset": "x.jsonl", "candidates": [candidate]})


async def test_kill_9_mid_run_then_resume_without_redoing_finished_cases(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.delay = 0.05
    url = f"sqlite+aiosqlite:///{tmp_path / 'trellis.db'}"
    async with Database(url):
        pass  # migrated before the child starts
    run_id = "killed-run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}
    child = subprocess.Popen(
        [sys.executable, str(HERE / "eval_child.py"), url, upstream.base_url, run_id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        async with Database(url) as db:
            store = EvalStore(db)
            while True:
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < deadline, "the child never stored 10 results"
                try:
                    if len(await store.results(run_id)) >= 10:
                        break
                except Exception:  # the child has not created the run yet
                    pass
                await asyncio.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    async with Database(url) as db:
        store = EvalStore(db)
        stored = await store.results(run_id)
        assert 10 <= len(stored) < 40
        assert (await store.run(run_id)).status == "running"
        requests_before = len(upstream.requests)
        report = await EvalRunner(make_gateway(upstream.base_url), store).run(
            suite_of(concurrency=2), dataset_of(20), run_id=run_id
        )
        # Only the units not stored before the kill were sent again.
        assert len(upstream.requests) - requests_before == 40 - len(stored)
        assert len(report["cases"]) == 40 and all(r["error"] is None for r in report["cases"])
        for row in report["cases"]:
            key = (row["id"], row["candidate"], row["repeat"])
            if key in stored:
                assert row["trace_id"] == stored[key]["trace_id"]  # kept, not redone
        assert (await store.run(run_id)).status == "succeeded"


async def test_repeats_report_agreement(upstream: FakeUpstream, sqlite_db: Database) -> None:
    calls: dict[str, int] = {}

    def flaky(body: dict[str, object]) -> str:
        text = str(body["messages"][-1]["content"])  # type: ignore[index]
        calls[text] = calls.get(text, 0) + 1
        if text == "What is 0+1?" and body["model"] == "good-model":
            return str(calls[text])  # a different answer each repeat
        return answer(body)  # type: ignore[arg-type]

    upstream.reply = flaky
    report = await EvalRunner(make_gateway(upstream.base_url), EvalStore(sqlite_db)).run(
        suite_of(repeats=3), dataset_of(4)
    )
    assert len(report["cases"]) == 24 and report["repeats"] == 3
    assert report["candidates"]["good"]["agreement"] == 0.75
    assert report["candidates"]["bad"]["agreement"] == 1.0
    single = await EvalRunner(make_gateway(upstream.base_url), EvalStore(sqlite_db)).run(
        suite_of(), dataset_of(1)
    )
    assert single["candidates"]["good"]["agreement"] is None

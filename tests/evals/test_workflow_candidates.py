"""A workflow as an eval candidate: each case is one run of it, scored on the run's output,
with the run's latency, tokens, cost and trace; next to a model candidate in one suite."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from trellis.errors import InvalidRequestError
from trellis.evals import EvalRunner, EvalStore, SuiteError, parse_suite
from trellis.orchestration import END, Workflow, Workflows, llm
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.sinks import ListSink

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import PRICES, answer, dataset_of, make_gateway  # noqa: E402


class Sum(BaseModel):
    question: str
    reply: str | None = None
    checked: bool = False


def two_step_flow() -> Workflow[Sum]:
    """Asks the ``good`` model, then a plain step marks the answer checked."""
    flow = Workflow("sum", state=Sum, output=lambda s: {"answer": s.reply, "ok": s.checked})
    flow.add(llm("ask", model="good", messages=lambda s: s.question, into="reply", next="check"))

    @flow.step(next=END)
    async def check(s: Sum) -> dict[str, Any]:
        return {"checked": s.reply is not None and s.reply.isdigit()}

    return flow


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai", reply=answer).start()
    yield server
    server.stop()


def suite(**workflow: Any) -> Any:
    return parse_suite(
        {
            "name": "sums",
            "dataset": "sums.jsonl",
            "candidates": [
                {"name": "model", "model": "bad", "prompt": "What is {input}?"},
                {
                    "name": "flow",
                    "workflow": "sum",
                    "workflow_input": {"question": "What is {input}?"},
                    "workflow_output": "answer",
                    **workflow,
                },
            ],
            "metrics": ["exact"],
        }
    )


async def test_a_workflow_candidate_is_scored_on_its_runs(
    upstream: FakeUpstream, sqlite_db: Database
) -> None:
    sink = ListSink()
    gateway = make_gateway(upstream.base_url, sink=sink)
    async with Workflows(sqlite_db, services={"gateway": gateway}, flows=[two_step_flow()]) as wf:
        runner = EvalRunner(gateway, EvalStore(sqlite_db), workflows=wf)
        report = await runner.run(suite(), dataset_of(3))
        rows = {(r["id"], r["candidate"]): r for r in report["cases"]}
        for i in range(3):
            flow_row, model_row = rows[(f"c{i}", "flow")], rows[(f"c{i}", "model")]
            assert flow_row["error"] is None, flow_row["error"]
            assert flow_row["output"] == str(2 * i + 1)  # the good model, through the run
            assert flow_row["metrics"]["exact"] == 1.0
            assert model_row["metrics"]["exact"] == 0.0  # the bad model, called directly
            run = await wf.get(flow_row["run_id"])
            assert run.status == "succeeded" and flow_row["trace_id"] == run.trace_id
            assert flow_row["model"] == "workflow:sum"
            # The run's one model call, as its trace recorded it.
            assert flow_row["input_tokens"] == run.input_tokens > 0
            assert flow_row["output_tokens"] == run.output_tokens == 1
            cost = (run.input_tokens * PRICES.input + run.output_tokens * PRICES.output) / 1e6
            assert cost > 0 and flow_row["cost"] == pytest.approx(cost)
            assert flow_row["latency_ms"] > 0
        means = {name: c["metrics"]["exact"] for name, c in report["candidates"].items()}
        assert means == {"flow": 1.0, "model": 0.0}
        assert report["candidates"]["flow"]["model"] == "workflow:sum"


async def test_the_whole_output_is_scored_as_json_without_an_output_field(
    upstream: FakeUpstream, sqlite_db: Database
) -> None:
    gateway = make_gateway(upstream.base_url)
    async with Workflows(sqlite_db, services={"gateway": gateway}, flows=[two_step_flow()]) as wf:
        report = await EvalRunner(gateway, EvalStore(sqlite_db), workflows=wf).run(
            suite(workflow_output=None), dataset_of(1)
        )
    row = next(r for r in report["cases"] if r["candidate"] == "flow")
    assert row["output"] == '{"answer": "1", "ok": true}'


async def test_a_missing_output_field_or_case_field_is_that_case_s_error(
    upstream: FakeUpstream, sqlite_db: Database
) -> None:
    gateway = make_gateway(upstream.base_url)
    async with Workflows(sqlite_db, services={"gateway": gateway}, flows=[two_step_flow()]) as wf:
        runner = EvalRunner(gateway, EvalStore(sqlite_db), workflows=wf)
        report = await runner.run(suite(workflow_output="nope"), dataset_of(1))
        row = next(r for r in report["cases"] if r["candidate"] == "flow")
        assert row["error"] == "the run's output has no field 'nope'"
        report = await runner.run(
            suite(workflow_input={"question": "{expected} and {missing}"}), dataset_of(1)
        )
        row = next(r for r in report["cases"] if r["candidate"] == "flow")
        assert row["error"].startswith("input:") and "missing" in row["error"]


async def test_unknown_workflows_and_runners_without_workflows_are_refused(
    upstream: FakeUpstream, sqlite_db: Database
) -> None:
    gateway = make_gateway(upstream.base_url)
    with pytest.raises(InvalidRequestError, match="runs a workflow"):
        await EvalRunner(gateway, EvalStore(sqlite_db)).run(suite(), dataset_of(1))
    async with Workflows(sqlite_db, services={"gateway": gateway}) as wf:
        with pytest.raises(InvalidRequestError, match="no workflow named 'sum'"):
            await EvalRunner(gateway, EvalStore(sqlite_db), workflows=wf).run(
                suite(), dataset_of(1)
            )


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        ({"name": "x"}, "either a model or a workflow"),
        ({"name": "x", "model": "good", "workflow": "sum"}, "either a model or a workflow"),
        ({"name": "x", "workflow": "sum"}, "needs workflow_input"),
        ({"name": "x", "model": "good", "workflow_output": "a"}, "belong to workflow"),
        ({"name": "x", "workflow": "sum", "workflow_input": {"q": "{a.b}"}}, "plain field names"),
    ],
)
def test_candidate_shapes_are_checked(candidate: dict[str, Any], message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        parse_suite(
            {"name": "s", "dataset": "d.jsonl", "candidates": [candidate], "metrics": ["exact"]}
        )

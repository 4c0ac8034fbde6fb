"""The engine on the in-memory store: routing, each policy path, state updates, cancel."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from trellis.errors import ConfigurationError, InvalidRequestError, UpstreamError
from trellis.observe.tracing import Trace
from trellis.orchestration import (
    END,
    Backoff,
    Context,
    MemoryRunStore,
    Policy,
    RunStatus,
    Workflow,
    Workflows,
)

FAST = Backoff(initial=0.001, maximum=0.002)


class S(BaseModel):
    x: int = 0
    path: list[str] = []
    note: str = ""


class Sink:
    def __init__(self) -> None:
        self.traces: list[Trace] = []

    def submit(self, trace: Trace) -> None:
        self.traces.append(trace)


def visit(name: str, **more: object):  # noqa: ANN201 - a step factory for these tests
    async def step(s: S) -> dict[str, object]:
        return {"path": [*s.path, name], **more}

    step.__name__ = name
    return step


async def test_routing_is_plain_code_on_the_state() -> None:
    flow = Workflow("route", state=S)

    @flow.step(next=lambda s: "big" if s.x > 10 else "small")
    async def decide(s: S) -> dict[str, object]:
        return {"path": ["decide"]}

    flow.step(visit("small"), next=END)
    flow.step(visit("big"), next=END)
    async with Workflows() as workflows:
        small = await workflows.run(flow, {"x": 3})
        big = await workflows.run(flow, {"x": 30})
    assert small.status == RunStatus.SUCCEEDED and small.state["path"] == ["decide", "small"]
    assert big.state["path"] == ["decide", "big"]
    assert big.output == big.state


async def test_default_route_is_the_next_step_added_and_loops_work() -> None:
    flow = Workflow("loop", state=S, output=lambda s: {"x": s.x})

    @flow.step
    async def inc(s: S) -> S:
        return s.model_copy(update={"x": s.x + 1})

    flow.route("inc")(lambda s: "inc" if s.x < 5 else "done")
    flow.step(visit("done"))
    async with Workflows() as workflows:
        run = await workflows.run(flow, {})
        steps = await workflows.steps(run.id)
    assert run.output == {"x": 5}
    assert [r.step for r in steps] == ["inc"] * 5 + ["done"]
    assert [r.seq for r in steps] == list(range(1, 7))


async def test_unknown_route_target_is_refused_when_registered() -> None:
    flow = Workflow("bad", state=S)
    flow.step(visit("a"), next="nowhere")
    with pytest.raises(ConfigurationError, match="nowhere"):
        Workflows(flows=[flow])


async def test_invalid_input_is_a_request_error() -> None:
    flow = Workflow("typed", state=S)
    flow.step(visit("a"))
    async with Workflows() as workflows:
        with pytest.raises(InvalidRequestError):
            await workflows.run(flow, {"x": "not a number"})


async def test_update_naming_unknown_fields_fails_the_step() -> None:
    flow = Workflow("unknown-field", state=S)

    @flow.step
    async def bad(s: S) -> dict[str, int]:
        return {"nope": 1}

    async with Workflows() as workflows:
        run = await workflows.run(flow, {})
    assert run.status == RunStatus.FAILED
    assert run.error is not None and "nope" in run.error["message"]


async def test_retry_then_succeed_counts_attempts() -> None:
    flow = Workflow("retry", state=S)
    calls: list[int] = []

    @flow.step(policy=Policy(attempts=3, backoff=FAST))
    async def flaky(s: S, ctx: Context) -> dict[str, int]:
        calls.append(ctx.attempt)
        if ctx.attempt < 3:
            raise UpstreamError("try again")
        return {"x": ctx.attempt}

    async with Workflows() as workflows:
        run = await workflows.run(flow, {})
        (step,) = await workflows.steps(run.id)
    assert run.status == RunStatus.SUCCEEDED and run.state["x"] == 3
    assert calls == [1, 2, 3] and step.attempts == 3 and step.status == "ok"


async def test_errors_not_in_retry_on_are_not_retried() -> None:
    flow = Workflow("no-retry", state=S)
    calls: list[int] = []

    @flow.step(policy=Policy(attempts=3, backoff=FAST))
    async def broken(s: S) -> None:
        calls.append(1)
        raise ValueError("a bug, not a hiccup")

    async with Workflows() as workflows:
        run = await workflows.run(flow, {})
    assert len(calls) == 1
    assert run.status == RunStatus.FAILED
    assert run.error == {"type": "ValueError", "message": "a bug, not a hiccup", "step": "broken"}


async def test_timeout_per_attempt_then_fail() -> None:
    flow = Workflow("timeout", state=S)
    calls: list[int] = []

    @flow.step(policy=Policy(attempts=2, timeout=0.05, backoff=FAST))
    async def slow(s: S) -> None:
        calls.append(1)
        await asyncio.sleep(5)

    async with Workflows() as workflows:
        started = time.monotonic()
        run = await workflows.run(flow, {})
        (step,) = await workflows.steps(run.id)
    assert time.monotonic() - started < 2
    assert len(calls) == 2 and step.attempts == 2 and step.status == "error"
    assert run.status == RunStatus.FAILED and run.error is not None
    assert run.error["type"] == "TimeoutError"


async def test_fallback_step_gets_the_error_and_the_run_continues() -> None:
    flow = Workflow("fallback", state=S)

    @flow.step(next="after", policy=Policy(attempts=2, backoff=FAST, fallback="rescue"))
    async def main(s: S) -> None:
        raise UpstreamError("provider down")

    @flow.step(next="after")
    async def rescue(s: S, ctx: Context) -> dict[str, object]:
        assert ctx.error is not None
        return {"note": f"{ctx.error.step}: {ctx.error.message}"}

    flow.step(visit("after"), next=END)
    async with Workflows() as workflows:
        run = await workflows.run(flow, {})
        steps = await workflows.steps(run.id)
    assert run.status == RunStatus.SUCCEEDED
    assert run.state["note"] == "main: provider down" and run.state["path"] == ["after"]
    assert [(r.step, r.status, r.attempts) for r in steps] == [
        ("main", "error", 2),
        ("rescue", "ok", 1),
        ("after", "ok", 1),
    ]
    assert run.error is None


async def test_skip_keeps_the_state_and_follows_the_route() -> None:
    flow = Workflow("skip", state=S)
    flow.step(visit("first"))

    @flow.step(policy=Policy(on_error="skip"))
    async def optional(s: S) -> None:
        raise RuntimeError("not needed anyway")

    flow.step(visit("last"))
    async with Workflows() as workflows:
        run = await workflows.run(flow, {})
        steps = await workflows.steps(run.id)
    assert run.status == RunStatus.SUCCEEDED and run.state["path"] == ["first", "last"]
    assert [r.status for r in steps] == ["ok", "skipped", "ok"]


async def test_goto_on_error() -> None:
    flow = Workflow("goto", state=S)

    @flow.step(next=END, policy=Policy(on_error="goto:recover"))
    async def risky(s: S) -> None:
        raise RuntimeError("boom")

    @flow.step(next=END)
    async def recover(s: S, ctx: Context) -> dict[str, str]:
        assert ctx.error is not None
        return {"note": ctx.error.type}

    async with Workflows() as workflows:
        run = await workflows.run(flow, {})
    assert run.status == RunStatus.SUCCEEDED and run.state["note"] == "RuntimeError"


async def test_policy_rejects_bad_on_error() -> None:
    with pytest.raises(ConfigurationError):
        Policy(on_error="explode")
    with pytest.raises(ConfigurationError):
        Policy(attempts=0)


async def test_every_run_is_a_trace_and_every_step_a_span() -> None:
    flow = Workflow("traced", state=S)
    flow.step(visit("a"))

    @flow.step(policy=Policy(attempts=2, backoff=FAST))
    async def b(s: S, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise TimeoutError

    sink = Sink()
    async with Workflows(sink=sink) as workflows:
        run = await workflows.run(flow, {})
    (trace,) = sink.traces
    assert trace.trace_id == run.trace_id and trace.kind == "workflow"
    root, *spans = trace.spans
    assert root.attributes["trellis.run_id"] == run.id
    assert [s.attributes["trellis.step"] for s in spans] == ["a", "b"]
    assert [s.attributes["trellis.step.seq"] for s in spans] == [1, 2]
    assert spans[1].attributes["trellis.step.attempts"] == 2
    assert all(s.parent_id == root.span_id for s in spans)
    assert all(s.attributes["trellis.workflow"] == "traced" for s in spans)


async def test_cancel_a_running_run() -> None:
    flow = Workflow("cancel", state=S)
    started = asyncio.Event()

    @flow.step
    async def forever(s: S) -> None:
        started.set()
        await asyncio.sleep(60)

    sink = Sink()
    async with Workflows(sink=sink) as workflows:
        run_id = await workflows.start(flow, {})
        await started.wait()
        run = await workflows.cancel(run_id)
    assert run.status == RunStatus.CANCELLED and run.finished_at is not None
    assert len(sink.traces) == 1


async def test_shutdown_releases_the_lease_for_another_worker() -> None:
    flow = Workflow("handover", state=S)
    gate = asyncio.Event()

    @flow.step
    async def wait(s: S) -> dict[str, int]:
        if not gate.is_set():
            await asyncio.sleep(60)
        return {"x": 1}

    store = MemoryRunStore()
    first = Workflows(store=store, flows=[flow])
    run_id = await first.start(flow, {})
    await asyncio.sleep(0.01)
    await first.aclose()
    gate.set()
    async with Workflows(store=store, flows=[flow]) as second:
        assert await second.recover() == [run_id]
        run = await second.wait(run_id)
    assert run.status == RunStatus.SUCCEEDED and run.recoveries == 1

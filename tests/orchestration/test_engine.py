"""The engine on the in-memory store: routing, each policy path, state updates, cancel."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from pydantic import BaseModel

from trellis.errors import ConfigurationError, InvalidRequestError, UpstreamError
from trellis.observe.tracing import Trace
from trellis.orchestration import (
    END,
    Backoff,
    Context,
    FunctionStep,
    MemoryRunStore,
    Outcome,
    Policy,
    RunStatus,
    Usage,
    Workflow,
    Workflows,
    forbidden,
    gate,
    parallel,
)
from trellis.orchestration.parallel import dump_outcome, load_outcome
from trellis.store import Database

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


async def test_parallel_branches_join_with_the_default_reducer() -> None:
    flow = Workflow("fanout", state=S)
    running = 0
    peak = 0

    async def branch(name: str, field: str, value: object):  # noqa: ANN202
        async def step(s: S) -> dict[str, object]:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1
            return {field: value}

        step.__name__ = name
        return FunctionStep(step)

    flow.add(
        parallel(
            "both",
            {"left": await branch("l", "x", 7), "right": await branch("r", "note", "hi")},
        )
    )
    flow.step(visit("after"))
    async with Workflows() as workflows:
        run = await workflows.run(flow, {})
        steps = await workflows.steps(run.id)
    assert peak == 2  # both branches ran at the same time
    assert run.state == {"x": 7, "path": ["after"], "note": "hi"}
    assert steps[0].kind == "parallel" and steps[0].output["branches"] == {
        "left": {"x": 7},
        "right": {"note": "hi"},
    }


async def test_parallel_with_a_reducer_and_branch_retries() -> None:
    flow = Workflow("reduce", state=S)
    tries: list[str] = []

    async def add_one(s: S, ctx: Context) -> dict[str, int]:
        tries.append(ctx.step)
        if ctx.step == "sum/b" and ctx.attempt == 1:
            raise UpstreamError("flaky branch")
        return {"x": 1}

    branches = {
        name: FunctionStep(add_one, name=name, policy=Policy(attempts=2, backoff=FAST))
        for name in ("a", "b", "c")
    }
    flow.add(
        parallel(
            "sum",
            branches,
            reduce=lambda s, updates: {"x": s.x + sum(u["x"] for u in updates.values())},
        )
    )
    sink = Sink()
    async with Workflows(sink=sink) as workflows:
        run = await workflows.run(flow, {"x": 10})
    assert run.state["x"] == 13
    assert sorted(tries) == ["sum/a", "sum/b", "sum/b", "sum/c"]
    (span,) = sink.traces[0].spans[1:]
    names = [event["name"] for event in span.events]
    assert names.count("branch_done") == 3 and names.count("attempt_failed") == 1


async def test_parallel_conflicting_updates_fail_without_a_reducer() -> None:
    flow = Workflow("conflict", state=S)
    flow.add(parallel("both", {"a": FunctionStep(visit("a")), "b": FunctionStep(visit("b"))}))
    async with Workflows() as workflows:
        run = await workflows.run(flow, {})
    assert run.status == RunStatus.FAILED and run.error is not None
    assert "both set 'path'" in run.error["message"]


async def test_a_failing_branch_fails_the_parallel_step_into_its_fallback() -> None:
    flow = Workflow("branch-fails", state=S)

    async def broken(s: S) -> None:
        raise UpstreamError("down")

    flow.add(
        parallel(
            "both",
            {"ok": FunctionStep(visit("ok")), "bad": FunctionStep(broken)},
            next=END,
            policy=Policy(fallback="plan_b"),
        )
    )
    flow.step(visit("plan_b"), name="plan_b", next=END)
    async with Workflows() as workflows:
        run = await workflows.run(flow, {})
    assert run.status == RunStatus.SUCCEEDED and run.state["path"] == ["plan_b"]


async def test_a_retried_parallel_step_reruns_only_the_branches_that_failed() -> None:
    """The parallel step's own policy retries it; the branch that finished is read back from
    the journal instead of running again."""
    flow = Workflow("retry-fanout", state=S)
    ran: list[str] = []

    async def ok(s: S) -> dict[str, int]:
        ran.append("ok")
        return {"x": 1}

    async def flaky(s: S) -> dict[str, str]:
        ran.append("flaky")
        if ran.count("flaky") == 1:
            raise UpstreamError("flaky branch")
        return {"note": "fine"}

    flow.add(
        parallel(
            "both",
            {"ok": FunctionStep(ok), "flaky": FunctionStep(flaky)},
            next=END,
            policy=Policy(attempts=2, backoff=FAST),
        )
    )
    store = MemoryRunStore()
    async with Workflows(store=store) as workflows:
        run = await workflows.run(flow, {})
        (record,) = await workflows.steps(run.id)
    assert run.status == RunStatus.SUCCEEDED and run.state["x"] == 1 and run.state["note"] == "fine"
    assert sorted(ran) == ["flaky", "flaky", "ok"]
    assert record.attempts == 2
    keys = sorted(store.effects)
    assert [k.split(":")[2] for k in keys] == ["both/flaky", "both/ok"]
    assert all(store.effects[k].status == "done" for k in keys)


def test_a_branch_outcome_round_trips_through_json() -> None:
    class Item(BaseModel):
        name: str

    class Held(BaseModel):
        item: Item | None = None
        n: int = 0

    state = Held()
    fields = Outcome(
        update={"item": Item(name="a"), "n": 2},
        output={"why": ("tuple", 1)},
        usage=Usage(input_tokens=3, output_tokens=4, cost=0.25, model="m"),
        events=[{"name": "e", "attributes": {"k": 1}}],
        route="next",
    )
    back = load_outcome(orjson.loads(orjson.dumps(dump_outcome(fields))), state)
    assert back.update == {"item": Item(name="a"), "n": 2}
    assert isinstance(back.update["item"], Item)  # type: ignore[index]
    assert back.output == {"why": ["tuple", 1]}
    assert back.usage == fields.usage and back.events == fields.events and back.route == "next"
    whole = Outcome(update=Held(n=5))
    assert load_outcome(dump_outcome(whole), state).update == Held(n=5)
    assert load_outcome(dump_outcome(Outcome()), state).update is None


async def test_a_stale_owner_cannot_overwrite_the_new_owners_run() -> None:
    """Owner A's lease expires mid-step; B claims and finishes the run; A's late checkpoint is
    refused and A reports B's result instead of its own."""
    store = MemoryRunStore()
    release_a = asyncio.Event()

    def build(blocking: bool) -> Workflow[S]:
        flow = Workflow("fenced", state=S)

        @flow.step
        async def work(s: S) -> dict[str, str]:
            if blocking:
                await release_a.wait()
                return {"note": "written by A"}
            return {"note": "written by B"}

        return flow

    async with Workflows(store=store) as a, Workflows(store=store, flows=[build(False)]) as b:
        run_id = await a.start(build(True), {})
        await asyncio.sleep(0.01)
        store.runs[run_id].lease_until = 0.0  # A missed its renewals
        assert await b.recover() == [run_id]
        by_b = await b.wait(run_id)
        release_a.set()
        seen_by_a = await a.wait(run_id)
        steps = await a.steps(run_id)
    assert by_b.status == RunStatus.SUCCEEDED and by_b.state["note"] == "written by B"
    assert seen_by_a.state["note"] == "written by B" and seen_by_a.lease_epoch == 2
    assert [(r.seq, r.output) for r in steps] == [(1, {"note": "written by B"})]


async def test_cancel_from_another_worker_stops_the_run_at_the_next_step() -> None:
    store = MemoryRunStore()
    flow = Workflow("remote-cancel", state=S)
    proceed = asyncio.Event()
    ran: list[str] = []

    @flow.step
    async def first(s: S) -> None:
        ran.append("first")
        await proceed.wait()

    @flow.step
    async def second(s: S) -> None:
        ran.append("second")

    async with Workflows(store=store) as owner, Workflows(store=store) as other:
        run_id = await owner.start(flow, {})
        await asyncio.sleep(0.01)
        assert (await other.cancel(run_id)).status == RunStatus.RUNNING  # requested only
        proceed.set()
        run = await owner.wait(run_id)
    assert run.status == RunStatus.CANCELLED and ran == ["first"]


async def test_a_run_whose_step_disappeared_fails_as_workflow_changed() -> None:
    store = MemoryRunStore()
    old = Workflow("evolving", state=S)
    old.step(visit("a"))

    @old.step
    async def b(s: S) -> None:
        await asyncio.sleep(60)

    first = Workflows(store=store)
    run_id = await first.start(old, {})
    await asyncio.sleep(0.01)
    await first.aclose()
    new = Workflow("evolving", state=S)
    new.step(visit("a"))
    new.step(visit("c"))
    async with Workflows(store=store, flows=[new]) as second:
        await second.recover()
        run = await second.wait(run_id)
    assert run.status == RunStatus.FAILED and run.error is not None
    assert run.error["type"] == "workflow_changed"


async def test_a_failing_router_fails_the_run_instead_of_crash_looping() -> None:
    flow = Workflow("bad-router", state=S)

    def router(s: S) -> str:
        raise KeyError("missing")

    flow.step(visit("a"), next=router)
    flow.step(visit("b"))
    async with Workflows() as workflows:
        run = await workflows.run(flow, {})
    assert run.status == RunStatus.FAILED and run.lease_owner is None
    assert run.error is not None and run.error["type"] == "KeyError"


async def test_a_router_naming_an_unknown_step_fails_the_run() -> None:
    flow = Workflow("typo", state=S)
    flow.step(visit("a"), next=lambda s: "bb")
    flow.step(visit("b"))
    async with Workflows() as workflows:
        run = await workflows.run(flow, {})
    assert run.status == RunStatus.FAILED and run.error is not None
    assert "unknown step 'bb'" in run.error["message"]


class Said(BaseModel):
    text: str = "a plain answer"


async def test_what_a_step_puts_on_its_span_reaches_the_run_trace(db: Database) -> None:
    """Kinds record their work on the step's span (a gate's verdict, retrieval ids); the
    run trace is rebuilt from the step log, so the log keeps those attributes too."""
    flow = Workflow("spans", state=Said)

    @flow.step
    async def note(s: Said, ctx: Context) -> None:
        ctx.span.set("app.checked_by", "note")

    flow.add(gate("check", [forbidden("text", terms=["secret"])]))
    flow.check()
    sink = Sink()
    async with Workflows(db, sink=sink) as workflows:
        run = await workflows.run(flow, {})
        steps = await workflows.steps(run.id)
    assert [s.attributes for s in steps][0] == {"app.checked_by": "note"}
    (trace,) = sink.traces
    _, first, second = trace.spans
    assert first.attributes["app.checked_by"] == "note"
    assert first.attributes["trellis.step"] == "note"  # the log's own fields stay
    assert second.attributes["trellis.gate.passed"] is True

"""The engine loop: execute a step under its policy, checkpoint, route; until END or a pause.

One call of :meth:`Engine.run_segment` drives a run it holds the lease of. After every step
the new state, the step's record and the cursor are committed together (``RunStore.checkpoint``,
fenced by the lease), so a crash loses at most the step in flight, and a lost lease stops
the run here without writing anything.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from trellis.errors import TrellisError
from trellis.observe.tracing import Span, Trace, TraceSink, new_span_id
from trellis.orchestration.context import Context, StepError
from trellis.orchestration.identity import RunKeyRevoked, run_caller
from trellis.orchestration.policy import attempt_loop
from trellis.orchestration.privacy import BodiesMode, StepPrivacy
from trellis.orchestration.records import Checkpoint, Lease, RunRecord, RunStatus, StepRecord
from trellis.orchestration.steps import END, Outcome, Step
from trellis.orchestration.store import RunStore
from trellis.orchestration.workflow import Workflow

__all__ = ["Engine", "LeaseLost", "merge_state", "run_trace"]


class LeaseLost(TrellisError):
    """Another owner took the run over (our lease expired): this process stops driving it."""


def merge_state(flow: Workflow[Any], state: BaseModel, update: Any) -> BaseModel:
    """The state after a step's update, validated: the state object, a dict of fields, or None."""
    if update is None:
        return state
    if isinstance(update, flow.state):
        return update
    if isinstance(update, BaseModel):
        update = dict(update)
    if not isinstance(update, dict):
        raise TypeError(
            "a step returns the state, a dict of field updates or None, "
            f"not {type(update).__name__}"
        )
    unknown = set(update) - set(flow.state.model_fields)
    if unknown:
        raise ValueError(f"update names fields the state has not: {sorted(unknown)}")
    return flow.state.model_validate({**dict(state), **update})


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    return value


@dataclass(slots=True)
class _Result:
    outcome: Outcome | None
    state: BaseModel
    error: BaseException | None
    attempts: int


class Engine:
    """Drives runs of registered workflows through a :class:`RunStore`."""

    def __init__(
        self,
        store: RunStore,
        *,
        services: dict[str, Any] | None = None,
        keep_step_states: bool = True,
        bodies: BodiesMode = "full",
    ) -> None:
        self.store = store
        self.services = services if services is not None else {}
        self.keep_step_states = keep_step_states
        #: What step records keep of outputs and states (``tracing.bodies``).
        self.privacy = StepPrivacy(bodies)
        #: Run ids whose local task is being cancelled on the user's request (not a shutdown).
        self.cancelling: set[str] = set()

    async def run_segment(self, flow: Workflow[Any], lease: Lease) -> RunRecord:
        """Run from the cursor until the run ends, waits for input, or the lease is lost."""
        record = await self.store.get(lease.run_id)
        if record is None:
            raise LeaseLost(f"run {lease.run_id} is gone")
        state = flow.state.model_validate(record.state)
        cursor, seq = record.next_step, record.seq
        handoff = StepError(**record.error) if record.error else None
        try:
            services = await self._run_services(record)
        except RunKeyRevoked as exc:
            error = StepError.from_exception(exc, cursor or "").to_dict()
            await self._finish(lease, RunStatus.FAILED, error)
            final = await self.store.get(lease.run_id)
            assert final is not None
            return final
        try:
            while True:
                if record.cancel_requested:
                    await self._finish(lease, RunStatus.CANCELLED, None)
                    break
                if cursor is None or cursor == END:
                    # Only reached when resumed input routed to END: finish without a step.
                    await self._finish(lease, RunStatus.SUCCEEDED, None)
                    break
                if cursor not in flow.steps:
                    error = {"type": "workflow_changed", "message": f"no step {cursor!r}"}
                    await self._finish(lease, RunStatus.FAILED, {**error, "step": cursor})
                    break
                step = flow.steps[cursor]
                seq += 1
                cp, state, handoff = await self._step(
                    flow, record, step, seq, state, handoff, services
                )
                self.privacy.apply(cp.step)
                if cp.finished:
                    cp.state = self.privacy.final_state(cp.state)
                committed = await self.store.checkpoint(lease, cp, time.time())
                if committed is None:
                    raise LeaseLost(f"run {lease.run_id} is owned by another worker now")
                if cp.release:
                    break
                record.cancel_requested = committed.cancel_requested
                cursor = cp.next_step
        except asyncio.CancelledError:
            if lease.run_id in self.cancelling:
                self.cancelling.discard(lease.run_id)
                await self._finish(lease, RunStatus.CANCELLED, None)
                final = await self.store.get(lease.run_id)
                assert final is not None
                return final
            # Shutdown: give the run up at once so another worker continues it.
            await asyncio.shield(self.store.release(lease))
            raise
        final = await self.store.get(lease.run_id)
        assert final is not None
        return final

    async def _run_services(self, record: RunRecord) -> dict[str, Any]:
        """The services of this run's steps: the shared ones, with the run's own caller
        (the key that started it, looked up again now: it may have been revoked)."""
        if "caller" in self.services:  # a library user wired one caller for every run
            return self.services
        caller = await run_caller(record.key_id, self.services.get("keys"), record.project_id)
        return {**self.services, "caller": caller}

    async def _finish(self, lease: Lease, status: RunStatus, error: dict[str, Any] | None) -> None:
        if not await self.store.finish(lease, status.value, error, time.time()):
            raise LeaseLost(f"run {lease.run_id} is owned by another worker now")

    async def _attempts(self, step: Step, ctx: Context, flow: Workflow[Any], state: Any) -> _Result:
        tried = await attempt_loop(step, ctx, state)
        if tried.outcome is None:
            return _Result(None, state, tried.error, tried.attempts)
        try:
            new_state = merge_state(flow, state, tried.outcome.update)
        except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            return _Result(None, state, exc, tried.attempts)
        return _Result(tried.outcome, new_state, None, tried.attempts)

    async def _step(
        self,
        flow: Workflow[Any],
        record: RunRecord,
        step: Step,
        seq: int,
        state: BaseModel,
        handoff: StepError | None,
        services: dict[str, Any] | None = None,
    ) -> tuple[Checkpoint, BaseModel, StepError | None]:
        """Execute one step under its policy; the checkpoint to commit, the new state, the
        error handed to the next step (fallback or goto)."""
        span = Span(name=f"step {step.name}", trace_id=record.trace_id, span_id=new_span_id())
        ctx = Context(
            run_id=record.id,
            workflow=flow.name,
            step=step.name,
            seq=seq,
            span=span,
            error=handoff,
            store=self.store,
            services=self.services if services is None else services,
            session_id=record.session_id,
            key_id=record.key_id,
        )
        result = await self._attempts(step, ctx, flow, state)
        span.end()
        outcome, new_state = result.outcome, result.state
        if outcome is not None:
            for event in outcome.events:
                if "time_ns" in event:
                    span.events.append(event)
                else:
                    span.add_event(event["name"], **event.get("attributes", {}))
        usage = outcome.usage if outcome is not None else None
        step_record = StepRecord(
            run_id=record.id,
            seq=seq,
            step=step.name,
            kind=step.kind,
            status="ok",
            attempts=result.attempts,
            span_id=span.span_id,
            start_ns=span.start_ns,
            end_ns=span.end_ns or time.time_ns(),
            model=usage.model if usage else None,
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            cost=usage.cost if usage else None,
            events=span.events or None,
            attributes=_dump(span.attributes) or None,
        )
        dumped = new_state.model_dump(mode="json")
        if self.keep_step_states:
            step_record.state = dumped
        if outcome is not None and outcome.pause is not None:
            pause = outcome.pause
            step_record.output = _dump(outcome.output)
            step_record.status, step_record.next_step = "waiting", step.name
            waiting = {
                "step": step.name,
                "into": pause.into,
                "prompt": pause.prompt,
                "schema": pause.schema,
            }
            cp = Checkpoint(
                step=step_record,
                state=dumped,
                status=RunStatus.WAITING.value,
                next_step=step.name,
                waiting_for=waiting,
                release=True,
            )
            return cp, new_state, None
        try:
            target, next_handoff = self._route(flow, step, step_record, new_state, result)
            output = None
            if target == END:
                output = _dump(flow.output(new_state) if flow.output is not None else dumped)
        except Exception as exc:
            # A routing or output function failed (user code, deterministic): the run fails
            # here rather than crash-looping through recoveries.
            error = StepError.from_exception(exc, step.name)
            step_record.status, step_record.error = "error", error.to_dict()
            return self._failed(step_record, dumped, error), new_state, None
        if target is None:
            assert step_record.error is not None
            return (
                self._failed(step_record, dumped, StepError(**step_record.error)),
                new_state,
                None,
            )
        step_record.next_step = target
        if target == END:
            cp = Checkpoint(
                step=step_record,
                state=dumped,
                status=RunStatus.SUCCEEDED.value,
                next_step=None,
                output=output,
                release=True,
                finished=True,
            )
            return cp, new_state, None
        cp = Checkpoint(
            step=step_record,
            state=dumped,
            status=RunStatus.RUNNING.value,
            next_step=target,
            error=next_handoff.to_dict() if next_handoff else None,
        )
        return cp, new_state, next_handoff

    @staticmethod
    def _route(
        flow: Workflow[Any], step: Step, step_record: StepRecord, state: BaseModel, result: _Result
    ) -> tuple[str | None, StepError | None]:
        """Where the run goes after the step (None: it fails), and the error handed on."""
        if result.error is None:
            assert result.outcome is not None
            outcome = result.outcome
            step_record.output = _dump(
                outcome.output if outcome.output is not None else outcome.update
            )
            return flow.next_after(step, state, outcome), None
        error = StepError.from_exception(result.error, step.name)
        step_record.error = error.to_dict()
        step_record.status = "error"
        policy = step.policy
        if policy.fallback is not None:
            return policy.fallback, error
        if policy.on_error == "skip":
            step_record.status = "skipped"
            return flow.next_after(step, state), None
        if policy.goto is not None:
            return policy.goto, error
        return None, None

    @staticmethod
    def _failed(step_record: StepRecord, dumped: dict[str, Any], error: StepError) -> Checkpoint:
        return Checkpoint(
            step=step_record,
            state=dumped,
            status=RunStatus.FAILED.value,
            next_step=None,
            error=error.to_dict(),
            release=True,
            finished=True,
        )


def run_trace(run: RunRecord, steps: list[StepRecord]) -> Trace:
    """The run as one trace: a root span for the run and one span per step record.

    Built from the step log, so a run resumed after a pause or recovered after a crash still
    has every step of every segment in its single trace.
    """
    trace = Trace(kind="workflow", name=run.workflow, trace_id=run.trace_id)
    root = trace.root
    assert root is not None
    root.start_ns = int(run.created_at * 1e9)
    root.end_ns = int((run.finished_at or run.updated_at) * 1e9)
    root.status = "error" if run.status == RunStatus.FAILED else "ok"
    root.update(
        {
            "trellis.workflow": run.workflow,
            "trellis.run_id": run.id,
            "trellis.run.status": run.status,
            "trellis.run.recoveries": run.recoveries,
            "trellis.run.steps": len(steps),
        }
    )
    if run.error:
        root.set("error.type", run.error.get("type"))
        root.set("error.message", run.error.get("message"))
    for record in steps:
        span = Span(
            name=f"step {record.step}",
            trace_id=run.trace_id,
            span_id=record.span_id,
            parent_id=root.span_id,
            start_ns=record.start_ns,
            end_ns=record.end_ns,
            status="error" if record.status == "error" else "ok",
        )
        span.update(
            {
                "trellis.workflow": run.workflow,
                "trellis.run_id": run.id,
                "trellis.step": record.step,
                "trellis.step.kind": record.kind,
                "trellis.step.seq": record.seq,
                "trellis.step.attempts": record.attempts,
                "trellis.step.status": record.status,
                "gen_ai.request.model": record.model,
                "gen_ai.usage.input_tokens": record.input_tokens,
                "gen_ai.usage.output_tokens": record.output_tokens,
                "cost": record.cost,
            }
        )
        # What the step's kind recorded (a gate's verdict, retrieval ids...), where the
        # step log's own fields above say nothing.
        for key, value in (record.attributes or {}).items():
            if span.attributes.get(key) is None:
                span.set(key, value)
        if record.error:
            span.set("error.type", record.error.get("type"))
            span.set("error.message", record.error.get("message"))
        span.events.extend(record.events or [])
        trace.spans.append(span)
    trace.summary = {
        "key_id": run.key_id,
        "project_id": run.project_id,
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "cost": run.cost,
    }
    return trace


def submit_trace(sink: TraceSink, run: RunRecord, steps: list[StepRecord]) -> None:
    sink.submit(run_trace(run, steps))

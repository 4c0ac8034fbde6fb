"""Parallel branches with a join: branches run concurrently on the same state, a reducer
combines their updates into one, and the whole fan-out is one step (one checkpoint).

Each branch is a step of any kind with its own policy; its context's step name is
``"<parallel>/<branch>"``, so side-effecting tools in different branches get different
idempotency keys. If a branch still fails after its policy, the other branches are
cancelled and the parallel step fails (its own policy decides what happens next).

Each finished branch's outcome (update, output, usage, events) is made durable on its own,
in the effect journal (``workflow_effects``) under the branch's key
(:func:`branch_key`), as soon as the branch ends. After a crash, or when the parallel step
is tried again by its policy, branches with a recorded outcome do not run again: their
outcome is read back and the reducer sees every branch, whether it ran now or before.
That costs a read and a commit per branch; ``checkpoint_branches=False`` turns it off.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from trellis.errors import ConfigurationError
from trellis.orchestration.context import Context
from trellis.orchestration.policy import Policy, attempt_loop
from trellis.orchestration.records import Effect
from trellis.orchestration.steps import Next, Outcome, Step, Update, Usage

if TYPE_CHECKING:
    from trellis.orchestration.store import RunStore

__all__ = [
    "ParallelStep",
    "parallel",
    "merge_updates",
    "branch_key",
    "state_hash",
    "dump_outcome",
    "load_outcome",
]

Reducer = Callable[[Any, dict[str, Update]], Update]

#: Longest key ``workflow_effects`` holds; longer branch keys are shortened with a hash.
_MAX_KEY = 200


def merge_updates(state: Any, updates: dict[str, Update]) -> dict[str, Any]:
    """The default reducer: the union of the branches' field updates (dicts); two branches
    setting the same field is an error, as is a branch returning a whole state."""
    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for branch, update in updates.items():
        if update is None:
            continue
        if not isinstance(update, dict):
            raise ValueError(f"branch {branch!r} returned a whole state; give parallel() a reducer")
        for name, value in update.items():
            if name in merged:
                raise ValueError(
                    f"branches {owner[name]!r} and {branch!r} both set {name!r}; "
                    "give parallel() a reducer"
                )
            merged[name], owner[name] = value, branch
    return merged


def state_hash(state: Any) -> str:
    """A short hash of the state a fan-out ran on (part of its branches' journal keys)."""
    dumped = state.model_dump(mode="json") if isinstance(state, BaseModel) else state
    canonical = orjson.dumps(to_jsonable_python(dumped), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


def branch_key(branch_ctx: Context, hashed: str) -> str:
    """The journal key of a branch's outcome: ``"{run}:{seq}:{parallel}/{branch}:@branch:{h}"``.

    ``h`` hashes the state the branch ran on, so an outcome is only ever reused for the same
    input. Tool keys end in a tool name, which cannot start with ``@``: they never collide."""
    key = branch_ctx.idempotency_key(f"@branch:{hashed}")
    if len(key) <= _MAX_KEY:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{branch_ctx.run_id}:{branch_ctx.seq}:@branch:{digest}"


def dump_outcome(outcome: Outcome) -> dict[str, Any]:
    """A branch's outcome as JSON (what the journal keeps)."""
    update = outcome.update
    dumped_update: dict[str, Any] | None
    if update is None:
        dumped_update = None
    elif isinstance(update, BaseModel):
        dumped_update = {"state": update.model_dump(mode="json")}
    else:
        dumped_update = {"fields": to_jsonable_python(update)}
    usage = outcome.usage
    return {
        "update": dumped_update,
        "output": to_jsonable_python(outcome.output),
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cost": usage.cost,
            "model": usage.model,
        },
        "events": to_jsonable_python(outcome.events),
        "route": outcome.route,
    }


def _typed_fields(state: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """Field values read back as the state's field types (a nested model comes back as that
    model, not a dict), so a reducer sees what the branch returned; a value that does not
    validate stays as stored, for the merge to report."""
    model_fields = type(state).model_fields if isinstance(state, BaseModel) else {}
    typed: dict[str, Any] = {}
    for name, value in fields.items():
        info = model_fields.get(name)
        if info is None or info.annotation is None:
            typed[name] = value
            continue
        try:
            typed[name] = TypeAdapter(info.annotation).validate_python(value)
        except ValidationError:
            typed[name] = value
    return typed


def load_outcome(payload: dict[str, Any], state: Any) -> Outcome:
    """The outcome :func:`dump_outcome` stored, typed again against the current state."""
    stored = payload.get("update")
    update: Update = None
    if stored is not None and "state" in stored:
        update = type(state).model_validate(stored["state"])
    elif stored is not None:
        update = _typed_fields(state, stored["fields"])
    usage = payload.get("usage") or {}
    return Outcome(
        update=update,
        output=payload.get("output"),
        usage=Usage(
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            cost=float(usage.get("cost") or 0.0),
            model=usage.get("model"),
        ),
        events=list(payload.get("events") or []),
        route=payload.get("route"),
    )


class ParallelStep(Step):
    kind = "parallel"

    def __init__(
        self,
        name: str,
        branches: Mapping[str, Step],
        *,
        reduce: Reducer | None = None,
        next: Next | None = None,
        policy: Policy | None = None,
        checkpoint_branches: bool = True,
    ) -> None:
        super().__init__(name, next=next, policy=policy)
        if not branches:
            raise ConfigurationError(f"parallel step {name!r} has no branches")
        self.branches = dict(branches)
        self.reduce = reduce or merge_updates
        #: Journal each finished branch (a read and a commit per branch). Off, the fan-out
        #: costs no more than one step, and runs again whole after a crash.
        self.checkpoint_branches = checkpoint_branches

    async def _branch(
        self, ctx: Context, label: str, step: Step, state: Any, hashed: str
    ) -> Outcome:
        branch_ctx = Context(
            run_id=ctx.run_id,
            workflow=ctx.workflow,
            step=f"{ctx.step}/{label}",
            seq=ctx.seq,
            span=ctx.span,
            error=ctx.error,
            store=ctx.store,
            services=ctx.services,
            session_id=ctx.session_id,
            key_id=ctx.key_id,
        )
        store = ctx.store if self.checkpoint_branches else None
        key = branch_key(branch_ctx, hashed)
        found = await store.effect(key) if store is not None else None
        if found is not None and found.status == "done":
            if ctx.span is not None:
                ctx.span.add_event("branch_restored", branch=label, key=key)
            return load_outcome(found.result, state)
        tried = await attempt_loop(step, branch_ctx, state)
        if tried.error is not None:
            raise tried.error
        assert tried.outcome is not None
        if store is not None:
            await self._record(store, branch_ctx, key, hashed, tried.outcome, found)
        if ctx.span is not None:
            ctx.span.add_event("branch_done", branch=label, attempts=tried.attempts)
        return tried.outcome

    @staticmethod
    async def _record(
        store: RunStore,
        branch_ctx: Context,
        key: str,
        hashed: str,
        outcome: Outcome,
        found: Effect | None,
    ) -> None:
        """Journal a finished branch, committed before the fan-out goes on: one insert of
        the finished row, as a rule.

        A row that was there at the lookup (its record was cut short) is finished here too.
        One written in between, by a worker whose lease expired while it still ran this
        branch, is only re-marked ``started`` by ``begin_effect``: not reused, so the branch
        runs again if the step does. A ``done`` row always holds one whole outcome."""
        payload = dump_outcome(outcome)
        now = time.time()
        await store.begin_effect(
            Effect(
                key=key,
                run_id=branch_ctx.run_id,
                step=branch_ctx.step,
                seq=branch_ctx.seq,
                args_hash=hashed,
                status="done",
                started_at=now,
                result=payload,
                finished_at=now,
            )
        )
        if found is not None:
            await store.finish_effect(key, "done", payload, None, now)

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        hashed = state_hash(state)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {
                    label: group.create_task(self._branch(ctx, label, step, state, hashed))
                    for label, step in self.branches.items()
                }
        except* Exception as failed:
            # The first branch's error is the step's error, so the policy's retry_on applies.
            raise failed.exceptions[0] from None
        outcomes = {label: task.result() for label, task in tasks.items()}
        update = self.reduce(state, {label: o.update for label, o in outcomes.items()})
        usage = Usage(
            input_tokens=sum(o.usage.input_tokens for o in outcomes.values()),
            output_tokens=sum(o.usage.output_tokens for o in outcomes.values()),
            cost=sum(o.usage.cost for o in outcomes.values()),
        )
        output = {
            label: o.output if o.output is not None else o.update for label, o in outcomes.items()
        }
        events = [
            _branch_event(label, event) for label, o in outcomes.items() for event in o.events
        ]
        return Outcome(
            update=update,
            output={"branches": output, "update": update},
            usage=usage,
            events=events,
        )


def _branch_event(label: str, event: dict[str, Any]) -> dict[str, Any]:
    """A branch's own event on the parallel step's span, marked with the branch."""
    return {**event, "attributes": {**event.get("attributes", {}), "trellis.branch": label}}


def parallel(
    name: str,
    branches: Mapping[str, Step],
    *,
    reduce: Reducer | None = None,
    next: Next | None = None,
    policy: Policy | None = None,
    checkpoint_branches: bool = True,
) -> ParallelStep:
    """Branches run concurrently on the state; ``reduce(state, {branch: update})`` joins them.

    Each branch's outcome is journaled when it ends, so after a crash only the branches
    that had not finished run again; ``checkpoint_branches=False`` saves those commits for
    cheap branches that may as well all run again."""
    return ParallelStep(
        name,
        branches,
        reduce=reduce,
        next=next,
        policy=policy,
        checkpoint_branches=checkpoint_branches,
    )

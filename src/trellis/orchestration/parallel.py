"""Parallel branches with a join: branches run concurrently on the same state, a reducer
combines their updates into one, and the whole fan-out is one step (one checkpoint).

Each branch is a step of any kind with its own policy; its context's step name is
``"<parallel>/<branch>"``, so side-effecting tools in different branches get different
idempotency keys. If a branch still fails after its policy, the other branches are
cancelled and the parallel step fails (its own policy decides what happens next). After a
crash the fan-out runs again as a whole; tool effects already recorded are not repeated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from trellis.errors import ConfigurationError
from trellis.orchestration.context import Context
from trellis.orchestration.policy import Policy, attempt_loop
from trellis.orchestration.steps import Next, Outcome, Step, Update, Usage

__all__ = ["ParallelStep", "parallel", "merge_updates"]

Reducer = Callable[[Any, dict[str, Update]], Update]


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
    ) -> None:
        super().__init__(name, next=next, policy=policy)
        if not branches:
            raise ConfigurationError(f"parallel step {name!r} has no branches")
        self.branches = dict(branches)
        self.reduce = reduce or merge_updates

    async def _branch(self, ctx: Context, label: str, step: Step, state: Any) -> Outcome:
        branch_ctx = Context(
            run_id=ctx.run_id,
            workflow=ctx.workflow,
            step=f"{self.name}/{label}",
            seq=ctx.seq,
            span=ctx.span,
            error=ctx.error,
            store=ctx.store,
            services=ctx.services,
            key_id=ctx.key_id,
        )
        tried = await attempt_loop(step, branch_ctx, state)
        if tried.error is not None:
            raise tried.error
        assert tried.outcome is not None
        if ctx.span is not None:
            ctx.span.add_event("branch_done", branch=label, attempts=tried.attempts)
        return tried.outcome

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {
                    label: group.create_task(self._branch(ctx, label, step, state))
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
        return Outcome(update=update, output={"branches": output, "update": update}, usage=usage)


def parallel(
    name: str,
    branches: Mapping[str, Step],
    *,
    reduce: Reducer | None = None,
    next: Next | None = None,
    policy: Policy | None = None,
) -> ParallelStep:
    """Branches run concurrently on the state; ``reduce(state, {branch: update})`` joins them."""
    return ParallelStep(name, branches, reduce=reduce, next=next, policy=policy)

"""The ``gate`` step kind: checks an answer before it is shown and records a verdict.

A gate runs its checks (``trellis.orchestration.kinds.checks``) in order on the state,
stopping at the first failure unless ``run_all=True`` (so a costly judge placed last is
not called for an answer that already failed a cheap check). The :class:`Verdict` goes
into the state field ``into`` when given, and each check's result is an event on the
step's span. What happens next is plain code: ``route(state, verdict)`` returns the next
step (retry with more context, another model, a refusal, a human), or the workflow's own
route reads the verdict from the state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trellis.errors import ConfigurationError
from trellis.orchestration.context import Context
from trellis.orchestration.kinds.checks import Check, CheckResult, Verdict
from trellis.orchestration.policy import Policy
from trellis.orchestration.steps import Next, Outcome, Step, Usage

__all__ = ["GateStep", "gate", "evaluate"]

#: ``route=`` of a gate: the state after the gate and its verdict → the next step (or END).
GateRoute = Callable[[Any, Verdict], str]


async def evaluate(
    checks: Sequence[Check], state: Any, services: dict[str, Any], *, run_all: bool = False
) -> tuple[Verdict, Usage]:
    """Run ``checks`` on ``state``; the verdict and the model usage the checks spent."""
    results: list[CheckResult] = []
    input_tokens = output_tokens = 0
    cost = 0.0
    for check in checks:
        result = await check.run(state, services)
        results.append(result)
        usage = result._usage
        cost += result._cost
        if usage is not None:
            input_tokens += usage.prompt_tokens
            output_tokens += usage.completion_tokens
        if not result.passed and not run_all:
            break
    verdict = Verdict(passed=all(r.passed for r in results), checks=results)
    return verdict, Usage(input_tokens=input_tokens, output_tokens=output_tokens, cost=cost)


class GateStep(Step):
    kind = "gate"

    def __init__(
        self,
        name: str,
        *,
        checks: Sequence[Check],
        into: str | None = None,
        route: GateRoute | None = None,
        run_all: bool = False,
        next: Next | None = None,
        policy: Policy | None = None,
    ) -> None:
        super().__init__(name, next=next, policy=policy)
        if not checks:
            raise ConfigurationError(f"gate {name!r} needs at least one check")
        if route is not None and next is not None:
            raise ConfigurationError(f"gate {name!r}: give route= or next=, not both")
        names = [check.name for check in checks]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"gate {name!r}: check names repeat: {names}")
        self.checks = list(checks)
        self.into = into
        self.route = route
        self.run_all = run_all

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        verdict, usage = await evaluate(self.checks, state, ctx.services, run_all=self.run_all)
        span = ctx.span
        if span is not None:
            span.set("trellis.gate.passed", verdict.passed)
            span.set("trellis.gate.failed", verdict.failed)
            for result in verdict.checks:
                attributes = result.model_dump(exclude_none=True)
                span.add_event("check", check=attributes.pop("name"), **attributes)
        route = None
        if self.route is not None:
            route = self.route(
                state if self.into is None else _with(state, self.into, verdict), verdict
            )
            if span is not None:
                span.set("trellis.gate.route", route)
        update = {self.into: verdict} if self.into is not None else None
        return Outcome(update=update, output=verdict.model_dump(), usage=usage, route=route)


def _with(state: Any, field: str, verdict: Verdict) -> Any:
    """The state as the router will see it after the checkpoint: with the verdict in it."""
    copy = getattr(state, "model_copy", None)
    return copy(update={field: verdict}) if copy is not None else {**state, field: verdict}


def gate(
    name: str,
    checks: Sequence[Check],
    *,
    into: str | None = None,
    route: GateRoute | None = None,
    run_all: bool = False,
    next: Next | None = None,
    policy: Policy | None = None,
) -> GateStep:
    """A gate step: run ``checks`` (in order; stop at the first failure unless
    ``run_all``), put the :class:`Verdict` into the field ``into`` (optional), and go
    where ``route(state, verdict)`` says (or ``next`` / the workflow's route)."""
    return GateStep(
        name, checks=checks, into=into, route=route, run_all=run_all, next=next, policy=policy
    )

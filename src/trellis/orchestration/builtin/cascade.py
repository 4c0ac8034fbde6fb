"""``cascade``: a cheap model first, a gate, and a stronger model only when the gate fails.

Each run records what the cascade saved (``savings`` in the state and the output): the
cheap path's tokens and cost (what the gateway recorded on its calls' traces: 0 when it
was answered from the cache), what the strong model would have cost for the same tokens
(its deployment's prices from the gateway's price book), and whether it escalated. A run
that did not escalate saved ``strong_cost_estimate - cheap_cost``; one that escalated
saved nothing and spent the cheap call on top (``cost_saved`` is minus the cheap cost).
With the bundled models every price is 0, so the tokens are recorded too.

The gate is offline by default: the answer is not empty, at least ``min_words`` long, and
free of the ``forbidden`` phrases (the evasions a small model falls back on); with
``judge_model`` set a model also judges it against ``criteria``.

Run it: ``await trellis.workflows.run(workflow, {"prompt": "...", "cheap_model": "local",
"strong_model": "gpt-4o"})``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from trellis.inference.gateway import Gateway
from trellis.orchestration.context import Context
from trellis.orchestration.kinds.checks import Check, CheckResult, Verdict, forbidden, judge
from trellis.orchestration.kinds.gate import GateStep, evaluate
from trellis.orchestration.kinds.llm import LLMResult, complete, gateway_of
from trellis.orchestration.steps import END, Outcome, Step, Usage
from trellis.orchestration.workflow import Workflow
from trellis.schema import ChatMessage, ChatRequest
from trellis.schema import Usage as ChatUsage

__all__ = ["CascadeState", "Savings", "workflow", "build", "DEFAULT_FORBIDDEN"]

#: Phrases that mark an answer as an evasion, not an answer.
DEFAULT_FORBIDDEN = ["I don't know", "I do not know", "I'm not sure", "as an AI", "I cannot"]


class Savings(BaseModel):
    escalated: bool
    cheap_model: str
    strong_model: str
    cheap_input_tokens: int
    cheap_output_tokens: int
    cheap_cost: float
    #: What the strong model's prices make of the cheap path's tokens.
    strong_cost_estimate: float
    #: Whether both prices were known (an unpriced model counts as 0).
    priced: bool
    cost_saved: float
    #: Strong-model tokens not spent (the cheap path's, when it did not escalate).
    strong_tokens_avoided: int


class CascadeState(BaseModel):
    prompt: str
    system: str | None = None
    cheap_model: str = "local"
    strong_model: str = "local"
    min_words: int = 1
    forbidden: list[str] = Field(default_factory=lambda: list(DEFAULT_FORBIDDEN))
    judge_model: str | None = None
    criteria: str = "The answer addresses the question and is correct."
    # --- filled by the run ---
    answer: str | None = None
    cheap_answer: str | None = None
    cheap_usage: dict[str, Any] | None = None
    verdict: Verdict | None = None
    escalated: bool = False
    savings: Savings | None = None


def _messages(s: CascadeState) -> list[ChatMessage]:
    messages = [ChatMessage(role="system", content=s.system)] if s.system else []
    return [*messages, ChatMessage(role="user", content=s.prompt)]


def price(gateway: Gateway, alias: str, usage: ChatUsage, served: str | None) -> tuple[float, bool]:
    """What ``usage`` costs on ``alias`` (its deployment that served it, else its first)."""
    deployments = gateway.router.alias(alias).deployments
    deployment = next((d for d in deployments if d.model == served), deployments[0])
    cost = gateway.prices.cost(deployment, usage, served)
    return cost.total, cost.priced


class Answer(Step):
    """Ask ``cheap_model`` or ``strong_model`` (per ``which``); the text into ``answer``."""

    kind = "llm"

    def __init__(self, name: str, which: str, max_tokens: int) -> None:
        super().__init__(name)
        self.which = which
        self.max_tokens = max_tokens

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        s: CascadeState = state
        alias = s.cheap_model if self.which == "cheap" else s.strong_model
        gateway = gateway_of(ctx)
        request = ChatRequest(model=alias, messages=_messages(s), max_tokens=self.max_tokens)
        result: LLMResult = await complete(gateway, request, caller=ctx.services.get("caller"))
        # The cost the gateway recorded on the calls' traces (0 for a cached answer);
        # ``priced`` says whether the deployment has prices at all.
        cost = result.cost
        _, priced = price(gateway, alias, result.usage, result.model)
        usage = {
            "model": result.model,
            "input_tokens": result.usage.prompt_tokens,
            "output_tokens": result.usage.completion_tokens,
            "cost": cost,
            "priced": priced,
        }
        update: dict[str, Any] = {"answer": result.text}
        if self.which == "cheap":
            update |= {"cheap_answer": result.text, "cheap_usage": usage}
        return Outcome(
            update=update,
            output=usage,
            usage=Usage(
                input_tokens=result.usage.prompt_tokens,
                output_tokens=result.usage.completion_tokens,
                cost=cost,
                model=result.model,
            ),
        )


class _MinWords(Check):
    kind = "min_words"

    def __init__(self) -> None:
        super().__init__("min_words:answer")

    async def run(self, state: Any, services: Mapping[str, Any]) -> CheckResult:
        words = len((state.answer or "").split())
        passed = words >= max(state.min_words, 1)
        return CheckResult(name=self.name, passed=passed, detail=f"{words} word(s)")


class CascadeGate(GateStep):
    """The gate with its checks built from the state (phrases, judge model)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, checks=[_MinWords()], into="verdict")

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        s: CascadeState = state
        checks: list[Check] = [_MinWords()]
        if s.forbidden:
            checks.append(forbidden("answer", terms=s.forbidden))
        if s.judge_model:
            checks.append(judge("answer", s.criteria, model=s.judge_model, question="prompt"))
        verdict, usage = await evaluate(checks, state, ctx.services)
        if ctx.span is not None:
            ctx.span.set("trellis.gate.passed", verdict.passed)
            for result in verdict.checks:
                attributes = result.model_dump(exclude_none=True)
                ctx.span.add_event("check", check=attributes.pop("name"), **attributes)
        return Outcome(
            update={"verdict": verdict},
            output=verdict.model_dump(),
            usage=usage,
            route="keep" if verdict.passed else "escalate",
        )


def build(*, max_tokens: int = 256) -> Workflow[CascadeState]:
    """The workflow; ``max_tokens`` bounds each answer."""
    flow = Workflow(
        "cascade",
        state=CascadeState,
        output=lambda s: {
            "answer": s.answer,
            "escalated": s.escalated,
            "savings": s.savings.model_dump() if s.savings else None,
        },
    )
    flow.add(Answer("cheap", "cheap", max_tokens))
    flow.add(CascadeGate("check"))

    @flow.step(next=END)
    def keep(s: CascadeState, ctx: Context) -> dict[str, Any]:
        return {"savings": _savings(s, ctx, escalated=False)}

    @flow.step(next="strong")
    def escalate(s: CascadeState, ctx: Context) -> dict[str, Any]:
        return {"escalated": True, "savings": _savings(s, ctx, escalated=True)}

    flow.add(Answer("strong", "strong", max_tokens))
    return flow


def _savings(s: CascadeState, ctx: Context, *, escalated: bool) -> Savings:
    cheap = s.cheap_usage or {}
    tokens = ChatUsage(
        prompt_tokens=cheap.get("input_tokens", 0),
        completion_tokens=cheap.get("output_tokens", 0),
        total_tokens=cheap.get("input_tokens", 0) + cheap.get("output_tokens", 0),
    )
    strong_cost, strong_priced = price(gateway_of(ctx), s.strong_model, tokens, None)
    cheap_cost = float(cheap.get("cost", 0.0))
    return Savings(
        escalated=escalated,
        cheap_model=s.cheap_model,
        strong_model=s.strong_model,
        cheap_input_tokens=tokens.prompt_tokens,
        cheap_output_tokens=tokens.completion_tokens,
        cheap_cost=cheap_cost,
        strong_cost_estimate=strong_cost,
        priced=bool(cheap.get("priced")) and strong_priced,
        cost_saved=round(-cheap_cost if escalated else strong_cost - cheap_cost, 10),
        strong_tokens_avoided=0 if escalated else tokens.total_tokens,
    )


workflow = build()

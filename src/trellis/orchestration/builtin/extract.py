"""``extract``: typed JSON extraction from text, with validation and repair.

The input is the text and what to extract: a JSON Schema (``schema``) or the name of a
pydantic model registered with :func:`register` (``output_model``). The ``extract`` step
sends the schema as ``response_format`` json_schema (the bundled model enforces it with a
grammar), validates the answer and repairs it up to ``repair`` times with the validation
error fed back (``kinds.llm.complete``); the ``validate`` gate checks the value once more
against the schema, the record of why it was accepted. When every attempt fails the run
still succeeds, with ``valid: false`` and the error, so a caller gets an answer, not a 500.

Models are named through a registry, not an import path from the run's input: an input
must not be able to import arbitrary modules.

Run it: ``await trellis.workflows.run(workflow, {"text": "...", "schema": {...}})``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field, model_validator

from trellis.errors import ConfigurationError
from trellis.observe.tracing import GenAI
from trellis.orchestration.context import Context
from trellis.orchestration.kinds.checks import Check, CheckResult
from trellis.orchestration.kinds.gate import gate
from trellis.orchestration.kinds.llm import complete, gateway_of
from trellis.orchestration.kinds.structured import OutputSchema, output_schema
from trellis.orchestration.policy import Backoff, Policy
from trellis.orchestration.steps import END, Outcome, Step, Usage
from trellis.orchestration.workflow import Workflow
from trellis.schema import ChatMessage, ChatRequest

__all__ = ["ExtractState", "register", "registered", "workflow", "build"]

_MODELS: dict[str, type[BaseModel]] = {}


def register(model: type[BaseModel], name: str | None = None) -> type[BaseModel]:
    """Make ``model`` nameable as ``output_model`` (by its class name unless ``name``).
    Usable as a class decorator."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigurationError("register() takes a pydantic model class")
    _MODELS[name or model.__name__] = model
    return model


def registered() -> dict[str, type[BaseModel]]:
    """The models an ``extract`` run may name."""
    return dict(_MODELS)


class ExtractState(BaseModel):
    text: str
    #: A JSON Schema of what to extract, or ...
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    #: ... the name of a registered pydantic model.
    output_model: str | None = None
    #: What to extract, in words (optional; the schema says the shape).
    instructions: str = "Extract the information from the text."
    model: str = "local"
    repair: int = Field(default=2, ge=0, le=5)
    # --- filled by the run ---
    value: Any = None
    valid: bool = False
    error: str | None = None

    model_config = {"populate_by_name": True}

    @model_validator(mode="after")
    def _one_target(self) -> ExtractState:
        if (self.schema_ is None) == (self.output_model is None):
            raise ValueError("give exactly one of schema and output_model")
        if self.output_model is not None and self.output_model not in _MODELS:
            raise ValueError(
                f"unknown output_model {self.output_model!r}; registered: "
                f"{', '.join(sorted(_MODELS)) or '(none)'}"
            )
        if self.schema_ is not None:
            try:
                output_schema(self.schema_)
            except ConfigurationError as exc:
                raise ValueError(str(exc)) from None
        return self


def target(s: ExtractState) -> OutputSchema:
    """The schema and parser of what ``s`` asks for."""
    spec: Mapping[str, Any] | type[BaseModel]
    spec = _MODELS[s.output_model] if s.output_model is not None else (s.schema_ or {})
    schema = output_schema(spec, name=s.output_model or "extraction")
    assert schema is not None  # the state's validator checked it
    return schema


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


class ExtractStep(Step):
    """One typed model call (plus repairs) with the schema chosen by the state."""

    kind = "llm"

    def __init__(self, name: str, *, max_tokens: int, policy: Policy | None = None) -> None:
        super().__init__(name, policy=policy)
        self.max_tokens = max_tokens

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        s: ExtractState = state
        schema = target(s)
        request = ChatRequest(
            model=s.model,
            messages=[
                ChatMessage(
                    role="system",
                    content=f"{s.instructions} Answer with JSON matching the schema.",
                ),
                ChatMessage(role="user", content=s.text),
            ],
            temperature=0.0,
            max_tokens=self.max_tokens,
        )
        result = await complete(
            gateway_of(ctx),
            request,
            output=schema,
            repair=s.repair,
            caller=ctx.services.get("caller"),
        )
        if ctx.span is not None:
            ctx.span.update(
                {
                    GenAI.REQUEST_MODEL: s.model,
                    GenAI.RESPONSE_MODEL: result.model,
                    "trellis.llm.calls": result.calls,
                    "trellis.llm.repairs": result.repairs,
                }
            )
        return Outcome(
            update={"value": _plain(result.value), "error": None},
            output={"calls": result.calls, "repairs": result.repairs, "errors": result.errors},
            usage=Usage(
                input_tokens=result.usage.prompt_tokens,
                output_tokens=result.usage.completion_tokens,
                cost=result.cost,
                model=result.model,
            ),
        )


class MatchesTarget(Check):
    """The extracted value satisfies the schema the run asked for."""

    kind = "schema_valid"

    async def run(self, state: Any, services: Mapping[str, Any]) -> CheckResult:
        if state.value is None:
            return CheckResult(name=self.name, passed=False, detail="nothing extracted")
        try:
            target(state).check(state.value)
        except ValueError as exc:
            return CheckResult(name=self.name, passed=False, detail=str(exc)[:600])
        return CheckResult(name=self.name, passed=True)


def build(*, max_tokens: int = 256, attempts: int = 2) -> Workflow[ExtractState]:
    """The workflow; ``max_tokens`` bounds each answer, ``attempts`` the extract step's
    tries (each with its own repairs) before the run gives up."""
    flow = Workflow(
        "extract",
        state=ExtractState,
        output=lambda s: {"value": s.value, "valid": s.valid, "error": s.error},
    )
    flow.add(
        ExtractStep(
            "extract",
            max_tokens=max_tokens,
            policy=Policy(attempts=attempts, backoff=Backoff(0.0, 0.0), fallback="invalid"),
        )
    )
    flow.add(
        gate(
            "validate",
            [MatchesTarget("matches_schema")],
            route=lambda s, verdict: "accept" if verdict.passed else "invalid",
        )
    )

    @flow.step(next=END)
    def accept(s: ExtractState) -> dict[str, Any]:
        return {"valid": True}

    @flow.step(next=END)
    def invalid(s: ExtractState, ctx: Context) -> dict[str, Any]:
        reason = ctx.error.message if ctx.error is not None else "the value does not match"
        return {"valid": False, "error": reason}

    return flow


workflow = build()

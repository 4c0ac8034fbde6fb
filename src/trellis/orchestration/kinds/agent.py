"""The ``agent`` step kind: a bounded tool-calling loop over allow-listed :class:`Tool`s.

It works on any chat model, including the bundled 135M one that has no native tool calling,
by constrained JSON output: every turn is sent with ``response_format: json_schema`` whose
schema admits exactly two shapes, ``{"tool": <one of the tool names>, "arguments": {...}}``
(one branch per tool, its ``arguments`` being the tool's parameter schema from its type
hints) or ``{"final": <the output>}``. The local provider enforces that schema with a
grammar; hosted models honour it loosely, so every turn is still parsed and checked here,
and a bad turn (not JSON, an unknown tool, invalid arguments, an invalid final answer) is
fed back to the model as the next message. Every model call counts toward
``max_iterations``. The last call (with ``force_final``, the default) admits only the
final shape and says so, so a model that enforces the schema always ends with an answer
(the bundled model otherwise keeps calling a tool it has already called); when the bound
is reached without a valid final answer the step fails with :class:`AgentLimitError` (the
step's policy decides what then: retry, fallback, fail).

Tools are called through their own machinery (``Tool.__call__``): arguments are validated
by the tool, and a side-effecting tool goes through the effect journal under an idempotency
key of its own for each call (``ctx.idempotency_key`` of ``"<step>#<n>"``, n the call's
position in the loop), so a retried or resumed step that repeats a call with the same
arguments gets the recorded result instead of repeating the effect.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from trellis.errors import ConfigurationError, TrellisError, UpstreamError
from trellis.observe.tracing import GenAI
from trellis.orchestration.context import Context
from trellis.orchestration.kinds.llm import MessageLike, as_messages, gateway_of
from trellis.orchestration.kinds.structured import OutputSpec, output_schema
from trellis.orchestration.policy import Policy
from trellis.orchestration.steps import Next, Outcome, Step
from trellis.orchestration.steps import Usage as StepUsage
from trellis.orchestration.tools import Tool
from trellis.schema import ChatMessage, ChatRequest

__all__ = ["AgentStep", "AgentLimitError", "agent", "final_schema", "turn_schema"]

#: Longest tool result (as JSON text) shown back to the model.
MAX_RESULT_CHARS = 2000


class AgentLimitError(UpstreamError):
    """The loop reached ``max_iterations`` without a valid final answer.

    Retryable (a new attempt samples again) but not the deployment's fault."""

    code = "agent_iteration_limit"

    def __init__(self, message: str, *, transcript: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(message, retryable=True, deployment_fault=False)
        self.transcript = list(transcript)


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A tool's parameter schema without titles (noise for a grammar and a small model)."""
    if isinstance(schema, dict):
        return {k: _inline(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_inline(v) for v in schema]  # type: ignore[return-value]
    return schema


def final_schema(final: Mapping[str, Any] | None) -> dict[str, Any]:
    """The JSON Schema of a final answer: ``{"final": <output, a non-empty string by default>}``."""
    return {
        "type": "object",
        "properties": {
            "final": dict(final) if final is not None else {"type": "string", "minLength": 1}
        },
        "required": ["final"],
        "additionalProperties": False,
    }


def turn_schema(tools: Sequence[Tool], final: Mapping[str, Any] | None) -> dict[str, Any]:
    """The JSON Schema of one agent turn: a call of one of ``tools`` or a final answer.

    Flat (no ``$ref`` recursion): one ``anyOf`` branch per tool plus the final branch, so
    the local model's grammar converter can enforce it."""
    branches: list[dict[str, Any]] = []
    for item in tools:
        arguments = _inline(item.schema)
        arguments.setdefault("type", "object")
        branches.append(
            {
                "type": "object",
                "properties": {
                    "tool": {"type": "string", "enum": [item.name]},
                    "arguments": arguments,
                },
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
        )
    branches.append(final_schema(final))
    return {"anyOf": branches}


def _describe(tools: Sequence[Tool]) -> str:
    lines = []
    for item in tools:
        params = json.dumps(_inline(item.schema).get("properties", {}))
        lines.append(f"- {item.name}: {item.description or '(no description)'} Arguments: {params}")
    return "\n".join(lines)


def system_prompt(tools: Sequence[Tool]) -> str:
    """What the model is told about the tools and the reply format."""
    return (
        "You can call tools to complete the task. The tools:\n"
        f"{_describe(tools)}\n"
        "Reply with one JSON object and nothing else: either "
        '{"tool": "<tool name>", "arguments": {...}} to call a tool (its result comes '
        'back in the next message), or {"final": <your answer>} when you are done.'
    )


def _result_text(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = str(value)
    return text if len(text) <= MAX_RESULT_CHARS else text[: MAX_RESULT_CHARS - 1] + "…"


class AgentStep(Step):
    """A tool-calling loop whose final answer goes into the state field ``into``."""

    kind = "agent"

    def __init__(
        self,
        name: str,
        *,
        task: Callable[[Any], Sequence[MessageLike] | MessageLike],
        tools: Sequence[Tool],
        into: str,
        model: str | Callable[[Any], str] = "local",
        output: OutputSpec = None,
        max_iterations: int = 6,
        force_final: bool = True,
        temperature: float | None = None,
        max_tokens: int | None = None,
        params: Mapping[str, Any] | None = None,
        next: Next | None = None,
        policy: Policy | None = None,
    ) -> None:
        super().__init__(name, next=next, policy=policy)
        if not into:
            raise ConfigurationError(f"step {name!r}: an agent step needs into=<state field>")
        if max_iterations < 1:
            raise ConfigurationError(f"step {name!r}: max_iterations must be >= 1")
        self.tools: dict[str, Tool] = {}
        for item in tools:
            if not isinstance(item, Tool):
                raise ConfigurationError(f"step {name!r}: {item!r} is not a @tool")
            if item.name in self.tools:
                raise ConfigurationError(f"step {name!r}: two tools are named {item.name!r}")
            self.tools[item.name] = item
        self.task = task
        self.into = into
        self.model = model
        self.output = output_schema(output, name=None)
        self.max_iterations = max_iterations
        self.force_final = force_final
        final = self.output.schema if self.output else None
        self.schema = turn_schema(list(self.tools.values()), final)
        self.final_schema = final_schema(final)
        self.params = dict(params or {})
        if temperature is not None:
            self.params["temperature"] = temperature
        if max_tokens is not None:
            self.params["max_tokens"] = max_tokens

    def _check_turn(self, text: str, tools_allowed: bool = True) -> tuple[str, Any, Any]:
        """``("final", value, None)`` or ``("tool", tool, arguments)``; ValueError says why not."""
        try:
            turn = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(turn, dict):
            raise ValueError("the reply must be a JSON object")
        if "final" in turn:
            value = turn["final"]
            if self.output is not None:
                value = self.output.check(value)
            return "final", value, None
        if "tool" not in turn:
            raise ValueError('the object needs a "tool" or a "final" key')
        if not tools_allowed:
            raise ValueError("no more tool calls: this turn must be the final answer")
        name = turn["tool"]
        item = self.tools.get(name) if isinstance(name, str) else None
        if item is None:
            raise ValueError(
                f"unknown tool {name!r}; the tools are: {', '.join(self.tools) or '(none)'}"
            )
        arguments = turn.get("arguments", {})
        if not isinstance(arguments, dict):
            raise ValueError('"arguments" must be an object')
        try:
            item.parameters.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
                for e in exc.errors(include_url=False)[:5]
            )
            raise ValueError(f"invalid arguments for {name}: {problems}") from None
        return "tool", item, arguments

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        gateway = gateway_of(ctx)
        caller = ctx.services.get("caller")
        model = self.model(state) if callable(self.model) else self.model
        messages: list[ChatMessage] = [
            ChatMessage(role="system", content=system_prompt(list(self.tools.values()))),
            *as_messages(self.task(state)),
        ]

        def response_format(schema: dict[str, Any]) -> dict[str, Any]:
            return {
                "type": "json_schema",
                "json_schema": {"name": f"{self.name}_turn"[:64], "schema": schema},
            }

        span = ctx.span
        if span is not None:
            span.update({GenAI.REQUEST_MODEL: model, "trellis.agent.tools": list(self.tools)})
        transcript: list[dict[str, Any]] = []
        input_tokens = output_tokens = calls = 0
        cost = 0.0
        served: str | None = None
        for iteration in range(1, self.max_iterations + 1):
            last = self.force_final and iteration == self.max_iterations and iteration > 1
            if last:
                messages.append(
                    ChatMessage(
                        role="user",
                        content='No more tool calls. Reply now with {"final": <your answer>}.',
                    )
                )
            request = ChatRequest.model_validate(
                {
                    **self.params,
                    "model": model,
                    "messages": messages,
                    "response_format": response_format(self.final_schema if last else self.schema),
                }
            )
            answer = await gateway.chat(request, caller)
            response = answer.response
            served = response.model
            cost += answer.cost
            if response.usage is not None:
                input_tokens += response.usage.prompt_tokens
                output_tokens += response.usage.completion_tokens
            text = (response.choices[0].message.content or "") if response.choices else ""
            messages.append(ChatMessage(role="assistant", content=text))
            try:
                kind, first, arguments = self._check_turn(text, tools_allowed=not last)
            except ValueError as exc:
                error = str(exc)
                transcript.append({"iteration": iteration, "error": error, "text": text[:500]})
                if span is not None:
                    span.add_event("invalid_turn", iteration=iteration, error=error)
                messages.append(
                    ChatMessage(
                        role="user",
                        content=f"That reply was not valid: {error}. Reply with one JSON object.",
                    )
                )
                continue
            if kind == "final":
                transcript.append({"iteration": iteration, "final": _jsonable(first)})
                if span is not None:
                    span.add_event("final", iteration=iteration)
                    span.update(
                        {
                            GenAI.RESPONSE_MODEL: served,
                            GenAI.INPUT_TOKENS: input_tokens,
                            GenAI.OUTPUT_TOKENS: output_tokens,
                            "trellis.agent.iterations": iteration,
                            "trellis.agent.tool_calls": calls,
                        }
                    )
                return Outcome(
                    update={self.into: first},
                    output={
                        "final": _jsonable(first),
                        "iterations": iteration,
                        "turns": transcript,
                    },
                    usage=StepUsage(
                        input_tokens=input_tokens,
                        output_tokens=output_tokens,
                        cost=cost,
                        model=served,
                    ),
                )
            calls += 1
            item: Tool = first
            # Its own journal key per call: two calls of one tool in a loop are two effects.
            call_ctx = dataclasses.replace(ctx, step=f"{ctx.step}#{calls}")
            try:
                result = await item(call_ctx, **arguments)
            except TrellisError:
                raise  # journal conflicts, unknown effect outcomes: not the model's to fix
            except Exception as exc:  # the tool refused these arguments: tell the model
                result_text = f"error: {type(exc).__name__}: {exc}"[:MAX_RESULT_CHARS]
                ok = False
            else:
                result_text = _result_text(result)
                ok = True
            transcript.append(
                {
                    "iteration": iteration,
                    "tool": item.name,
                    "arguments": arguments,
                    "result": result_text,
                    "ok": ok,
                }
            )
            if span is not None:
                span.add_event(
                    "tool_call",
                    iteration=iteration,
                    tool=item.name,
                    ok=ok,
                    key=call_ctx.idempotency_key(item.name),
                )
            messages.append(
                ChatMessage(
                    role="user",
                    content=f"Result of {item.name}: {result_text}\n"
                    'Call another tool, or reply {"final": <your answer>} if you have it.',
                )
            )
        raise AgentLimitError(
            f"agent step {self.name!r} made {self.max_iterations} model call(s) without a "
            "valid final answer",
            transcript=transcript,
        )


def _jsonable(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def agent(
    name: str,
    *,
    task: Callable[[Any], Sequence[MessageLike] | MessageLike],
    tools: Sequence[Tool],
    into: str,
    model: str | Callable[[Any], str] = "local",
    output: OutputSpec = None,
    max_iterations: int = 6,
    force_final: bool = True,
    temperature: float | None = None,
    max_tokens: int | None = None,
    params: Mapping[str, Any] | None = None,
    next: Next | None = None,
    policy: Policy | None = None,
) -> AgentStep:
    """An agent step: ``task(state)`` (messages) → a loop of at most ``max_iterations``
    model calls, each answering a JSON tool call (one of ``tools``, called through its
    journal) or a final answer (typed by ``output``, a string without it) that goes into
    the field ``into``. ``force_final`` makes the last call admit only a final answer."""
    return AgentStep(
        name,
        task=task,
        tools=tools,
        into=into,
        model=model,
        output=output,
        max_iterations=max_iterations,
        force_final=force_final,
        temperature=temperature,
        max_tokens=max_tokens,
        params=params,
        next=next,
        policy=policy,
    )

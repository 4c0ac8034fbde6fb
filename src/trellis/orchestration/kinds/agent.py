"""The ``agent`` step kind: a bounded tool-calling loop over allow-listed :class:`Tool`s.

It calls tools one of two ways (``tool_calling``):

- ``"json"``: constrained JSON output, which works on any chat model, including the bundled
  135M one that has no native tool calling. Every turn is sent with ``response_format:
  json_schema`` whose schema admits exactly two shapes, ``{"tool": <one of the tool names>,
  "arguments": {...}}`` (one branch per tool, its ``arguments`` being the tool's parameter
  schema from its type hints) or ``{"final": <the output>}``. The local provider enforces
  that schema with a grammar; hosted models honour it loosely, so every turn is still
  parsed and checked here, and a bad turn (not JSON, an unknown tool, invalid arguments,
  an invalid final answer) is fed back to the model as the next message.
- ``"native"``: OpenAI ``tools`` (the same schemas, as tool definitions) and the model's
  ``tool_calls``; every call of a message (several make parallel calls) is checked against
  the allow-list and the tool's parameters and answered with a ``tool`` message: the
  result, or the error (an unknown tool is not executed; invalid arguments come back for
  the model to repair). An answer without tool calls is the final answer.
- ``"auto"`` (the default): native when every deployment the model alias may be served by
  (fallbacks included) takes native tool calls (``Provider.tool_calling``: hosted
  providers do, the bundled model does not), JSON otherwise.

Every model call counts toward ``max_iterations``. The last call (with ``force_final``,
the default) admits only a final answer and says so (the JSON schema has only the final
shape; native calls go with ``tool_choice: "none"``), so a model that obeys always ends
with an answer; when the bound is reached without a valid final answer the step fails with
:class:`AgentLimitError` (the step's policy decides what then: retry, fallback, fail).

Tools are called through their own machinery (``Tool.__call__``): arguments are validated
by the tool, and a side-effecting tool goes through the effect journal under an idempotency
key of its own for each call (``ctx.idempotency_key`` of ``"<step>#<n>"``, n the call's
position in the loop), so a retried or resumed step that repeats a call with the same
arguments gets the recorded result instead of repeating the effect.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trellis.errors import ConfigurationError, UpstreamError
from trellis.observe.tracing import GenAI
from trellis.orchestration.context import Context
from trellis.orchestration.kinds.agent_run import (
    MAX_RESULT_CHARS,
    AgentRun,
    argument_problems,
    inline_schema,
    native_tool_calling,
    short_list,
    tool_definition,
)
from trellis.orchestration.kinds.llm import MessageLike, as_messages, gateway_of
from trellis.orchestration.kinds.structured import OutputSpec, output_schema
from trellis.orchestration.policy import Policy
from trellis.orchestration.steps import Next, Outcome, Step
from trellis.orchestration.tools import Tool
from trellis.schema import ChatMessage, ChatRequest, ToolCall

__all__ = [
    "AgentStep",
    "AgentLimitError",
    "agent",
    "final_schema",
    "turn_schema",
    "tool_definition",
    "native_tool_calling",
    "MAX_RESULT_CHARS",
]

#: The ways an agent step's model may call tools.
TOOL_CALLING = ("auto", "native", "json")


class AgentLimitError(UpstreamError):
    """The loop reached ``max_iterations`` without a valid final answer.

    Retryable (a new attempt samples again) but not the deployment's fault."""

    code = "agent_iteration_limit"

    def __init__(self, message: str, *, transcript: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(message, retryable=True, deployment_fault=False)
        self.transcript = list(transcript)


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
        arguments = inline_schema(item.schema)
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
        params = json.dumps(inline_schema(item.schema).get("properties", {}))
        lines.append(f"- {item.name}: {item.description or '(no description)'} Arguments: {params}")
    return "\n".join(lines)


def system_prompt(tools: Sequence[Tool]) -> str:
    """What the model is told about the tools and the reply format (JSON turns)."""
    return (
        "You can call tools to complete the task. The tools:\n"
        f"{_describe(tools)}\n"
        "Reply with one JSON object and nothing else: either "
        '{"tool": "<tool name>", "arguments": {...}} to call a tool (its result comes '
        'back in the next message), or {"final": <your answer>} when you are done.'
    )


def native_system_prompt(final: Mapping[str, Any]) -> str:
    """What a natively tool-calling model is told about a typed final answer."""
    return (
        "Call the tools you need. When you have the answer, reply without a tool call, "
        "with only a JSON value (no other text) matching this JSON Schema: "
        f"{json.dumps(dict(final))}"
    )


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
        tool_calling: str = "auto",
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
        if tool_calling not in TOOL_CALLING:
            raise ConfigurationError(
                f"step {name!r}: tool_calling must be one of {', '.join(TOOL_CALLING)}"
            )
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
        self.tool_calling = tool_calling
        final = self.output.schema if self.output else None
        self.schema = turn_schema(list(self.tools.values()), final)
        self.final_schema = final_schema(final)
        self.tool_definitions = [tool_definition(item) for item in self.tools.values()]
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
                f"unknown tool {name!r}; the tools are: {short_list(list(self.tools))}"
            )
        arguments = turn.get("arguments", {})
        if not isinstance(arguments, dict):
            raise ValueError('"arguments" must be an object')
        problems = argument_problems(item, arguments)
        if problems is not None:
            raise ValueError(f"invalid arguments for {name}: {problems}")
        return "tool", item, arguments

    def _native(self, ctx: Context, model: str) -> bool:
        if self.tool_calling == "auto":
            return bool(self.tools) and native_tool_calling(gateway_of(ctx), model)
        return self.tool_calling == "native"

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        gateway = gateway_of(ctx)
        model = self.model(state) if callable(self.model) else self.model
        native = self._native(ctx, model)
        run = AgentRun(
            ctx=ctx,
            gateway=gateway,
            caller=ctx.services.get("caller"),
            into=self.into,
            tool_calling="native" if native else "json",
            model=model,
        )
        if ctx.span is not None:
            ctx.span.update(
                {
                    GenAI.REQUEST_MODEL: model,
                    "trellis.agent.tools": list(self.tools),
                    "trellis.agent.tool_calling": run.tool_calling,
                }
            )
        messages = as_messages(self.task(state))
        if native:
            return await self._native_loop(run, model, messages)
        return await self._json_loop(run, model, messages)

    def _limit(self, run: AgentRun) -> AgentLimitError:
        return AgentLimitError(
            f"agent step {self.name!r} made {self.max_iterations} model call(s) without a "
            "valid final answer",
            transcript=run.transcript,
        )

    # --- constrained JSON turns -----------------------------------------------------------

    async def _json_loop(self, run: AgentRun, model: str, task: list[ChatMessage]) -> Outcome:
        messages = [
            ChatMessage(role="system", content=system_prompt(list(self.tools.values()))),
            *task,
        ]

        def response_format(schema: dict[str, Any]) -> dict[str, Any]:
            return {
                "type": "json_schema",
                "json_schema": {"name": f"{self.name}_turn"[:64], "schema": schema},
            }

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
            text = (await run.ask(request)).content or ""
            messages.append(ChatMessage(role="assistant", content=text))
            try:
                kind, first, arguments = self._check_turn(text, tools_allowed=not last)
            except ValueError as exc:
                error = str(exc)
                run.transcript.append({"iteration": iteration, "error": error, "text": text[:500]})
                run.event("invalid_turn", iteration=iteration, error=error)
                messages.append(
                    ChatMessage(
                        role="user",
                        content=f"That reply was not valid: {error}. Reply with one JSON object.",
                    )
                )
                continue
            if kind == "final":
                return run.done(first, iteration)
            item: Tool = first
            result, ok = await run.call(run.next_call(), item, arguments, iteration)
            run.transcript.append(
                {
                    "iteration": iteration,
                    "tool": item.name,
                    "arguments": arguments,
                    "result": result,
                    "ok": ok,
                }
            )
            messages.append(
                ChatMessage(
                    role="user",
                    content=f"Result of {item.name}: {run.for_model(item.name, result)}\n"
                    'Call another tool, or reply {"final": <your answer>} if you have it.',
                )
            )
        raise self._limit(run)

    # --- native tool calls ----------------------------------------------------------------

    def _final(self, text: str) -> Any:
        """A native answer without tool calls as the final value; ValueError says why not."""
        if self.output is not None:
            return self.output.parse(text)
        if not text.strip():
            raise ValueError("the answer is empty")
        return text

    def _checked_call(self, call: ToolCall) -> tuple[Tool, dict[str, Any]] | str:
        """The allow-listed tool and its valid arguments, or the error to give the model."""
        name = call.function.name
        item = self.tools.get(name)
        if item is None:
            return f"error: unknown tool {name!r}; the tools are: {short_list(list(self.tools))}"
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except ValueError as exc:
            return f"error: the arguments of {name} are not JSON ({exc}); call it again"
        problems = argument_problems(item, arguments)
        if problems is not None:
            return f"error: invalid arguments for {name}: {problems}; call it again"
        return item, arguments

    async def _native_loop(self, run: AgentRun, model: str, task: list[ChatMessage]) -> Outcome:
        messages: list[ChatMessage] = []
        if self.output is not None:
            prompt = native_system_prompt(self.output.schema)
            messages.append(ChatMessage(role="system", content=prompt))
        messages += task
        for iteration in range(1, self.max_iterations + 1):
            last = self.force_final and iteration == self.max_iterations and iteration > 1
            if last:
                messages.append(
                    ChatMessage(
                        role="user",
                        content="No more tool calls. Reply now with your final answer.",
                    )
                )
            body: dict[str, Any] = {**self.params, "model": model, "messages": messages}
            if self.tool_definitions:  # OpenAI refuses an empty list of tools
                body["tools"] = self.tool_definitions
                body["tool_choice"] = "none" if last else self.params.get("tool_choice", "auto")
            request = ChatRequest.model_validate(body)
            message = await run.ask(request)
            text = message.content or ""
            if not message.tool_calls:
                messages.append(ChatMessage(role="assistant", content=text))
                try:
                    value = self._final(text)
                except ValueError as exc:
                    error = str(exc)
                    run.transcript.append(
                        {"iteration": iteration, "error": error, "text": text[:500]}
                    )
                    run.event("invalid_turn", iteration=iteration, error=error)
                    messages.append(
                        ChatMessage(
                            role="user",
                            content=f"That answer was not valid: {error}. Answer again.",
                        )
                    )
                    continue
                return run.done(value, iteration)
            calls = message.tool_calls
            messages.append(
                ChatMessage(role="assistant", content=message.content, tool_calls=calls)
            )
            if last:
                # Told not to, the model called tools anyway: nothing runs, the loop ends.
                error = "tool calls after the last call; no final answer"
                run.transcript.append({"iteration": iteration, "error": error})
                run.event("invalid_turn", iteration=iteration, error=error)
                break
            messages += await self._answer_calls(run, calls, iteration)
        raise self._limit(run)

    async def _answer_calls(
        self, run: AgentRun, calls: list[ToolCall], iteration: int
    ) -> list[ChatMessage]:
        """Run the valid calls of one message at once; a ``tool`` message for every call, in
        the message's order (the result, or the error for the model to act on)."""
        checked = [self._checked_call(call) for call in calls]
        tasks: dict[int, asyncio.Task[tuple[str, bool]]] = {}
        try:
            async with asyncio.TaskGroup() as group:
                for index, found in enumerate(checked):
                    if isinstance(found, str):
                        continue
                    item, arguments = found
                    # Numbered in the message's order: a retry journals under the same keys.
                    number = run.next_call()
                    tasks[index] = group.create_task(run.call(number, item, arguments, iteration))
        except* Exception as failed:
            # A journal conflict or an unknown effect outcome: the step's error, unwrapped.
            raise failed.exceptions[0] from None
        replies: list[ChatMessage] = []
        for index, (call, found) in enumerate(zip(calls, checked, strict=True)):
            entry: dict[str, Any] = {
                "iteration": iteration,
                "tool": call.function.name,
                "call_id": call.id,
            }
            if isinstance(found, str):
                content = found
                entry.update(arguments=call.function.arguments[:500], error=found, ok=False)
                run.event("invalid_tool_call", iteration=iteration, tool=call.function.name)
            else:
                content, ok = tasks[index].result()
                entry.update(arguments=found[1], result=content, ok=ok)
            run.transcript.append(entry)
            replies.append(
                ChatMessage(
                    role="tool",
                    tool_call_id=call.id,
                    content=run.for_model(call.function.name, content),
                )
            )
        return replies


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
    tool_calling: str = "auto",
    temperature: float | None = None,
    max_tokens: int | None = None,
    params: Mapping[str, Any] | None = None,
    next: Next | None = None,
    policy: Policy | None = None,
) -> AgentStep:
    """An agent step: ``task(state)`` (messages) → a loop of at most ``max_iterations``
    model calls, each calling tools (of ``tools`` only, each call through its journal) or
    giving the final answer (typed by ``output``, a string without it) that goes into the
    field ``into``. ``tool_calling`` is ``"native"`` (OpenAI tool calls), ``"json"``
    (constrained JSON turns, for models without tool calling) or ``"auto"`` (native where
    every deployment of the model takes it). ``force_final`` makes the last call admit
    only a final answer."""
    return AgentStep(
        name,
        task=task,
        tools=tools,
        into=into,
        model=model,
        output=output,
        max_iterations=max_iterations,
        force_final=force_final,
        tool_calling=tool_calling,
        temperature=temperature,
        max_tokens=max_tokens,
        params=params,
        next=next,
        policy=policy,
    )

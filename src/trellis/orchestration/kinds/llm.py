"""The ``llm`` step kind: messages built from the state → ``ChatRequest`` → the Trellis
gateway in process, so routing, fallbacks, caching, cost and traces apply as they do to
HTTP callers.

With a typed ``output`` (a pydantic model or a JSON Schema) the request carries it as
``response_format: json_schema``, the answer is parsed and validated, and an invalid answer
gets up to ``repair`` more calls: the bad answer and the validation error are appended to
the conversation so the model can correct itself. Models that enforce the schema (the
bundled local one does, with a grammar) rarely need a repair; hosted models that only
honour it loosely do. When every repair fails the step fails with
:class:`OutputValidationError`, an ``UpstreamError``: the step's policy retries it like any
other model failure, then falls back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trellis.errors import ConfigurationError, UpstreamError
from trellis.inference.gateway import Caller, Gateway
from trellis.observe.tracing import GenAI
from trellis.orchestration.context import Context
from trellis.orchestration.kinds.structured import OutputSchema, OutputSpec, output_schema
from trellis.orchestration.policy import Policy
from trellis.orchestration.steps import Next, Outcome, Step
from trellis.orchestration.steps import Usage as StepUsage
from trellis.schema import ChatMessage, ChatRequest, TrellisOptions, Usage

__all__ = [
    "LLMStep",
    "llm",
    "LLMResult",
    "MessageLike",
    "OutputValidationError",
    "as_messages",
    "complete",
    "repair_message",
]

#: A message as a step's ``messages`` function may give it: a ``ChatMessage``, an
#: OpenAI-style dict, or a string (a user message).
MessageLike = ChatMessage | Mapping[str, Any] | str


class OutputValidationError(UpstreamError):
    """The model's answer did not match the output schema, repairs included.

    Retryable (another attempt, or the fallback model, may do better) but not a fault of
    the deployment: it must not open the circuit breaker."""

    code = "invalid_model_output"

    def __init__(self, message: str, *, errors: Sequence[str] = (), last_text: str = "") -> None:
        super().__init__(message, retryable=True, deployment_fault=False)
        self.errors = list(errors)
        self.last_text = last_text


@dataclass(slots=True)
class LLMResult:
    """What one ``llm`` step got: the typed value (or text) and what it cost."""

    value: Any
    text: str
    #: Calls made: 1 + the repairs used.
    calls: int
    usage: Usage
    trace_ids: list[str] = field(default_factory=list)
    #: The validation error of each rejected answer, in order.
    errors: list[str] = field(default_factory=list)
    model: str | None = None
    cache_hits: int = 0
    #: USD over every call, repairs included: the sum of the calls' trace costs.
    cost: float = 0.0

    @property
    def repairs(self) -> int:
        return self.calls - 1


def as_messages(items: Sequence[MessageLike] | MessageLike) -> list[ChatMessage]:
    """Normalize what a ``messages`` function returned into validated messages."""
    if isinstance(items, (str, ChatMessage, Mapping)):
        items = [items]
    messages: list[ChatMessage] = []
    for item in items:
        if isinstance(item, ChatMessage):
            messages.append(item)
        elif isinstance(item, str):
            messages.append(ChatMessage(role="user", content=item))
        else:
            messages.append(ChatMessage.model_validate(dict(item)))
    if not messages:
        raise ValueError("an llm step's messages function returned no messages")
    return messages


def repair_message(error: str) -> ChatMessage:
    """The message that feeds a validation error back to the model."""
    return ChatMessage(
        role="user",
        content=(
            f"Your previous answer was not valid: {error}\n"
            "Answer again with only a JSON value that matches the required schema, "
            "and no other text."
        ),
    )


def _add_usage(total: Usage, usage: Usage | None) -> None:
    if usage is None:
        return
    total.prompt_tokens += usage.prompt_tokens
    total.completion_tokens += usage.completion_tokens
    total.total_tokens += usage.total_tokens


async def complete(
    gateway: Gateway,
    request: ChatRequest,
    *,
    output: OutputSpec | OutputSchema = None,
    repair: int = 2,
    caller: Caller | None = None,
    on_call: Callable[[int, str, str | None], None] | None = None,
) -> LLMResult:
    """Send ``request`` through the gateway and return its answer, typed when ``output`` is.

    ``repair`` bounds the extra calls made after an invalid answer. ``on_call(n,
    trace_id, error)`` is told about each call (the step turns it into span events).
    """
    if repair < 0:
        raise ValueError("repair must be >= 0")
    schema = output if isinstance(output, OutputSchema) or output is None else output_schema(output)
    if schema is not None and request.response_format is None:
        request = request.model_copy(update={"response_format": schema.response_format})
    result = LLMResult(value=None, text="", calls=0, usage=Usage())
    messages = list(request.messages)
    while True:
        answer = await gateway.chat(request, caller)
        result.calls += 1
        result.trace_ids.append(answer.trace_id)
        result.cache_hits += int(answer.cache_hit)
        result.cost += answer.cost
        response = answer.response
        result.model = response.model
        _add_usage(result.usage, response.usage)
        text = (response.choices[0].message.content or "") if response.choices else ""
        result.text = text
        if schema is None:
            result.value = text
            if on_call is not None:
                on_call(result.calls, answer.trace_id, None)
            return result
        try:
            result.value = schema.parse(text)
        except ValueError as exc:
            error = str(exc)
            result.errors.append(error)
            if on_call is not None:
                on_call(result.calls, answer.trace_id, error)
        else:
            if on_call is not None:
                on_call(result.calls, answer.trace_id, None)
            return result
        if result.calls > repair:
            raise OutputValidationError(
                f"the model's answer did not match the `{schema.name}` schema after "
                f"{result.calls} call(s): {result.errors[-1]}",
                errors=result.errors,
                last_text=text,
            )
        messages += [ChatMessage(role="assistant", content=text), repair_message(error)]
        request = request.model_copy(update={"messages": list(messages)})


def gateway_of(ctx: Context) -> Gateway:
    """The gateway the runtime wired into the context; a configuration error without one."""
    gateway = ctx.services.get("gateway")
    if gateway is None:
        raise ConfigurationError(
            f"step {ctx.step!r} needs the gateway: run the workflow through Trellis "
            "(or put one in Context.services['gateway'])"
        )
    return gateway  # type: ignore[no-any-return]


class LLMStep(Step):
    """One model call (plus repairs) whose answer goes into the state field ``into``."""

    kind = "llm"

    def __init__(
        self,
        name: str,
        *,
        messages: Callable[[Any], Sequence[MessageLike] | MessageLike],
        into: str,
        model: str | Callable[[Any], str] = "local",
        output: OutputSpec = None,
        repair: int = 2,
        temperature: float | None = None,
        max_tokens: int | None = None,
        params: Mapping[str, Any] | None = None,
        session: bool = False,
        next: Next | None = None,
        policy: Policy | None = None,
    ) -> None:
        super().__init__(name, next=next, policy=policy)
        if repair < 0:
            raise ConfigurationError(f"step {name!r}: repair must be >= 0")
        if not into:
            raise ConfigurationError(f"step {name!r}: an llm step needs into=<state field>")
        self.messages = messages
        self.into = into
        self.model = model
        self.schema = output_schema(output, name=None)
        self.repair = repair if self.schema is not None else 0
        #: Continue the run's session: its earlier turns and summary go before the messages.
        self.session = session
        #: Any other ChatRequest fields (seed, stop, top_p, trellis options...).
        self.params = dict(params or {})
        if temperature is not None:
            self.params["temperature"] = temperature
        if max_tokens is not None:
            self.params["max_tokens"] = max_tokens

    def request(self, state: Any) -> ChatRequest:
        """The request this step sends for ``state`` (before any repair)."""
        model = self.model(state) if callable(self.model) else self.model
        return ChatRequest.model_validate(
            {**self.params, "model": model, "messages": as_messages(self.messages(state))}
        )

    def with_session(self, request: ChatRequest, session_id: str | None) -> ChatRequest:
        """``request`` continuing ``session_id`` (as ``trellis.session_id``) when this step
        reads the run's session and the run has one."""
        if not self.session or session_id is None:
            return request
        options = request.trellis or TrellisOptions()
        options = options.model_copy(update={"session_id": session_id})
        return request.model_copy(update={"trellis": options})

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        request = self.with_session(self.request(state), ctx.session_id)
        span = ctx.span
        if span is not None:
            span.update({GenAI.REQUEST_MODEL: request.model, "trellis.llm.into": self.into})
            if self.schema is not None:
                span.set("trellis.llm.output_schema", self.schema.name)

        def on_call(number: int, trace_id: str, error: str | None) -> None:
            if span is None:
                return
            event: dict[str, Any] = {"call": number, "trace_id": trace_id}
            if error is not None:
                span.add_event("invalid_output", **event, error=error)
            else:
                span.add_event("llm_call", **event)

        result = await complete(
            gateway_of(ctx),
            request,
            output=self.schema,
            repair=self.repair,
            caller=ctx.services.get("caller"),
            on_call=on_call,
        )
        if span is not None:
            span.update(
                {
                    GenAI.RESPONSE_MODEL: result.model,
                    GenAI.INPUT_TOKENS: result.usage.prompt_tokens,
                    GenAI.OUTPUT_TOKENS: result.usage.completion_tokens,
                    "trellis.llm.calls": result.calls,
                    "trellis.llm.repairs": result.repairs,
                    "trellis.llm.trace_ids": result.trace_ids,
                    "trellis.cache.hits": result.cache_hits,
                    "trellis.cost_usd": result.cost,
                }
            )
        return Outcome(
            update={self.into: result.value},
            usage=StepUsage(
                input_tokens=result.usage.prompt_tokens,
                output_tokens=result.usage.completion_tokens,
                cost=result.cost,
                model=result.model,
            ),
        )


def llm(
    name: str,
    *,
    messages: Callable[[Any], Sequence[MessageLike] | MessageLike],
    into: str,
    model: str | Callable[[Any], str] = "local",
    output: OutputSpec = None,
    repair: int = 2,
    temperature: float | None = None,
    max_tokens: int | None = None,
    params: Mapping[str, Any] | None = None,
    session: bool = False,
    next: Next | None = None,
    policy: Policy | None = None,
) -> LLMStep:
    """An ``llm`` step: ``messages(state)`` → the gateway (``model`` an alias, or a
    function of the state) → the answer into the field ``into``.

    ``output`` (a pydantic model or a JSON Schema) makes the answer typed: sent as
    ``response_format`` json_schema, validated, and repaired up to ``repair`` times with
    the validation error fed back. Without it the field gets the answer's text.
    ``session=True`` puts the earlier turns (and summary) of the run's session, when it was
    started with a ``session_id``, before the messages.
    """
    return LLMStep(
        name,
        messages=messages,
        into=into,
        model=model,
        output=output,
        repair=repair,
        temperature=temperature,
        max_tokens=max_tokens,
        params=params,
        session=session,
        next=next,
        policy=policy,
    )

"""Tools: typed Python functions a workflow calls, with exactly-once side effects.

``@tool`` wraps a function whose parameters are typed; arguments are validated against the
signature. With ``side_effect=True`` every call goes through the effect journal
(``workflow_effects``) under ``ctx.idempotency_key(tool name)``: once a call is recorded
``done``, calling it again for the same step of the same run returns the recorded result and
the function does not run, so a resumed or retried run never repeats a completed effect.
A function that names a ``ctx`` keyword gets the :class:`Context` (to pass the key on to an
external system that honours idempotency keys).
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Callable
from typing import Any, get_type_hints

import orjson
from pydantic import BaseModel, ConfigDict, TypeAdapter, create_model

from trellis.errors import ConfigurationError, ConflictError, TrellisError
from trellis.orchestration.context import Context, StepError
from trellis.orchestration.policy import Policy
from trellis.orchestration.records import Effect
from trellis.orchestration.steps import Next, Outcome, Step

__all__ = ["Tool", "ToolStep", "tool", "EffectOutcomeUnknown"]


class EffectOutcomeUnknown(TrellisError):
    """A side effect started before a crash and never recorded its end (``on_unknown="fail"``)."""


class Tool:
    """A typed function with a JSON-Schema description of its parameters."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        side_effect: bool = False,
        on_unknown: str = "retry",
    ) -> None:
        if on_unknown not in ("retry", "fail"):
            raise ConfigurationError("on_unknown must be 'retry' or 'fail'")
        self.fn = fn
        self.name = name or fn.__name__
        self.side_effect = side_effect
        self.on_unknown = on_unknown
        self.description = inspect.getdoc(fn) or ""
        hints = get_type_hints(fn)
        fields: dict[str, Any] = {}
        self._wants_ctx = False
        for param in inspect.signature(fn).parameters.values():
            if param.name == "ctx":
                self._wants_ctx = True
                continue
            if param.name not in hints:
                raise ConfigurationError(
                    f"tool {self.name!r}: parameter {param.name!r} has no type"
                )
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (hints[param.name], default)
        self.parameters: type[BaseModel] = create_model(  # type: ignore[call-overload]
            f"{self.name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        self.result = TypeAdapter(hints.get("return", Any))

    @property
    def schema(self) -> dict[str, Any]:
        """The parameters' JSON Schema (what an agent step shows a model)."""
        return self.parameters.model_json_schema()

    async def _invoke(self, ctx: Context, arguments: BaseModel) -> Any:
        kwargs = dict(arguments)
        if self._wants_ctx:
            kwargs["ctx"] = ctx
        result = self.fn(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def __call__(self, ctx: Context, **kwargs: Any) -> Any:
        """Call the tool from a step; side effects go through the journal."""
        arguments = self.parameters.model_validate(kwargs)
        if not self.side_effect:
            return await self._invoke(ctx, arguments)
        if ctx.store is None:
            raise ConfigurationError(f"tool {self.name!r} has side effects but no run store")
        canonical = orjson.dumps(arguments.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        args_hash = hashlib.sha256(canonical).hexdigest()
        key = ctx.idempotency_key(self.name)
        found = await ctx.store.effect(key)
        if found is not None:
            if found.args_hash != args_hash:
                raise ConflictError(
                    f"tool {self.name!r} was already called under key {key!r} with other arguments"
                )
            if found.status == "done":
                return self.result.validate_python(found.result)
            if found.status == "started" and self.on_unknown == "fail":
                raise EffectOutcomeUnknown(
                    f"tool {self.name!r} (key {key!r}) started before a crash; its outcome "
                    "is unknown"
                )
        await ctx.store.begin_effect(
            Effect(
                key=key,
                run_id=ctx.run_id,
                step=ctx.step,
                seq=ctx.seq,
                args_hash=args_hash,
                status="started",
                started_at=time.time(),
            )
        )
        try:
            result = await self._invoke(ctx, arguments)
        except Exception as exc:
            error = StepError.from_exception(exc, ctx.step).to_dict()
            await ctx.store.finish_effect(key, "failed", None, error, time.time())
            raise
        stored = self.result.dump_python(result, mode="json")
        await ctx.store.finish_effect(key, "done", stored, None, time.time())
        return result

    def step(
        self,
        name: str | None = None,
        *,
        args: Callable[[Any], dict[str, Any]],
        into: str | None = None,
        next: Next | None = None,
        policy: Policy | None = None,
    ) -> ToolStep:
        """A step that calls this tool with ``args(state)`` and puts the result in ``into``."""
        return ToolStep(name or self.name, self, args=args, into=into, next=next, policy=policy)


class ToolStep(Step):
    kind = "tool"

    def __init__(
        self,
        name: str,
        tool: Tool,
        *,
        args: Callable[[Any], dict[str, Any]],
        into: str | None = None,
        next: Next | None = None,
        policy: Policy | None = None,
    ) -> None:
        super().__init__(name, next=next, policy=policy)
        self.tool, self.args, self.into = tool, args, into

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        result = await self.tool(ctx, **self.args(state))
        return Outcome(update={self.into: result} if self.into else None, output=result)


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    side_effect: bool = False,
    on_unknown: str = "retry",
) -> Any:
    """Decorator: ``@tool`` or ``@tool(side_effect=True)`` makes a :class:`Tool`."""

    def wrap(function: Callable[..., Any]) -> Tool:
        return Tool(function, name=name, side_effect=side_effect, on_unknown=on_unknown)

    return wrap(fn) if fn is not None else wrap

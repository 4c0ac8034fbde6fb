"""Steps: the unit the engine runs, checkpoints and traces.

A step kind subclasses :class:`Step` and implements one method, :meth:`Step.execute`, which
returns an :class:`Outcome`. The engine owns everything around it: the policy (attempts,
timeout, fallback), merging the update into the state, the checkpoint and the span.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from trellis.errors import ConfigurationError
from trellis.orchestration.context import Context
from trellis.orchestration.policy import Policy

__all__ = ["END", "Step", "Outcome", "Pause", "Usage", "FunctionStep", "Next", "Update"]

#: The route that ends a run.
END = "__end__"

#: A step's route: a step name, END, or plain code choosing one from the state after the step.
Next = str | Callable[[Any], str]
#: What a step may return: the new state, a dict of field updates, or None (no change).
Update = BaseModel | dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Usage:
    """Model usage a step spent (summed onto the run at each checkpoint)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Pause:
    """The run waits durably for input (human step); ``resume`` puts it into ``into``."""

    into: str
    prompt: str = ""
    #: JSON Schema the input must satisfy (from a pydantic model, or given directly).
    schema: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Outcome:
    """What one step execution produced.

    ``update`` is merged into the state. ``output`` is what the step record shows (defaults to
    the update). ``route`` overrides the step's ``next`` (a gate's verdict, for instance).
    ``pause`` makes the run wait for input instead of continuing. ``events`` become events
    on the step's span: ``{"name": ..., "attributes": {...}}`` (``time_ns`` is added).
    """

    update: Update = None
    output: Any = None
    usage: Usage = field(default_factory=Usage)
    events: list[dict[str, Any]] = field(default_factory=list)
    route: str | None = None
    pause: Pause | None = None


class Step(ABC):
    """Base of every step kind: a name, a route, a policy, and one async method."""

    kind: ClassVar[str] = "step"

    def __init__(
        self, name: str, *, next: Next | None = None, policy: Policy | None = None
    ) -> None:
        if not name or name == END:
            raise ConfigurationError(f"invalid step name {name!r}")
        self.name = name
        self.next = next
        self.policy = policy or Policy()

    @abstractmethod
    async def execute(self, ctx: Context, state: Any) -> Outcome:
        """Run once (one attempt) on ``state``; never mutate it, return the change instead."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class FunctionStep(Step):
    """A plain Python function of the state: ``fn(state)`` or ``fn(state, ctx)``, sync or async.

    It returns the new state, a dict of field updates, None, or an :class:`Outcome`.
    """

    kind = "function"

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        next: Next | None = None,
        policy: Policy | None = None,
    ) -> None:
        super().__init__(name or fn.__name__, next=next, policy=policy)
        self.fn = fn
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(params) not in (1, 2):
            raise ConfigurationError(
                f"step {self.name!r}: the function takes (state) or (state, ctx)"
            )
        self._with_ctx = len(params) == 2

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        result = self.fn(state, ctx) if self._with_ctx else self.fn(state)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, Outcome):
            return result
        return Outcome(update=result)


StepFunction = Callable[..., Awaitable[Any] | Any]

"""Workflow: a typed state model plus steps, and the plain-code routes between them."""

from __future__ import annotations

import hashlib
import typing
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from trellis.errors import ConfigurationError
from trellis.orchestration.policy import Policy
from trellis.orchestration.steps import END, FunctionStep, Next, Outcome, Step

#: Where a run enters the step graph: the source of the first edge of ``Workflow.edges``.
START = "__start__"

__all__ = ["Workflow", "START"]

S = TypeVar("S", bound=BaseModel)


class Workflow(Generic[S]):
    """A named workflow over the state model ``state``.

    Steps run in the order routes choose; a step without ``next`` goes to the step added after
    it (the last one ends the run). The run's input is the state's fields; its output is
    ``output(state)`` when given, else the whole final state.
    """

    def __init__(
        self,
        name: str,
        *,
        state: type[S],
        output: Callable[[S], Any] | None = None,
        question: Callable[[dict[str, Any]], str | None] | None = None,
        answer: Callable[[Any], str | None] | None = None,
    ) -> None:
        if not name:
            raise ConfigurationError("a workflow needs a name")
        self.name = name
        self.state = state
        self.output = output
        #: A run's question (its input → text) and answer (its output → text): the turn a
        #: run started with a ``session_id`` adds to its session (``orchestration.turns``).
        self.question = question
        self.answer = answer
        self.steps: dict[str, Step] = {}
        self._order: list[str] = []

    # --- building --------------------------------------------------------------------

    def add(self, step: Step) -> Step:
        """Add a step (any kind); the first one added is where runs start."""
        if step.name in self.steps:
            raise ConfigurationError(f"workflow {self.name!r} already has a step {step.name!r}")
        self.steps[step.name] = step
        self._order.append(step.name)
        return step

    def step(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        next: Next | None = None,
        policy: Policy | None = None,
    ) -> Any:
        """Decorator: ``@flow.step(next=...)`` adds a :class:`FunctionStep` (returns ``fn``)."""

        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            self.add(FunctionStep(function, name=name, next=next, policy=policy))
            return function

        return register(fn) if fn is not None else register

    def route(self, step_name: str) -> Callable[[Callable[[S], str]], Callable[[S], str]]:
        """Decorator: set the routing function of an already added step."""

        def register(router: Callable[[S], str]) -> Callable[[S], str]:
            self.get(step_name).next = router
            return router

        return register

    # --- reading ---------------------------------------------------------------------

    @property
    def first(self) -> str:
        if not self._order:
            raise ConfigurationError(f"workflow {self.name!r} has no steps")
        return self._order[0]

    def get(self, name: str) -> Step:
        try:
            return self.steps[name]
        except KeyError:
            raise ConfigurationError(f"workflow {self.name!r} has no step {name!r}") from None

    def next_after(self, step: Step, state: S, outcome: Outcome | None = None) -> str:
        """The step after ``step`` given the new state (deterministic: plain code, no journal)."""
        if outcome is not None and outcome.route is not None:
            target = outcome.route
        elif step.next is None:
            index = self._order.index(step.name)
            target = self._order[index + 1] if index + 1 < len(self._order) else END
        elif isinstance(step.next, str):
            target = step.next
        else:
            target = step.next(state)
        if target != END and target not in self.steps:
            raise ConfigurationError(
                f"step {step.name!r} of workflow {self.name!r} routed to unknown step {target!r}"
            )
        return target

    def check(self) -> None:
        """Build-time checks: every named route, fallback and goto target exists."""
        self.first  # noqa: B018 - raises when there are no steps
        for step in self.steps.values():
            targets = [step.policy.fallback, step.policy.goto]
            if isinstance(step.next, str):
                targets.append(step.next)
            for target in targets:
                if target is not None and target != END and target not in self.steps:
                    raise ConfigurationError(
                        f"step {step.name!r} of workflow {self.name!r} names unknown step "
                        f"{target!r}"
                    )

    @property
    def version(self) -> str:
        """A short hash of the step table: changes when steps are added, renamed or re-kinded."""
        parts = []
        for name in self._order:
            step = self.steps[name]
            route = step.next if isinstance(step.next, str) or step.next is None else "fn"
            parts.append(f"{name}:{step.kind}:{route}")
        table = ";".join(parts)
        return hashlib.sha256(table.encode()).hexdigest()[:16]

    def input_schema(self) -> dict[str, Any]:
        """The JSON schema of a run's input (the state model's fields)."""
        return self.state.model_json_schema()

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema of a run's output: the state's, the ``output`` function's return
        annotation when it is a model, else None (any JSON)."""
        if self.output is None:
            return self.state.model_json_schema()
        returned = _hints(self.output).get("return")
        if isinstance(returned, type) and issubclass(returned, BaseModel):
            return returned.model_json_schema()
        return None

    def edges(self) -> list[tuple[str, str, str]]:
        """The step graph as ``(from, to, kind)``, from ``START`` to ``END``.

        ``kind`` is ``next`` (a fixed route), ``route`` (a routing function's ``Literal``
        target), ``code`` (routed in code: ``to`` is ``""``), ``fallback`` or ``goto``
        (error routes). The Mermaid chart and the web UI's graph both draw these.
        """
        found: list[tuple[str, str, str]] = []
        if self._order:
            found.append((START, self.first, "next"))
        for index, name in enumerate(self._order):
            step = self.steps[name]
            if step.next is None:
                after = self._order[index + 1] if index + 1 < len(self._order) else END
                found.append((name, after, "next"))
            elif isinstance(step.next, str):
                found.append((name, step.next if step.next in self.steps else END, "next"))
            else:
                targets = [t for t in _literal_targets(step.next) if t in self.steps or t == END]
                found.extend((name, t, "route") for t in targets)
                if not _literal_targets(step.next):
                    found.append((name, "", "code"))
            for kind in ("fallback", "goto"):
                target = getattr(step.policy, kind)
                if target in self.steps or (target == END and target is not None):
                    found.append((name, target, kind))
        return found

    def mermaid(self) -> str:
        """The step graph as a Mermaid flowchart (``flowchart TD``).

        Fixed routes are solid edges. A routing function's targets are drawn when its return
        annotation is a ``Literal`` of step names, else as one dashed edge to a "routed in
        code" node; fallback and ``goto`` error routes are dashed and labelled.
        """
        ids = {name: f"s{i}" for i, name in enumerate(self._order)}
        ids[END] = "end_"
        ids[START] = "start_"
        lines = ["flowchart TD", '    start_(["start"])', '    end_(["end"])']
        for name in self._order:
            label = f"{name}<br/><i>{self.steps[name].kind}</i>".replace('"', "#quot;")
            lines.append(f'    {ids[name]}["{label}"]')
        labels = {"fallback": "fallback", "goto": "on error"}
        for source, target, kind in self.edges():
            here = ids[source]
            if kind == "code":
                lines.append(f'    {here} -.-> {here}_routes{{{{"routed in code"}}}}')
            elif kind in labels:
                lines.append(f"    {here} -. {labels[kind]} .-> {ids[target]}")
            else:
                lines.append(f"    {here} --> {ids[target]}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r} steps={self._order}>"


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: nothing to show
        return {}


def _literal_targets(router: Callable[..., Any]) -> list[str]:
    """The step names a router may return, when it says so: ``-> Literal["a", "b"]``."""
    returned = _hints(router).get("return")
    if typing.get_origin(returned) is Literal:
        return [str(arg) for arg in typing.get_args(returned)]
    return []

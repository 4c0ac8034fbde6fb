"""The ``remember`` and ``recall`` step kinds: long-term memory in workflows.

``remember`` extracts facts from messages built from the state (an LLM call with typed
JSON operations, applied with dedupe: the extraction chat requests use in the
background, here awaited) and ``recall`` puts a user's memories most relevant to a query
into a state field. Orchestration sits on the memory layer's level and may not import
it, so both go through protocols of ``inference.conversation`` and the context services
``"extractor"`` and ``"memories"`` the runtime wires in, as ``retrieve`` does.

Memories belong to an API key (``owner``): by default the key that started the run
(``Context.key_id``: a run started over HTTP), else ``""``, the namespace of in-process
use without a key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trellis.errors import ConfigurationError, UpstreamError
from trellis.inference.conversation import ExtractionJob, MemoryExtractor, MemoryRecall
from trellis.orchestration.context import Context
from trellis.orchestration.kinds.llm import MessageLike, as_messages
from trellis.orchestration.policy import Policy
from trellis.orchestration.steps import Next, Outcome, Step

__all__ = ["RememberStep", "RecallStep", "remember", "recall", "MemoryExtractionError"]

#: Most memories one recall step may ask for.
MAX_TOP_K = 50


class MemoryExtractionError(UpstreamError):
    """A ``remember`` step with ``fail_on_error`` could not extract (the model or its
    output failed); retryable, like any model failure."""

    code = "memory_extraction_failed"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True, deployment_fault=False)


def _service(ctx: Context, name: str, step: str) -> Any:
    found = ctx.services.get(name)
    if found is None:
        raise ConfigurationError(
            f"step {step!r} needs long-term memory: run the workflow through Trellis "
            f"(or put one in Context.services[{name!r}])"
        )
    return found


def _owner(ctx: Context, owner: str | None) -> str:
    """Whose memories: ``owner`` if given, else the key that started the run, else the
    ``"caller"`` service's key, else ``""`` (in-process use without a key)."""
    if owner is not None:
        return owner
    if ctx.key_id:
        return ctx.key_id
    caller = ctx.services.get("caller")
    return (getattr(caller, "key_id", None) or "") if caller is not None else ""


def _value(spec: str | Callable[[Any], str], state: Any) -> str:
    return spec(state) if callable(spec) else spec


class RememberStep(Step):
    """Extract facts about ``user`` from ``messages(state)`` into their memories."""

    kind = "remember"

    def __init__(
        self,
        name: str,
        *,
        user: str | Callable[[Any], str],
        messages: Callable[[Any], Sequence[MessageLike] | MessageLike],
        model: str | Callable[[Any], str] = "local",
        into: str | None = None,
        owner: str | None = None,
        fail_on_error: bool = False,
        next: Next | None = None,
        policy: Policy | None = None,
    ) -> None:
        super().__init__(name, next=next, policy=policy)
        self.user = user
        self.messages = messages
        self.model = model
        self.into = into
        self.owner = owner
        self.fail_on_error = fail_on_error

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        extractor: MemoryExtractor = _service(ctx, "extractor", self.name)
        user = _value(self.user, state).strip()
        if not user:
            raise ConfigurationError(f"step {self.name!r}: the user to remember for is empty")
        span = ctx.span
        job = ExtractionJob(
            owner=_owner(ctx, self.owner),
            user_id=user,
            messages=tuple(as_messages(self.messages(state))),
            model=_value(self.model, state),
            caller=ctx.services.get("caller"),
            request_trace_id=span.trace_id if span is not None else None,
        )
        report = await extractor.extract(job)
        if span is not None:
            span.update(
                {
                    "trellis.memory.user": user,
                    "trellis.memory.extraction_trace_id": report.trace_id,
                    "trellis.memory.applied": len(report.applied),
                    "trellis.memory.ignored": report.ignored,
                }
            )
            if report.error is not None:
                span.add_event("memory_extraction_failure", error=report.error)
        if report.error is not None and self.fail_on_error:
            raise MemoryExtractionError(f"memory extraction failed: {report.error}")
        result = {
            "trace_id": report.trace_id,
            "applied": report.applied,
            "ignored": report.ignored,
            "error": report.error,
        }
        return Outcome(update={self.into: result} if self.into else None, output=result)


class RecallStep(Step):
    """Put ``user``'s memories most relevant to ``query(state)`` into the field ``into``."""

    kind = "recall"

    def __init__(
        self,
        name: str,
        *,
        user: str | Callable[[Any], str],
        query: Callable[[Any], str],
        into: str,
        top_k: int | None = None,
        owner: str | None = None,
        next: Next | None = None,
        policy: Policy | None = None,
    ) -> None:
        super().__init__(name, next=next, policy=policy)
        if not into:
            raise ConfigurationError(f"step {name!r}: a recall step needs into=<state field>")
        if top_k is not None and not 1 <= top_k <= MAX_TOP_K:
            raise ConfigurationError(f"step {name!r}: top_k {top_k} is not in 1..{MAX_TOP_K}")
        self.user = user
        self.query = query
        self.into = into
        self.top_k = top_k
        self.owner = owner

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        memories: MemoryRecall = _service(ctx, "memories", self.name)
        user = _value(self.user, state).strip()
        query = (self.query(state) or "").strip()
        found = (
            await memories.recall(_owner(ctx, self.owner), user, query, top_k=self.top_k)
            if user and query
            else []
        )
        if ctx.span is not None:
            ctx.span.update(
                {
                    "trellis.memory.user": user,
                    "trellis.memory.ids": [m.id for m in found],
                    "trellis.memory.scores": [round(m.score, 4) for m in found],
                }
            )
        rows = [{"id": m.id, "text": m.text, "score": m.score} for m in found]
        return Outcome(
            update={self.into: rows},
            output={"memories": [{"id": m.id, "score": round(m.score, 4)} for m in found]},
        )


def remember(
    name: str,
    *,
    user: str | Callable[[Any], str],
    messages: Callable[[Any], Sequence[MessageLike] | MessageLike],
    model: str | Callable[[Any], str] = "local",
    into: str | None = None,
    owner: str | None = None,
    fail_on_error: bool = False,
    next: Next | None = None,
    policy: Policy | None = None,
) -> RememberStep:
    """A remember step: the facts ``user`` states in ``messages(state)`` (a turn, or a
    short conversation: its last user message picks the known facts shown) extracted by
    ``model`` and applied to their memories: added, updated when they change a known
    fact, deleted.

    ``into`` receives ``{"trace_id", "applied", "ignored", "error"}``. An extraction that
    fails is an event on the step's span, not a failed step, unless ``fail_on_error``.
    A retried step extracts again; restated facts update themselves (dedupe), not twice.
    """
    return RememberStep(
        name,
        user=user,
        messages=messages,
        model=model,
        into=into,
        owner=owner,
        fail_on_error=fail_on_error,
        next=next,
        policy=policy,
    )


def recall(
    name: str,
    *,
    user: str | Callable[[Any], str],
    query: Callable[[Any], str],
    into: str,
    top_k: int | None = None,
    owner: str | None = None,
    next: Next | None = None,
    policy: Policy | None = None,
) -> RecallStep:
    """A recall step: ``user``'s memories most relevant to ``query(state)`` (best first,
    ``top_k`` of them, default ``memory.top_k``) as ``{"id", "text", "score"}`` dicts into
    the field ``into``. No user or an empty query recalls nothing."""
    return RecallStep(
        name, user=user, query=query, into=into, top_k=top_k, owner=owner, next=next, policy=policy
    )

"""What a step sees besides the state: where it is in the run, and handles to services."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trellis.observe.tracing import Span

if TYPE_CHECKING:
    from trellis.orchestration.store import RunStore

__all__ = ["Context", "StepError"]


@dataclass(frozen=True, slots=True)
class StepError:
    """A failed step's error as data (it survives a checkpoint and a restart)."""

    type: str
    message: str
    step: str

    @classmethod
    def from_exception(cls, exc: BaseException, step: str) -> StepError:
        return cls(type=type(exc).__name__, message=str(exc)[:2000], step=step)

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "step": self.step}


@dataclass(slots=True)
class Context:
    """Given to every step execution.

    ``seq`` is the position this step's checkpoint will take; it is the same on every attempt
    and after a crash (the cursor is only advanced by a committed checkpoint), which is what
    makes :meth:`idempotency_key` stable across retries and resumes.
    """

    run_id: str
    workflow: str
    step: str
    seq: int
    attempt: int = 1
    #: The step's span (attributes and events recorded here end up in the run's trace).
    span: Span | None = None
    #: The error handed over by the step that failed into this one (fallback / goto).
    error: StepError | None = None
    #: The run store (tools use it for their idempotency records).
    store: RunStore | None = None
    #: Service handles wired by the runtime (``"gateway"``, ``"retriever"``...), for step kinds;
    #: ``"caller"`` is the run's own: the API key that started it.
    services: dict[str, Any] = field(default_factory=dict)
    #: The conversation the run belongs to (``session_id`` at start), for ``llm(session=True)``.
    session_id: str | None = None
    #: The API key that started the run (None: in process): whose memories steps use.
    key_id: str | None = None

    def idempotency_key(self, name: str = "") -> str:
        """``"{run_id}:{seq}:{step}[:{name}]"``: the same on every retry and resume of the step."""
        key = f"{self.run_id}:{self.seq}:{self.step}"
        return f"{key}:{name}" if name else key

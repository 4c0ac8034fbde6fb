"""The rows a run store keeps, as plain dataclasses (the same for the SQL and memory stores)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["RunStatus", "FINISHED", "Lease", "RunRecord", "StepRecord", "Checkpoint", "Effect"]


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class Lease:
    """Ownership of a run: only the holder of (owner, epoch) may checkpoint it."""

    run_id: str
    owner: str
    epoch: int


@dataclass(slots=True)
class RunRecord:
    id: str
    workflow: str
    workflow_version: str
    status: str
    input: dict[str, Any]
    state: dict[str, Any]
    trace_id: str
    created_at: float
    updated_at: float
    next_step: str | None = None
    seq: int = 0
    output: Any = None
    error: dict[str, Any] | None = None
    key_id: str | None = None
    #: The conversation (``memory_sessions``, in the key's namespace) the run belongs to.
    session_id: str | None = None
    waiting_for: dict[str, Any] | None = None
    cancel_requested: bool = False
    lease_owner: str | None = None
    lease_epoch: int = 0
    lease_until: float | None = None
    recoveries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    finished_at: float | None = None
    #: The project the run belongs to (the starting key's, or the admin's chosen one).
    project_id: str = "default"


@dataclass(slots=True)
class StepRecord:
    """One completed step execution (the checkpoint log)."""

    run_id: str
    seq: int
    step: str
    kind: str
    status: str  # ok | error | skipped | waiting
    attempts: int
    span_id: str
    start_ns: int
    end_ns: int
    output: Any = None
    state: dict[str, Any] | None = None
    next_step: str | None = None
    error: dict[str, Any] | None = None
    #: Span events recorded during the step (failed attempts, branches, kinds' own events).
    events: list[dict[str, Any]] | None = None
    #: Span attributes the step's kind recorded (a gate's verdict, retrieval ids, models).
    attributes: dict[str, Any] | None = None
    branch: str = ""
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None


@dataclass(slots=True)
class Checkpoint:
    """Everything one step changes, committed in one transaction under the run's lease."""

    step: StepRecord
    state: dict[str, Any]
    status: str
    next_step: str | None
    output: Any = None
    error: dict[str, Any] | None = None
    waiting_for: dict[str, Any] | None = None
    #: Give the lease up with this checkpoint (the run waits or finished).
    release: bool = False
    finished: bool = False


@dataclass(slots=True)
class Effect:
    """The idempotency record of one side-effecting tool call."""

    key: str
    run_id: str
    step: str
    seq: int
    args_hash: str
    status: str  # started | done | failed
    started_at: float
    result: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 1
    finished_at: float | None = None

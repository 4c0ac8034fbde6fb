"""Workflows and runs as JSON: the shapes the HTTP API and ``trellis ... --json`` share."""

from __future__ import annotations

from typing import Any

from trellis.orchestration.records import RunRecord, StepRecord
from trellis.orchestration.workflow import Workflow

__all__ = ["run_dict", "step_dict", "workflow_dict"]


def workflow_dict(flow: Workflow[Any]) -> dict[str, Any]:
    """A registered workflow as ``GET /v1/workflows`` (and ``trellis workflows``) shows it."""
    return {
        "object": "workflow",
        "name": flow.name,
        "version": flow.version,
        "first_step": flow.first,
        "steps": [{"name": step.name, "kind": step.kind} for step in flow.steps.values()],
        "input_schema": flow.input_schema(),
        "output_schema": flow.output_schema(),
        "mermaid": flow.mermaid(),
    }


def step_dict(step: StepRecord) -> dict[str, Any]:
    return {
        "seq": step.seq,
        "step": step.step,
        "kind": step.kind,
        "status": step.status,
        "attempts": step.attempts,
        "branch": step.branch,
        "next_step": step.next_step,
        "output": step.output,
        "error": step.error,
        "started_at": step.start_ns / 1e9,
        "duration_ms": max(step.end_ns - step.start_ns, 0) / 1e6,
        "model": step.model,
        "input_tokens": step.input_tokens,
        "output_tokens": step.output_tokens,
        "cost": step.cost,
    }


def run_dict(run: RunRecord, steps: list[StepRecord] | None = None) -> dict[str, Any]:
    """A run as the API and ``trellis runs show --json`` return it."""
    return {
        "object": "workflow.run",
        "id": run.id,
        "workflow": run.workflow,
        "workflow_version": run.workflow_version,
        "status": run.status,
        "input": run.input,
        "state": run.state,
        "output": run.output,
        "error": run.error,
        "waiting_for": run.waiting_for,
        "next_step": run.next_step,
        "trace_id": run.trace_id,
        "key_id": run.key_id,
        "session_id": run.session_id,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "finished_at": run.finished_at,
        "recoveries": run.recoveries,
        "usage": {
            "input_tokens": run.input_tokens,
            "output_tokens": run.output_tokens,
            "cost": run.cost,
        },
        "steps": [step_dict(s) for s in steps] if steps is not None else None,
    }

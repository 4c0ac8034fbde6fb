"""Durable workflows: typed state, steps, plain-code routing, a checkpoint after every step.

See docs/architecture.md (Orchestration) and the README section "Workflows (Python)".
"""

from __future__ import annotations

from trellis.orchestration.context import Context, StepError
from trellis.orchestration.kinds.checks import Verdict, forbidden, grounded, judge, schema_valid
from trellis.orchestration.kinds.gate import gate
from trellis.orchestration.kinds.llm import OutputValidationError, llm
from trellis.orchestration.kinds.retrieve import retrieve
from trellis.orchestration.kinds.truncate import truncate
from trellis.orchestration.policy import Backoff, Policy
from trellis.orchestration.steps import END, FunctionStep, Outcome, Pause, Step, Usage
from trellis.orchestration.workflow import Workflow

__all__ = [
    "END",
    "Backoff",
    "Context",
    "FunctionStep",
    "Outcome",
    "Pause",
    "Policy",
    "Step",
    "StepError",
    "Usage",
    "Workflow",
    # step kinds and gate checks
    "OutputValidationError",
    "Verdict",
    "forbidden",
    "gate",
    "grounded",
    "judge",
    "llm",
    "retrieve",
    "schema_valid",
    "truncate",
]

"""Durable workflows: typed state, steps, plain-code routing, a checkpoint after every step.

See docs/architecture.md (Orchestration) and the README section "Workflows (Python)".
"""

from __future__ import annotations

from trellis.orchestration.context import Context, StepError
from trellis.orchestration.engine import Engine, LeaseLost
from trellis.orchestration.human import HumanStep, human
from trellis.orchestration.kinds.agent import AgentLimitError, agent
from trellis.orchestration.kinds.checks import Verdict, forbidden, grounded, judge, schema_valid
from trellis.orchestration.kinds.gate import gate
from trellis.orchestration.kinds.llm import OutputValidationError, llm
from trellis.orchestration.kinds.memory import recall, remember
from trellis.orchestration.kinds.retrieve import retrieve
from trellis.orchestration.kinds.truncate import truncate
from trellis.orchestration.parallel import ParallelStep, parallel
from trellis.orchestration.policy import Backoff, Policy
from trellis.orchestration.records import Lease, RunRecord, RunStatus, StepRecord
from trellis.orchestration.service import Workflows
from trellis.orchestration.sqlite_store import SqliteRunStore
from trellis.orchestration.steps import END, FunctionStep, Outcome, Pause, Step, Usage
from trellis.orchestration.store import MemoryRunStore, RunStore, SqlRunStore
from trellis.orchestration.tools import EffectOutcomeUnknown, Tool, ToolStep, tool
from trellis.orchestration.workflow import Workflow

#: A run as the API returns it.
Run = RunRecord

__all__ = [
    "END",
    "Backoff",
    "Context",
    "EffectOutcomeUnknown",
    "Engine",
    "FunctionStep",
    "HumanStep",
    "Lease",
    "LeaseLost",
    "MemoryRunStore",
    "Outcome",
    "ParallelStep",
    "Pause",
    "Policy",
    "Run",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "SqlRunStore",
    "SqliteRunStore",
    "Step",
    "StepError",
    "StepRecord",
    "Tool",
    "ToolStep",
    "Usage",
    "Workflow",
    "Workflows",
    "human",
    "parallel",
    "tool",
    # step kinds and gate checks (kinds/)
    "AgentLimitError",
    "agent",
    "OutputValidationError",
    "Verdict",
    "forbidden",
    "gate",
    "grounded",
    "judge",
    "llm",
    "recall",
    "remember",
    "retrieve",
    "schema_valid",
    "truncate",
]

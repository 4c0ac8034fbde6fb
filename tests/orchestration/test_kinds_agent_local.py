"""The ``agent`` step on the real bundled model (the ``local`` alias, no native tool calls).

The 135M model follows the grammar-enforced turn schema, so every turn is a well-formed
call of an allow-listed tool or a final answer; whether it calls ``add`` with the right
numbers is beyond it, so the test asserts what the loop guarantees: it ends within the
bound, with a final answer or a clear ``AgentLimitError``, and every tool call it made
was a valid call of ``add``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from trellis.orchestration import AgentLimitError, Context, agent, tool
from trellis.runtime import Trellis
from trellis.settings import Settings

pytestmark = pytest.mark.model


@tool
def add(a: int, b: int) -> int:
    """Add two integers a and b."""
    return a + b


class Task(BaseModel):
    question: str
    answer: str | None = None


async def test_the_bundled_model_runs_the_loop_within_its_bound(tmp_path: Path) -> None:
    step = agent(
        "solve",
        task=lambda s: s.question,
        tools=[add],
        into="answer",
        model="local",
        max_iterations=3,
        temperature=0.0,
        max_tokens=48,
    )
    async with Trellis(Settings(data_dir=tmp_path)) as trellis:
        ctx = Context(
            run_id="r", workflow="w", step="solve", seq=1, services={"gateway": trellis.gateway}
        )
        try:
            outcome = await step.execute(ctx, Task(question="Use the add tool: what is 2 + 3?"))
        except AgentLimitError as exc:
            turns = exc.transcript
        else:
            assert isinstance(outcome.update, dict)
            assert isinstance(outcome.update["answer"], str)
            assert outcome.output["iterations"] <= 3
            turns = outcome.output["turns"]
    assert 1 <= len(turns) <= 3
    for turn in turns:
        # The grammar makes every turn valid: no unknown tool, no bad arguments.
        assert "error" not in turn, turn
        if "tool" in turn:
            assert turn["tool"] == "add" and turn["ok"], turn
            assert turn["result"] == str(turn["arguments"]["a"] + turn["arguments"]["b"])

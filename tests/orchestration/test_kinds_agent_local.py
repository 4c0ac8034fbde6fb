"""The ``agent`` step on the real bundled model (the ``local`` alias, no native tool calls).

The 135M model follows the grammar-enforced turn schema, so every turn is a well-formed
call of an allow-listed tool or a final answer, and the last turn (``force_final``) can
only be a final answer, so the loop always ends within its bound. The model does call
``add`` with the numbers of the question (2 and 3) but then repeats the call, and its
final answer is not reliably the sum; so the test asserts what the loop guarantees, not
the arithmetic: valid tool calls with their true results, and a final answer at the bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from trellis.orchestration import Context, agent, tool
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
        outcome = await step.execute(ctx, Task(question="Use the add tool: what is 2 + 3?"))
    assert isinstance(outcome.update, dict)
    final = outcome.update["answer"]
    assert isinstance(final, str) and final  # minLength 1: the grammar forbids ""
    turns = outcome.output["turns"]
    assert 1 <= outcome.output["iterations"] == len(turns) <= 3
    assert "final" in turns[-1]
    calls = turns[:-1]
    assert calls, "the model answered without calling the tool"
    for turn in calls:
        # The grammar makes every turn valid: no unknown tool, no bad arguments.
        assert turn.get("tool") == "add" and turn["ok"], turn
        assert turn["result"] == str(turn["arguments"]["a"] + turn["arguments"]["b"])

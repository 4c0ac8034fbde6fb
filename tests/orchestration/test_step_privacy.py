"""``tracing.bodies`` applies to the step log: with ``redacted`` step outputs, states,
errors and the run trace have their PII replaced (the redactor traces use); with ``none``
outputs and states are left out. The state a waiting run resumes from stays intact."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from trellis.orchestration import Policy, RunStatus, Workflow, Workflows, human
from trellis.orchestration.engine import run_trace
from trellis.orchestration.privacy import BodiesMode
from trellis.store import Database

EMAIL = "ada@example.com"


class Note(BaseModel):
    text: str
    echoed: str | None = None
    approved: bool | None = None
    done: str | None = None


def note_flow() -> Workflow[Note]:
    flow = Workflow("note", state=Note, output=lambda s: {"done": s.done})

    @flow.step
    def echo(s: Note) -> dict[str, str]:
        return {"echoed": f"mail {s.text}"}

    @flow.step(policy=Policy(on_error="skip"))
    def refuse(s: Note) -> None:
        raise ValueError(f"cannot mail {s.text}")

    flow.add(human("approve", into="approved", input=bool))

    @flow.step
    def finish(s: Note) -> dict[str, str]:
        return {"done": "sent" if s.approved else "held"}

    return flow


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'trellis.db'}")
    await db.connect()
    yield db
    await db.close()


async def run_note(
    database: Database, bodies: BodiesMode
) -> tuple[list[str], str, str, dict[str, Any]]:
    """Run to the human step and on: the step log, the trace and the final state as JSON,
    and the state the waiting run kept."""
    async with Workflows(database, bodies=bodies) as workflows:
        waiting = await workflows.run(note_flow(), {"text": f"write to {EMAIL}"})
        assert waiting.status == RunStatus.WAITING
        done = await workflows.resume(waiting.id, True)
        assert done.status == RunStatus.SUCCEEDED, done.error
        steps = await workflows.steps(done.id)
    log = [json.dumps([s.output, s.state, s.error, s.events, s.attributes]) for s in steps]
    trace = run_trace(done, steps)
    dumped = json.dumps([[s.attributes, s.events] for s in trace.spans], default=str)
    return log, dumped, json.dumps(done.state), waiting.state


async def test_redacted_step_records_and_trace_keep_no_pii(database: Database) -> None:
    log, trace, final_state, resumable = await run_note(database, "redacted")
    assert EMAIL not in "".join(log) and "[EMAIL]" in log[0] and "[EMAIL]" in log[1]
    assert "cannot mail write to [EMAIL]" in log[1]  # the error message, redacted
    assert EMAIL not in trace
    # The state the run resumes from is intact; once finished it is redacted too.
    assert resumable["text"] == f"write to {EMAIL}"
    assert EMAIL not in final_state and "[EMAIL]" in final_state


async def test_none_leaves_outputs_and_states_out(database: Database) -> None:
    log, trace, final_state, resumable = await run_note(database, "none")
    assert EMAIL not in "".join(log) and EMAIL not in trace
    async with Workflows(database) as workflows:
        (run,) = await workflows.list()
        steps = await workflows.steps(run.id)
    assert [(s.step, s.output, s.state) for s in steps] == [
        ("echo", None, None),
        ("refuse", None, None),
        ("approve", None, None),
        ("approve", None, None),
        ("finish", None, None),
    ]
    assert resumable["text"] == f"write to {EMAIL}"
    assert final_state == "{}" and run.output == {"done": "sent"}


async def test_full_keeps_everything(database: Database) -> None:
    log, _, final_state, _ = await run_note(database, "full")
    assert EMAIL in log[0] and EMAIL in final_state

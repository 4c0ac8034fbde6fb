"""The runtime wires Workflows to its database and trace store: ``t.workflows.run(flow, ...)``."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from trellis import Settings, Trellis
from trellis.orchestration import RunStatus, Workflow


class Greeting(BaseModel):
    name: str
    text: str = ""


flow = Workflow("greet", state=Greeting, output=lambda s: {"text": s.text})


@flow.step
async def greet(s: Greeting) -> dict[str, str]:
    return {"text": f"Hello, {s.name}"}


async def test_runtime_runs_a_workflow_durably_and_traces_it(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, include_local_models=False)
    async with Trellis(settings) as runtime:
        run = await runtime.workflows.run(flow, {"name": "Ada"})
        assert runtime.writer is not None and runtime.traces is not None
        await runtime.writer.flush()
        stored = await runtime.traces.get(run.trace_id)
    assert run.status == RunStatus.SUCCEEDED and run.output == {"text": "Hello, Ada"}
    assert stored is not None
    names = sorted(span["name"] for span in stored["spans"])
    assert names == ["greet", "step greet"]
    # Durable: a new runtime on the same data directory sees the finished run.
    async with Trellis(settings) as reopened:
        again = await reopened.workflows.get(run.id)
        (listed,) = await reopened.workflows.list(workflow="greet")
    assert again.output == {"text": "Hello, Ada"} and listed.id == run.id


async def test_workflows_need_a_started_runtime() -> None:
    with pytest.raises(RuntimeError):
        Trellis(Settings(include_local_models=False)).workflows  # noqa: B018


def test_heartbeat_must_be_shorter_than_the_lease() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        Settings(orchestration={"lease_seconds": 5, "heartbeat_seconds": 5})

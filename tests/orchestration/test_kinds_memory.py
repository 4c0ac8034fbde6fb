"""The ``remember`` and ``recall`` step kinds in a durable run through the runtime (SQLite,
the bundled embedder, a loopback fake upstream that scripts the extraction's operations)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from trellis.errors import ConfigurationError
from trellis.memory.extraction import INSTRUCTIONS
from trellis.orchestration import Context, RunStatus, Workflow, recall, remember
from trellis.runtime import Trellis
from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream, Fault


class Chat(BaseModel):
    user: str
    said: str
    question: str
    remembered: dict[str, Any] | None = None
    recalled: list[dict[str, Any]] = []


def flow(name: str = "memory-kinds", **remember_options: Any) -> Workflow:
    work = Workflow(name, state=Chat, output=lambda s: s.recalled)
    work.add(
        remember(
            "remember",
            user=lambda s: s.user,
            messages=lambda s: [s.said],
            model="m",
            into="remembered",
            **remember_options,
        )
    )
    work.add(recall("recall", user=lambda s: s.user, query=lambda s: s.question, into="recalled"))
    return work


def reply(body: dict[str, Any]) -> str:
    if body["messages"][0]["content"].startswith(INSTRUCTIONS[:40]):
        said = body["messages"][-1]["content"].removeprefix("User: ")
        text = "I live in Paris." if "Paris" in said else said
        return json.dumps({"operations": [{"op": "add", "id": 0, "text": text}]})
    return "ok"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(vendor="openai", reply=reply) as server:
        yield server


def settings(tmp_path: Path, upstream: FakeUpstream) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        include_local_models=False,
        retry={"attempts": 1},
        models=[
            {
                "name": "m",
                "deployments": [
                    {
                        "provider": "openai-compatible",
                        "model": "gpt-4o-mini",
                        "base_url": upstream.base_url,
                    }
                ],
            }
        ],
    )


async def test_a_run_remembers_then_recalls(tmp_path: Path, upstream: FakeUpstream) -> None:
    async with Trellis(settings(tmp_path, upstream)) as trellis:
        assert trellis.memories is not None
        await trellis.memories.add("", "ada", "I have a cat called Miso.")
        await trellis.memories.add("", "bob", "I live in Rome.")
        run = await trellis.workflows.run(
            flow(),
            {"user": "ada", "said": "We just moved to Paris!", "question": "Where is my home?"},
        )
        assert run.status == RunStatus.SUCCEEDED, run.error
        assert run.state["remembered"]["applied"][0]["op"] == "added"
        assert run.state["remembered"]["error"] is None
        assert run.output[0]["text"] == "I live in Paris."
        assert all("Rome" not in m["text"] for m in run.output)  # bob's memory stays bob's
        steps = {s.step: s for s in await trellis.workflows.steps(run.id)}
        assert steps["recall"].output["memories"][0]["id"] == run.output[0]["id"]


async def test_a_failed_extraction_is_an_event_or_with_fail_on_error_a_failed_step(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    upstream.faults.always(Fault.status(400))
    state = {"user": "ada", "said": "I live in Paris.", "question": "Where do I live?"}
    async with Trellis(settings(tmp_path, upstream)) as trellis:
        run = await trellis.workflows.run(flow(), state)
        assert run.status == RunStatus.SUCCEEDED
        assert "400" in run.state["remembered"]["error"]
        assert run.output == []
        failed = await trellis.workflows.run(flow("memory-strict", fail_on_error=True), state)
        assert failed.status == RunStatus.FAILED
        assert failed.error is not None and "memory extraction failed" in failed.error["message"]


async def test_memory_steps_need_the_runtime_services() -> None:
    ctx = Context(run_id="r", workflow="w", step="recall", seq=1)
    step = recall("recall", user="ada", query=lambda s: "q", into="found")
    with pytest.raises(ConfigurationError, match="needs long-term memory"):
        await step.execute(ctx, None)
    with pytest.raises(ConfigurationError, match="top_k"):
        recall("recall", user="ada", query=lambda s: "q", into="found", top_k=0)


async def test_a_run_started_by_a_key_uses_that_keys_memories(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    async with Trellis(settings(tmp_path, upstream)) as trellis:
        assert trellis.memories is not None
        await trellis.memories.add("", "ada", "I live in Rome.")  # the keyless namespace
        state = {"user": "ada", "said": "We just moved to Paris!", "question": "Where is my home?"}
        key, _ = await trellis.keys.create("starter")
        run = await trellis.workflows.run(flow("memory-keyed"), state, key_id=key.id)
        assert run.status == RunStatus.SUCCEEDED, run.error
        assert [m["text"] for m in run.output] == ["I live in Paris."]
        assert [m.text for m in await trellis.memories.list_memories(key.id, "ada")] == [
            "I live in Paris."
        ]
        assert [m.text for m in await trellis.memories.list_memories("", "ada")] == [
            "I live in Rome."
        ]

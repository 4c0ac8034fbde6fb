"""The three shipped workflows end to end on the bundled models, offline: a started
Trellis runtime (SQLite, the local chat model, MiniLM retrieval), small max_tokens.

What a 135M model answers varies, so these assert what each workflow guarantees: the run
succeeds through its steps, the typed fields are valid, and the records (passages,
verdict, savings) are there and consistent."""

from __future__ import annotations

from pathlib import Path

import pytest

from trellis.orchestration import RunStatus
from trellis.orchestration.builtin import cascade, extract, support_answer
from trellis.runtime import Trellis
from trellis.settings import Settings

pytestmark = pytest.mark.model

DOCS = [
    {"id": "tower", "text": "The Eiffel Tower was completed in 1889 for the World's Fair."},
    {"id": "bridge", "text": "The Golden Gate Bridge opened in 1937 in San Francisco."},
    {"id": "wall", "text": "The Great Wall of China is thousands of kilometres long."},
]


async def test_all_three_on_the_bundled_models(tmp_path: Path) -> None:
    async with Trellis(Settings(data_dir=tmp_path)) as trellis:
        await trellis.retrieval.create_collection("landmarks")
        await trellis.retrieval.add_documents("landmarks", DOCS)
        workflows = trellis.workflows

        support = await workflows.run(
            support_answer.build(max_tokens=60),
            {"question": "When was the Eiffel Tower completed?", "collections": ["landmarks"]},
        )
        assert support.status == RunStatus.SUCCEEDED, support.error
        steps = [s.step for s in await workflows.store.steps(support.id)]
        assert steps[:3] == ["search", "answer", "check"]
        output = support.output
        assert output["passages"][0]["document_id"] == "tower"
        assert output["answer"]["text"]
        if output["refused"]:
            assert steps[-1] == "refuse" and output["model"] is None
        else:
            assert support.state["verdict"]["passed"] is True and output["model"] == "local"

        extracted = await workflows.run(
            extract.build(max_tokens=60),
            {
                "text": "Ada Lovelace was 36 years old.",
                "schema": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                    "required": ["name", "age"],
                },
            },
        )
        assert extracted.status == RunStatus.SUCCEEDED, extracted.error
        assert extracted.output["valid"] is True, extracted.output
        value = extracted.output["value"]
        assert isinstance(value["name"], str) and isinstance(value["age"], int)

        run = await workflows.run(cascade.build(max_tokens=24), {"prompt": "Name a colour."})
        assert run.status == RunStatus.SUCCEEDED, run.error
        steps = [s.step for s in await workflows.store.steps(run.id)]
        saved = run.output["savings"]
        assert saved["escalated"] is (not run.state["verdict"]["passed"])
        assert steps == (
            ["cheap", "check", "escalate", "strong"]
            if saved["escalated"]
            else ["cheap", "check", "keep"]
        )
        assert saved["cheap_input_tokens"] > 0 and saved["cheap_output_tokens"] > 0
        assert saved["cheap_cost"] == 0.0 and saved["strong_cost_estimate"] == 0.0
        assert run.output["answer"]

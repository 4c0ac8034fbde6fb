"""Datasets built from stored chat traces: the prompts as inputs, human labels (a score's
comment) or the answers then as expected values, filtered by the trace filters and a score
threshold; over the CLI too."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from trellis.cli import app
from trellis.evals import EvalStore
from trellis.evals.datasets import DatasetError
from trellis.evals.from_traces import TraceSelection, dataset_from_traces
from trellis.observe.query import TraceQuery
from trellis.runtime import Trellis
from trellis.schema import ChatMessage, ChatRequest
from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    def reply(body: dict[str, Any]) -> str:
        return "answer to " + str(body["messages"][-1]["content"])

    with FakeUpstream(vendor="openai", reply=reply) as server:
        yield server


def settings(tmp_path: Path, upstream: FakeUpstream, **tracing: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        include_local_models=False,
        models=[
            {
                "name": name,
                "deployments": [
                    {
                        "provider": "openai-compatible",
                        "model": f"gpt-{name}",
                        "base_url": upstream.base_url,
                    }
                ],
            }
            for name in ("a", "b")
        ],
        retry={"attempts": 1},
        tracing=tracing,
    )


async def ask(trellis: Trellis, model: str, *contents: str) -> str:
    """One chat call; its trace id once the trace is stored."""
    assert trellis.gateway is not None and trellis.writer is not None
    messages = [ChatMessage(role="user", content=text) for text in contents]
    if len(messages) > 1:
        messages.insert(0, ChatMessage(role="system", content="Be brief."))
    result = await trellis.gateway.chat(
        ChatRequest(model=model, messages=messages, trellis={"cache": False})
    )
    await trellis.writer.flush()
    return result.trace_id


async def test_prompts_labels_and_filters_make_the_cases(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    async with Trellis(settings(tmp_path, upstream)) as trellis:
        assert trellis.traces is not None
        first = await ask(trellis, "a", "What is 2+2?")
        second = await ask(trellis, "a", "Capital of France?")
        third = await ask(trellis, "b", "Hello", "And again?")
        # People scored the answers; two of them wrote the right answer as a label.
        await trellis.traces.add_score(first, "quality", 0.2)
        await trellis.traces.add_score(first, "label", 1, comment="4")
        await trellis.traces.add_score(second, "quality", 0.9)
        await trellis.traces.add_score(second, "label", 1, comment="Lyon")
        await trellis.traces.add_score(second, "label", 1, comment="Paris")  # newest wins

        built = await dataset_from_traces(trellis.traces, "prod")
        cases = {case.id: case for case in built.dataset.cases}
        assert list(cases) == [third, second, first]  # newest first
        assert cases[first].input == "What is 2+2?" and cases[first].expected == "4"
        assert cases[second].expected == "Paris"
        assert cases[third].expected is None and built.unlabelled == 1
        assert cases[third].input == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "user", "content": "And again?"},
        ]
        assert cases[first].metadata["model"] == "a"
        assert cases[first].metadata["scores"] == {"quality": 0.2, "label": 1.0}
        assert built.dataset.version and built.dataset.ref.startswith("prod@")

        low = await dataset_from_traces(
            trellis.traces, "bad", TraceSelection(score="quality", below=0.5)
        )
        assert [c.id for c in low.dataset.cases] == [first] and low.skipped_by_score == 2

        of_b = await dataset_from_traces(
            trellis.traces,
            "b-only",
            TraceSelection(query=TraceQuery(kind="chat", model="b"), expected="output"),
        )
        (only,) = of_b.dataset.cases
        assert only.id == third and only.expected == "answer to And again?"

        limited = await dataset_from_traces(trellis.traces, "two", TraceSelection(limit=2))
        assert len(limited.dataset.cases) == 2

        with pytest.raises(DatasetError, match="no trace matched"):
            await dataset_from_traces(
                trellis.traces, "none", TraceSelection(query=TraceQuery(model="zzz"))
            )
        with pytest.raises(DatasetError, match="go together"):
            await dataset_from_traces(trellis.traces, "x", TraceSelection(score="quality"))
        with pytest.raises(DatasetError, match="dataset name"):
            await dataset_from_traces(trellis.traces, "bad name!")


async def test_traces_without_stored_prompts_are_skipped_and_counted(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    async with Trellis(settings(tmp_path, upstream, bodies="none")) as trellis:
        assert trellis.traces is not None
        await ask(trellis, "a", "secret question")
        with pytest.raises(DatasetError, match=r"1 matched without one"):
            await dataset_from_traces(trellis.traces, "prod")


def test_the_cli_stores_the_dataset_and_writes_jsonl(
    tmp_path: Path, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = settings(tmp_path, upstream)
    config_file = tmp_path / "trellis.yaml"
    config_file.write_text(
        json.dumps(config.model_dump(mode="json", include={"data_dir", "models", "retry"})) + "\n"
    )
    monkeypatch.setenv("TRELLIS_INCLUDE_LOCAL_MODELS", "false")

    async def seed() -> str:
        async with Trellis(config) as trellis:
            assert trellis.traces is not None
            trace_id = await ask(trellis, "a", "What is 2+2?")
            await trellis.traces.add_score(trace_id, "label", 1, comment="4")
            return trace_id

    trace_id = asyncio.run(seed())
    out = tmp_path / "prod.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "eval", "dataset", "from-traces", "--name", "prod", "--since", "1h",
            "--out", str(out), "--json", "--config", str(config_file),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["cases"] == 1 and info["unlabelled"] == 0
    (line,) = out.read_text().splitlines()
    assert json.loads(line)["id"] == trace_id and json.loads(line)["expected"] == "4"

    async def stored() -> list[Any]:
        async with Trellis(config) as trellis:
            assert trellis.db is not None
            return await EvalStore(trellis.db).datasets()

    assert [(d.name, d.version) for d in asyncio.run(stored())] == [("prod", info["version"])]
    bad = CliRunner().invoke(
        app,
        ["eval", "dataset", "from-traces", "--name", "x", "--expected", "maybe",
         "--config", str(config_file)],
    )  # fmt: skip
    assert bad.exit_code == 2 and "--expected" in bad.output

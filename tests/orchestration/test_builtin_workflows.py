"""The shipped workflows' routing on FakeUpstream: support-answer (pass, retry with more
context, fallback model, refusal), extract (valid, repaired, invalid, named model) and
cascade (escalation only when the gate fails, with the cost saved)."""

from __future__ import annotations

import json
import pkgutil
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from trellis.errors import InvalidRequestError
from trellis.inference.gateway import Gateway
from trellis.inference.grounding import Passage
from trellis.inference.router import Router
from trellis.orchestration import RunStatus, Workflow, Workflows
from trellis.orchestration.builtin import cascade, extract, support_answer
from trellis.settings import Deployment, ModelAlias, Prices, RetrySettings
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream

KNOWLEDGE = [
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Gustave Eiffel's company designed and built the tower.",
    "The tower is 330 metres tall.",
]
UNGROUNDED = json.dumps({"text": "Napoleon crowned himself emperor in 1804.", "citations": []})
GROUNDED = json.dumps({"text": "It was completed in 1889 for the World's Fair.", "citations": [1]})
PRICES = {"cheap": Prices(input=0.1, output=0.4), "strong": Prices(input=5.0, output=15.0)}


class Knowledge:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    async def retrieve(
        self, collections: Sequence[str], query: str, top_k: int, project_id: str = "default"
    ) -> list[Passage]:
        self.calls.append((list(collections), top_k))
        return [
            Passage(collection="kb", chunk_id=i, document_id=f"d{i}", text=text, score=1 / (i + 1))
            for i, text in enumerate(KNOWLEDGE[:top_k])
        ]


class ByModel:
    """Replies per upstream model: a list of texts each, the last one repeated."""

    def __init__(self, **replies: list[str]) -> None:
        self.replies = replies
        self.seen: list[str] = []

    def __call__(self, body: dict[str, Any]) -> str:
        name = body["model"].removeprefix("gpt-")
        self.seen.append(name)
        texts = self.replies[name]
        return texts.pop(0) if len(texts) > 1 else texts[0]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai").start()
    yield server
    server.stop()


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'trellis.db'}")
    await db.connect()
    yield db
    await db.close()


def make_gateway(upstream: FakeUpstream) -> Gateway:
    aliases = [
        ModelAlias(
            name=name,
            deployments=[
                Deployment(
                    provider="openai-compatible",
                    model=f"gpt-{name}",
                    base_url=upstream.base_url,
                    prices=PRICES[name],
                )
            ],
        )
        for name in ("cheap", "strong")
    ]
    return Gateway(Router(aliases, retry=RetrySettings(attempts=1)))


async def run_flow(
    database: Database, upstream: FakeUpstream, flow: Any, input: dict[str, Any]
) -> tuple[Any, list[str], Knowledge]:
    knowledge = Knowledge()
    services = {"gateway": make_gateway(upstream), "retriever": knowledge}
    async with Workflows(database, services=services) as workflows:
        run = await workflows.run(flow, input)
        steps = await workflows.store.steps(run.id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    return run, [s.step for s in steps], knowledge


SUPPORT = {"question": "When was the tower completed?", "collections": ["kb"]}
SUPPORT_MODELS = {**SUPPORT, "model": "cheap", "fallback_model": "strong", "top_k": 1}


# --- support-answer ------------------------------------------------------------------


async def test_support_answer_a_grounded_answer_passes_the_gate(
    upstream: FakeUpstream, database: Database
) -> None:
    upstream.reply = ByModel(cheap=[GROUNDED])
    run, steps, knowledge = await run_flow(
        database, upstream, support_answer.workflow, SUPPORT_MODELS
    )
    assert steps == ["search", "answer", "check"]
    assert run.output["answer"] == json.loads(GROUNDED)
    assert run.output["refused"] is False and run.output["model"] == "cheap"
    assert run.output["passages"][0] == {"collection": "kb", "document_id": "d0", "chunk_id": 0}
    assert knowledge.calls == [(["kb"], 1)]


async def test_support_answer_retries_with_more_context(
    upstream: FakeUpstream, database: Database
) -> None:
    models = ByModel(cheap=[UNGROUNDED, GROUNDED])
    upstream.reply = models
    run, steps, knowledge = await run_flow(
        database, upstream, support_answer.workflow, SUPPORT_MODELS
    )
    assert steps == ["search", "answer", "check", "widen", "search", "answer", "check"]
    assert [k for _, k in knowledge.calls] == [1, 8]
    assert models.seen == ["cheap", "cheap"]
    assert run.output["model"] == "cheap" and len(run.output["passages"]) == 3


async def test_support_answer_falls_back_to_another_model(
    upstream: FakeUpstream, database: Database
) -> None:
    models = ByModel(cheap=[UNGROUNDED], strong=[GROUNDED])
    upstream.reply = models
    run, steps, _ = await run_flow(database, upstream, support_answer.workflow, SUPPORT_MODELS)
    assert steps[-4:] == ["check", "fall_back", "answer", "check"]
    assert models.seen == ["cheap", "cheap", "strong"]
    assert run.output["model"] == "strong"
    assert run.output["answer"] == json.loads(GROUNDED)


async def test_support_answer_refuses_when_nothing_grounds_the_answer(
    upstream: FakeUpstream, database: Database
) -> None:
    models = ByModel(cheap=[UNGROUNDED], strong=[UNGROUNDED])
    upstream.reply = models
    run, steps, _ = await run_flow(database, upstream, support_answer.workflow, SUPPORT_MODELS)
    assert steps[-2:] == ["check", "refuse"]
    assert "fall_back" in steps
    assert run.output["refused"] is True and run.output["model"] is None
    assert run.output["answer"]["text"] == support_answer.REFUSAL
    # One model for both: no fallback step, straight to the refusal after the retry.
    upstream.reply = ByModel(cheap=[UNGROUNDED])
    run, steps, _ = await run_flow(
        database, upstream, support_answer.workflow, {**SUPPORT_MODELS, "fallback_model": "cheap"}
    )
    assert steps == ["search", "answer", "check", "widen", "search", "answer", "check", "refuse"]


async def test_support_answer_refuses_when_the_model_cannot_answer_json(
    upstream: FakeUpstream, database: Database
) -> None:
    upstream.reply = ByModel(cheap=["I will not write JSON."])
    run, steps, _ = await run_flow(database, upstream, support_answer.workflow, SUPPORT_MODELS)
    assert steps == ["search", "answer", "refuse"]
    assert len(upstream.requests) == 4  # 2 attempts x (1 call + 1 repair)
    assert run.output["refused"] is True


# --- extract -------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@extract.register
class Invoice(BaseModel):
    number: str
    total: float


async def test_extract_with_a_json_schema_repairs_an_invalid_answer(
    upstream: FakeUpstream, database: Database
) -> None:
    models = ByModel(cheap=['{"name": "Ada", "age": "old"}', '{"name": "Ada", "age": 36}'])
    upstream.reply = models
    text = "Ada Lovelace was 36."
    run, steps, _ = await run_flow(
        database, upstream, extract.workflow, {"text": text, "schema": PERSON, "model": "cheap"}
    )
    assert steps == ["extract", "validate", "accept"]
    assert run.output == {"value": {"name": "Ada", "age": 36}, "valid": True, "error": None}
    sent = upstream.requests[0].json["response_format"]["json_schema"]["schema"]
    assert sent == PERSON
    repair = upstream.requests[1].json["messages"][-1]["content"]
    assert "not valid" in repair and "integer" in repair


async def test_extract_with_a_named_model(upstream: FakeUpstream, database: Database) -> None:
    upstream.reply = ByModel(cheap=['{"number": "A-17", "total": 99.5}'])
    run, _, _ = await run_flow(
        database,
        upstream,
        extract.workflow,
        {"text": "Invoice A-17, total 99.50", "output_model": "Invoice", "model": "cheap"},
    )
    assert run.output["value"] == {"number": "A-17", "total": 99.5}
    sent = upstream.requests[0].json["response_format"]["json_schema"]
    assert sent["name"] == "Invoice" and sent["schema"] == Invoice.model_json_schema()


async def test_extract_that_stays_invalid_ends_with_the_error(
    upstream: FakeUpstream, database: Database
) -> None:
    upstream.reply = ByModel(cheap=["nope"])
    run, steps, _ = await run_flow(
        database,
        upstream,
        extract.workflow,
        {"text": "x", "schema": PERSON, "model": "cheap", "repair": 1},
    )
    assert steps == ["extract", "invalid"]
    assert len(upstream.requests) == 4  # 2 attempts x (1 call + 1 repair)
    assert run.output["valid"] is False and run.output["value"] is None
    assert "did not match" in run.output["error"]


@pytest.mark.parametrize(
    "bad",
    [
        {"text": "x"},
        {"text": "x", "schema": PERSON, "output_model": "Invoice"},
        {"text": "x", "output_model": "Nope"},
        {"text": "x", "schema": {"type": "nonsense"}},
    ],
)
async def test_extract_rejects_bad_input(database: Database, bad: dict[str, Any]) -> None:
    async with Workflows(database) as workflows:
        with pytest.raises(InvalidRequestError):
            await workflows.start(extract.workflow, bad)


# --- cascade -------------------------------------------------------------------------

CASCADE = {"prompt": "Name a colour.", "cheap_model": "cheap", "strong_model": "strong"}


async def test_cascade_keeps_the_cheap_answer_and_records_the_saving(
    upstream: FakeUpstream, database: Database
) -> None:
    models = ByModel(cheap=["Blue is a colour."], strong=["Red."])
    upstream.reply = models
    run, steps, _ = await run_flow(database, upstream, cascade.workflow, CASCADE)
    assert steps == ["cheap", "check", "keep"]
    assert models.seen == ["cheap"]  # the strong model was never called
    assert run.output["answer"] == "Blue is a colour." and run.output["escalated"] is False
    saved = run.output["savings"]
    tokens_in, tokens_out = saved["cheap_input_tokens"], saved["cheap_output_tokens"]
    assert tokens_in > 0 and tokens_out > 0
    assert saved["cheap_cost"] == pytest.approx((tokens_in * 0.1 + tokens_out * 0.4) / 1e6)
    assert saved["strong_cost_estimate"] == pytest.approx((tokens_in * 5 + tokens_out * 15) / 1e6)
    assert saved["cost_saved"] == pytest.approx(saved["strong_cost_estimate"] - saved["cheap_cost"])
    assert saved["cost_saved"] > 0 and saved["priced"] is True
    assert saved["strong_tokens_avoided"] == tokens_in + tokens_out
    assert run.cost == pytest.approx(saved["cheap_cost"])


async def test_cascade_escalates_only_when_the_gate_fails(
    upstream: FakeUpstream, database: Database
) -> None:
    models = ByModel(cheap=["I don't know."], strong=["Red is a colour."])
    upstream.reply = models
    run, steps, _ = await run_flow(database, upstream, cascade.workflow, CASCADE)
    assert steps == ["cheap", "check", "escalate", "strong"]
    assert models.seen == ["cheap", "strong"]
    assert run.output["answer"] == "Red is a colour." and run.output["escalated"] is True
    saved = run.output["savings"]
    assert saved["escalated"] is True and saved["strong_tokens_avoided"] == 0
    assert saved["cost_saved"] == pytest.approx(-saved["cheap_cost"])
    assert run.state["verdict"]["passed"] is False
    assert run.state["cheap_answer"] == "I don't know."
    # An empty cheap answer fails the gate too.
    upstream.reply = ByModel(cheap=[""], strong=["Green."])
    run, steps, _ = await run_flow(database, upstream, cascade.workflow, CASCADE)
    assert steps[-1] == "strong" and run.output["answer"] == "Green."


async def test_support_answer_a_citation_of_a_missing_passage_fails_the_gate(
    upstream: FakeUpstream, database: Database
) -> None:
    bad = json.dumps({"text": "It was completed in 1889 for the World's Fair.", "citations": [4]})
    upstream.reply = ByModel(cheap=[bad, GROUNDED])
    run, steps, _ = await run_flow(database, upstream, support_answer.workflow, SUPPORT_MODELS)
    assert steps[3] == "widen"
    async with Workflows(database) as workflows:
        records = await workflows.store.steps(run.id)
    first_check = next(r for r in records if r.step == "check").output
    assert first_check["checks"][1] == {
        "name": "citations:answer",
        "passed": False,
        "score": None,
        "detail": "no passage 4 (of 1)",
    }
    assert run.output["answer"] == json.loads(GROUNDED)


async def test_cascade_with_a_judge_escalates_on_its_fail_verdict(
    upstream: FakeUpstream, database: Database
) -> None:
    fail = json.dumps({"verdict": "fail", "reason": "Not a colour."})
    models = ByModel(cheap=["Bananas are yellow fruit."], strong=[fail, "Red is a colour."])
    upstream.reply = models
    run, steps, _ = await run_flow(
        database, upstream, cascade.workflow, {**CASCADE, "judge_model": "strong"}
    )
    assert steps == ["cheap", "check", "escalate", "strong"]
    assert models.seen == ["cheap", "strong", "strong"]  # answer, judge, escalated answer
    checks = run.state["verdict"]["checks"]
    assert [c["name"] for c in checks] == ["min_words:answer", "forbidden:answer", "judge:answer"]
    assert checks[-1]["passed"] is False
    assert run.output["answer"] == "Red is a colour."


@pytest.mark.parametrize(
    ("path", "name", "aliases"),
    [
        ("support_answer", "support-answer", {"model", "fallback_model"}),
        ("extract", "extract", {"model"}),
        ("cascade", "cascade", {"cheap_model", "strong_model"}),
    ],
)
def test_each_is_a_workflow_importable_by_path_with_local_aliases(
    path: str, name: str, aliases: set[str]
) -> None:
    flow = pkgutil.resolve_name(f"trellis.orchestration.builtin.{path}:workflow")
    assert isinstance(flow, Workflow) and flow.name == name
    flow.check()
    fields = flow.state.model_fields
    assert {field: fields[field].default for field in aliases} == dict.fromkeys(aliases, "local")

"""The step kinds together in a durable run (SQLite): retrieve → truncate → llm → gate,
with the gate's verdict routing to a wider search, a stronger model, or a refusal."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from trellis.inference.gateway import Gateway
from trellis.inference.grounding import Passage
from trellis.inference.router import Router
from trellis.orchestration import (
    END,
    Backoff,
    Policy,
    RunStatus,
    Verdict,
    Workflow,
    Workflows,
    forbidden,
    gate,
    grounded,
    llm,
    retrieve,
    schema_valid,
    truncate,
)
from trellis.settings import Deployment, ModelAlias, RetrySettings
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream

KNOWLEDGE = [
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Gustave Eiffel's company designed and built the tower.",
    "The tower is 330 metres tall.",
]
UNGROUNDED = {"text": "Napoleon crowned himself emperor in 1804.", "citations": []}
GROUNDED = {"text": "It was completed in 1889 for the World's Fair [1].", "citations": [1]}


class Answer(BaseModel):
    text: str
    citations: list[int]


class Support(BaseModel):
    question: str
    passages: list[dict[str, Any]] = []
    answer: Answer | None = None
    verdict: Verdict | None = None
    tries: int = 0
    model: str = "cheap"


class Knowledge:
    """A Retriever over a fixed list (the real adapter is tested in test_kinds_retrieve)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def retrieve(
        self, collections: Sequence[str], query: str, top_k: int, project_id: str = "default"
    ) -> list[Passage]:
        self.calls.append(top_k)
        return [
            Passage(collection="kb", chunk_id=i, document_id=f"d{i}", text=text, score=1 / (i + 1))
            for i, text in enumerate(KNOWLEDGE[:top_k])
        ]


def after_gate(s: Support, verdict: Verdict) -> str:
    if verdict.passed:
        return END
    if s.tries == 0:
        return "widen"
    if s.model == "cheap":
        return "escalate"
    return "refuse"


def support_flow(answer_policy: Policy | None = None) -> Workflow[Support]:
    flow = Workflow("support-kinds", state=Support, output=lambda s: s.answer)
    flow.add(
        retrieve(
            "search",
            collections=["kb"],
            query=lambda s: s.question,
            top_k=lambda s: 1 + 2 * s.tries,
            into="passages",
        )
    )
    flow.add(truncate("fit", field="passages", budget=60))
    flow.add(
        llm(
            "answer",
            model=lambda s: s.model,
            messages=lambda s: [
                {"role": "system", "content": "Answer from the passages; cite them as [n]."},
                "\n".join(f"[{i}] {p['text']}" for i, p in enumerate(s.passages, 1)),
                s.question,
            ],
            output=Answer,
            into="answer",
            repair=1,
            temperature=0.0,
            policy=answer_policy,
        )
    )
    flow.add(
        gate(
            "check",
            [
                schema_valid("answer"),
                forbidden("answer", terms=["as an AI"]),
                grounded("answer", "passages"),
            ],
            into="verdict",
            route=after_gate,
        )
    )

    @flow.step(next="search")
    def widen(s: Support) -> dict[str, Any]:
        return {"tries": s.tries + 1}

    @flow.step(next="answer")
    def escalate(s: Support) -> dict[str, Any]:
        return {"model": "strong"}

    @flow.step(next=END)
    def refuse(s: Support) -> dict[str, Any]:
        return {"answer": Answer(text="I can't answer that from the documents.", citations=[])}

    return flow


class Models:
    """Both aliases' upstream: the cheap model answers off the passages; the strong one
    first answers something that is not JSON, then a grounded answer."""

    def __init__(self, strong: list[str]) -> None:
        self.strong = strong
        self.seen: list[str] = []

    def __call__(self, body: dict[str, Any]) -> str:
        self.seen.append(body["model"])
        if body["model"] == "gpt-cheap":
            return json.dumps(UNGROUNDED)
        return self.strong.pop(0) if len(self.strong) > 1 else self.strong[0]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai").start()
    yield server
    server.stop()


def make_gateway(upstream: FakeUpstream) -> Gateway:
    aliases = [
        ModelAlias(
            name=name,
            deployments=[
                Deployment(
                    provider="openai-compatible", model=f"gpt-{name}", base_url=upstream.base_url
                )
            ],
        )
        for name in ("cheap", "strong")
    ]
    return Gateway(Router(aliases, retry=RetrySettings(attempts=1)))


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'trellis.db'}")
    await db.connect()
    yield db
    await db.close()


async def test_the_gate_routes_to_more_context_then_a_stronger_model(
    upstream: FakeUpstream, database: Database
) -> None:
    models = Models(["here you go: {", json.dumps(GROUNDED)])
    upstream.reply = models
    knowledge = Knowledge()
    services = {"gateway": make_gateway(upstream), "retriever": knowledge}
    async with Workflows(database, services=services) as workflows:
        run = await workflows.run(support_flow(), {"question": "When was the tower completed?"})
        steps = await workflows.store.steps(run.id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output == GROUNDED
    assert [s.step for s in steps] == [
        "search", "fit", "answer", "check",  # cheap model, 1 passage: ungrounded
        "widen", "search", "fit", "answer", "check",  # cheap model, 3 passages: still not
        "escalate", "answer", "check",  # strong model: repaired once, grounded
    ]  # fmt: skip
    assert knowledge.calls == [1, 3]
    assert models.seen == ["gpt-cheap", "gpt-cheap", "gpt-strong", "gpt-strong"]
    kinds = {s.step: s.kind for s in steps}
    assert kinds == {
        "search": "retrieve",
        "fit": "truncate",
        "answer": "llm",
        "check": "gate",
        "widen": "function",
        "escalate": "function",
    }
    checks = [s.output for s in steps if s.step == "check"]
    assert [c["passed"] for c in checks] == [False, False, True]
    assert checks[0]["checks"][-1]["name"] == "grounded:answer"
    assert run.state["verdict"]["passed"] is True
    # The truncate step kept the passages within its budget on the wider search.
    fits = [s.output for s in steps if s.step == "fit"]
    assert fits[0]["dropped"] == 0 and fits[1]["tokens_after"] <= 60
    answers = [s for s in steps if s.step == "answer"]
    assert [a.model for a in answers] == ["gpt-cheap", "gpt-cheap", "gpt-strong"]
    assert all(a.input_tokens and a.output_tokens for a in answers)
    assert run.input_tokens == sum(s.input_tokens or 0 for s in steps)


async def test_an_answer_that_stays_invalid_is_retried_by_policy_then_falls_back(
    upstream: FakeUpstream, database: Database
) -> None:
    upstream.reply = "I refuse to write JSON."
    services = {"gateway": make_gateway(upstream), "retriever": Knowledge()}
    policy = Policy(attempts=2, backoff=Backoff(0.0, 0.0), fallback="refuse")
    async with Workflows(database, services=services) as workflows:
        run = await workflows.run(support_flow(policy), {"question": "When?"})
        steps = await workflows.store.steps(run.id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert [s.step for s in steps] == ["search", "fit", "answer", "refuse"]
    failed = steps[2]
    assert failed.status == "error" and failed.attempts == 2
    assert failed.error is not None and failed.error["type"] == "OutputValidationError"
    assert len(upstream.requests) == 4  # 2 attempts x (1 call + 1 repair)
    assert run.output == {"text": "I can't answer that from the documents.", "citations": []}

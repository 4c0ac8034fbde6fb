"""The ``retrieve`` step kind over a real collection (SQLite index, the bundled MiniLM),
reached through ``inference.grounding.CollectionRetriever`` as the runtime wires it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from trellis.errors import ConfigurationError, NotFoundError
from trellis.inference.grounding import CollectionRetriever, Passage
from trellis.inference.local.embedder import MiniLMEmbedder
from trellis.observe.tracing import Span
from trellis.orchestration import Context, grounded
from trellis.orchestration.kinds.retrieve import retrieve
from trellis.retrieval import Retrieval, index_for
from trellis.store import Database

DOCS = [
    {"id": "tower", "text": "The Eiffel Tower was completed in 1889 for the World's Fair."},
    {"id": "bridge", "text": "The Golden Gate Bridge opened in 1937 in San Francisco."},
    {"id": "wall", "text": "The Great Wall of China is thousands of kilometres long."},
]


class State(BaseModel):
    question: str
    tries: int = 0
    passages: list[dict[str, Any]] = []
    answer: str | None = None


class Typed(BaseModel):
    question: str
    passages: list[Passage] = []


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    model = MiniLMEmbedder()
    model.load()
    return model


@pytest.fixture
async def retriever(tmp_path: Path, embedder: MiniLMEmbedder) -> AsyncIterator[CollectionRetriever]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'trellis.db'}")
    await db.connect()
    retrieval = Retrieval(index_for(db), embedder)  # type: ignore[arg-type]
    await retrieval.create_collection("landmarks")
    await retrieval.add_documents("landmarks", DOCS)
    yield CollectionRetriever(lambda: retrieval)
    await db.close()


def ctx(retriever: Any) -> Context:
    return Context(
        run_id="r",
        workflow="w",
        step="search",
        seq=1,
        span=Span(name="search", trace_id="t" * 32),
        services={"retriever": retriever} if retriever is not None else {},
    )


async def test_passages_go_into_the_field_best_first_with_hit_ids_on_the_span(
    retriever: CollectionRetriever,
) -> None:
    step = retrieve(
        "search",
        collections=["landmarks"],
        query=lambda s: s.question,
        top_k=lambda s: 1 + s.tries,
        into="passages",
    )
    context = ctx(retriever)
    state = State(question="When was the Eiffel Tower completed?")
    outcome = await step.execute(context, state)
    passages = outcome.update["passages"]  # type: ignore[index]
    assert [p["document_id"] for p in passages] == ["tower"]
    assert passages[0]["collection"] == "landmarks" and "1889" in passages[0]["text"]
    after = state.model_copy(update=outcome.update)  # type: ignore[arg-type]
    State.model_validate(after.model_dump())  # the state stays JSON
    span = context.span
    assert span is not None
    assert span.attributes["trellis.retrieval.chunk_ids"] == [passages[0]["chunk_id"]]
    assert span.attributes["trellis.retrieval.top_k"] == 1
    assert outcome.output == {
        "hits": [{"chunk_id": passages[0]["chunk_id"], "score": passages[0]["score"]}]
    }
    # A retry widens the search through the state.
    wider = await step.execute(ctx(retriever), state.model_copy(update={"tries": 2}))
    assert len(wider.update["passages"]) == 3  # type: ignore[index]
    # What it retrieved is what a grounded check reads.
    answered = after.model_copy(update={"answer": "It was completed in 1889."})
    assert (await grounded("answer", "passages").run(answered, {})).passed


async def test_a_field_typed_list_of_passage_accepts_the_dicts(
    retriever: CollectionRetriever,
) -> None:
    step = retrieve(
        "search", collections=["landmarks"], query=lambda s: s.question, into="passages"
    )
    state = Typed(question="Golden Gate Bridge")
    outcome = await step.execute(ctx(retriever), state)
    typed = Typed.model_validate({**state.model_dump(), **outcome.update})  # type: ignore[dict-item]
    assert isinstance(typed.passages[0], Passage) and typed.passages[0].document_id == "bridge"


async def test_min_score_and_an_empty_query_retrieve_nothing(
    retriever: CollectionRetriever,
) -> None:
    strict = retrieve(
        "search",
        collections=["landmarks"],
        query=lambda s: s.question,
        into="passages",
        min_score=1e9,
    )
    context = ctx(retriever)
    outcome = await strict.execute(context, State(question="Eiffel Tower"))
    assert outcome.update == {"passages": []}
    assert context.span is not None
    assert context.span.events[-1]["attributes"]["reason"] == "no_hits"
    blank = retrieve("search", collections=["landmarks"], query=lambda s: "  ", into="passages")
    context = ctx(retriever)
    assert (await blank.execute(context, State(question=""))).update == {"passages": []}
    assert context.span is not None
    assert context.span.events[-1]["attributes"] == {"reason": "no_query"}


async def test_an_unknown_collection_fails_the_step(retriever: CollectionRetriever) -> None:
    step = retrieve("search", collections=lambda s: ["nope"], query=lambda s: "x", into="p")
    with pytest.raises(NotFoundError):
        await step.execute(ctx(retriever), State(question="x"))


async def test_configuration_errors() -> None:
    class Static:
        async def retrieve(
            self, collections: Sequence[str], query: str, top_k: int, project_id: str = "default"
        ) -> list[Any]:
            return []

    step = retrieve("search", collections=["c"], query=lambda s: "x", into="p")
    with pytest.raises(ConfigurationError, match="needs a retriever"):
        await step.execute(ctx(None), State(question="x"))
    too_many = retrieve("search", collections=["c"], query=lambda s: "x", into="p", top_k=51)
    with pytest.raises(ConfigurationError, match="top_k"):
        await too_many.execute(ctx(Static()), State(question="x"))
    with pytest.raises(ConfigurationError):
        retrieve("search", collections="c", query=lambda s: "x", into="p")
    with pytest.raises(ConfigurationError):
        retrieve("search", collections=[], query=lambda s: "x", into="p")
    with pytest.raises(ConfigurationError):
        retrieve("search", collections=["c"], query=lambda s: "x", into="")

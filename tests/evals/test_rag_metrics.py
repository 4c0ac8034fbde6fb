"""RAG retrieval metrics (nDCG@k, recall@k, MRR) against ``relevant_ids``: hand-computed
values, and a run whose candidate answers grounded in a real collection (bundled MiniLM,
SQLite index) so ``retrieved_ids`` come from the answer's citations."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trellis.evals import Case, EvalRunner, EvalStore, build_metric, parse_dataset, parse_suite
from trellis.inference.grounding import CollectionRetriever
from trellis.inference.local.embedder import MiniLMEmbedder
from trellis.retrieval import Retrieval, index_for
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import make_gateway  # noqa: E402

CASE = Case(id="q", input="q", relevant_ids=["a", "b", "c"])


def test_ndcg_recall_and_mrr_by_hand() -> None:
    retrieved = ["x", "a", "a", "y", "c"]  # "a" twice (two chunks): counted at its first rank
    ndcg = build_metric("ndcg")("", CASE, retrieved)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)  # ranks 2 and 4 after de-duplication
    ideal = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg == pytest.approx(dcg / ideal)
    assert build_metric("ndcg", {"k": 2})("", CASE, retrieved) == pytest.approx(
        (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    )
    assert build_metric("recall")("", CASE, retrieved) == pytest.approx(2 / 3)
    assert build_metric("recall", {"k": 2})("", CASE, retrieved) == pytest.approx(1 / 3)
    assert build_metric("mrr")("", CASE, retrieved) == pytest.approx(1 / 2)
    assert build_metric("mrr")("", CASE, ["x", "y"]) == 0.0
    assert build_metric("ndcg")("", CASE, ["a", "b", "c"]) == pytest.approx(1.0)
    # Not scorable: no relevant_ids, or nothing retrieved (not a grounded answer).
    assert build_metric("ndcg")("", Case(id="n", input="q"), ["a"]) is None
    assert build_metric("recall")("", CASE, None) is None
    with pytest.raises(ValueError, match="k must be a positive integer"):
        build_metric("recall", {"k": 0})


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai", reply="It opened in 1937.").start()
    yield server
    server.stop()


async def test_a_grounded_candidate_is_scored_on_its_citations(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with Database(f"sqlite+aiosqlite:///{tmp_path / 'trellis.db'}") as db:
        retrieval = Retrieval(index_for(db), MiniLMEmbedder())  # type: ignore[arg-type]
        await retrieval.create_collection("landmarks")
        await retrieval.add_documents(
            "landmarks",
            [
                {
                    "id": "tower",
                    "text": "The Eiffel Tower was completed in 1889 for the World's Fair.",
                },
                {"id": "bridge", "text": "The Golden Gate Bridge opened in 1937 in San Francisco."},
                {"id": "wall", "text": "The Great Wall of China is thousands of kilometres long."},
            ],
        )
        gateway = make_gateway(upstream.base_url)
        gateway.retriever = CollectionRetriever(lambda: retrieval)
        dataset = parse_dataset(
            '{"id": "bridge", "input": "When did the Golden Gate Bridge open?", '
            '"relevant_ids": ["bridge"]}\n'
            '{"id": "wall", "input": "How long is the Great Wall of China?", '
            '"relevant_ids": ["wall"]}\n',
            name="landmarks",
        )
        suite = parse_suite(
            {
                "dataset": "landmarks",
                "candidates": [
                    {
                        "name": "rag",
                        "model": "good",
                        "collections": ["landmarks"],
                        "params": {"trellis": {"top_k": 2}},
                    }
                ],
                "metrics": [
                    "ndcg",
                    {"name": "recall", "k": 1},
                    "mrr",
                    "context_precision",
                    "context_recall",
                    "faithfulness",
                ],
            }
        )
        report = await EvalRunner(gateway, EvalStore(db)).run(suite, dataset)
    for row in report["cases"]:
        assert row["error"] is None, row["error"]
        assert row["retrieved_ids"][0] == row["id"]  # the right document ranked first
        metrics = row["metrics"]
        assert {k: metrics[k] for k in ("ndcg", "recall", "mrr")} == {
            "ndcg": 1.0,
            "recall": 1.0,
            "mrr": 1.0,
        }
        # Two documents retrieved (top_k 2), one of them relevant; the relevant one found.
        assert len(set(row["retrieved_ids"])) == 2
        assert metrics["context_precision"] == 0.5
        assert metrics["context_recall"] == 1.0
    # "It opened in 1937.": every content word is in the bridge passage's snippet.
    rows = {row["id"]: row for row in report["cases"]}
    assert rows["bridge"]["metrics"]["faithfulness"] == 1.0
    summary = report["candidates"]["rag"]["metrics"]
    assert summary["context_precision"] == 0.5 and summary["context_recall"] == 1.0

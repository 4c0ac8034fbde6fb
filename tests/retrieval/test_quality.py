"""Hybrid search is at least as good as either base search on ADI (nDCG@10, linear gain)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from trellis.retrieval import Retrieval

ROOT = Path(__file__).resolve().parents[2]
ADI = ROOT.parent / "shared" / "data" / "ir" / "adi"


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "retrieval_quality", ROOT / "benchmarks" / "retrieval_quality.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _benchmark()


def test_ndcg_matches_hand_computation() -> None:
    qrels = {"a": 2, "b": 1, "c": 1}
    # DCG = 2/log2(2) + 0 + 1/log2(4) = 2.5; IDCG = 2 + 1/log2(3) + 1/2
    ideal = 2 + 1 / 1.584962500721156 + 0.5
    assert bench.ndcg_at(["a", "x", "b"], qrels, 10) == pytest.approx(2.5 / ideal)
    assert bench.ndcg_at(["a", "b", "c"], qrels, 10) == pytest.approx(1.0)
    assert bench.ndcg_at([], qrels, 10) == 0.0
    assert bench.recall_at(["c", "x"], qrels, 100) == pytest.approx(1 / 3)


@pytest.mark.skipif(not ADI.is_dir(), reason="the shared IR test data is not present")
async def test_hybrid_is_not_worse_than_keyword_or_vector_on_adi(retrieval: Retrieval) -> None:
    await retrieval.create_collection("adi")
    report = await retrieval.ingest("adi", [ADI / "corpus.jsonl"])
    assert not report.failed and len(report.added) == 82
    queries = {q["_id"]: q["text"] for q in bench.read_jsonl(ADI / "queries.jsonl")}
    qrels = bench.read_qrels(ADI / "qrels" / "test.tsv")
    results = await bench.evaluate(retrieval, "adi", queries, qrels, depth=100)
    ndcg = {mode: figures["ndcg@10"] for mode, figures in results.items()}
    assert ndcg["hybrid"] >= ndcg["keyword"], ndcg
    assert ndcg["hybrid"] >= ndcg["vector"] - 0.02, ndcg
    assert ndcg["keyword"] > 0.4 and ndcg["vector"] > 0.4, ndcg

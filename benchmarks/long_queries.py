"""Queries longer than the embedder's window: averaging windows vs embedding the first one.

The judged queries of the BEIR-layout collections in ../shared/data/ir are short, so each
is made long the way verbose CISI-style information needs are: the need plus ~330 word
pieces of background that says nothing about it, placed after the need ("need first") or
before it ("need last"). Each long query is then searched in vector and hybrid mode with
the query vector taken as

- ``mean``: what Trellis does (retrieval/query_vector.py): the fewest balanced windows,
  cut between words, unit vectors averaged weighted by word pieces;
- ``first``: only the first window (the first 254 word pieces), the usual truncation;

and with the short need alone as the reference. Reports nDCG@10 (trec_eval style, as in
benchmarks/retrieval_quality.py) per collection, placement, mode and treatment.

    .venv/bin/python benchmarks/long_queries.py [--collections adi cranfield] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval_quality import (  # noqa: E402
    DATA,
    documents_by_best_chunk,
    ndcg_at,
    read_jsonl,
    read_qrels,
)

from trellis.inference.local.embedder import MiniLMEmbedder  # noqa: E402
from trellis.retrieval import Retrieval, SQLiteIndex  # noqa: E402
from trellis.retrieval.models import CollectionInfo  # noqa: E402
from trellis.retrieval.query_vector import embed_query  # noqa: E402
from trellis.store import Database  # noqa: E402

#: Background a verbose requester writes around the need; on no collection's topic.
BACKGROUND = (
    "I am preparing a report for my department and my supervisor asked me to look into "
    "this before our next meeting. We have limited time and a small budget, so I would "
    "appreciate anything that could help me understand the question better and that I "
    "could summarise for colleagues who are not specialists. Older and newer work are "
    "both welcome, and I can read long papers if they are worth it. "
) * 4


class Strategy(Retrieval):
    """Retrieval whose query vector is built by ``strategy``: ``mean`` or ``first``."""

    strategy = "mean"

    async def _vector(
        self, collection: CollectionInfo, query: str, depth: int, filters: Any
    ) -> list[tuple[int, float]]:
        if self.strategy == "first":
            vector = await asyncio.to_thread(self._first_window, query)
        else:
            vector = await asyncio.to_thread(embed_query, self.embedder, query)
        return await self.index.vector_search(collection, vector, depth, filters)

    def _first_window(self, query: str) -> np.ndarray:
        embedder: Any = self.embedder
        spans = embedder.token_spans(query)
        cut = spans[embedder.max_tokens - 3][1] if len(spans) > embedder.max_tokens - 2 else None
        return np.asarray(embedder.embed([query[:cut]])[0])


async def evaluate(
    retrieval: Strategy,
    name: str,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    mode: str,
) -> float:
    scores = []
    for query_id, judged in qrels.items():
        if query_id in queries:
            hits = await retrieval.search(name, queries[query_id], mode=mode, top_k=100)  # type: ignore[arg-type]
            ranked = documents_by_best_chunk(hit.document_id for hit in hits)
            scores.append(ndcg_at(ranked, judged, 10))
    return statistics.fmean(scores)


async def run(name: str, embedder: MiniLMEmbedder, directory: Path) -> dict[str, Any]:
    root = DATA / name
    short = {q["_id"]: q["text"] for q in read_jsonl(root / "queries.jsonl")}
    qrels = read_qrels(root / "qrels" / "test.tsv")
    placements = {
        "need first": {i: f"{q} {BACKGROUND}" for i, q in short.items()},
        "need last": {i: f"{BACKGROUND} {q}" for i, q in short.items()},
    }
    lengths = [embedder.count_tokens(q) for q in placements["need last"].values()]
    database = Database(f"sqlite+aiosqlite:///{directory / (name + '.db')}")
    await database.connect()
    try:
        retrieval = Strategy(SQLiteIndex(database), embedder)  # type: ignore[arg-type]
        await retrieval.create_collection(name)
        await retrieval.ingest(name, [root / "corpus.jsonl"])
        result: dict[str, Any] = {
            "queries": len(qrels),
            "long_query_word_pieces": [min(lengths), max(lengths)],
        }
        for mode in ("vector", "hybrid"):
            retrieval.strategy = "mean"
            result[f"{mode} / short need alone"] = await evaluate(
                retrieval, name, short, qrels, mode
            )
            for placement, queries in placements.items():
                for strategy in ("mean", "first"):
                    retrieval.strategy = strategy
                    result[f"{mode} / {placement} / {strategy}"] = await evaluate(
                        retrieval, name, queries, qrels, mode
                    )
        return result
    finally:
        await database.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collections", nargs="+", default=["adi"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    embedder = MiniLMEmbedder()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.collections:
            results[name] = asyncio.run(run(name, embedder, Path(tmp)))
            print(f"\n{name}: {results[name]['queries']} queries, long queries of "
                  f"{results[name]['long_query_word_pieces']} word pieces")  # fmt: skip
            for key, value in results[name].items():
                if isinstance(value, float):
                    print(f"  {key:40s} nDCG@10 {value:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

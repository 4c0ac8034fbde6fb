"""Retrieval quality and ingestion speed on the BEIR-layout collections in ../shared/data/ir.

For each collection: ingest corpus.jsonl into a fresh SQLite (or, with ``--backend
postgres``, Postgres + pgvector) database with the
bundled MiniLM embedder (timed: load, chunk, embed, index), then run every
judged query in keyword, vector and hybrid mode and report nDCG@10 and
Recall@100 at the document level (a document ranks where its best chunk does).
nDCG is trec_eval-style: linear gain ``rel / log2(rank + 1)``, ideal DCG from
all judged relevant documents.

    .venv/bin/python benchmarks/retrieval_quality.py [--collections cranfield adi]
        [--fusion rrf|weighted] [--k 60] [--weights 1 1] [--json out.json]
        [--backend sqlite|postgres] [--postgres-url postgresql://postgres@127.0.0.1/test]
        [--pg-rank bm25|ts_rank|ts_rank_cd] [--pg-normalization 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trellis.evals.retrieval import ndcg_at, read_qrels, recall_at
from trellis.inference.local.embedder import MiniLMEmbedder
from trellis.retrieval import FusionConfig, PgIndex, Retrieval, SQLiteIndex
from trellis.retrieval.index import Index
from trellis.retrieval.models import SearchMode
from trellis.store import Database
from trellis.testing.postgres import scratch_database

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ir"
MODES: tuple[SearchMode, ...] = ("keyword", "vector", "hybrid")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def documents_by_best_chunk(document_ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(document_ids))


async def evaluate(
    retrieval: Retrieval,
    collection: str,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    modes: Sequence[SearchMode] = MODES,
    depth: int = 300,
) -> dict[str, dict[str, float]]:
    """Mean nDCG@10 and Recall@100 per mode over the judged queries."""
    results: dict[str, dict[str, float]] = {}
    for mode in modes:
        ndcgs, recalls, latencies = [], [], []
        for query_id, judged in qrels.items():
            if query_id not in queries:
                continue
            started = time.perf_counter()
            hits = await retrieval.search(collection, queries[query_id], mode=mode, top_k=depth)
            latencies.append((time.perf_counter() - started) * 1000)
            ranked = documents_by_best_chunk(hit.document_id for hit in hits)
            ndcgs.append(ndcg_at(ranked, judged, 10))
            recalls.append(recall_at(ranked, judged, 100))
        results[mode] = {
            "ndcg@10": statistics.fmean(ndcgs),
            "recall@100": statistics.fmean(recalls),
            "queries": len(ndcgs),
            "p50_ms": statistics.median(latencies),
        }
    return results


async def run_collection(
    name: str,
    embedder: MiniLMEmbedder,
    fusion: FusionConfig,
    directory: Path,
    backend: str = "sqlite",
    postgres: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Ingest and evaluate one collection in a fresh database of the given backend."""
    root = DATA / name
    queries = {q["_id"]: q["text"] for q in read_jsonl(root / "queries.jsonl")}
    qrels = read_qrels(root / "qrels" / "test.tsv")
    async with contextlib.AsyncExitStack() as stack:
        options = dict(postgres or {})
        if backend == "postgres":
            scratch = f"trellis_quality_{name}_{os.getpid()}"
            url = await stack.enter_async_context(scratch_database(options.pop("url"), scratch))
        else:
            url = f"sqlite+aiosqlite:///{directory / (name + '.db')}"
        database = Database(url)
        await database.connect()
        stack.push_async_callback(database.close)
        index: Index = (
            PgIndex(database, **options) if backend == "postgres" else SQLiteIndex(database)
        )
        retrieval = Retrieval(index, embedder, fusion=fusion)  # type: ignore[arg-type]
        await retrieval.create_collection(name)
        started = time.perf_counter()
        report = await retrieval.ingest(name, [root / "corpus.jsonl"])
        seconds = time.perf_counter() - started
        if report.failed:
            raise RuntimeError(f"ingestion failed: {report.failed}")
        quality = await evaluate(retrieval, name, queries, qrels)
    return {
        "documents": len(report.added),
        "chunks": report.chunks,
        "ingest_seconds": round(seconds, 2),
        "chunks_per_second": round(report.chunks / seconds, 1),
        "quality": quality,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collections", nargs="+", default=["cranfield", "adi"])
    parser.add_argument("--fusion", choices=["rrf", "weighted"], default=None)
    parser.add_argument("--k", type=float, default=None)
    parser.add_argument("--weights", type=float, nargs=2, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "TRELLIS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="a server where this role may create (and drop) scratch databases",
    )
    parser.add_argument("--pg-rank", choices=["bm25", "ts_rank", "ts_rank_cd"], default=None)
    parser.add_argument("--pg-normalization", type=int, default=None)
    args = parser.parse_args(argv)
    postgres: dict[str, Any] = {"url": args.postgres_url}
    if args.pg_rank:
        postgres["keyword_rank"] = args.pg_rank
    if args.pg_normalization is not None:
        postgres["rank_normalization"] = args.pg_normalization

    from trellis.retrieval.service import DEFAULT_FUSION

    fusion = FusionConfig(
        method=args.fusion or DEFAULT_FUSION.method,
        k=args.k if args.k is not None else DEFAULT_FUSION.k,
        weights=tuple(args.weights) if args.weights else DEFAULT_FUSION.weights,
    )
    embedder = MiniLMEmbedder()
    embedder.load()
    results: dict[str, Any] = {
        "backend": args.backend,
        "fusion": vars(fusion)
        if hasattr(fusion, "__dict__")
        else {"method": fusion.method, "k": fusion.k, "weights": list(fusion.weights)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.collections:
            result = asyncio.run(
                run_collection(name, embedder, fusion, Path(tmp), args.backend, postgres)
            )
            results[name] = result
            print(
                f"{name}: {result['documents']} docs, {result['chunks']} chunks, "
                f"{result['chunks_per_second']} chunks/s ingestion"
            )
            for mode, figures in result["quality"].items():
                print(
                    f"  {mode:8s} nDCG@10 {figures['ndcg@10']:.3f}  "
                    f"Recall@100 {figures['recall@100']:.3f}  p50 {figures['p50_ms']:.1f} ms"
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

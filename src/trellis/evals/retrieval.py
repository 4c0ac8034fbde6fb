"""Retrieval settings side by side: a collection searched with BEIR-style queries and
relevance judgements (qrels) under several settings (mode, fusion), scored with nDCG@10
and recall@100 at the document level, with the search latency.

Files as BEIR ships them: ``queries.jsonl`` with ``{"_id", "text"}`` per line, and qrels as
TSV ``query-id  corpus-id  score`` (a header line is skipped). The collection's documents
carry the corpus ids as their ids (``trellis ingest`` of a BEIR ``corpus.jsonl`` keeps
``_id``). A document ranks where its best chunk does. nDCG is trec_eval's ``ndcg_cut``:
linear gain ``rel / log2(rank + 1)``, the ideal from every judged relevant document.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trellis.errors import InvalidRequestError
from trellis.retrieval.chunking import ChunkingConfig
from trellis.retrieval.fusion import FusionConfig
from trellis.retrieval.models import SearchMode

__all__ = [
    "RetrievalSetting",
    "evaluate_chunkings",
    "evaluate_retrieval",
    "parse_chunking",
    "ndcg_at",
    "parse_setting",
    "read_qrels",
    "read_queries",
    "recall_at",
]

#: Hits fetched per query: deep enough for recall@100 at the document level.
DEPTH = 300


def ndcg_at(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """trec_eval ``ndcg_cut``: linear gain, log2 discount, ideal from every judged document."""
    dcg = sum(
        qrels.get(doc, 0) / math.log2(rank + 1) for rank, doc in enumerate(ranked[:k], start=1)
    )
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 100) -> float:
    relevant = {doc for doc, g in qrels.items() if g > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def read_queries(path: Path) -> dict[str, str]:
    """``{"_id": ..., "text": ...}`` per line; errors name the line."""
    queries: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                queries[str(row["_id"])] = str(row["text"])
            except (ValueError, KeyError, TypeError):
                raise InvalidRequestError(
                    f"{path}:{number}: a query is a JSON object with _id and text"
                ) from None
    return queries


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """TSV ``query-id corpus-id score``; a header line is skipped, other bad lines named."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts or parts[0] == "query-id":
                continue
            try:
                query_id, doc_id, score = parts
                qrels.setdefault(query_id, {})[doc_id] = int(score)
            except ValueError:
                raise InvalidRequestError(
                    f"{path}:{number}: a qrels line is 'query-id corpus-id score'"
                ) from None
    return qrels


@dataclass(frozen=True, slots=True)
class RetrievalSetting:
    """One way to search: a mode and, for hybrid, a fusion."""

    name: str
    mode: SearchMode
    fusion: FusionConfig | None = None


def parse_setting(text: str) -> RetrievalSetting:
    """``keyword``, ``vector``, ``hybrid`` (the collection's fusion), ``hybrid:rrf``,
    ``hybrid:rrf:K``, ``hybrid:weighted`` or ``hybrid:weighted:WK,WV``."""
    mode, _, rest = text.partition(":")
    if mode not in ("keyword", "vector", "hybrid"):
        raise InvalidRequestError(f"setting {text!r}: the mode is keyword, vector or hybrid")
    if not rest:
        return RetrievalSetting(text, mode)  # type: ignore[arg-type]
    if mode != "hybrid":
        raise InvalidRequestError(f"setting {text!r}: only hybrid takes a fusion")
    method, _, value = rest.partition(":")
    try:
        if method == "rrf":
            fusion = FusionConfig("rrf", k=float(value) if value else 60.0)
        elif method == "weighted":
            weights = tuple(float(w) for w in value.split(",")) if value else (1.0, 1.0)
            if len(weights) != 2:
                raise ValueError
            fusion = FusionConfig("weighted", weights=(weights[0], weights[1]))
        else:
            raise InvalidRequestError(f"setting {text!r}: the fusion is rrf or weighted")
    except ValueError:
        raise InvalidRequestError(
            f"setting {text!r}: hybrid:rrf:K takes a number, hybrid:weighted:WK,WV two"
        ) from None
    return RetrievalSetting(text, "hybrid", fusion)


def _documents(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))


async def evaluate_retrieval(
    retrieval: Any,
    collection: str,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    settings: Sequence[RetrievalSetting],
) -> dict[str, Any]:
    """Per setting: mean nDCG@10 and recall@100 over the judged queries, and search latency
    P50/P95 in ms. Queries without judgements, and judgements without a query, are left
    out (and counted)."""
    judged = [qid for qid in qrels if qid in queries]
    if not judged:
        raise InvalidRequestError("no query has relevance judgements (do the ids match?)")
    rows: dict[str, Any] = {}
    for setting in settings:
        ndcgs, recalls, latencies = [], [], []
        for query_id in judged:
            started = time.perf_counter()
            hits = await retrieval.search(
                collection,
                queries[query_id],
                mode=setting.mode,
                top_k=DEPTH,
                fusion=setting.fusion,
            )
            latencies.append((time.perf_counter() - started) * 1000)
            ranked = _documents(hit.document_id for hit in hits)
            ndcgs.append(ndcg_at(ranked, qrels[query_id], 10))
            recalls.append(recall_at(ranked, qrels[query_id], 100))
        latencies.sort()
        rows[setting.name] = {
            "ndcg@10": round(statistics.fmean(ndcgs), 4),
            "recall@100": round(statistics.fmean(recalls), 4),
            "latency_p50_ms": round(statistics.median(latencies), 2),
            "latency_p95_ms": round(
                latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2
            ),
        }
    return {
        "collection": collection,
        "queries": len(judged),
        "unjudged_queries": len(queries) - len(judged),
        "settings": rows,
    }


def parse_chunking(text: str) -> ChunkingConfig:
    """``TARGET`` or ``TARGET/OVERLAP`` word pieces per chunk (``256/32`` is the default)."""
    target, _, overlap = text.partition("/")
    try:
        config = ChunkingConfig(
            target_tokens=int(target), overlap_tokens=int(overlap) if overlap else 32
        )
    except ValueError:
        raise InvalidRequestError(
            f"chunking {text!r}: TARGET or TARGET/OVERLAP, in word pieces (e.g. 256/32)"
        ) from None
    if not 16 <= config.target_tokens <= 512 or not 0 <= config.overlap_tokens < (
        config.target_tokens
    ):
        raise InvalidRequestError(
            f"chunking {text!r}: the target is 16-512 word pieces and the overlap below it"
        )
    return config


async def evaluate_chunkings(
    embedder: Any,
    corpus: Path,
    chunkings: Sequence[str],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    settings: Sequence[RetrievalSetting],
    directory: Path,
) -> dict[str, Any]:
    """The corpus ingested once per chunking, each into a scratch SQLite database under
    ``directory``, and every setting evaluated on each: chunking and search side by side.
    The configured database is not touched."""
    from trellis.retrieval import Retrieval, SQLiteIndex
    from trellis.store import Database

    configs = [(text, parse_chunking(text)) for text in chunkings]
    out: dict[str, Any] = {"corpus": str(corpus), "chunkings": {}}
    for number, (text, chunking) in enumerate(configs):
        path = directory / f"chunking-{number}.db"
        async with Database(f"sqlite+aiosqlite:///{path}") as db:
            retrieval = Retrieval(SQLiteIndex(db), embedder, chunking=chunking)
            await retrieval.create_collection("corpus")
            started = time.perf_counter()
            report = await retrieval.ingest("corpus", [corpus])
            if report.failed:
                raise InvalidRequestError(f"the corpus could not be ingested: {report.failed}")
            ingest_seconds = time.perf_counter() - started
            result = await evaluate_retrieval(retrieval, "corpus", queries, qrels, settings)
            result["ingest_seconds"] = round(ingest_seconds, 2)
            out["chunkings"][text] = result
    return out

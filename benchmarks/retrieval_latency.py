"""Search latency on 100,000 chunks in the embedded SQLite backend (keyword, vector, hybrid).

Embedding 100,000 chunks with the bundled MiniLM would take over an hour on two
cores and would not change what is measured, so the collection is synthesised:

* Text: each chunk is 120 words drawn from one real Cranfield passage (of a pool of
  400), so the vocabulary is real and terms stay bursty: a term's document frequency
  is what it is in real text, and real Cranfield queries match as many chunks as they
  would in a 100,000-chunk Cranfield. (Sampling the corpus-wide unigram distribution
  instead puts every common content word in nearly every chunk: FTS5 then scores
  most of the collection per query, which no real corpus asks of it.)
* Vectors: the source passage's real MiniLM embedding plus Gaussian noise,
  renormalised. Exact search costs the same for any values, but clustered,
  anisotropic vectors (like real ones, unlike uniform random ones) keep the score
  distribution and the top-k selection realistic.

Chunks go in through ``SQLiteIndex.write_document`` (the real write path, FTS5
triggers and all), 20 chunks a document. Queries are ~200 Cranfield queries run
through ``Retrieval.search`` with the real embedder; the query embedding is also
timed alone, since it is part of vector and hybrid latency.

    .venv/bin/python benchmarks/retrieval_latency.py [--chunks 100000] [--queries 200]
        [--json benchmarks/results/retrieval_latency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trellis.inference.providers.local_embedder import MiniLMEmbedder
from trellis.retrieval import Retrieval, SQLiteIndex
from trellis.retrieval.models import Chunk, SearchMode
from trellis.store import Database

ROOT = Path(__file__).resolve().parent
DATA = ROOT.parents[1] / "shared" / "data" / "ir" / "cranfield"
MODES: tuple[SearchMode, ...] = ("keyword", "vector", "hybrid")
CHUNKS_PER_DOCUMENT = 20
WORDS_PER_CHUNK = 120
POOL = 400
NOISE = 0.03  # per-coordinate sigma: cosine to the source vector ~0.86 (norm of noise ~0.59)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class Synthesiser:
    """Chunk texts and vectors that look like Cranfield's, without embedding each one.

    Each synthetic chunk derives from one of ``POOL`` real Cranfield passages: its text
    is ``WORDS_PER_CHUNK`` words drawn from that passage's own words (so terms stay
    bursty and document frequencies stay those of real text, which sampling the corpus'
    global unigram distribution would inflate), and its vector is the passage's real
    MiniLM embedding plus Gaussian noise, renormalised (clustered and anisotropic like
    real embeddings, and consistent with the text).
    """

    def __init__(self, embedder: MiniLMEmbedder, seed: int = 7) -> None:
        corpus = _read_jsonl(DATA / "corpus.jsonl")
        passages = [f"{record.get('title', '')} {record['text']}" for record in corpus]
        passages = [p for p in passages if len(p.split()) >= 40][:POOL]
        self.bags = [np.array(passage.split()) for passage in passages]
        self.rng = np.random.default_rng(seed)
        self.pool = embedder.embed([" ".join(bag[:120]) for bag in self.bags])

    def sample(self, count: int) -> tuple[list[str], np.ndarray]:
        sources = self.rng.integers(0, len(self.bags), size=count)
        texts = [
            " ".join(self.rng.choice(self.bags[source], size=WORDS_PER_CHUNK)) for source in sources
        ]
        base = self.pool[sources]
        noisy = base + self.rng.normal(0.0, NOISE, size=base.shape).astype(np.float32)
        return texts, (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


async def build(index: SQLiteIndex, synth: Synthesiser, total: int) -> tuple[str, float]:
    """Write ``total`` chunks through the index's write path; returns (collection, seconds)."""
    collection = await index.create_collection(
        "latency", MiniLMEmbedder.name, MiniLMEmbedder.dimension, {}
    )
    started = time.perf_counter()
    for number in range(0, total, CHUNKS_PER_DOCUMENT):
        size = min(CHUNKS_PER_DOCUMENT, total - number)
        texts, vectors = synth.sample(size)
        chunks, offset = [], 0
        for ordinal, chunk_text in enumerate(texts):
            chunks.append(Chunk(ordinal, offset, offset + len(chunk_text), chunk_text, 160))
            offset += len(chunk_text) + 1
        await index.write_document(
            collection,
            f"doc-{number // CHUNKS_PER_DOCUMENT}",
            text="\n".join(texts),
            source=None,
            metadata={},
            content_hash=str(number),
            chunks=chunks,
            chunk_metadata=[{} for _ in chunks],
            vectors=vectors,
        )
        if number and number % 20000 == 0:
            print(f"  {number} chunks written", file=sys.stderr)
    return collection.name, time.perf_counter() - started


async def measure(total: int, query_count: int, top_k: int) -> dict[str, Any]:
    embedder = MiniLMEmbedder()
    embedder.load()
    queries = [q["text"] for q in _read_jsonl(DATA / "queries.jsonl")][:query_count]
    with tempfile.TemporaryDirectory() as tmp:
        database = Database(f"sqlite+aiosqlite:///{Path(tmp) / 'latency.db'}")
        await database.connect()
        try:
            index = SQLiteIndex(database)
            name, build_seconds = await build(index, Synthesiser(embedder), total)
            retrieval = Retrieval(index, embedder)
            for mode in MODES:  # warm: matrix cache, page cache, ORT arenas
                await retrieval.search(name, queries[0], mode=mode, top_k=top_k)
            embed_ms = []
            for query in queries:
                started = time.perf_counter()
                embedder.embed([query])
                embed_ms.append((time.perf_counter() - started) * 1000)
            modes: dict[str, dict[str, float]] = {}
            for mode in MODES:
                latencies = []
                for query in queries:
                    started = time.perf_counter()
                    await retrieval.search(name, query, mode=mode, top_k=top_k)
                    latencies.append((time.perf_counter() - started) * 1000)
                modes[mode] = {
                    "p50_ms": round(statistics.median(latencies), 2),
                    "p99_ms": round(percentile(latencies, 99), 2),
                }
        finally:
            await database.close()
    modes["query_embedding"] = {
        "p50_ms": round(statistics.median(embed_ms), 2),
        "p99_ms": round(percentile(embed_ms, 99), 2),
    }
    return {
        "chunks": total,
        "queries": len(queries),
        "top_k": top_k,
        "build_seconds": round(build_seconds, 1),
        "synthetic": {
            "text": f"{WORDS_PER_CHUNK} words sampled from one of {POOL} Cranfield passages",
            "vectors": f"that passage's MiniLM vector + N(0, {NOISE}) noise, renormalised",
        },
        "latency": modes,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "retrieval_latency.json")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.chunks, args.queries, args.top_k))
    print(
        f"{result['chunks']} chunks (built in {result['build_seconds']} s), "
        f"{result['queries']} queries, top_k {result['top_k']}"
    )
    print(f"| {'mode':<23} | p50 ms | p99 ms |")
    print(f"|{'-' * 25}|--------|--------|")
    for mode, figures in result["latency"].items():
        label = mode if mode != "query_embedding" else "query embedding (alone)"
        print(f"| {label:<23} | {figures['p50_ms']:6.2f} | {figures['p99_ms']:6.2f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

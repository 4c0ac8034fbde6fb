"""Search latency on 100,000 chunks, SQLite and Postgres backends (keyword, vector, hybrid).

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

Chunks go in through the index's ``write_documents`` (the path ingestion takes), 20
chunks a document and three documents a transaction (ingestion's batches hold about
64 chunks), one document in ten tagged ``shard: 3`` for a filtered run.
Queries are ~200 Cranfield queries run through ``Retrieval.search`` with the real
embedder; the query embedding is also timed alone, since it is part of vector and
hybrid latency.

Postgres (a scratch database on ``--postgres-url``, dropped afterwards) loads with
the collection's HNSW index dropped and then builds it (``PgIndex.drop_vector_index``
/ ``build_vector_index``, the bulk-load path), both timed, then ANALYZEs and times
2,000 more chunks written with the index live. ``--backend both`` (the default)
skips the Postgres row with a message when the server is unreachable.

    .venv/bin/python benchmarks/retrieval_latency.py [--chunks 100000] [--queries 200]
        [--backend sqlite|postgres|both] [--postgres-url postgresql://postgres@127.0.0.1/test]
        [--json benchmarks/results/retrieval_latency.json]
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text

from trellis.inference.local.embedder import MiniLMEmbedder
from trellis.retrieval import PgIndex, Retrieval, SQLiteIndex
from trellis.retrieval.index import Index
from trellis.retrieval.models import Chunk, DocumentWrite, SearchMode
from trellis.store import Database
from trellis.testing.postgres import run_admin, scratch_database

ROOT = Path(__file__).resolve().parent
DATA = ROOT.parents[1] / "shared" / "data" / "ir" / "cranfield"
MODES: tuple[SearchMode, ...] = ("keyword", "vector", "hybrid")
CHUNKS_PER_DOCUMENT = 20
DOCUMENTS_PER_WRITE = 3
WORDS_PER_CHUNK = 120
POOL = 400
NOISE = 0.03  # per-coordinate sigma: cosine to the source vector ~0.86 (norm of noise ~0.59)
INCREMENTAL_CHUNKS = 2_000  # Postgres: chunks written after the HNSW build, to time live writes


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
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.pool = embedder.embed([" ".join(bag[:120]) for bag in self.bags])

    def reset(self) -> None:
        """Start the same sequence again, so every backend gets identical chunks."""
        self.rng = np.random.default_rng(self.seed)

    def sample(self, count: int) -> tuple[list[str], np.ndarray]:
        sources = self.rng.integers(0, len(self.bags), size=count)
        texts = [
            " ".join(self.rng.choice(self.bags[source], size=WORDS_PER_CHUNK)) for source in sources
        ]
        base = self.pool[sources]
        noisy = base + self.rng.normal(0.0, NOISE, size=base.shape).astype(np.float32)
        return texts, (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


async def build(
    index: Index, synth: Synthesiser, total: int, *, first: int = 0, collection: Any = None
) -> tuple[Any, float]:
    """Write ``total`` chunks through the index's write path; returns (collection, seconds)."""
    if collection is None:
        collection = await index.create_collection(
            "latency", MiniLMEmbedder.name, MiniLMEmbedder.dimension, {}
        )
    started = time.perf_counter()
    pending: list[DocumentWrite] = []
    for number in range(first, first + total, CHUNKS_PER_DOCUMENT):
        size = min(CHUNKS_PER_DOCUMENT, first + total - number)
        texts, vectors = synth.sample(size)
        chunks, offset = [], 0
        for ordinal, chunk_text in enumerate(texts):
            chunks.append(Chunk(ordinal, offset, offset + len(chunk_text), chunk_text, 160))
            offset += len(chunk_text) + 1
        pending.append(
            DocumentWrite(
                id=f"doc-{number // CHUNKS_PER_DOCUMENT}",
                text="\n".join(texts),
                content_hash=str(number),
                chunks=chunks,
                chunk_metadata=[{} for _ in chunks],
                vectors=vectors,
                metadata={"shard": (number // CHUNKS_PER_DOCUMENT) % 10},
            )
        )
        if len(pending) == DOCUMENTS_PER_WRITE:
            await index.write_documents(collection, pending)
            pending = []
        if number and number % 20000 == 0:
            print(f"  {number} chunks written", file=sys.stderr)
    if pending:
        await index.write_documents(collection, pending)
    return collection, time.perf_counter() - started


async def postgres_reachable(url: str) -> str | None:
    """None if the server answers, else why not."""
    import asyncpg

    try:
        await run_admin(url, "SELECT 1", timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def _load(
    backend: str, index: Index, synth: Synthesiser, total: int, figures: dict[str, Any]
) -> str:
    """Fill the collection; on Postgres: load, then build HNSW, then time incremental writes."""
    if not isinstance(index, PgIndex):
        collection, seconds = await build(index, synth, total)
        figures["load_seconds"] = round(seconds, 1)
        return str(collection.name)
    collection = await index.create_collection(
        "latency", MiniLMEmbedder.name, MiniLMEmbedder.dimension, {}
    )
    # A bulk load defers the graph: one HNSW build beats maintaining it row by row.
    await index.drop_vector_index(collection)
    collection, seconds = await build(index, synth, total, collection=collection)
    figures["load_seconds"] = round(seconds, 1)
    started = time.perf_counter()
    await index.build_vector_index(collection)
    figures["hnsw_build_seconds"] = round(time.perf_counter() - started, 1)
    async with index.db.engine.connect() as conn:
        await conn.execute(text("ANALYZE chunks, documents"))
        await conn.commit()
    # Writes with the graph in place (ingestion into a live collection): chunks per second.
    extra = INCREMENTAL_CHUNKS
    _, seconds = await build(index, synth, extra, first=total, collection=collection)
    figures["incremental_chunks_per_second"] = round(extra / seconds, 1)
    return str(collection.name)


async def measure(
    backend: str,
    synth: Synthesiser,
    embedder: MiniLMEmbedder,
    total: int,
    query_count: int,
    top_k: int,
    postgres_url: str,
) -> dict[str, Any]:
    """Build a ``total``-chunk collection on ``backend`` and time every search mode on it."""
    synth.reset()
    queries = [q["text"] for q in _read_jsonl(DATA / "queries.jsonl")][:query_count]
    figures: dict[str, Any] = {"backend": backend}
    with tempfile.TemporaryDirectory() as tmp:
        async with contextlib.AsyncExitStack() as stack:
            if backend == "postgres":
                scratch = scratch_database(postgres_url, f"trellis_latency_{os.getpid()}")
                url = await stack.enter_async_context(scratch)
            else:
                url = f"sqlite+aiosqlite:///{Path(tmp) / 'latency.db'}"
            database = Database(url)
            await database.connect()
            stack.push_async_callback(database.close)
            index: Index = PgIndex(database) if backend == "postgres" else SQLiteIndex(database)
            name = await _load(backend, index, synth, total, figures)
            retrieval = Retrieval(index, embedder)  # type: ignore[arg-type]
            # The first search loads the collection's in-process state (BM25 postings;
            # on SQLite the vector matrix too): timed, since a new process pays it once.
            started = time.perf_counter()
            await retrieval.search(name, queries[0], mode="hybrid", top_k=top_k)
            figures["first_search_s"] = round(time.perf_counter() - started, 2)
            print(f"{backend}: first search {figures['first_search_s']} s", file=sys.stderr)
            for mode in MODES:  # warm: page cache, ORT arenas
                await retrieval.search(name, queries[0], mode=mode, top_k=top_k)
            embed_ms = []
            for query in queries:
                started = time.perf_counter()
                embedder.embed([query])
                embed_ms.append((time.perf_counter() - started) * 1000)
            modes: dict[str, dict[str, float]] = {}
            runs: list[tuple[str, SearchMode, dict[str, Any] | None]] = [
                (mode, mode, None) for mode in MODES
            ]
            runs.append(("vector, filtered 1/10", "vector", {"shard": 3}))
            for label, mode, filters in runs:
                latencies = []
                for query in queries:
                    started = time.perf_counter()
                    await retrieval.search(name, query, mode=mode, top_k=top_k, filters=filters)
                    latencies.append((time.perf_counter() - started) * 1000)
                modes[label] = {
                    "p50_ms": round(statistics.median(latencies), 2),
                    "p99_ms": round(percentile(latencies, 99), 2),
                }
    modes["query_embedding"] = {
        "p50_ms": round(statistics.median(embed_ms), 2),
        "p99_ms": round(percentile(embed_ms, 99), 2),
    }
    figures["latency"] = modes
    return figures


async def run(args: argparse.Namespace) -> dict[str, Any]:
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if "postgres" in backends:
        problem = await postgres_reachable(args.postgres_url)
        if problem is not None:
            if args.backend == "postgres":
                raise SystemExit(f"Postgres at {args.postgres_url} is unreachable: {problem}")
            print(f"skipping the Postgres row: {args.postgres_url} unreachable ({problem})")
            backends.remove("postgres")
    embedder = MiniLMEmbedder()
    embedder.load()
    synth = Synthesiser(embedder)
    rows = []
    for backend in backends:
        print(f"{backend}: building {args.chunks} chunks", file=sys.stderr)
        rows.append(
            await measure(
                backend, synth, embedder, args.chunks, args.queries, args.top_k, args.postgres_url
            )
        )
    return {
        "chunks": args.chunks,
        "queries": min(args.queries, len(_read_jsonl(DATA / "queries.jsonl"))),
        "top_k": args.top_k,
        "synthetic": {
            "text": f"{WORDS_PER_CHUNK} words sampled from one of {POOL} Cranfield passages",
            "vectors": f"that passage's MiniLM vector + N(0, {NOISE}) noise, renormalised",
            "metadata": "documents.metadata.shard = document number mod 10",
        },
        "backends": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "TRELLIS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="a server where this role may create (and drop) a scratch database",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "retrieval_latency.json")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(f"{result['chunks']} chunks, {result['queries']} queries, top_k {result['top_k']}")
    for row in result["backends"]:
        built = f"loaded in {row['load_seconds']} s"
        if "hnsw_build_seconds" in row:
            built += (
                f", HNSW built in {row['hnsw_build_seconds']} s, then "
                f"{row['incremental_chunks_per_second']} chunks/s with the index live"
            )
        print(f"{row['backend']}: {built}")
    print(f"| {'backend':<8} | {'mode':<23} | p50 ms | p99 ms |")
    print(f"|{'-' * 10}|{'-' * 25}|--------|--------|")
    for row in result["backends"]:
        for mode, figures in row["latency"].items():
            label = mode if mode != "query_embedding" else "query embedding (alone)"
            print(
                f"| {row['backend']:<8} | {label:<23} | "
                f"{figures['p50_ms']:6.2f} | {figures['p99_ms']:6.2f} |"
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

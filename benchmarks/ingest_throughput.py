"""Ingestion throughput with the bundled embedder: end to end and embedding alone.

Ingests Cranfield's corpus.jsonl (1,400 abstracts, ~1,850 chunks) into a fresh
SQLite database through ``Retrieval.ingest`` (load, chunk, embed, index: the timed
figure is the whole call), and separately embeds the same chunk texts with
``MiniLMEmbedder.embed`` alone. Two embedders, measured in the same run so the
result reads as a ratio on whatever the machine is doing at the time:

* ``fp32``: the shipped ONNX graph as is (onnxruntime folds its int8 weights
  back to fp32), which is what the embedder ran before the int8 rebuild;
* ``int8``: the default, the graph rebuilt on integer kernels (minilm_int8).

The variants alternate for ``--repeat`` rounds and the best round of each is
reported (other work on a shared machine only ever makes a round slower).

    .venv/bin/python benchmarks/ingest_throughput.py [--collection cranfield]
        [--repeat 2] [--variants fp32 int8] [--json benchmarks/results/ingest_throughput.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trellis.inference.local.embedder import MiniLMEmbedder
from trellis.retrieval import Retrieval, SQLiteIndex
from trellis.retrieval.chunking import chunk_text
from trellis.retrieval.loaders import load_path
from trellis.store import Database

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ir"


async def ingest_once(corpus: Path, embedder: MiniLMEmbedder, directory: Path) -> tuple[int, float]:
    """``(chunks, seconds)`` for one ingestion of ``corpus`` into a new database."""
    path = directory / f"ingest-{time.monotonic_ns()}.db"
    database = Database(f"sqlite+aiosqlite:///{path}")
    await database.connect()
    try:
        retrieval = Retrieval(SQLiteIndex(database), embedder)
        await retrieval.create_collection("bench")
        started = time.perf_counter()
        report = await retrieval.ingest("bench", [corpus])
        seconds = time.perf_counter() - started
        if report.failed:
            raise RuntimeError(f"ingestion failed: {report.failed}")
        return report.chunks, seconds
    finally:
        await database.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def embed_once(embedder: MiniLMEmbedder, texts: Sequence[str]) -> float:
    started = time.perf_counter()
    embedder.embed(texts)
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", default="cranfield")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"])
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    corpus = DATA / args.collection / "corpus.jsonl"
    embedders = {name: MiniLMEmbedder(int8=name == "int8") for name in args.variants}
    for embedder in embedders.values():
        embedder.load()
    any_embedder = next(iter(embedders.values()))
    texts = [
        chunk.text for doc in load_path(corpus) for chunk in chunk_text(doc.text, any_embedder)
    ]
    tokens = sum(any_embedder.count_tokens(text) for text in texts) / len(texts)
    print(
        f"{args.collection}: {len(texts)} chunks, {tokens:.0f} word pieces each on average; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    )
    best: dict[str, dict[str, float]] = {
        name: {"end_to_end": 0.0, "embed_only": 0.0} for name in embedders
    }
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.repeat + 1):
            for name, embedder in embedders.items():
                chunks, seconds = asyncio.run(ingest_once(corpus, embedder, Path(tmp)))
                end_to_end = chunks / seconds
                embed_only = len(texts) / embed_once(embedder, texts)
                figures = best[name]
                figures["end_to_end"] = max(figures["end_to_end"], end_to_end)
                figures["embed_only"] = max(figures["embed_only"], embed_only)
                print(
                    f"  round {round_} {name}: end to end {end_to_end:6.1f} chunks/s, "
                    f"embedding alone {embed_only:6.1f} chunks/s",
                    flush=True,
                )
    print("best of rounds:")
    for name, figures in best.items():
        print(
            f"  {name}: end to end {figures['end_to_end']:6.1f} chunks/s, "
            f"embedding alone {figures['embed_only']:6.1f} chunks/s"
        )
    result: dict[str, Any] = {
        "collection": args.collection,
        "chunks": len(texts),
        "mean_word_pieces": round(tokens, 1),
        "best": best,
    }
    if "fp32" in best and "int8" in best:
        result["speedup"] = {
            kind: round(best["int8"][kind] / best["fp32"][kind], 2)
            for kind in ("end_to_end", "embed_only")
        }
        print(
            f"int8 / fp32: end to end x{result['speedup']['end_to_end']}, "
            f"embedding alone x{result['speedup']['embed_only']}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

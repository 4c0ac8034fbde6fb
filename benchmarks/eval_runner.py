"""Eval runner overhead: N cases against a loopback fake with a fixed latency, at a given
concurrency, through the real gateway, runner and store (SQLite, results stored as they
finish), versus the ideal ``ceil(N / concurrency) * latency``.

The fake runs in its own process. Issue 15's target: 1,000 cases, 50 ms, concurrency 32
(ideal 1.6 s) within 15% of ideal.
Also: seconds per metric over the same cases' ~100-word outputs (``--metrics``).

    python benchmarks/eval_runner.py [--cases 1000] [--latency 0.05] [--concurrency 32]
        [--metrics] [--json OUT] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trellis.evals import EvalRunner, EvalStore, parse_dataset, parse_suite
from trellis.evals.metrics import build_metric
from trellis.inference.gateway import Gateway
from trellis.inference.router import Router
from trellis.settings import Deployment, ModelAlias, RetrySettings
from trellis.store import Database

WORDS = [
    "the", "model", "answers", "questions", "about", "refunds", "shipping", "orders",
    "accounts", "payments", "delivery", "customers", "support", "tickets", "returns",
    "policy", "store", "warehouse", "invoice", "credit", "balance",
]  # fmt: skip


def text(rng: random.Random, words: int = 100) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def dataset_jsonl(cases: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "\n".join(
        json.dumps({"id": f"c{i}", "input": f"question {i}", "expected": text(rng)})
        for i in range(cases)
    )


@contextlib.contextmanager
def fake_upstream(latency: float, reply: str) -> Iterator[str]:
    """The fake in its own process (as a real upstream is: it does not share our GIL)."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trellis.testing.fake_upstream",
            "--delay",
            str(latency),
            "--reply",
            reply,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield child.stdout.readline().strip()
    finally:
        child.terminate()
        child.wait(10)


async def runner_overhead(cases: int, latency: float, concurrency: int) -> dict[str, Any]:
    rng = random.Random(1)
    answer = text(rng)
    with fake_upstream(latency, answer) as base_url, tempfile.TemporaryDirectory() as tmp:
        alias = ModelAlias(
            name="fake",
            deployments=[
                Deployment(provider="openai-compatible", model="gpt-4o-mini", base_url=base_url)
            ],
        )
        gateway = Gateway(Router([alias], retry=RetrySettings(attempts=1)), defer_bookkeeping=True)
        suite = parse_suite(
            {
                "dataset": "bench",
                "candidates": [{"name": "fake", "model": "fake"}],
                "metrics": ["exact"],
                "concurrency": concurrency,
            }
        )
        dataset = parse_dataset(dataset_jsonl(cases), name="bench")
        async with Database(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}") as db:
            runner = EvalRunner(gateway, EvalStore(db))
            started = time.perf_counter()
            report = await runner.run(suite, dataset)
            seconds = time.perf_counter() - started
        await gateway.aclose()
    errors = sum(1 for row in report["cases"] if row["error"])
    ideal = math.ceil(cases / concurrency) * latency
    return {
        "cases": cases,
        "latency_s": latency,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "ideal_seconds": round(ideal, 3),
        "ratio_to_ideal": round(seconds / ideal, 3),
        "errors": errors,
    }


def metric_speed(cases: int, names: list[str]) -> dict[str, float]:
    """Seconds per metric to score ``cases`` pairs of ~100-word texts (one thread)."""
    rng = random.Random(2)
    dataset = parse_dataset(dataset_jsonl(cases, seed=3), name="m")
    outputs = [text(rng) for _ in range(cases)]
    seconds: dict[str, float] = {}
    for name in names:
        metric = build_metric(name)
        if metric.needs_embedder:
            from trellis.inference.local.embedder import MiniLMEmbedder

            metric.embedder = MiniLMEmbedder()  # type: ignore[attr-defined]
            metric.embedder.load()  # type: ignore[attr-defined]
        started = time.perf_counter()
        scores = [metric(o, c) for o, c in zip(outputs, dataset.cases, strict=True)]
        metric.aggregate(outputs, dataset.cases, scores)
        seconds[name] = round(time.perf_counter() - started, 3)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--metrics", action="store_true", help="also time every metric")
    parser.add_argument("--metric-cases", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 cases, 100 metric cases")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.metric_cases = 100, 100
    result: dict[str, Any] = {
        "runner": asyncio.run(runner_overhead(args.cases, args.latency, args.concurrency))
    }
    runner = result["runner"]
    print(
        f"eval runner: {runner['cases']} cases, {runner['latency_s'] * 1000:.0f} ms upstream, "
        f"concurrency {runner['concurrency']}: {runner['seconds']:.2f} s "
        f"(ideal {runner['ideal_seconds']:.2f} s, ratio {runner['ratio_to_ideal']:.2f}), "
        f"{runner['errors']} errors"
    )
    if args.metrics:
        names = [
            "bleu",
            "chrf",
            "rouge1",
            "rouge2",
            "rougeL",
            "meteor",
            "cosine",
            "exact",
            "json_valid",
        ]
        result["metric_seconds"] = metric_speed(args.metric_cases, names)
        result["metric_cases"] = args.metric_cases
        for name, seconds in result["metric_seconds"].items():
            print(f"  {name:<10} {seconds:7.3f} s for {args.metric_cases} cases of ~100 words")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Statistics and trace-list queries over a large SQLite trace store.

Generates ``--traces`` traces of ``--spans`` spans each (default 125,000 x 8 =
1,000,000 spans) spread over the last day into a fresh SQLite file (migrated by
Trellis itself, so the real schema and indexes are measured), then times
``GET /v1/stats`` and ``GET /v1/traces`` through the real app in-process (ASGI,
no sockets) and the store calls alone. Usage::

    .venv/bin/python benchmarks/stats_query.py             # ~1 minute, most of it generating
    .venv/bin/python benchmarks/stats_query.py --traces 20000 --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from trellis.observe.stats import StatsQuery, TraceStats
from trellis.server.app import create_app
from trellis.settings import Settings
from trellis.store.db import Database

ADMIN_KEY = "tr-bench-admin-key-0123456789"
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "llama-70b", "local"]
KINDS = ["chat", "chat", "chat", "embeddings"]


def generate(path: Path, n_traces: int, n_spans: int, seed: int = 7) -> None:
    """Rows shaped like the writer's, inserted with the stdlib driver for speed."""
    rng = random.Random(seed)
    now = time.time_ns()
    day = 86_400 * 10**9
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    keys = [f"key_{i:04d}" for i in range(40)]
    trace_rows: list[tuple[Any, ...]] = []
    span_rows: list[tuple[Any, ...]] = []

    def flush() -> None:
        conn.executemany(
            "INSERT INTO traces (id, kind, name, start_ns, end_ns, duration_ms, status, model,"
            " response_model, provider, key_id, input_tokens, output_tokens, cost, cache_hit,"
            " ttft_ms, attributes) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            trace_rows,
        )
        conn.executemany(
            "INSERT INTO spans (trace_id, id, parent_id, name, start_ns, end_ns, duration_ms,"
            " status, attributes, events) VALUES (?,?,?,?,?,?,?,?,?,?)",
            span_rows,
        )
        conn.commit()
        trace_rows.clear()
        span_rows.clear()

    for i in range(n_traces):
        trace_id = f"{i:032x}"
        start = now - day + (i * day) // n_traces
        model = rng.choice(MODELS)
        duration = rng.lognormvariate(6.0, 0.8)  # ms, median ~400
        status = "error" if rng.random() < 0.03 else "ok"
        tin, tout = rng.randint(10, 2000), rng.randint(1, 800)
        attrs = json.dumps({"retries": 0, "fallbacks": 0, "attempts": 1, "deployment": model})
        trace_rows.append(
            (
                trace_id, rng.choice(KINDS), f"chat {model}", start,
                start + int(duration * 1e6), duration, status, model, model + "-2024",
                "openai", rng.choice(keys), tin, tout, (tin + 3 * tout) * 1e-6,
                rng.random() < 0.1, duration / 4, attrs,
            )
        )  # fmt: skip
        root = f"{0:016x}"
        body = json.dumps(
            {
                "gen_ai.request.model": model,
                "gen_ai.input.messages": [{"role": "user", "content": f"question {i}"}],
                "gen_ai.output.messages": [{"role": "assistant", "content": f"answer {i}"}],
            }
        )
        span_rows.append(
            (trace_id, root, None, f"chat {model}", start, start + int(duration * 1e6),
             duration, status, body, None)
        )  # fmt: skip
        for s in range(1, n_spans):
            span_rows.append(
                (trace_id, f"{s:016x}", root, f"stage.{s}", start, start + 1000, 0.001, "ok",
                 '{"k": 1}', None)
            )  # fmt: skip
        if len(trace_rows) >= 10_000:
            flush()
    flush()
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()


def timed(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(samples), 1),
        "min_ms": round(min(samples), 1),
        "max_ms": round(max(samples), 1),
    }


async def measure(url: str, repeat: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    db = Database(url)
    await db.connect()
    stats = TraceStats(db)
    now = time.time_ns()
    cases = {
        "store 24h/5m by model": StatsQuery(now - 86_400 * 10**9, now, 300 * 10**9, "model"),
        "store 24h/1h by key": StatsQuery(now - 86_400 * 10**9, now, 3600 * 10**9, "key"),
        "store 1h/1m by model": StatsQuery(now - 3600 * 10**9, now, 60 * 10**9, "model"),
    }
    for name, query in cases.items():
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            await stats.compute(query)
            samples.append((time.perf_counter() - started) * 1000)
        results[name] = timed(samples)
    await db.close()

    settings = Settings(
        database_url=url,
        admin_key=ADMIN_KEY,
        include_local_models=False,
        data_dir=Path(url.split("///", 1)[1]).parent,
    )
    app = create_app(settings)
    paths = {
        "GET /v1/stats?window=24h&bucket=5m&group_by=model": "/v1/stats?window=24h&bucket=5m",
        "GET /v1/stats?window=24h&bucket=1h&group_by=key": (
            "/v1/stats?window=24h&bucket=1h&group_by=key"
        ),
        "GET /v1/stats?window=1h&bucket=1m": "/v1/stats?window=1h&bucket=1m",
        "GET /v1/traces?limit=50": "/v1/traces?limit=50",
        "GET /v1/traces?model=local&min_latency_ms=2000": (
            "/v1/traces?model=local&min_latency_ms=2000"
        ),
        "GET /v1/traces?q=question%20124999": "/v1/traces?q=question%20124999&since=1h",
    }
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://bench",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=60,
        ) as client,
    ):
        for name, path in paths.items():
            samples = []
            for _ in range(repeat):
                started = time.perf_counter()
                response = await client.get(path)
                samples.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
            results[name] = timed(samples)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--traces", type=int, default=125_000)
    parser.add_argument("--spans", type=int, default=8, help="spans per trace")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--keep", type=Path, help="write the database here and keep it")
    args = parser.parse_args()
    repeat = 2 if args.quick else args.repeat
    directory = Path(tempfile.mkdtemp(prefix="trellis-stats-bench-"))
    path = args.keep or directory / "trellis.db"
    url = f"sqlite+aiosqlite:///{path.resolve()}"

    async def migrate() -> None:
        db = Database(url)
        await db.connect()
        await db.close()

    started = time.perf_counter()
    asyncio.run(migrate())
    generate(path, args.traces, args.spans)
    print(
        f"generated {args.traces:,} traces / {args.traces * args.spans:,} spans "
        f"in {time.perf_counter() - started:.1f}s ({os.path.getsize(path) / 2**20:.0f} MiB)"
    )
    results = asyncio.run(measure(url, repeat))
    width = max(len(name) for name in results)
    for name, figures in results.items():
        median, worst = figures["median_ms"], figures["max_ms"]
        print(f"{name:<{width}}  median {median:>7.1f} ms  max {worst:.1f}")
    out = Path(__file__).with_name("results") / "stats_query.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"traces": args.traces, "spans": args.traces * args.spans, **results}, indent=2)
    )
    if args.keep is None:
        for file in directory.iterdir():
            file.unlink()
        directory.rmdir()


if __name__ == "__main__":
    main()

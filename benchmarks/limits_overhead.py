"""What rate limits and budgets add to each request: one admission and one settlement.

The limiter alone (no HTTP, no provider), as the gateway calls it: a key and its project
both limited (rpm, tpm, concurrency, daily and monthly budgets, all far from reached), so
each call admits two subjects and settles their tokens, spend and lease. Rows:

* ``none``: no limits stored (the common case): the cached lookup that finds nothing.
* ``memory``: the in-process backend.
* ``redis``: the Redis backend (two Lua script calls per request) at ``--redis-url``.
* ``redis-concurrent``: the same with ``--concurrency`` calls at a time (wall time / calls).

Limits are read from a SQLite file through the store's cache, as in the server. Usage::

    .venv/bin/python benchmarks/limits_overhead.py            # ~20 s
    .venv/bin/python benchmarks/limits_overhead.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from trellis.access.limits import Limiter, LimitStore, MemoryBackend
from trellis.settings import LimitSettings, LimitValues
from trellis.store.db import Database

LIMITS = LimitValues(
    rpm=10**9, tpm=10**12, max_concurrent=10**6, daily_usd=10**9, monthly_usd=10**9
)


async def _one(limiter: Limiter) -> float:
    started = time.perf_counter()
    admission = await limiter.admit("bench", "default", lambda: 300)
    await limiter.settle(admission, 280, 0.0004)
    return time.perf_counter() - started


async def _sequential(limiter: Limiter, calls: int) -> dict[str, Any]:
    for _ in range(min(200, calls)):  # warm-up: caches, script loading, connections
        await _one(limiter)
    times = sorted([await _one(limiter) for _ in range(calls)])
    return {
        "calls": calls,
        "mean_us": round(statistics.fmean(times) * 1e6, 1),
        "p50_us": round(times[len(times) // 2] * 1e6, 1),
        "p99_us": round(times[int(len(times) * 0.99)] * 1e6, 1),
    }


async def _concurrent(limiter: Limiter, calls: int, concurrency: int) -> dict[str, Any]:
    queue = iter(range(calls))

    async def worker() -> None:
        for _ in queue:
            await _one(limiter)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "calls": calls,
        "concurrency": concurrency,
        "per_call_us": round(wall / calls * 1e6, 1),
        "calls_per_s": round(calls / wall),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}")
        await db.connect()
        try:
            store = LimitStore(db, cache_seconds=5.0)
            rows["none"] = await _sequential(
                Limiter(store, MemoryBackend(), LimitSettings()), args.calls
            )
            await store.put("key:bench", LIMITS)
            await store.put("project:default", LIMITS)
            rows["memory"] = await _sequential(
                Limiter(store, MemoryBackend(), LimitSettings()), args.calls
            )
            try:
                from trellis.access.limits_redis import RedisBackend

                backend = RedisBackend(
                    args.redis_url, prefix=f"trellis:bench:limits:{uuid.uuid4().hex}:"
                )
                await backend._client.ping()
            except Exception as exc:
                rows["redis"] = {"skipped": f"Redis not reachable: {exc}"}
            else:
                try:
                    limiter = Limiter(store, backend, LimitSettings(backend="redis"))
                    rows["redis"] = await _sequential(limiter, args.calls)
                    rows["redis-concurrent"] = await _concurrent(
                        limiter, args.calls, args.concurrency
                    )
                finally:
                    await backend.clear()
                    await backend.aclose()
        finally:
            await db.close()
    return {"benchmark": "limits_overhead", "python": sys.version.split()[0], "rows": rows}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--quick", action="store_true", help="500 calls per row")
    parser.add_argument("--json", type=Path, help="also write the result here")
    options = parser.parse_args()
    if options.quick:
        options.calls = 500
    result = asyncio.run(main(options))
    for name, row in result["rows"].items():
        print(f"{name:18} {row}")
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(result, indent=2) + "\n")

"""Trace writer throughput into SQLite: sustained rate without a growing queue, and burst.

Two measurements in one run, on gateway-shaped traces of 8 spans:

1. **Sustained**: submit traces at a fixed rate (default 5,000 spans/s) for a few
   seconds, sampling the queue depth; the writer keeps up if the depth stays
   bounded (it never exceeds a couple of batches) and everything is written.
2. **Burst**: submit many traces at once and time until all are written — the
   writer's maximum rate.

Usage::

    .venv/bin/python benchmarks/trace_writer.py [--rate 5000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from trellis.observe.tracing import GenAI, Trace
from trellis.observe.writer import TraceWriter
from trellis.settings import TracingSettings
from trellis.store import Database

SPANS_PER_TRACE = 8
RESULTS = Path(__file__).resolve().parent / "results" / "trace_writer.json"


def make_trace(index: int) -> Trace:
    """A trace shaped like the gateway's: a root with bodies, stages and one attempt."""
    trace = Trace(kind="chat", name="chat gpt-bench")
    root = trace.root
    assert root is not None
    root.set(GenAI.OPERATION, "chat")
    root.set(GenAI.REQUEST_MODEL, "gpt-bench")
    root.set(GenAI.INPUT_MESSAGES, [{"role": "user", "content": f"question number {index}"}])
    root.set(GenAI.OUTPUT_MESSAGES, [{"role": "assistant", "content": "an answer " * 20}])
    route = trace.start_span("route")
    for stage in ("authenticate", "authorize", "cache_lookup", "context_fit", "cache_store"):
        trace.start_span(stage).end()
    attempt = trace.start_span("chat gpt-bench", route, {GenAI.PROVIDER: "openai"})
    attempt.end()
    route.end()
    trace.summary.update(model="gpt-bench", input_tokens=12, output_tokens=40, cost=0.0001)
    trace.finish()
    assert len(trace.spans) == SPANS_PER_TRACE
    return trace


async def sustained(db: Database, spans_per_second: int, seconds: float) -> dict[str, Any]:
    writer = TraceWriter(db, TracingSettings())
    await writer.start()
    traces_per_second = spans_per_second / SPANS_PER_TRACE
    total, max_depth, depths = 0, 0, []
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        while total < elapsed * traces_per_second:  # catch up to the offered rate
            writer.submit(make_trace(total))
            total += 1
        max_depth = max(max_depth, writer.queued)
        depths.append(writer.queued)
        await asyncio.sleep(0.01)
    offered = total * SPANS_PER_TRACE / elapsed
    await writer.close()
    half = len(depths) // 2
    return {
        "offered_spans_per_s": round(offered),
        "traces": total,
        "written_traces": writer.written_traces,
        "dropped": writer.dropped,
        "max_queue_depth": max_depth,
        "mean_depth_first_half": round(sum(depths[:half]) / max(1, half), 1),
        "mean_depth_second_half": round(sum(depths[half:]) / max(1, len(depths) - half), 1),
    }


async def burst(db: Database, traces: int) -> dict[str, Any]:
    writer = TraceWriter(db, TracingSettings(queue_size=traces))
    batch = [make_trace(i) for i in range(traces)]
    await writer.start()
    started = time.perf_counter()
    for trace in batch:
        writer.submit(trace)
    await writer.close()
    seconds = time.perf_counter() - started
    return {
        "traces": traces,
        "written_spans": writer.written_spans,
        "seconds": round(seconds, 3),
        "spans_per_s": round(writer.written_spans / seconds),
    }


async def main(rate: int, seconds: float, burst_traces: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="trellis-writer-"))
    results: dict[str, Any] = {}
    for name, run in (
        ("sustained", lambda db: sustained(db, rate, seconds)),
        ("burst", lambda db: burst(db, burst_traces)),
    ):
        db = Database(f"sqlite+aiosqlite:///{directory / (name + '.db')}")
        await db.connect()
        try:
            results[name] = await run(db)
        finally:
            await db.close()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=5000, help="offered spans per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--burst", type=int, default=5000, help="traces in the burst run")
    args = parser.parse_args()
    out = asyncio.run(main(args.rate, args.seconds, args.burst))
    s, b = out["sustained"], out["burst"]
    everything_written = s["dropped"] == 0 and s["written_traces"] == s["traces"]
    kept_up = everything_written and s["max_queue_depth"] < 2000
    print(
        f"sustained: offered {s['offered_spans_per_s']:,} spans/s for {args.seconds:g}s, "
        f"max queue depth {s['max_queue_depth']} traces (mean {s['mean_depth_first_half']} → "
        f"{s['mean_depth_second_half']}), written {s['written_traces']}/{s['traces']}, "
        f"dropped {s['dropped']} → {'kept up' if kept_up else 'FELL BEHIND'}"
    )
    print(f"burst: {b['written_spans']:,} spans in {b['seconds']}s → {b['spans_per_s']:,} spans/s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))

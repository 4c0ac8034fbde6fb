"""Cost of ``tracing.bodies: redacted`` in the background trace writer.

Builds gateway-shaped traces (8 spans; a system prompt, a user prompt with or
without PII, a ~600-character answer: about 1.1 kB of bodies) and measures, per
trace, building the rows with ``full`` vs ``redacted`` bodies, and the writer's
whole wall time into a fresh SQLite file. Redaction runs in the writer's task,
so this is writer CPU, not request latency. Usage::

    .venv/bin/python benchmarks/trace_redaction.py [--traces 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

from trellis.observe.tracing import GenAI, Trace
from trellis.observe.writer import TraceWriter, trace_rows
from trellis.settings import TracingSettings
from trellis.store import Database

SYSTEM = "You are a helpful assistant for Acme Corp. Answer briefly and cite sources. " * 3
PII = (
    "Hi, my name is Ann and my email is ann.lee@example.com. My order 12345 has not arrived; "
    "please call me at +1 415-555-0132. Card 4111 1111 1111 1111. Can you also explain how "
    "the refund policy works for international shipments to Germany?"
)
PLAIN = "Tell me about otters and how they use tools to crack open shellfish in the wild."
ANSWER = (
    "Sure, Ann. I am sorry your order has not arrived. Refunds for international shipments "
    "are processed within 14 days after the return is received. "
) * 4
STAGES = ("authorize", "input_guard", "cache.lookup", "fit_context", "route", "attempt", "store")


def make_trace(user: str) -> Trace:
    trace = Trace(kind="chat", name="chat.completions")
    assert trace.root is not None
    trace.root.set(
        GenAI.INPUT_MESSAGES,
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
    )
    trace.root.set(GenAI.OUTPUT_MESSAGES, [{"role": "assistant", "content": ANSWER}])
    for name in STAGES:
        with trace.span(name) as span:
            span.set(GenAI.REQUEST_MODEL, "gpt-4o")
    trace.finish()
    return trace


def rows_us(traces: list[Trace], bodies: str) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for trace in traces:
            trace_rows(trace, bodies=bodies)  # type: ignore[arg-type]
        best = min(best, time.perf_counter() - started)
    return best / len(traces) * 1e6


async def writer_us(traces: list[Trace], bodies: str) -> float:
    with tempfile.TemporaryDirectory() as directory:
        db = Database(f"sqlite+aiosqlite:///{directory}/trellis.db")
        await db.connect()
        settings = TracingSettings(bodies=bodies, flush_interval=0.05, queue_size=len(traces))
        writer = TraceWriter(db, settings)
        await writer.start()
        started = time.perf_counter()
        for trace in traces:
            writer.submit(trace)
        await writer.close()
        elapsed = time.perf_counter() - started
        await db.close()
    assert writer.written_traces == len(traces)
    return elapsed / len(traces) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", type=int, default=3000)
    args = parser.parse_args()
    for label, user in (("prompt with PII", PII), ("plain prompt", PLAIN)):
        traces = [make_trace(user) for _ in range(args.traces)]
        full, redacted = rows_us(traces, "full"), rows_us(traces, "redacted")
        wall_full = await writer_us([make_trace(user) for _ in range(args.traces)], "full")
        wall_red = await writer_us([make_trace(user) for _ in range(args.traces)], "redacted")
        print(
            f"{label:16s} rows: full {full:6.1f} us, redacted {redacted:6.1f} us "
            f"(+{redacted - full:.1f} us/trace); writer wall: full {wall_full:6.1f} us, "
            f"redacted {wall_red:6.1f} us per trace of {len(STAGES) + 1} spans"
        )


if __name__ == "__main__":
    asyncio.run(main())

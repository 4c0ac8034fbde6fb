"""Workflow concurrency: many durable runs at once through the real gateway, none lost.

Starts ``--runs`` (default 1,000) runs of a 5-step workflow at once with the Python API
(``Trellis(settings).workflows.start``) and waits for all. The steps: ``prepare``
(function, puts the run id in the state), ``draft`` (llm), ``lookup`` (function calling a
side-effecting tool, so the idempotency journal is written), ``review`` (llm) and
``summary`` (llm). The LLM steps go through the in-process gateway (routing, cost, traces
written by the trace writer) to a fake OpenAI-compatible upstream with a fixed latency,
run as its own process (``--serve-upstream``) so it does not share the event loop or GIL.

Each pass uses a fresh database (a file SQLite database; ``--postgres`` adds a pass per
limit on a scratch Postgres database) and one ``orchestration.max_concurrent_runs``
(``--limits``, 0 = none), and checks nothing was lost or duplicated: every run
succeeded with exactly 5 step records, seq 1..5; the upstream got exactly 3 requests per
run, one per (run, llm step), told apart by the run id each prompt carries; the trace
store holds one workflow trace per run and one chat trace per LLM call.

Reported per pass: runs/s and steps/s (first start to last finish), p50/p99 run time
(``created_at`` to ``finished_at``), and the peak number of runs driven at once.

Usage::

    .venv/bin/python benchmarks/workflow_concurrency.py                 # 1,000 runs x 3 limits
    .venv/bin/python benchmarks/workflow_concurrency.py --quick         # 100 runs, seconds
    .venv/bin/python benchmarks/workflow_concurrency.py --postgres      # also on Postgres
    .venv/bin/python benchmarks/workflow_concurrency.py --http          # also over HTTP
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from trellis.orchestration import Context, RunRecord, Workflow, tool
from trellis.orchestration.kinds.llm import llm
from trellis.runtime import Trellis
from trellis.settings import Settings
from trellis.store import Database
from trellis.store.tables import traces, workflow_runs, workflow_steps

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "workflow_concurrency.json"
DEFAULT_POSTGRES = os.environ.get(
    "TRELLIS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ALIAS = "bench"
LLM_STEPS = ("draft", "review", "summary")
STEPS = 5
TAG = re.compile(r"run=([0-9a-f]+) step=(\w+)")


# --- the workflow ---------------------------------------------------------------------


class Job(BaseModel):
    topic: str
    run_id: str = ""
    draft: str = ""
    facts: str = ""
    review: str = ""
    summary: str = ""


@tool(side_effect=True)
async def lookup_facts(topic: str, *, ctx: Context) -> str:
    """A side effect journaled once per run (an idempotency record in the database)."""
    return f"facts about {topic} ({ctx.idempotency_key()})"


def _prompt(step: str, text: str) -> Callable[[Job], str]:
    return lambda s: f"run={s.run_id} step={step} {text} {s.topic}"


def build_flow() -> Workflow[Job]:
    """prepare → draft (llm) → lookup (tool) → review (llm) → summary (llm)."""
    flow = Workflow("bench-five-steps", state=Job, output=lambda s: {"summary": s.summary})

    @flow.step
    async def prepare(s: Job, ctx: Context) -> dict[str, str]:
        return {"run_id": ctx.run_id}

    flow.add(llm("draft", model=ALIAS, messages=_prompt("draft", "Draft a note on"), into="draft"))

    @flow.step
    async def lookup(s: Job, ctx: Context) -> dict[str, str]:
        return {"facts": await lookup_facts(ctx, topic=s.topic)}

    flow.add(llm("review", model=ALIAS, messages=_prompt("review", "Review"), into="review"))
    flow.add(llm("summary", model=ALIAS, messages=_prompt("summary", "Sum up"), into="summary"))
    return flow


#: The workflow, importable by a ``trellis serve`` child (``workflow_concurrency:FLOW``).
FLOW = build_flow()


# --- the fake upstream, in its own process --------------------------------------------


def serve_upstream(latency_ms: float) -> int:
    """Child mode: serve the fake, answer ``count`` / ``reset`` lines on stdin."""
    from trellis.testing.fake_upstream import FakeUpstream

    upstream = FakeUpstream("openai", reply="A short answer from the fake.")
    upstream.delay = latency_ms / 1000
    upstream.start()
    print(upstream.base_url, flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "reset":
                upstream.requests.clear()
                print("{}", flush=True)
            elif command == "count":
                tags: Counter[str] = Counter()
                for received in list(upstream.requests):
                    messages = (received.json or {}).get("messages") or [{}]
                    found = TAG.search(str(messages[-1].get("content", "")))
                    tags[f"{found[1]}:{found[2]}" if found else "?"] += 1
                total = len(upstream.requests)
                print(json.dumps({"requests": total, "tags": tags}), flush=True)
    finally:
        upstream.stop()
    return 0


class Upstream:
    """The parent's handle on the fake upstream process."""

    def __init__(self, latency_ms: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-upstream", "--latency-ms", str(latency_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            self.close()
            raise RuntimeError("the fake upstream did not start")

    def _ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def reset(self) -> None:
        self._ask("reset")

    def tally(self) -> dict[str, Any]:
        return self._ask("count")

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- one pass -------------------------------------------------------------------------


@dataclass
class Config:
    runs: int = 1000
    latency_ms: float = 20.0
    limits: tuple[int, ...] = (256, 64, 0)
    postgres: str | None = None
    #: Also start the runs over HTTP against a ``trellis serve`` child, per pass.
    http: bool = False
    json_path: Path | None = DEFAULT_JSON


@dataclass
class Pass:
    surface: str  # python | http
    backend: str
    max_concurrent_runs: int
    runs: int
    seconds: float
    start_seconds: float
    runs_per_s: float
    steps_per_s: float
    p50_ms: float
    p99_ms: float
    peak_driving: int
    upstream_requests: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def settings_for(database_url: str, data_dir: Path, base_url: str, limit: int) -> Settings:
    model = {
        "name": ALIAS,
        "deployments": [
            {
                "provider": "openai-compatible",
                "model": "gpt-bench",
                "base_url": base_url,
                "prices": {"input": 0.15, "output": 0.6},
            }
        ],
    }
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        include_local_models=False,
        models=[model],
        orchestration={"max_concurrent_runs": limit},
    )


async def _sample(trellis: Trellis, peak: list[int]) -> None:
    while True:
        peak[0] = max(peak[0], trellis.workflows.driving)
        await asyncio.sleep(0.002)


async def _verify(db: Database, ids: list[str], upstream: Upstream, warm_up: int = 0) -> list[str]:
    """Every way a run could be lost or done twice, as messages (empty: all good).
    ``warm_up``: finished runs (and their traces) in the database besides ``ids``."""
    problems: list[str] = []
    if len(set(ids)) != len(ids):
        problems.append("duplicate run ids")
    s, r = workflow_steps.c, workflow_runs.c
    async with db.engine.connect() as conn:
        statuses: Counter[str] = Counter()
        per_run: list[Any] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = select(r.status, func.count()).where(r.id.in_(chunk)).group_by(r.status)
            statuses.update(dict((await conn.execute(query)).all()))  # type: ignore[arg-type]
            steps = select(
                s.run_id,
                func.count(),
                func.count(func.distinct(s.seq)),
                func.min(s.seq),
                func.max(s.seq),
            )
            per_run += (
                await conn.execute(steps.where(s.run_id.in_(chunk)).group_by(s.run_id))
            ).all()
        kinds = Counter(
            dict(
                (
                    await conn.execute(select(traces.c.kind, func.count()).group_by(traces.c.kind))
                ).all()
            )
        )
    if statuses != Counter({"succeeded": len(ids)}):
        problems.append(f"run statuses {dict(statuses)}")
    logs = {row[0]: tuple(row[1:]) for row in per_run}
    if set(logs) != set(ids):
        problems.append(f"{len(set(ids) - set(logs))} runs without step records")
    bad = [run for run, shape in logs.items() if shape != (STEPS, STEPS, 1, STEPS)]
    if bad:
        problems.append(f"{len(bad)} runs without exactly seq 1..{STEPS}, e.g. {logs[bad[0]]}")
    tally = upstream.tally()
    expected = {f"{run}:{step}" for run in ids for step in LLM_STEPS}
    if tally["requests"] != len(expected):
        problems.append(f"upstream got {tally['requests']} requests, expected {len(expected)}")
    twice = [tag for tag, n in tally["tags"].items() if n != 1]
    if twice:
        problems.append(f"{len(twice)} (run, step) pairs requested more than once: {twice[:3]}")
    if set(tally["tags"]) != expected:
        problems.append("upstream requests do not match the runs' llm steps")
    runs = len(ids) + warm_up
    if kinds.get("workflow", 0) != runs:
        problems.append(f"{kinds.get('workflow', 0)} workflow traces for {runs} runs")
    if kinds.get("chat", 0) != runs * len(LLM_STEPS):
        problems.append(f"{kinds.get('chat', 0)} chat traces for {runs * len(LLM_STEPS)} llm calls")
    return problems


async def one_pass(
    backend: str, database_url: str, data_dir: Path, upstream: Upstream, runs: int, limit: int
) -> Pass:
    flow = FLOW
    settings = settings_for(database_url, data_dir, upstream.base_url, limit)
    async with Trellis(settings) as trellis:
        workflows = trellis.workflows
        workflows.register(flow)
        # Warm up (connections, first-call costs), then forget it.
        await workflows.run(flow, {"topic": "warm-up"})
        assert trellis.db is not None and trellis.writer is not None
        await trellis.writer.flush()
        async with trellis.db.engine.begin() as conn:
            for table in ("workflow_effects", "workflow_steps", "workflow_runs", "spans", "traces"):
                await conn.exec_driver_sql(f"DELETE FROM {table}")
        upstream.reset()
        peak = [0]
        sampler = asyncio.create_task(_sample(trellis, peak))
        began = time.perf_counter()
        ids = list(
            await asyncio.gather(*(workflows.start(flow, {"topic": f"t{i}"}) for i in range(runs)))
        )
        started = time.perf_counter() - began
        waited = await asyncio.gather(
            *(workflows.wait(run_id) for run_id in ids), return_exceptions=True
        )
        seconds = time.perf_counter() - began
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        finals = [r for r in waited if isinstance(r, RunRecord)]
        times = [((r.finished_at or math.nan) - r.created_at) * 1000 for r in finals]
        await trellis.writer.flush()
        problems = await _verify(trellis.db, ids, upstream)
        raised = [r for r in waited if isinstance(r, BaseException)]
        if raised:  # a run's driver stopped on an error (its lease runs out, then recovery)
            problems.insert(0, f"{len(raised)} runs stopped on an error, e.g. {raised[0]!r:.300}")
        requests = upstream.tally()["requests"]
    return Pass(
        surface="python",
        backend=backend,
        max_concurrent_runs=limit,
        runs=runs,
        seconds=round(seconds, 3),
        start_seconds=round(started, 3),
        runs_per_s=round(runs / seconds, 1),
        steps_per_s=round(runs * STEPS / seconds, 1),
        p50_ms=round(percentile(times, 50), 1),
        p99_ms=round(percentile(times, 99), 1),
        peak_driving=peak[0],
        upstream_requests=requests,
        problems=problems,
    )


ADMIN_KEY = "tr-bench-" + "w" * 32  # a fixed key for a throwaway data dir, never a real secret


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    database_url: str, data_dir: Path, base_url: str, limit: int
) -> tuple[subprocess.Popen[bytes], str]:
    """``trellis serve`` with this benchmark's workflow registered by import path."""
    settings = settings_for(database_url, data_dir, base_url, limit)
    config = settings.model_dump(mode="json", include={"models", "orchestration", "database_url"})
    config.update(include_local_models=False, workflows=["workflow_concurrency:FLOW"])
    path = data_dir / "trellis.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    port = _free_port()
    env = {
        **os.environ,
        "TRELLIS_CONFIG": str(path),
        "TRELLIS_ADMIN_KEY": ADMIN_KEY,
        "TRELLIS_DATA_DIR": str(data_dir),
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
    }
    argv = [sys.executable, "-m", "trellis.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen([*argv, "--log-level", "warning"], env=env, stdin=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


async def _ready(client: httpx.AsyncClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"trellis serve exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/v1/workflows")).status_code == 200:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError("trellis serve was not ready in time")


async def _sample_http(client: httpx.AsyncClient, peak: list[int]) -> None:
    while True:
        with contextlib.suppress(httpx.HTTPError):
            running = await client.get("/v1/runs", params={"status": "running", "limit": 1000})
            peak[0] = max(peak[0], len(running.json()["data"]))
        await asyncio.sleep(0.25)


async def http_pass(
    backend: str, database_url: str, data_dir: Path, upstream: Upstream, runs: int, limit: int
) -> Pass:
    """The same runs, each started by its own waiting ``POST /v1/workflows/{name}/runs``."""
    proc, url = start_server(database_url, data_dir, upstream.base_url, limit)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    limits = httpx.Limits(max_connections=runs + 2, max_keepalive_connections=runs + 2)
    replies: list[Any] = []
    try:
        async with httpx.AsyncClient(
            base_url=url, headers=headers, timeout=900, limits=limits
        ) as client:
            await _ready(client, proc)
            path = f"/v1/workflows/{FLOW.name}/runs"
            warm = await client.post(path, json={"input": {"topic": "warm-up"}})
            assert warm.status_code == 200, warm.text
            upstream.reset()
            peak = [0]
            sampler = asyncio.create_task(_sample_http(client, peak))
            began = time.perf_counter()
            replies = await asyncio.gather(
                *(client.post(path, json={"input": {"topic": f"t{i}"}}) for i in range(runs)),
                return_exceptions=True,
            )
            seconds = time.perf_counter() - began
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    finally:
        proc.terminate()  # a clean stop: the trace writer writes what it holds
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    answered = [r.json() for r in replies if isinstance(r, httpx.Response) and r.status_code == 200]
    problems = []
    if len(answered) != runs:
        failed = [r for r in replies if not isinstance(r, httpx.Response) or r.status_code != 200]
        problems.append(f"{len(failed)} starts failed, e.g. {failed[0]!r:.300}")
    ids = [run["id"] for run in answered]
    times = [(run["finished_at"] - run["created_at"]) * 1000 for run in answered]
    db = Database(database_url)
    await db.connect()
    try:
        problems += await _verify(db, ids, upstream, warm_up=1)
    finally:
        await db.close()
    return Pass(
        surface="http",
        backend=backend,
        max_concurrent_runs=limit,
        runs=runs,
        seconds=round(seconds, 3),
        start_seconds=math.nan,
        runs_per_s=round(runs / seconds, 1),
        steps_per_s=round(runs * STEPS / seconds, 1),
        p50_ms=round(percentile(times, 50), 1),
        p99_ms=round(percentile(times, 99), 1),
        peak_driving=peak[0],
        upstream_requests=upstream.tally()["requests"],
        problems=problems,
    )


@contextlib.asynccontextmanager
async def _postgres(admin_url: str) -> AsyncIterator[str]:
    from trellis.testing.postgres import scratch_database

    name = f"trellis_bench_wf_{uuid.uuid4().hex[:8]}"
    async with scratch_database(admin_url, name) as url:
        yield (
            make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
        )


async def _passes(config: Config, upstream: Upstream, log: Callable[[str], None]) -> list[Pass]:
    results: list[Pass] = []
    backends = ["sqlite"] + (["postgres"] if config.postgres else [])
    surfaces = [one_pass] + ([http_pass] if config.http else [])
    for surface in surfaces:
        for backend in backends:
            for limit in config.limits:
                with tempfile.TemporaryDirectory(prefix="trellis-wf-bench-") as tmp:
                    data_dir = Path(tmp)
                    if backend == "sqlite":
                        url = f"sqlite+aiosqlite:///{data_dir / 'trellis.db'}"
                        result = await surface(backend, url, data_dir, upstream, config.runs, limit)
                    else:
                        assert config.postgres is not None
                        async with _postgres(config.postgres) as url:
                            result = await surface(
                                backend, url, data_dir, upstream, config.runs, limit
                            )
                log(render_row(result))
                results.append(result)
    return results


def run(config: Config, log: Callable[[str], None] = print) -> list[Pass]:
    """Every pass (backend x limit); writes ``config.json_path`` when set."""
    upstream = Upstream(config.latency_ms)
    try:
        log(HEADER)
        results = asyncio.run(_passes(config, upstream, log))
    finally:
        upstream.close()
    if config.json_path is not None:
        config.json_path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "workflow_concurrency",
            "config": {
                "runs": config.runs,
                "latency_ms": config.latency_ms,
                "limits": list(config.limits),
                "steps": STEPS,
                "llm_steps": list(LLM_STEPS),
                "postgres": config.postgres is not None,
                "http": config.http,
            },
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "passes": [{**asdict(p), "ok": p.ok} for p in results],
        }
        config.json_path.write_text(json.dumps(payload, indent=2) + "\n")
    return results


COLUMNS = (
    "surface",
    "backend",
    "max_concurrent_runs",
    "runs",
    "seconds",
    "runs/s",
    "steps/s",
    "p50 ms",
    "p99 ms",
    "peak driving",
    "upstream requests",
    "verified",
)
HEADER = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)


def render_row(p: Pass) -> str:
    cells = [
        p.surface,
        p.backend,
        p.max_concurrent_runs or "none",
        p.runs,
        p.seconds,
        p.runs_per_s,
        p.steps_per_s,
        p.p50_ms,
        p.p99_ms,
        p.peak_driving,
        p.upstream_requests,
        "ok" if p.ok else "; ".join(p.problems),
    ]
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs started at once per pass")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the fake's latency")
    parser.add_argument(
        "--limits",
        default="256,64,0",
        help="comma-separated max_concurrent_runs, one pass each (0: no limit)",
    )
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=DEFAULT_POSTGRES,
        default=None,
        help="also run every pass on a scratch Postgres database (admin URL)",
    )
    parser.add_argument(
        "--http",
        action="store_true",
        help="also start the runs over HTTP against a `trellis serve` child (a pass per limit)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where results go")
    parser.add_argument("--quick", action="store_true", help="100 runs: a smoke run")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream:
        return serve_upstream(args.latency_ms)
    config = Config(
        runs=100 if args.quick else args.runs,
        latency_ms=args.latency_ms,
        limits=tuple(int(x) for x in args.limits.split(",") if x.strip()),
        postgres=args.postgres,
        http=args.http,
        json_path=args.json,
    )
    results = run(config)
    return 0 if all(p.ok for p in results) else 1


if __name__ == "__main__":
    sys.exit(main())

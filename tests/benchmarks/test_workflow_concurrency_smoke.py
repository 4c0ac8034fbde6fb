"""A tiny run of ``benchmarks/workflow_concurrency.py``, so a broken benchmark fails CI.

It starts the fake upstream process and runs a few dozen workflow runs through the real
gateway on SQLite, with and without a concurrency limit, and a few over HTTP against a
``trellis serve`` child. It checks the plumbing and the
no-loss verification, not the speed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "workflow_concurrency.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    """The script loaded as a module (``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("workflow_concurrency", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_percentile_interpolates(bench: ModuleType) -> None:
    assert bench.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert bench.percentile(list(map(float, range(101))), 99) == 99.0


@pytest.mark.timeout(120)
def test_tiny_run_verifies_every_run(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    config = bench.Config(runs=24, latency_ms=5, limits=(4, 0), json_path=out)
    lines: list[str] = []
    started = time.monotonic()
    results = bench.run(config, log=lines.append)
    assert time.monotonic() - started < 60

    assert [(p.surface, p.backend, p.max_concurrent_runs) for p in results] == [
        ("python", "sqlite", 4),
        ("python", "sqlite", 0),
    ]
    for result in results:
        assert result.problems == [], result.problems
        assert result.upstream_requests == 24 * len(bench.LLM_STEPS)
        assert result.runs_per_s > 0 and result.p99_ms >= result.p50_ms >= 5 * 3
    limited, unlimited = results
    assert limited.peak_driving == 4
    assert unlimited.peak_driving > 4
    data = json.loads(out.read_text())
    assert [p["ok"] for p in data["passes"]] == [True, True]
    assert lines[0].startswith("| surface | backend |") and len(lines) == 3


@pytest.mark.timeout(180)
def test_tiny_run_over_http_against_trellis_serve(bench: ModuleType, tmp_path: Path) -> None:
    config = bench.Config(runs=12, latency_ms=5, limits=(3,), http=True, json_path=None)
    python, http = bench.run(config, log=lambda line: None)
    assert (python.surface, http.surface) == ("python", "http")
    assert http.problems == [], http.problems
    assert http.upstream_requests == 12 * len(bench.LLM_STEPS)
    # Sampled every 0.25 s: a tiny pass may finish between two samples, so only the bound.
    assert http.peak_driving <= 3

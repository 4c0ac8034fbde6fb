"""A tiny run of ``benchmarks/gateway_overhead.py``, so a broken benchmark fails CI.

It starts the real processes (fake upstream, both bare forwarders, Trellis with tracing
on and off) with a budget of a few seconds; LiteLLM is left out. It checks the
plumbing, not the speed.
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

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gateway_overhead.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    """The script loaded as a module (``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("gateway_overhead", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_percentile_interpolates(bench: ModuleType) -> None:
    assert bench.percentile([], 50) != bench.percentile([], 50)  # NaN when empty
    assert bench.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert bench.percentile(list(map(float, range(101))), 99) == 99.0


@pytest.mark.timeout(60)
def test_tiny_run_measures_every_row(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    config = bench.BenchConfig(
        delay=0.005,
        warmup=5,
        requests=30,
        rounds=2,
        concurrency=(8,),
        duration=1.0,
        ramp=0.2,
        litellm=False,
        json_path=out,
    )
    started = time.monotonic()
    result = bench.run(config, log=lambda message: None)
    assert time.monotonic() - started < 30

    names = [t.name for t in result.targets]
    assert names == [
        "direct",
        "bare forwarder (floor)",
        "bare forwarder on Trellis' client",
        "trellis",
        "trellis (tracing off)",
    ]
    for target in result.targets:
        assert target.errors == 0, target.name
        assert len(target.latencies_ms) == 30
        assert target.p50_ms >= 5.0  # the upstream's delay is inside every latency
        assert target.best is not None and target.best.rps > 0

    data = json.loads(out.read_text())
    assert [row["target"] for row in data["rows"]] == names
    assert {
        "trellis_added_p50_ms",
        "tracing_added_p50_us",
        "floor_added_p50_ms",
        "trellis_own_work_p50_ms",
    } <= data["summary"].keys()
    table = bench.render(result)
    assert "| trellis |" in table and "| added p50 ms |" in table

"""A tiny run of ``benchmarks/eval_runner.py`` so it cannot rot: the plumbing (fake in its
own process, runner, store, metric timing), not the speed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_runner.py"


def test_the_benchmark_runs_and_reports_a_ratio(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("eval_runner_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    try:
        spec.loader.exec_module(bench)
        out = tmp_path / "eval_runner.json"
        argv = ["--cases", "40", "--concurrency", "8", "--latency", "0.01", "--json", str(out)]
        assert bench.main(argv) == 0
        speeds = bench.metric_speed(3, ["bleu", "exact"])
    finally:
        sys.modules.pop(spec.name, None)
    runner = json.loads(out.read_text())["runner"]
    assert runner["cases"] == 40 and runner["errors"] == 0
    assert runner["ideal_seconds"] == 0.05 and runner["ratio_to_ideal"] >= 1.0
    assert set(speeds) == {"bleu", "exact"}

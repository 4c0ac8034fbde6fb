"""A tiny run of ``benchmarks/workflow_overhead.py``: the Trellis rows measure, the LangGraph
rows say how to set LangGraph up when its venv is missing. Plumbing, not speed."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "workflow_overhead.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    """The script loaded as a module (``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("workflow_overhead", SCRIPT)
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
    assert bench.percentile(list(map(float, range(101))), 95) == 95.0


@pytest.mark.timeout(60)
def test_tiny_run_of_the_trellis_side(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    argv = [
        *("--runs", "3", "--rounds", "2", "--warmup", "1"),
        *("--concurrency", "3", "--concurrent-runs", "6"),
        *("--langgraph-python", str(tmp_path / "no-venv" / "python")),
        *("--json", str(out), "--data-dir", str(tmp_path / "data")),
    ]
    result = bench.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = result["rows"]
    for name in ("trellis", "trellis-sqlalchemy", "trellis-memory"):
        assert rows[name]["runs"] == 6
        assert 0 < rows[name]["ms_per_step_p50"] <= rows[name]["ms_per_step_p95"]
        assert rows[name]["concurrent_runs"] == 12 and rows[name]["concurrent_ms_per_step"] > 0
    for name in ("langgraph-sqlite", "langgraph-async-sqlite", "langgraph-none"):
        assert rows[name]["runs"] == 0 and "setup_langgraph.sh" in rows[name]["note"]
    assert result["ratios"] == {}
    # The default store wrote every run's steps to its SQLite file.
    assert (tmp_path / "data" / "trellis.db").exists()

"""``benchmarks/local_engine.py``: a tiny run of the engine row, and the target checks,
so the script behind the local engine figures keeps working."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "local_engine.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("local_engine", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def level(concurrency: int, aggregate: float, per_request: float, ttft: float) -> dict:
    return {
        "concurrency": concurrency,
        "aggregate_tok_s": aggregate,
        "per_request_tok_s": per_request,
        "ttft_max_s": ttft,
    }


def test_the_targets_are_checked_from_the_rows(bench: ModuleType) -> None:
    rows = [
        {"name": "engine (xllamacpp, direct)", "levels": [level(1, 100, 100, 0.1)]},
        {
            "name": "trellis (HTTP)",
            "levels": [level(1, 95, 95, 0.1), level(4, 110, 30, 1.4)],
        },
        {"name": "llama-cpp-python", "skipped": "not installed"},
    ]
    assert bench.checks(rows) == {
        "single_request_vs_engine": 0.95,
        "single_request_at_least_90pct": True,
        "four_concurrent_aggregate_at_least_single": True,
        "four_concurrent_every_first_token_within_1s": False,
    }


@pytest.mark.model
def test_a_tiny_engine_run_writes_the_report(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "local_engine.json"
    argv = ["--levels", "1,2", "--tokens", "4", "--skip", "trellis,legacy", "--json", str(out)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    (engine,) = report["rows"]
    assert [lv["concurrency"] for lv in engine["levels"]] == [1, 2]
    assert all(lv["tokens"] == 4 * lv["concurrency"] for lv in engine["levels"])

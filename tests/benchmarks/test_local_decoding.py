"""``benchmarks/local_decoding.py``: its metrics, and a tiny run with the real model, so the
script behind the decoding figures in docs/configuration.md keeps working."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "local_decoding.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("local_decoding", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_loops_are_repeated_four_grams(bench: ModuleType) -> None:
    assert bench.has_loop("la Femme, la Femme, la Femme, la Femme, la Femme")
    assert bench.has_loop("lazy lazy lazy lazy lazy lazy")
    assert not bench.has_loop("The capital of France is Paris. Paris is in France.")


def test_right_answers(bench: ModuleType) -> None:
    assert bench.is_right("The capital of France is Paris.", {"expect": ["Paris"]})
    assert not bench.is_right("Parisian food", {"expect": ["Paris"]})  # whole words
    assert bench.is_right("Yes", {"expect": ["yes"], "max_words": 3})
    assert not bench.is_right("The answer to this is yes.", {"expect": ["yes"], "max_words": 3})
    assert not bench.is_right("au", {"expect": ["Au"], "case_sensitive": True})
    assert bench.is_right("red, blue, yellow", {"expect_all": ["red", "blue"]})


def test_the_shipped_defaults_are_among_the_measured(bench: ModuleType) -> None:
    assert sum(bench.shipped(fields) for fields in bench.CONFIGS.values()) == 1
    cases = [json.loads(line) for line in bench.PROMPTS.read_text().splitlines()]
    assert 20 <= len(cases) <= 30 and len({case["id"] for case in cases}) == len(cases)


@pytest.mark.model
def test_a_small_run_writes_the_report(bench: ModuleType, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps(
            {"id": "france", "prompt": "What is the capital of France?", "expect": ["Paris"]}
        )
        + "\n"
    )
    out = tmp_path / "report.json"
    args = ["--prompts", str(prompts), "--only", "greedy", "--max-tokens", "16", "--json", str(out)]
    assert bench.main(args) == 0
    report = json.loads(out.read_text())
    row = report["configs"]["greedy"]
    assert report["prompts"] == 1 and row["answers"] == 1
    assert 0 <= row["right_rate"] <= 1 and row["samples"][0]["text"]

"""``benchmarks/memory_recall.py`` at tiny sizes: the generator is seeded and does not echo
statements in its questions; the retrieval part runs on the bundled embedder, the whole
benchmark (extraction and answers) on the bundled chat model."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "memory_recall.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("memory_recall", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_the_generator_is_seeded_varied_and_not_echoing(bench: ModuleType) -> None:
    users = bench.generate(60, seed=3)
    assert [u.facts for u in users] == [u.facts for u in bench.generate(60, seed=3)]
    assert [u.facts for u in users] != [u.facts for u in bench.generate(60, seed=4)]
    facts = [f for u in users for f in u.facts]
    assert len({f.kind for f in facts}) == len(bench.KINDS)
    assert len({f.statement for f in facts}) > 150  # templates x values, not one phrasing
    assert 0.05 < sum(f.old_value is not None for f in facts) / len(facts) < 0.4
    for user in users:
        turns = [t for s in user.sessions for t in s]
        for fact in user.facts:
            assert fact.statement in turns and fact.value in fact.statement
            assert fact.value not in fact.question  # questions never give the answer away
            if fact.old_statement is not None:
                # The change comes in the last session, after the original statement.
                assert fact.statement in user.sessions[-1]
                assert fact.old_statement in [t for s in user.sessions[:-1] for t in s]
    assert bench.contains("You live in São Paulo!", "Sao Paulo")
    assert not bench.contains("Osakan food", "Osaka")


def test_retrieval_part_runs_and_writes_json(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    argv = ["--users", "4", "--extract-users", "0", "--answer-users", "0", "--json", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["api"]["questions"] == 32
    assert 0.5 <= result["api"]["recall_at_5"] <= 1.0
    assert set(result["api"]["by_min_score"]) == {"0.0", "0.1", "0.2", "0.3", "0.4"}
    assert result["extraction"]["users"] == 0 and result["answers"]["users"] == 0


@pytest.mark.model
def test_extraction_and_answers_run_on_the_bundled_model(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    argv = ["--users", "2", "--extract-users", "1", "--answer-users", "1", "--facts", "2"]
    assert bench.main([*argv, "--distractors", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["extraction"]["turns"] >= 3 and result["extraction"]["questions"] == 2
    assert result["answers"]["questions"] == 2
    assert result["answers"]["accuracy_with_memory"] is not None

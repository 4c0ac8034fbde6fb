"""``trellis eval schedules`` and ``trellis eval schedules run NAME`` with the schedules of a
trellis.yaml, against a fake upstream: the first run is the baseline, a worse candidate
model regresses (exit 1) and the list shows it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from trellis.cli import app
from trellis.testing.fake_upstream import FakeUpstream

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import answer  # noqa: E402

runner = CliRunner()


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai", reply=answer).start()
    yield server
    server.stop()


def write_suite(path: Path, model: str) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "name": "sums",
                "dataset": "sums.jsonl",
                "candidates": [{"name": "prod", "model": model, "prompt": "What is {input}?"}],
                "metrics": ["exact"],
            }
        )
    )


@pytest.fixture
def config(tmp_path: Path, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("TRELLIS_CONFIG", raising=False)
    (tmp_path / "sums.jsonl").write_text(
        "\n".join(f'{{"id": "c{i}", "input": "{i}+1", "expected": "{i + 1}"}}' for i in range(4))
    )
    write_suite(tmp_path / "nightly.yaml", "good")
    models: list[dict[str, Any]] = [
        {
            "name": name,
            "deployments": [
                {
                    "provider": "openai-compatible",
                    "model": f"{name}-model",
                    "base_url": upstream.base_url,
                }
            ],
        }
        for name in ("good", "bad")
    ]
    path = tmp_path / "trellis.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "include_local_models": False,
                "admin_key": "tr-test-admin-key-0123456789",
                "models": models,
                "evals": {
                    "schedules": [
                        {
                            "name": "nightly",
                            "suite": str(tmp_path / "nightly.yaml"),
                            "cron": "0 2 * * *",
                            "fail_on": ["exact:-0.1"],
                        }
                    ]
                },
            }
        )
    )
    return path


def invoke(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--config", str(config)], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_list_and_run_schedules(config: Path, tmp_path: Path) -> None:
    code, output = invoke(config, "eval", "schedules")
    assert code == 0, output
    assert "nightly" in output and "0 2 * * * (UTC)" in output

    code, output = invoke(config, "eval", "schedules", "run", "nightly", "--json")
    assert code == 0, output
    first = json.loads(output)
    assert first["status"] == "passed" and first["trigger"] == "manual"

    write_suite(tmp_path / "nightly.yaml", "bad")  # the model that is off by one
    code, output = invoke(config, "eval", "schedules", "run", "nightly")
    assert code == 1, output
    assert "regressed" in output and "exact" in output

    code, output = invoke(config, "eval", "schedules", "--json")
    assert code == 0, output
    (listed,) = json.loads(output)
    assert listed["last"]["status"] == "regressed"
    assert listed["baseline_run_id"] == first["run_id"]

    code, output = invoke(config, "eval", "schedules", "run", "weekly")
    assert code == 2 and "no eval schedule named 'weekly'" in output

"""``trellis eval run`` and ``trellis eval dataset add|list`` against a fake upstream
configured in trellis.yaml, with the database the config names."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture
def config(tmp_path: Path, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("TRELLIS_CONFIG", raising=False)
    path = tmp_path / "trellis.yaml"
    models = [
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
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "include_local_models": False,
                "admin_key": "tr-test-admin-key-0123456789",
                "models": models,
                "prices": {"good-model": {"input": 1.0, "output": 1.0}},
            }
        )
    )
    (tmp_path / "sums.jsonl").write_text(
        "\n".join(f'{{"id": "c{i}", "input": "{i}+1", "expected": "{i + 1}"}}' for i in range(4))
        + "\n"
    )
    (tmp_path / "suite.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "sums",
                "dataset": "sums.jsonl",
                "candidates": [
                    {"name": "good", "model": "good", "prompt": "What is {input}?"},
                    {"name": "bad", "model": "bad", "prompt": "What is {input}?"},
                ],
                "metrics": ["exact"],
                "concurrency": 2,
            }
        )
    )
    return path


def invoke(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--config", str(config)], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_eval_run_writes_the_report_and_resumes_by_run_id(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code, output = invoke(config, "eval", "run", str(tmp_path / "suite.yaml"), "--json", str(out))
    assert code == 0, output
    report = json.loads(out.read_text())
    assert report["candidates"]["good"]["metrics"]["exact"] == 1.0
    assert report["candidates"]["bad"]["metrics"]["exact"] == 0.0
    assert report["candidates"]["good"]["cost"] > 0 and report["candidates"]["bad"]["cost"] == 0
    assert len(report["cases"]) == 8 and all(r["trace_id"] for r in report["cases"])
    assert "sums" in output  # the summary table
    assert "good" in output and "1.0000" in output
    # The same run id again: nothing left to do, the same results.
    code, output = invoke(
        config,
        "eval",
        "run",
        str(tmp_path / "suite.yaml"),
        "--run-id",
        report["run_id"],
        "--json",
        "-",
        "-q",
    )
    assert code == 0, output
    again = json.loads(output)
    assert [r["trace_id"] for r in again["cases"]] == [r["trace_id"] for r in report["cases"]]


def test_eval_run_writes_the_html_report(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    code, output = invoke(
        config, "eval", "run", str(tmp_path / "suite.yaml"), "--html", str(out), "-q"
    )
    assert code == 0, output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and '<section id="cases">' in page
    assert 'aria-label="Distribution of exact per case, per candidate"' in page
    # A row per case, with the dataset's input beside the candidates' outputs.
    assert (
        page.split('id="case-table"')[1].count('<th scope="row">') == 4 and "<pre>3+1</pre>" in page
    )
    assert "http://" not in page and "https://" not in page


def test_eval_run_a_stored_dataset_by_reference(config: Path, tmp_path: Path) -> None:
    code, output = invoke(config, "eval", "dataset", "add", str(tmp_path / "sums.jsonl"), "--json")
    assert code == 0, output
    info = json.loads(output)
    assert info["name"] == "sums" and info["cases"] == 4 and info["created"] is True
    code, output = invoke(config, "eval", "dataset", "add", str(tmp_path / "sums.jsonl"))
    assert code == 0 and "already stored" in output
    code, output = invoke(config, "eval", "dataset", "list", "--json")
    assert json.loads(output)[0]["version"] == info["version"]
    suite = yaml.safe_load((tmp_path / "suite.yaml").read_text())
    suite["dataset"] = f"sums@{info['version']}"
    (tmp_path / "stored.yaml").write_text(yaml.safe_dump(suite))
    code, output = invoke(config, "eval", "run", str(tmp_path / "stored.yaml"), "--json", "-", "-q")
    assert code == 0, output
    assert json.loads(output)["dataset"] == f"sums@{info['version']}"


def test_eval_mistakes_are_clear_exits(config: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "input": "x"}\n{"id": "b"}\n')
    code, output = invoke(config, "eval", "dataset", "add", str(tmp_path / "bad.jsonl"))
    assert code == 2 and "bad.jsonl:2: missing field 'input'" in output
    (tmp_path / "bad.yaml").write_text("dataset: x.jsonl\ncandidates: []\n")
    code, output = invoke(config, "eval", "run", str(tmp_path / "bad.yaml"))
    assert code == 2 and "candidates" in output
    (tmp_path / "unknown.yaml").write_text(
        "dataset: nope@123456789012\ncandidates: [{name: a, model: good}]\n"
    )
    code, output = invoke(config, "eval", "run", str(tmp_path / "unknown.yaml"))
    assert code == 1 and "no stored dataset" in output

"""The shipped example suite on the real bundled model, offline, on a tiny slice of its
dataset: ``trellis eval init``, ``trellis eval run`` and ``trellis eval compare``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from trellis.cli import app

pytestmark = pytest.mark.model

runner = CliRunner()


def test_the_example_suite_runs_on_the_bundled_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRELLIS_CONFIG", raising=False)
    config = tmp_path / "trellis.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    result = runner.invoke(app, ["eval", "init", str(tmp_path / "suite")])
    assert result.exit_code == 0, result.output
    dataset = tmp_path / "suite" / "capitals.jsonl"
    dataset.write_text("".join(dataset.read_text().splitlines(keepends=True)[:2]))  # tiny
    suite = yaml.safe_load((tmp_path / "suite" / "capitals.yaml").read_text())
    for candidate in suite["candidates"]:
        candidate["params"]["max_tokens"] = 12
    (tmp_path / "suite" / "capitals.yaml").write_text(yaml.safe_dump(suite))
    out = tmp_path / "report.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "run",
            str(tmp_path / "suite" / "capitals.yaml"),
            "--json",
            str(out),
            "-c",
            str(config),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["candidates"]) == {"one-sentence", "bare"}
    assert len(report["cases"]) == 4
    for row in report["cases"]:
        assert row["error"] is None and row["output"] and row["trace_id"]
        assert row["output_tokens"] > 0 and row["cost"] == 0.0
        assert set(row["metrics"]) == {"contains", "chrf", "rougeL", "cosine", "regex"}
        assert all(value is not None for value in row["metrics"].values())
    summary = report["candidates"]["one-sentence"]
    assert summary["latency_ms"]["p95"] > 0 and summary["tokens"]["total"] > 0
    # The two candidates of one report, compared; the bundled model is deterministic at
    # temperature 0, so comparing a candidate with itself shows no change.
    result = runner.invoke(
        app,
        [
            "eval",
            "compare",
            str(out),
            str(out),
            "--baseline-candidate",
            "bare",
            "--candidate",
            "bare",
            "--fail-on",
            "chrf:-0.01",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "no regression" in result.output

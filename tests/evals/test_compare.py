"""Compare: paired deltas, seeded bootstrap intervals, thresholds, Markdown; the CLI's exit
codes for CI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from trellis.cli import app
from trellis.errors import InvalidRequestError
from trellis.evals import compare_reports, parse_threshold


def report(
    run_id: str, rows: list[tuple[str, float, float, float]], metrics: tuple[str, ...] = ("rougeL",)
) -> dict[str, Any]:
    """A report with one candidate; rows are (case id, rougeL, latency ms, cost)."""
    return {
        "format": 1,
        "run_id": run_id,
        "metrics": list(metrics),
        "candidates": {"c": {}},
        "cases": [
            {
                "id": cid,
                "candidate": "c",
                "repeat": 0,
                "metrics": {"rougeL": score},
                "latency_ms": latency,
                "cost": cost,
                "input_tokens": 10,
                "output_tokens": 5,
                "error": None,
            }
            for cid, score, latency, cost in rows
        ],
    }


BASE = report("base", [(f"c{i}", 0.5 + 0.01 * i, 100.0 + i, 0.001) for i in range(20)])


def test_deltas_pair_cases_by_id_and_the_bootstrap_is_reproducible() -> None:
    # The candidate's rows in another order, one case missing, one extra.
    rows = [(f"c{i}", 0.45 + 0.01 * i, 130.0 + i, 0.0012) for i in reversed(range(1, 20))]
    cand = report("cand", [*rows, ("extra", 1.0, 1.0, 0.0)])
    comparison = compare_reports(BASE, cand)
    assert (
        comparison.paired == 19 and comparison.only_baseline == 1 and comparison.only_candidate == 1
    )
    deltas = {d.name: d for d in comparison.deltas}
    rouge = deltas["rougeL"]
    assert rouge.delta == pytest.approx(-0.05)
    # Every case moved by exactly -0.05: the interval is that point.
    assert rouge.low == pytest.approx(-0.05) and rouge.high == pytest.approx(-0.05)
    base_latency = np.array([100.0 + i for i in range(1, 20)])
    assert deltas["latency_p95"].baseline == pytest.approx(np.percentile(base_latency, 95))
    assert deltas["latency_p95"].delta == pytest.approx(30.0)
    assert deltas["cost"].baseline == pytest.approx(0.019) and deltas[
        "cost"
    ].delta == pytest.approx(19 * 0.0002)
    assert deltas["tokens"].delta == 0
    again = compare_reports(BASE, cand)
    assert again.to_dict() == comparison.to_dict()
    assert not comparison.failed


def test_the_interval_covers_noise_and_narrows_with_more_cases() -> None:
    rng = np.random.default_rng(1)

    def noisy(n: int, shift: float, run: str) -> dict[str, Any]:
        return report(
            run, [(f"c{i}", float(0.5 + shift + rng.normal(0, 0.1)), 100.0, 0.0) for i in range(n)]
        )

    small = {d.name: d for d in compare_reports(noisy(20, 0, "a"), noisy(20, 0.05, "b")).deltas}[
        "rougeL"
    ]
    large = {d.name: d for d in compare_reports(noisy(400, 0, "a"), noisy(400, 0.05, "b")).deltas}[
        "rougeL"
    ]
    assert small.low < small.delta < small.high
    assert (large.high - large.low) < (small.high - small.low) / 2
    assert large.low > 0  # a real improvement of 0.05 is resolved with 400 cases


@pytest.mark.parametrize(
    ("rule", "fails"),
    [
        ("rougeL:-0.02", True),  # dropped 0.05
        ("rougeL:-0.1", False),
        ("latency_p95:+20%", True),  # rose ~27%
        ("latency_p95:+50%", False),
        ("cost:+10%", True),  # rose 20%
        ("cost:+25%", False),
        ("tokens:+0", False),
    ],
)
def test_thresholds(rule: str, fails: bool) -> None:
    cand = report("cand", [(f"c{i}", 0.45 + 0.01 * i, 130.0 + i, 0.0012) for i in range(20)])
    comparison = compare_reports(BASE, cand, thresholds=[parse_threshold(rule)])
    assert comparison.failed is fails
    if fails:
        assert f"FAIL `{rule}`" in comparison.markdown()


def test_bad_thresholds_and_reports_are_request_errors() -> None:
    for text in ("rougeL", "rougeL:0.02", "rougeL:-x", ":-1"):
        with pytest.raises(InvalidRequestError, match="bad threshold"):
            parse_threshold(text)
    with pytest.raises(InvalidRequestError, match="do not both have"):
        compare_reports(BASE, BASE, thresholds=[parse_threshold("bleu:-0.01")])
    with pytest.raises(InvalidRequestError, match="not a Trellis eval report"):
        compare_reports({"x": 1}, BASE)
    with pytest.raises(InvalidRequestError, match="no candidate 'z'"):
        compare_reports(BASE, BASE, candidate_candidate="z")
    with pytest.raises(InvalidRequestError, match="no scored case in common"):
        compare_reports(BASE, report("other", [("zz", 1.0, 1.0, 0.0)]))


def test_cli_compare_exits_1_on_a_regression_and_writes_markdown(tmp_path: Path) -> None:
    cand = report("cand", [(f"c{i}", 0.45 + 0.01 * i, 101.0 + i, 0.001) for i in range(20)])
    (tmp_path / "base.json").write_text(json.dumps(BASE))
    (tmp_path / "cand.json").write_text(json.dumps(cand))
    runner = CliRunner()
    args = ["eval", "compare", str(tmp_path / "base.json"), str(tmp_path / "cand.json")]
    ok = runner.invoke(app, [*args, "--fail-on", "latency_p95:+20%"])
    assert ok.exit_code == 0, ok.output
    assert "| rougeL | 0.595 | 0.545 | -0.05 |" in ok.output
    failed = runner.invoke(
        app, [*args, "--fail-on", "rougeL:-0.02", "--markdown", str(tmp_path / "summary.md")]
    )
    assert failed.exit_code == 1
    assert "regression" in failed.output and "rougeL" in failed.output
    assert "**REGRESSION**" in (tmp_path / "summary.md").read_text()
    html = runner.invoke(
        app, [*args, "--fail-on", "rougeL:-0.02", "--html", str(tmp_path / "r.html")]
    )
    assert html.exit_code == 1
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "REGRESSION" in page and "FAIL rougeL:-0.02" in page
    assert page.split('id="case-table"')[1].count('<th scope="row">') == 20 and not re.search(
        r"https?://", page
    )
    as_json = runner.invoke(app, [*args, "--json"])
    assert json.loads(as_json.stdout)["deltas"][0]["name"] == "rougeL"
    bad = runner.invoke(app, [*args, "--fail-on", "rougeL"])
    assert bad.exit_code == 2 and "bad threshold" in bad.output
    missing = runner.invoke(
        app, ["eval", "compare", str(tmp_path / "nope.json"), str(tmp_path / "cand.json")]
    )
    assert missing.exit_code == 2 and "no such file" in missing.output

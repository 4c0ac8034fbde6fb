"""Pairwise preference judging with position swapping: each case is judged in both orders;
agreeing orders give the preference, disagreeing ones count as position disagreement."""

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
from trellis.evals import EvalRunner, EvalStore, parse_suite
from trellis.evals.suite import SuiteError
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import answer, dataset_of, make_gateway  # noqa: E402
from test_cli_evals import config  # noqa: E402, F401  (a fixture, on this module's upstream)


def field(prompt: str, name: str) -> str:
    return prompt.split(f"{name}: ", 1)[1].split("\n", 1)[0]


def reply(body: dict[str, Any]) -> str:
    prompt = str(body["messages"][-1]["content"])
    if "Answer 1:" not in prompt:
        return answer(body)
    if body["model"] == "bad-model":  # a judge that always prefers the first position
        return json.dumps({"preference": "1", "reason": "the first one"})
    if field(prompt, "Question") == "0+1":  # an unusable verdict
        return "both are fine"
    expected = field(prompt, "Reference answer (may be empty)")
    first, second = field(prompt, "Answer 1"), field(prompt, "Answer 2")
    preference = "tie" if first == second else ("1" if first == expected else "2")
    return json.dumps({"preference": preference, "reason": f"{expected} is right"})


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai", reply=reply).start()
    yield server
    server.stop()


def suite(judge: str, **extra: Any) -> Any:
    return parse_suite(
        {
            "dataset": "sums",
            "candidates": [
                {"name": "good", "model": "good", "prompt": "What is {input}?"},
                {"name": "bad", "model": "bad", "prompt": "What is {input}?"},
            ],
            "pairwise": [{"judge": judge, "a": "good", "b": "bad", **extra}],
        }
    )


async def test_a_fair_judge_prefers_the_right_answer_in_both_orders(
    upstream: FakeUpstream, sqlite_db: Database
) -> None:
    runner = EvalRunner(make_gateway(upstream.base_url), EvalStore(sqlite_db))
    seen: list[tuple[int, int]] = []
    report = await runner.run(
        suite("good"), dataset_of(4), progress=lambda d, t: seen.append((d, t))
    )
    # Units: 4 cases x 2 candidates, then 4 pairwise judgements; all counted as done.
    assert seen[0] == (0, 12) and seen[-1] == (12, 12)
    record = await runner.store.run(report["run_id"])
    assert (record.total, record.done) == (12, 12)
    [pair] = report["pairwise"]
    assert (pair["a"], pair["b"], pair["judge"]) == ("good", "bad", "good")
    # c0's verdict is unusable: not counted; c1..c3 prefer "good" in both orders.
    assert pair["judged"] == 3
    assert (pair["win"], pair["tie"], pair["loss"]) == (1.0, 0.0, 0.0)
    assert pair["position_disagreement"] == 0.0
    rows = {row["id"]: row for row in pair["cases"]}
    assert rows["c0"]["outcome"] is None and rows["c0"]["error"]
    assert rows["c1"]["outcome"] == "a"
    assert rows["c1"]["ab"]["preference"] == "1" and rows["c1"]["ba"]["preference"] == "2"
    assert rows["c1"]["ab"]["reason"] == "3 is right"
    # Both orders were asked: A first, then B first.
    judged = [r.json for r in upstream.requests if "Answer 1:" in str(r.json["messages"][-1])]
    assert len(judged) == 8
    firsts = {field(str(j["messages"][-1]["content"]), "Answer 1") for j in judged}
    assert {"3", "4"} <= firsts
    assert all(j["temperature"] == 0 for j in judged)
    # Case rows stay the candidates' (compare and other readers are unchanged).
    assert {row["candidate"] for row in report["cases"]} == {"good", "bad"}
    # The stored run's report shows the same verdicts, and a resume judges nothing again.
    before = len(upstream.requests)
    again = await runner.run(suite("good"), dataset_of(4), run_id=report["run_id"])
    assert again["pairwise"][0]["win"] == 1.0
    resumed = [r for r in upstream.requests[before:] if "Answer 1:" in str(r.json["messages"][-1])]
    assert len(resumed) == 2  # only the unusable c0 is asked again (both orders)


async def test_a_judge_biased_to_the_first_position_is_reported(
    upstream: FakeUpstream, sqlite_db: Database
) -> None:
    report = await EvalRunner(make_gateway(upstream.base_url), EvalStore(sqlite_db)).run(
        suite("bad"), dataset_of(3)
    )
    [pair] = report["pairwise"]
    assert pair["judged"] == 3
    assert pair["position_disagreement"] == 1.0
    assert (pair["win"], pair["tie"], pair["loss"]) == (0.0, 0.0, 0.0)
    assert {row["outcome"] for row in pair["cases"]} == {"inconsistent"}


@pytest.mark.parametrize(
    ("pairwise", "message"),
    [
        ({"judge": "good", "a": "good", "b": "nobody"}, "no candidate is named 'nobody'"),
        ({"judge": "good", "a": "good", "b": "good"}, "two different candidates"),
        ({"judge": "good", "a": "good", "b": "bad", "prompt": "{x.y}"}, "plain field names"),
    ],
)
def test_pairwise_options_are_checked(pairwise: dict[str, Any], message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        parse_suite(
            {
                "dataset": "x",
                "candidates": [{"name": "good", "model": "m"}, {"name": "bad", "model": "m"}],
                "pairwise": [pairwise],
            }
        )


def test_the_cli_prints_the_pairwise_table(config: Path, tmp_path: Path) -> None:  # noqa: F811
    # ``config`` (test_cli_evals) points the aliases at this module's ``upstream``.
    suite_file = tmp_path / "suite.yaml"
    data = yaml.safe_load(suite_file.read_text())
    data["pairwise"] = [{"judge": "bad", "a": "good", "b": "bad"}]
    suite_file.write_text(yaml.safe_dump(data))
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        ["eval", "run", str(suite_file), "--json", str(out), "--config", str(config)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["pairwise"][0]["position_disagreement"] == 1.0
    assert "pairwise preference" in result.output
    assert "inconsistent" in result.output and "1.0000" in result.output


async def test_a_failed_candidate_leaves_its_cases_unjudged(
    upstream: FakeUpstream, sqlite_db: Database
) -> None:
    broken = parse_suite(
        {
            "dataset": "sums",
            "candidates": [
                {"name": "good", "model": "good", "prompt": "What is {input}?"},
                {"name": "gone", "model": "no-such-alias", "prompt": "What is {input}?"},
            ],
            "pairwise": [{"judge": "good", "a": "good", "b": "gone"}],
        }
    )
    runner = EvalRunner(make_gateway(upstream.base_url), EvalStore(sqlite_db))
    report = await runner.run(broken, dataset_of(2))
    [pair] = report["pairwise"]
    assert pair["judged"] == 0 and pair["win"] is None
    assert all(row["outcome"] is None and row["error"] for row in pair["cases"])
    assert not any("Answer 1:" in str(r.json["messages"][-1]) for r in upstream.requests)
    record = await runner.store.run(report["run_id"])
    assert (record.total, record.done) == (6, 6)

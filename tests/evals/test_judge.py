"""The rubric judge: a model grades each output through the gateway (its own trace), the
score normalised to [0, 1] with the reason kept; unusable verdicts score None."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trellis.evals import EvalRunner, EvalStore, parse_suite
from trellis.evals.suite import SuiteError
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import answer, dataset_of, make_gateway  # noqa: E402


def reply(body: dict[str, Any]) -> str:
    prompt = str(body["messages"][-1]["content"])
    if "Rubric:" not in prompt:
        return answer(body)
    graded = prompt.split("Answer to grade: ", 1)[1].split("\n", 1)[0]
    if graded == "1":  # case c0's right answer: an unusable verdict
        return "I think it is fine"
    expected = prompt.split("Reference answer (may be empty): ", 1)[1].split("\n", 1)[0]
    score = 5 if graded == expected else 2
    return json.dumps({"score": score, "reason": f"{graded} vs {expected}"})


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai", reply=reply).start()
    yield server
    server.stop()


async def test_the_judge_grades_every_output(upstream: FakeUpstream, sqlite_db: Database) -> None:
    suite = parse_suite(
        {
            "dataset": "sums",
            "candidates": [
                {"name": "good", "model": "good", "prompt": "What is {input}?"},
                {"name": "bad", "model": "bad", "prompt": "What is {input}?"},
            ],
            "metrics": [{"name": "judge", "model": "good", "rubric": "Is the sum right?"}],
        }
    )
    report = await EvalRunner(make_gateway(upstream.base_url), EvalStore(sqlite_db)).run(
        suite, dataset_of(3)
    )
    rows = {(r["id"], r["candidate"]): r for r in report["cases"]}
    unusable = rows[("c0", "good")]
    assert unusable["metrics"]["judge"] is None
    assert unusable["judgements"]["judge"]["reason"] == "I think it is fine"
    right = rows[("c1", "good")]
    assert right["metrics"]["judge"] == 1.0  # 5 on 1-5
    assert right["judgements"]["judge"]["score"] == 5
    assert right["judgements"]["judge"]["reason"] == "3 vs 3"
    wrong = rows[("c1", "bad")]
    assert wrong["metrics"]["judge"] == 0.25  # 2 on 1-5
    assert wrong["judgements"]["judge"]["trace_id"] != wrong["trace_id"]
    # The judge's request: the rubric prompt, temperature 0, a JSON schema to answer in.
    judged = [r.json for r in upstream.requests if "Rubric:" in str(r.json["messages"][-1])]
    assert len(judged) == 6
    assert all(
        j["temperature"] == 0 and j["response_format"]["type"] == "json_schema" for j in judged
    )
    assert report["candidates"]["good"]["metrics"]["judge"] == 1.0  # mean of the scored
    assert report["candidates"]["bad"]["metrics"]["judge"] == 0.25


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs a 'model'"),
        ({"model": "good"}, "needs a 'rubric'"),
        ({"model": "good", "rubric": "r", "scale": [5, 1]}, "scale must be"),
        ({"model": "good", "rubric": "r", "prompt": "{input.__doc__}"}, "only plain field names"),
    ],
)
def test_judge_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        parse_suite(
            {
                "dataset": "x",
                "candidates": [{"name": "a", "model": "m"}],
                "metrics": [{"name": "judge", **options}],
            }
        )

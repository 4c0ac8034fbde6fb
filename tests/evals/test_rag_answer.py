"""RAG answer metrics: context precision and recall by ids, faithfulness by lexical overlap
(hand-computed), and both graded by a judge alias on a fake upstream."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trellis.evals import Case, EvalRunner, EvalStore, build_metric, parse_dataset, parse_suite
from trellis.evals.rag import content_words, sentences
from trellis.evals.suite import SuiteError
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import make_gateway  # noqa: E402

BRIDGE = "The Golden Gate Bridge opened in 1937 in San Francisco."


def test_context_precision_and_recall_by_ids() -> None:
    case = Case(id="q", input="q", relevant_ids=["a", "b", "c"])
    retrieved = ["x", "a", "a", "y"]  # "a" twice (two chunks): one document
    assert build_metric("context_precision")("", case, retrieved) == pytest.approx(1 / 3)
    assert build_metric("context_recall")("", case, retrieved) == pytest.approx(1 / 3)
    assert build_metric("context_precision")("", case, ["a", "b"]) == 1.0
    assert build_metric("context_recall")("", case, ["a", "b", "c", "z"]) == 1.0
    no_ids = Case(id="n", input="q")
    assert build_metric("context_precision")("", no_ids, ["a"]) is None
    assert build_metric("context_recall")("", case, None) is None


def test_faithfulness_by_lexical_overlap() -> None:
    assert sentences("One. Two!  Three?\nFour") == ["One.", "Two!", "Three?", "Four"]
    assert content_words("It opened in 1937, in the city.") == {"opened", "1937", "city"}
    metric = build_metric("faithfulness")
    case = Case(id="q", input="q")
    # Sentence 1's content words {bridge, opened, 1937} are all in the passage; sentence 2's
    # {painted, blue} are not: one of two sentences is supported.
    answer = "The bridge opened in 1937. It is painted blue."
    assert metric(answer, case, None, [BRIDGE]) == 0.5
    assert metric("It opened in 1937.", case, None, [BRIDGE]) == 1.0
    # The case's own context counts as passages; "It is." has no content words: not counted.
    assert metric("It is. Opened in 1937.", Case(id="c", input="q", context=[BRIDGE])) == 1.0
    assert metric(answer, case) is None  # no passages
    assert metric("It is.", case, None, [BRIDGE]) is None  # no content words
    # With threshold 0.6, {bridge, opened, 1937, paris} (3 of 4 = 0.75) passes, 0.8 does not.
    claim = "The bridge opened in 1937 in Paris."
    assert build_metric("faithfulness", {"threshold": 0.6})(claim, case, None, [BRIDGE]) == 1.0
    assert build_metric("faithfulness", {"threshold": 0.8})(claim, case, None, [BRIDGE]) == 0.0


@pytest.mark.parametrize(
    ("options", "message"),
    [({"threshold": 0}, "threshold must be"), ({"model": ""}, "model must be")],
)
def test_rag_answer_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        parse_suite(
            {
                "dataset": "x",
                "candidates": [{"name": "a", "model": "m"}],
                "metrics": [{"name": "faithfulness", **options}],
            }
        )


def reply(body: dict[str, Any]) -> str:
    prompt = str(body["messages"][-1]["content"])
    if prompt.startswith("Which of these retrieved passages"):
        assert "[1] " + BRIDGE in prompt and "[2] Cats purr." in prompt
        return json.dumps({"relevant": [1, 7], "reason": "only the first is about it"})
    if prompt.startswith("Which sentences"):
        assert "[1] It opened in 1937." in prompt and "[2] It is pink." in prompt
        if "Cats purr." not in prompt:
            return "not JSON"  # an unusable verdict
        return json.dumps({"supported": [1], "reason": "the colour is not stated"})
    return "It opened in 1937. It is pink."


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai", reply=reply).start()
    yield server
    server.stop()


async def test_a_judge_grades_context_precision_and_faithfulness(
    upstream: FakeUpstream, sqlite_db: Database
) -> None:
    dataset = parse_dataset(
        json.dumps(
            {"id": "two", "input": "When did the bridge open?", "context": [BRIDGE, "Cats purr."]}
        )
        + "\n"
        + json.dumps(
            {
                "id": "ids",
                "input": "When did the bridge open?",
                "context": [BRIDGE],
                "relevant_ids": ["bridge"],
            }
        )
        + "\n",
        name="bridge",
    )
    suite = parse_suite(
        {
            "dataset": "bridge",
            "candidates": [{"name": "plain", "model": "good"}],
            "metrics": [
                {"name": "context_precision", "model": "bad"},
                {"name": "faithfulness", "model": "bad"},
            ],
        }
    )
    report = await EvalRunner(make_gateway(upstream.base_url), EvalStore(sqlite_db)).run(
        suite, dataset
    )
    rows = {row["id"]: row for row in report["cases"]}
    two = rows["two"]
    assert two["error"] is None
    # Passage 1 of 2 relevant (7 is no passage); sentence 1 of 2 supported.
    assert two["metrics"] == {"context_precision": 0.5, "faithfulness": 0.5}
    assert two["judgements"]["faithfulness"]["supported"] == [1]
    assert two["judgements"]["context_precision"]["trace_id"] != two["trace_id"]
    # relevant_ids decide precision (nothing retrieved here: None, no call); the
    # faithfulness verdict is unusable: None with the judge's text kept.
    ids = rows["ids"]
    assert ids["metrics"] == {"context_precision": None, "faithfulness": None}
    assert ids["judgements"]["faithfulness"]["reason"] == "not JSON"
    asked = [r.json for r in upstream.requests if r.json["model"] == "bad-model"]
    assert len(asked) == 3  # precision once (case "two"), faithfulness twice
    assert all(a["temperature"] == 0 for a in asked)

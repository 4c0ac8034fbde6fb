"""Corpus BLEU and chrF per candidate (equal to sacrebleu's corpus_bleu/corpus_chrf on the
same texts) and their compare deltas with a case bootstrap; pairwise verdicts in compare
(counts, rates, a win-rate interval, position disagreement) in JSON, Markdown and HTML."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sacrebleu

from trellis.errors import InvalidRequestError
from trellis.evals import (
    EvalRunner,
    EvalStore,
    compare_reports,
    parse_threshold,
    render_compare,
    render_run,
)
from trellis.evals.corpus import bootstrap_scores, corpus_scores, sentence_stats
from trellis.evals.datasets import Case
from trellis.evals.metrics import build_metric
from trellis.evals.pairwise import pair_stats
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import answer, dataset_of, make_gateway, suite_of  # noqa: E402

HYPOTHESES = [
    "The cat sat on the mat.",
    "A dog barked loudly at night",
    "hello",
    "It is raining cats and dogs today.",
    "Trellis grows vines.",
]
REFERENCES = [
    "The cat is on the mat.",
    "The dog barked at night.",
    "hello world",
    "Today it rains cats and dogs.",
    "A trellis supports climbing vines.",
]


def test_corpus_scores_equal_sacrebleu() -> None:
    scores = corpus_scores(sentence_stats(HYPOTHESES, REFERENCES))
    assert scores is not None and scores["cases"] == 5
    assert scores["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score / 100, abs=1e-6
    )
    assert scores["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score / 100, abs=1e-6
    )
    assert corpus_scores([]) is None


def test_sentence_scores_from_statistics_equal_sacrebleus_sentence_scores() -> None:
    bleu, chrf = build_metric("bleu", {}), build_metric("chrf", {})
    for hyp, ref, stats in zip(
        HYPOTHESES, REFERENCES, sentence_stats(HYPOTHESES, REFERENCES), strict=True
    ):
        case = Case(id="x", input="q", expected=ref)
        assert bleu.from_stats(stats["bleu"]) == pytest.approx(bleu(hyp, case), abs=1e-12)  # type: ignore[attr-defined]
        assert chrf.from_stats(stats["chrf"]) == pytest.approx(chrf(hyp, case), abs=1e-12)  # type: ignore[attr-defined]
        assert bleu(hyp, case) == pytest.approx(
            sacrebleu.sentence_bleu(hyp, [ref]).score / 100, abs=1e-12
        )


def test_a_resample_scores_as_sacrebleu_scores_the_drawn_cases() -> None:
    stats = sentence_stats(HYPOTHESES, REFERENCES)
    draws = np.array([[0, 0, 3, 4, 1], [2, 2, 2, 1, 0], [4, 3, 2, 1, 0]])
    for name, score in (("bleu", sacrebleu.corpus_bleu), ("chrf", sacrebleu.corpus_chrf)):
        matrix = np.array([row[name] for row in stats], dtype=np.int64)
        boot = bootstrap_scores(name, matrix, draws)
        for drawn, value in zip(draws, boot, strict=True):
            hyps = [HYPOTHESES[i] for i in drawn]
            refs = [REFERENCES[i] for i in drawn]
            assert value == pytest.approx(score(hyps, [refs]).score / 100, abs=1e-9)


async def test_the_run_report_and_compare_carry_corpus_scores(sqlite_db: Database) -> None:
    with FakeUpstream(vendor="openai", reply=answer) as upstream:
        runner = EvalRunner(make_gateway(upstream.base_url), EvalStore(sqlite_db))
        dataset = dataset_of(12)
        report = await runner.run(suite_of(), dataset)
    refs = [case.expected or "" for case in dataset.cases]
    for name in ("good", "bad"):
        outputs = [r["output"] for r in report["cases"] if r["candidate"] == name]
        corpus = report["candidates"][name]["corpus"]
        assert corpus["cases"] == 12
        assert corpus["bleu"] == pytest.approx(
            sacrebleu.corpus_bleu(outputs, [refs]).score / 100, abs=1e-6
        )
        assert corpus["chrf"] == pytest.approx(
            sacrebleu.corpus_chrf(outputs, [refs]).score / 100, abs=1e-6
        )
        # The corpus chrF is the chrf metric's aggregate (both sacrebleu corpus scores).
        assert corpus["chrf"] == pytest.approx(report["candidates"][name]["metrics"]["chrf"])
    assert all("corpus_stats" in row for row in report["cases"])
    # The runner keeps each result's statistics: the report sums them, no re-tokenising.
    stored = await EvalStore(sqlite_db).results(report["run_id"])
    assert all(result["corpus_stats"]["bleu"] for result in stored.values())

    comparison = compare_reports(
        report,
        report,
        baseline_candidate="good",
        candidate_candidate="bad",
        thresholds=[parse_threshold("corpus_chrf:-0.1")],
    )
    deltas = {d.name: d for d in comparison.deltas}
    good, bad = report["candidates"]["good"]["corpus"], report["candidates"]["bad"]["corpus"]
    chrf = deltas["corpus_chrf"]
    assert chrf.baseline == good["chrf"] and chrf.candidate == bad["chrf"]
    assert chrf.delta == pytest.approx(bad["chrf"] - good["chrf"], abs=1e-6)
    assert chrf.low <= chrf.delta <= chrf.high and chrf.low < chrf.high
    assert chrf.failed == ["corpus_chrf:-0.1"] and comparison.failed
    assert deltas["corpus_bleu"].delta == pytest.approx(bad["bleu"] - good["bleu"], abs=1e-6)
    again = compare_reports(report, report, baseline_candidate="good", candidate_candidate="bad")
    assert [d.low for d in again.deltas] == [d.low for d in comparison.deltas]  # seeded
    same = {d.name: d for d in compare_reports(report, report).deltas}["corpus_bleu"]
    assert (same.delta, same.low, same.high) == (0.0, 0.0, 0.0)
    assert "| corpus_bleu |" in comparison.markdown()
    # A suite of cheap metrics pays for no statistics: no corpus scores.
    with FakeUpstream(vendor="openai", reply=answer) as upstream:
        runner = EvalRunner(make_gateway(upstream.base_url), EvalStore(sqlite_db))
        plain = await runner.run(suite_of(metrics=["exact"]), dataset_of(3))
    assert plain["candidates"]["good"]["corpus"] is None
    assert not any("corpus_stats" in row for row in plain["cases"])
    # Reports without references (or from before corpus statistics) cannot be held to it.
    bare = {
        **report,
        "cases": [{k: v for k, v in r.items() if k != "corpus_stats"} for r in report["cases"]],
    }
    assert "corpus_bleu" not in {d.name for d in compare_reports(bare, bare).deltas}
    with pytest.raises(InvalidRequestError, match="no paired case with a reference"):
        compare_reports(bare, bare, thresholds=[parse_threshold("corpus_bleu:-0.01")])


def pair(outcomes: list[tuple[str, str | None]]) -> dict[str, Any]:
    return {
        "judge": "judge",
        "a": "new",
        "b": "old",
        "cases": [{"id": cid, "repeat": 0, "outcome": outcome} for cid, outcome in outcomes],
    }


def with_pairs(run_id: str, *pairs: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "metrics": [],
        "candidates": {"new": {}, "old": {}},
        "cases": [
            {"id": f"c{i}", "candidate": name, "repeat": 0, "metrics": {}, "latency_ms": 1.0}
            for i in range(10)
            for name in ("new", "old")
        ],
        "pairwise": list(pairs),
    }


def test_pairwise_counts_rates_and_a_win_rate_interval() -> None:
    outcomes = [(f"c{i}", "a") for i in range(6)] + [
        ("c6", "tie"),
        ("c7", "b"),
        ("c8", "inconsistent"),
        ("c9", None),
    ]
    stats = pair_stats(pair(outcomes), resamples=2000, seed=0)
    assert (stats["judged"], stats["wins"], stats["ties"], stats["losses"]) == (9, 6, 1, 1)
    assert stats["inconsistent"] == 1
    assert stats["win_rate"] == pytest.approx(6 / 9)
    assert stats["position_disagreement"] == pytest.approx(1 / 9)
    low, high = stats["win_ci95"]
    # By hand: the same draws over the nine judged cases (one verdict each).
    wins = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=float)
    draws = np.random.default_rng(0).integers(0, 9, size=(2000, 9))
    expected = np.percentile(wins[draws].mean(axis=1), [2.5, 97.5])
    assert (low, high) == (round(expected[0], 6), round(expected[1], 6))
    assert low < 6 / 9 < high
    empty = pair_stats(pair([("c0", None)]))
    assert empty["judged"] == 0 and empty["win_rate"] is None and empty["win_ci95"] == [None, None]


def test_compare_shows_both_reports_pairwise_verdicts() -> None:
    base = with_pairs("base", pair([(f"c{i}", "b") for i in range(10)]))
    cand = with_pairs(
        "cand", pair([(f"c{i}", "a" if i < 7 else "inconsistent") for i in range(10)])
    )
    comparison = compare_reports(base, cand)
    data = comparison.to_dict()["pairwise"]
    assert [(p["report"], p["run_id"], p["wins"], p["losses"]) for p in data] == [
        ("baseline", "base", 0, 10),
        ("candidate", "cand", 7, 0),
    ]
    assert data[1]["position_disagreement"] == pytest.approx(0.3)
    markdown = comparison.markdown()
    assert "Pairwise preference" in markdown
    assert "| candidate | new | old | judge | 10 | 7 / 0 / 0 | 0.7 |" in markdown
    page = render_compare(base, cand, comparison)
    table = page.split('id="pairwise-table"')[1].split("</table>")[0]
    assert table.count("<tr>") == 3  # the head and one row per report's pair
    run_page = render_run(cand)
    assert run_page.count('id="pairwise-table"') == 1 and ">7<" in run_page
    # The same run on both sides: its pairs once.
    assert len(compare_reports(cand, cand).pairwise) == 1

"""Judge-human agreement statistics against textbook vectors worked by hand (neither
scipy nor scikit-learn is a dependency): Cohen's kappa, Spearman's rho with ties, and the
per-metric summary over a queue's scale."""

from __future__ import annotations

import pytest

from trellis.evals.agreement import cohen_kappa, judge_agreement, spearman


def test_cohen_kappa_of_the_textbook_two_by_two_table() -> None:
    # 50 items: both yes 20, A yes B no 5, A no B yes 10, both no 15.
    a = [True] * 20 + [True] * 5 + [False] * 10 + [False] * 15
    b = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = 0.2 / 0.5.
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa([True, False], [False, True]) == pytest.approx(-1.0)
    assert cohen_kappa([True, True], [True, True]) is None  # 0/0
    assert cohen_kappa([], []) is None


def test_spearman_of_the_textbook_example_and_with_ties() -> None:
    iq = [106, 100, 86, 101, 99, 103, 97, 113, 112, 110]
    tv = [7, 27, 2, 50, 28, 29, 20, 12, 6, 17]
    # sum d^2 = 194: rho = 1 - 6 * 194 / (10 * 99) = -29/165.
    assert spearman(iq, tv) == pytest.approx(-29 / 165)
    # Ties share the average rank: x ranks [1, 2.5, 2.5, 4]; rho = 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([2, 2, 2], [1, 2, 3]) is None
    assert spearman([1], [1]) is None


def test_judge_agreement_maps_the_judge_onto_the_human_scale() -> None:
    scale = {"type": "range", "min": 1, "max": 5, "pass": 3}
    # judge scores are normalised 0-1: 1.0 is 5, 0.25 is 2, 0.5 is 3.
    pairs = [("judge", 1.0, 5), ("judge", 0.25, 2), ("judge", 0.5, 4), ("judge", 0.25, 3)]
    (result,) = judge_agreement(pairs, scale)
    assert result.metric == "judge" and result.n == 4
    assert result.exact == 0.5  # 5=5 and 2=2
    # passes (>= 3): judge T F T F, human T F T T
    assert result.pass_agreement == 0.75
    assert result.kappa == pytest.approx(0.5)  # p_o 0.75, p_e 0.5*0.75 + 0.5*0.25
    assert result.spearman == pytest.approx(spearman([1.0, 0.25, 0.5, 0.25], [5, 2, 4, 3]))
    # |1-1| + |0.25-0.25| + |0.5-0.75| + |0.25-0.5| over 4
    assert result.mean_abs_diff == pytest.approx(0.125)
    binary = {"type": "pass_fail", "min": 0, "max": 1, "pass": 0.5}
    (verdicts,) = judge_agreement([("judge", 0.75, 1), ("judge", 0.25, 1)], binary)
    assert verdicts.exact == verdicts.pass_agreement == 0.5

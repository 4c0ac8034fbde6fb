"""Judge-human agreement: how far an LLM judge can stand in for the people who labelled
the same outputs. Per judge metric, over the items that have both a human label and a
judge score:

* ``exact``: the share whose judge score, mapped onto the human scale, equals the human
  score (on a pass/fail queue: the same verdict);
* ``pass_agreement`` and ``kappa``: the pass/fail verdicts (the judge passes at the same
  point of its scale as people do at the queue's ``pass``) and Cohen's kappa of them,
  agreement corrected for what two raters with those pass rates would reach by chance;
* ``spearman``: Spearman's rank correlation of the scores (average ranks for ties);
* ``mean_abs_diff``: the mean absolute difference of the scores on a common 0-1 scale.

Kappa and Spearman are None where they are undefined (a rater that never varies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Agreement", "cohen_kappa", "judge_agreement", "spearman"]


@dataclass(frozen=True, slots=True)
class Agreement:
    metric: str
    n: int
    exact: float | None
    pass_agreement: float | None
    kappa: float | None
    spearman: float | None
    mean_abs_diff: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two raters' binary verdicts: (p_o - p_e) / (1 - p_e)."""
    if len(a) != len(b):
        raise ValueError("two raters need the same number of verdicts")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    if math.isclose(chance, 1.0):
        return None  # both raters gave one verdict throughout: kappa is 0/0
    return (observed - chance) / (1 - chance)


def _ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing the average of the ranks they span."""
    array = np.asarray(values, dtype=float)
    order = np.argsort(array, kind="mergesort")
    ranks = np.empty(len(array), dtype=float)
    sorted_values = array[order]
    start = 0
    while start < len(array):
        end = start
        while end + 1 < len(array) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: the Pearson correlation of the average ranks."""
    if len(x) != len(y):
        raise ValueError("two raters need the same number of scores")
    if len(x) < 2:
        return None
    rx, ry = _ranks(x), _ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    if denominator == 0:
        return None  # one rater gave the same score to every item
    return float((dx * dy).sum()) / denominator


def judge_agreement(
    pairs: Sequence[tuple[str, float, float]], scale: dict[str, Any]
) -> list[Agreement]:
    """Per judge metric, from ``(metric, judge score in [0, 1], human score)`` triples;
    ``scale`` is the queue's (``type``, ``min``, ``max``, ``pass``)."""
    low, high, passing = float(scale["min"]), float(scale["max"]), float(scale["pass"])
    span = high - low
    threshold = (passing - low) / span
    binary = scale.get("type") == "pass_fail"
    by_metric: dict[str, list[tuple[float, float]]] = {}
    for metric, judged, labelled in pairs:
        by_metric.setdefault(metric, []).append((judged, labelled))
    results = []
    for metric, values in sorted(by_metric.items()):
        judge = [j for j, _ in values]
        human = [(h - low) / span for _, h in values]
        judge_pass = [j >= threshold - 1e-9 for j in judge]
        human_pass = [h >= threshold - 1e-9 for h in human]
        n = len(values)
        if binary:
            exact = sum(a == b for a, b in zip(judge_pass, human_pass, strict=True)) / n
        else:
            # The judge's score in the human scale's units; equal to 6 decimals.
            exact = (
                sum(
                    round(low + j * span, 6) == round(h, 6)
                    for j, (_, h) in zip(judge, values, strict=True)
                )
                / n
            )
        results.append(
            Agreement(
                metric=metric,
                n=n,
                exact=_round(exact),
                pass_agreement=_round(
                    sum(a == b for a, b in zip(judge_pass, human_pass, strict=True)) / n
                ),
                kappa=_round(cohen_kappa(judge_pass, human_pass)),
                spearman=_round(spearman(judge, human)),
                mean_abs_diff=_round(
                    sum(abs(j - h) for j, h in zip(judge, human, strict=True)) / n
                ),
            )
        )
    return results


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)

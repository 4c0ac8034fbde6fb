"""Corpus-level BLEU and chrF of a candidate (sacrebleu, default settings), from per-case
sufficient statistics so a comparison can resample cases without re-tokenising.

sacrebleu scores a corpus from the sum of its sentences' match statistics (n-gram matches
and totals, lengths), and its own bootstrap resamples those; here each report row carries
its sentence's statistics (``corpus_stats``), a candidate's corpus score is computed from
their sum, and ``compare`` draws cases with replacement and sums theirs. The scores equal
``sacrebleu.corpus_bleu`` / ``corpus_chrf`` (divided by 100, the scale of the ``bleu`` and
``chrf`` metrics). This reads sacrebleu's statistics methods (``_extract_corpus_statistics``,
``_compute_score_from_stats``), the ones its significance tests use.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

__all__ = ["CORPUS_METRICS", "corpus_scores", "sentence_stats", "scores_from_stats"]

#: The corpus metrics, by the name reports and comparisons use.
CORPUS_METRICS = ("bleu", "chrf")


@cache
def _metric(name: str) -> Any:
    from sacrebleu.metrics import BLEU, CHRF

    return BLEU() if name == "bleu" else CHRF()


def sentence_stats(outputs: Sequence[str], references: Sequence[str]) -> list[dict[str, list[int]]]:
    """Per (output, reference) pair: each corpus metric's sentence statistics."""
    per_metric = {
        name: _metric(name)._extract_corpus_statistics(list(outputs), [list(references)])
        for name in CORPUS_METRICS
    }
    return [
        {name: [int(v) for v in per_metric[name][i]] for name in CORPUS_METRICS}
        for i in range(len(outputs))
    ]


def scores_from_stats(name: str, totals: Sequence[float] | np.ndarray) -> float:
    """The corpus score (0-1) of summed sentence statistics."""
    stats = [int(round(float(v))) for v in totals]
    return float(_metric(name)._compute_score_from_stats(stats).score) / 100


def corpus_scores(rows: Sequence[dict[str, list[int]]]) -> dict[str, Any] | None:
    """A candidate's corpus BLEU and chrF (0-1) over rows' statistics; None without rows."""
    if not rows:
        return None
    result: dict[str, Any] = {}
    for name in CORPUS_METRICS:
        totals = np.sum(np.asarray([row[name] for row in rows], dtype=np.int64), axis=0)
        result[name] = round(scores_from_stats(name, totals), 6)
    result["cases"] = len(rows)
    return result


def bootstrap_scores(name: str, stats: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The corpus score of each resample: ``draws`` (resamples x cases) index rows of
    ``stats`` (cases x statistics)."""
    counts = np.zeros((draws.shape[0], stats.shape[0]), dtype=np.int64)
    np.add.at(counts, (np.arange(draws.shape[0])[:, None], draws), 1)
    totals = counts @ stats
    return np.array([scores_from_stats(name, row) for row in totals])

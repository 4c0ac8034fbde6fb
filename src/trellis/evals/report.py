"""The JSON report of a run: per case and candidate the output, metric values, latency,
tokens, cost and trace; per candidate the metric aggregates, latency percentiles, total
tokens and cost, and (when the suite scores ``bleu`` or ``chrf``) corpus-level BLEU and
chrF over the cases with a reference (each such row carries its sentence statistics,
``corpus_stats``, which ``compare`` resamples).
``trellis eval compare`` reads two of these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trellis.evals.corpus import CORPUS_METRICS, corpus_scores, sentence_stats
from trellis.evals.datasets import Case, Dataset
from trellis.evals.metrics import Metric
from trellis.evals.pairwise import summarize
from trellis.evals.store import ResultKey
from trellis.evals.suite import Suite

__all__ = ["build_report", "percentiles"]

#: Report format version (bumped when a field changes meaning).
FORMAT = 1


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and P50/P95/P99 (numpy's linear interpolation); None for no values."""
    if not values:
        return {"mean": None, "p50": None, "p95": None, "p99": None}
    array = np.asarray(values, dtype=float)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "mean": round(float(array.mean()), 3),
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
    }


def build_report(
    run_id: str,
    suite: Suite,
    dataset: Dataset,
    metrics: Sequence[Metric],
    results: dict[ResultKey, dict[str, Any]],
    *,
    status: str = "succeeded",
) -> dict[str, Any]:
    """The report from stored results, in dataset order (cases, then repeats)."""
    rows: list[dict[str, Any]] = []
    candidates: dict[str, Any] = {}
    # Corpus BLEU/chrF when the suite scores either (their statistics cost milliseconds
    # per case, which a suite of cheap metrics does not pay).
    corpus = any(metric.name in CORPUS_METRICS for metric in metrics)
    for candidate in suite.candidates:
        done: list[tuple[Case, dict[str, Any]]] = []
        referenced: list[tuple[dict[str, Any], str, str]] = []
        for case in dataset.cases:
            for repeat in range(suite.repeats):
                result = results.get((case.id, candidate.name, repeat))
                if result is None:
                    continue
                row = {"id": case.id, "candidate": candidate.name, "repeat": repeat, **result}
                rows.append(row)
                if result.get("error") is None:
                    done.append((case, result))
                    if corpus and case.expected is not None:
                        referenced.append((row, str(result.get("output") or ""), case.expected))
        # Results scored since the runner kept statistics carry them; others get them now.
        missing = [r for r in referenced if not isinstance(r[0].get("corpus_stats"), dict)]
        computed = sentence_stats([r[1] for r in missing], [r[2] for r in missing])
        for (row, _, _), row_stats in zip(missing, computed, strict=True):
            row["corpus_stats"] = row_stats
        stats = [row["corpus_stats"] for row, _, _ in referenced]
        outputs = [r["output"] for _, r in done]
        cases = [c for c, _ in done]
        aggregates = {
            metric.name: _round(
                metric.aggregate(outputs, cases, [r["metrics"].get(metric.name) for _, r in done])
            )
            for metric in metrics
        }
        # Reliability: the share of cases whose repeats all gave the same output.
        by_case: dict[str, set[str]] = {}
        for case, result in done:
            by_case.setdefault(case.id, set()).add(result["output"])
        agreement = (
            round(sum(len(outputs) == 1 for outputs in by_case.values()) / len(by_case), 6)
            if suite.repeats > 1 and by_case
            else None
        )
        input_tokens = sum(int(r.get("input_tokens") or 0) for _, r in done)
        output_tokens = sum(int(r.get("output_tokens") or 0) for _, r in done)
        candidates[candidate.name] = {
            "model": candidate.model or f"workflow:{candidate.workflow}",
            "cases": len(done),
            "errors": sum(
                1
                for (cid, name, _), r in results.items()
                if name == candidate.name and r.get("error")
            ),
            "metrics": aggregates,
            "agreement": agreement,
            "latency_ms": percentiles([float(r["latency_ms"]) for _, r in done]),
            "tokens": {
                "input": input_tokens,
                "output": output_tokens,
                "total": input_tokens + output_tokens,
            },
            "cost": round(sum(float(r.get("cost") or 0.0) for _, r in done), 10),
            # sacrebleu corpus BLEU and chrF (0-1) over the cases with a reference.
            "corpus": corpus_scores(stats) if corpus else None,
        }
    report: dict[str, Any] = {
        "format": FORMAT,
        "run_id": run_id,
        "status": status,
        "suite": suite.name,
        "dataset": dataset.ref,
        "repeats": suite.repeats,
        "metrics": [m.name for m in metrics],
        "candidates": candidates,
        "cases": rows,
    }
    if suite.pairwise:
        report["pairwise"] = summarize(
            suite.pairwise, [c.id for c in dataset.cases], suite.repeats, results
        )
    return report


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)

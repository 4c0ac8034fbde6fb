"""Baseline vs candidate: paired per-case deltas with bootstrap confidence intervals, and
``--fail-on`` thresholds that turn a regression into a non-zero exit for CI.

Cases pair by id (repeats are averaged per case first); only cases both runs scored
count. For each quantity the statistic is computed on both sides over the paired cases:
a metric's mean, latency's P50/P95/P99 (``latency_p95``...), total ``cost`` and
``tokens``. The 95% interval of the delta is a paired bootstrap: ``resamples`` (default
2,000) draws of the case set with replacement, from a seeded generator (default seed 0),
so the same two reports always give the same interval.

A threshold ``NAME:+X`` or ``NAME:-X`` (``X`` absolute, or ``X%`` of the baseline's value)
fails when the delta's point estimate goes past it in that direction: ``rougeL:-0.02``
fails on a drop of more than 0.02, ``latency_p95:+20%`` on a rise of more than 20%.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trellis.errors import InvalidRequestError
from trellis.thresholds import Threshold, parse_threshold

__all__ = [
    "Comparison",
    "Delta",
    "RUN_STATISTICS",
    "Threshold",
    "compare_reports",
    "parse_threshold",
]

#: Statistics that are not metrics: name -> (per-case field, statistic over cases).
_RUN_STATS: dict[str, tuple[str, str]] = {
    "latency_p50": ("latency_ms", "p50"),
    "latency_p95": ("latency_ms", "p95"),
    "latency_p99": ("latency_ms", "p99"),
    "latency_mean": ("latency_ms", "mean"),
    "cost": ("cost", "sum"),
    "tokens": ("tokens", "sum"),
}
#: The names a threshold may use besides the suite's metrics.
RUN_STATISTICS = tuple(_RUN_STATS)


@dataclass(slots=True)
class Delta:
    name: str
    baseline: float
    candidate: float
    delta: float
    low: float
    high: float
    failed: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Comparison:
    baseline: str
    candidate: str
    paired: int
    only_baseline: int
    only_candidate: int
    resamples: int
    seed: int
    deltas: list[Delta]

    @property
    def failed(self) -> bool:
        return any(d.failed for d in self.deltas)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "candidate": self.candidate,
            "paired_cases": self.paired,
            "only_baseline": self.only_baseline,
            "only_candidate": self.only_candidate,
            "bootstrap": {"resamples": self.resamples, "seed": self.seed, "confidence": 0.95},
            "failed": self.failed,
            "deltas": [
                {
                    "name": d.name,
                    "baseline": d.baseline,
                    "candidate": d.candidate,
                    "delta": d.delta,
                    "ci95": [d.low, d.high],
                    "failed": d.failed,
                }
                for d in self.deltas
            ],
        }

    def markdown(self) -> str:
        verdict = "**REGRESSION**" if self.failed else "no regression"
        lines = [
            f"### Eval comparison: `{self.candidate}` vs baseline `{self.baseline}` — {verdict}",
            "",
            f"{self.paired} paired cases; 95% CI from a paired bootstrap "
            f"({self.resamples} resamples, seed {self.seed}).",
            "",
            "| quantity | baseline | candidate | delta | 95% CI | check |",
            "| --- | ---: | ---: | ---: | --- | --- |",
        ]
        for d in self.deltas:
            check = "FAIL " + ", ".join(f"`{t}`" for t in d.failed) if d.failed else ""
            lines.append(
                f"| {d.name} | {_fmt(d.baseline)} | {_fmt(d.candidate)} | {_fmt(d.delta, True)} "
                f"| [{_fmt(d.low, True)}, {_fmt(d.high, True)}] | {check} |"
            )
        if self.only_baseline or self.only_candidate:
            lines += [
                "",
                f"Unpaired: {self.only_baseline} case(s) only in the baseline, "
                f"{self.only_candidate} only in the candidate.",
            ]
        return "\n".join(lines) + "\n"


def _fmt(value: float, signed: bool = False) -> str:
    text = f"{value:+.4g}" if signed else f"{value:.4g}"
    return text


def _pick(report: dict[str, Any], name: str | None, which: str) -> str:
    candidates = report.get("candidates")
    if not isinstance(candidates, dict) or not isinstance(report.get("cases"), list):
        raise InvalidRequestError(f"the {which} is not a Trellis eval report", param=which)
    if name is None:
        if not candidates:
            raise InvalidRequestError(f"the {which} report has no candidates", param=which)
        return next(iter(candidates))
    if name not in candidates:
        raise InvalidRequestError(
            f"the {which} report has no candidate {name!r} (it has {', '.join(candidates)})",
            param=which,
        )
    return name


def _per_case(report: dict[str, Any], candidate: str) -> dict[str, dict[str, float]]:
    """case id -> quantity -> value averaged over the case's scored repeats."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in report["cases"]:
        if row.get("candidate") != candidate or row.get("error"):
            continue
        values = sums[str(row["id"])]
        for name, value in (row.get("metrics") or {}).items():
            if value is not None:
                values[name].append(float(value))
        values["latency_ms"].append(float(row.get("latency_ms") or 0.0))
        values["cost"].append(float(row.get("cost") or 0.0))
        values["tokens"].append(
            float((row.get("input_tokens") or 0) + (row.get("output_tokens") or 0))
        )
    return {cid: {k: sum(v) / len(v) for k, v in q.items()} for cid, q in sums.items()}


def _statistic(kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """A statistic over the last axis (cases), for one sample or a matrix of resamples."""
    if kind == "mean":
        return lambda a: a.mean(axis=-1)
    if kind == "sum":
        return lambda a: a.sum(axis=-1)
    q = float(kind[1:])
    return lambda a: np.percentile(a, q, axis=-1)


def compare_reports(
    baseline: dict[str, Any],
    candidate: dict[str, Any],
    *,
    thresholds: Sequence[Threshold] = (),
    baseline_candidate: str | None = None,
    candidate_candidate: str | None = None,
    resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare two reports (one candidate of each: the first unless named)."""
    base_name = _pick(baseline, baseline_candidate, "baseline")
    cand_name = _pick(candidate, candidate_candidate, "candidate")
    base_cases = _per_case(baseline, base_name)
    cand_cases = _per_case(candidate, cand_name)
    ids = [cid for cid in base_cases if cid in cand_cases]
    if not ids:
        raise InvalidRequestError(
            "the two reports have no scored case in common", param="candidate"
        )
    metric_names = [
        m for m in baseline.get("metrics", []) if m in set(candidate.get("metrics", []))
    ]
    quantities: list[tuple[str, str, str]] = [(m, m, "mean") for m in metric_names]
    quantities += [(name, fld, stat) for name, (fld, stat) in _RUN_STATS.items()]
    known = {q[0] for q in quantities}
    unknown = [t.name for t in thresholds if t.name not in known]
    if unknown:
        raise InvalidRequestError(
            f"--fail-on names {unknown[0]!r}, which the reports do not both have "
            f"(choose from {', '.join(sorted(known))})",
            param="fail_on",
        )
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(resamples, len(ids)))
    deltas: list[Delta] = []
    for name, fld, stat in quantities:
        pairs = [
            (base_cases[cid][fld], cand_cases[cid][fld])
            for cid in ids
            if fld in base_cases[cid] and fld in cand_cases[cid]
        ]
        if not pairs:
            continue
        base = np.array([p[0] for p in pairs])
        cand = np.array([p[1] for p in pairs])
        statistic = _statistic(stat)
        b, c = float(statistic(base)), float(statistic(cand))
        index = (
            draws
            if len(pairs) == len(ids)
            else rng.integers(0, len(pairs), size=(resamples, len(pairs)))
        )
        boot = statistic(cand[index]) - statistic(base[index])
        low, high = np.percentile(boot, [2.5, 97.5])
        delta = Delta(
            name,
            round(b, 6),
            round(c, 6),
            round(c - b, 6),
            round(float(low), 6),
            round(float(high), 6),
        )
        delta.failed = [str(t) for t in thresholds if t.name == name and t.breached(b, c - b)]
        deltas.append(delta)
    return Comparison(
        baseline=f"{baseline.get('run_id', '?')}:{base_name}",
        candidate=f"{candidate.get('run_id', '?')}:{cand_name}",
        paired=len(ids),
        only_baseline=len(set(base_cases) - set(cand_cases)),
        only_candidate=len(set(cand_cases) - set(base_cases)),
        resamples=resamples,
        seed=seed,
        deltas=deltas,
    )

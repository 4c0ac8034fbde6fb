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

``corpus_bleu`` and ``corpus_chrf`` are sacrebleu's corpus scores (0-1) over the paired
cases that have a reference; their interval resamples cases and recomputes the corpus
score from the drawn cases' summed sentence statistics (a corpus score is not a mean).

Pairwise verdicts (a suite's ``pairwise:``) in either report are summarised too: per pair
the win/tie/loss counts and rates of ``a`` against ``b``, a bootstrap 95% interval of the
win rate (cases resampled) and the position disagreement rate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trellis.errors import InvalidRequestError
from trellis.evals.corpus import CORPUS_METRICS, bootstrap_scores, scores_from_stats
from trellis.evals.pairwise import pair_stats
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
    #: Per pair of either report: ``pairwise.pair_stats`` plus ``report`` and ``run_id``.
    pairwise: list[dict[str, Any]] = field(default_factory=list)

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
            "pairwise": self.pairwise,
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
        if self.pairwise:
            lines += [
                "",
                "Pairwise preference (both orders judged; win = a preferred over b):",
                "",
                "| report | a | b | judge | judged | win / tie / loss | win rate | 95% CI "
                "| position disagreement |",
                "| --- | --- | --- | --- | ---: | ---: | ---: | --- | ---: |",
            ]
            for p in self.pairwise:
                low, high = p["win_ci95"]
                lines.append(
                    f"| {p['report']} | {p['a']} | {p['b']} | {p['judge']} | {p['judged']} "
                    f"| {p['wins']} / {p['ties']} / {p['losses']} | {_maybe(p['win_rate'])} "
                    f"| [{_maybe(low)}, {_maybe(high)}] | {_maybe(p['position_disagreement'])} |"
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


def _maybe(value: float | None) -> str:
    return "-" if value is None else _fmt(value)


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


def _case_stats(report: dict[str, Any], candidate: str) -> dict[str, dict[str, np.ndarray]]:
    """case id -> corpus metric -> the sentence statistics of its scored repeats, summed."""
    sums: dict[str, dict[str, np.ndarray]] = {}
    for row in report["cases"]:
        stats = row.get("corpus_stats")
        if row.get("candidate") != candidate or row.get("error") or not isinstance(stats, dict):
            continue
        case = sums.setdefault(str(row["id"]), {})
        for name in CORPUS_METRICS:
            if name in stats:
                values = np.asarray(stats[name], dtype=np.int64)
                case[name] = case[name] + values if name in case else values
    return sums


def _corpus_deltas(
    baseline: dict[str, Any],
    candidate: dict[str, Any],
    base_name: str,
    cand_name: str,
    ids: list[str],
    rng: np.random.Generator,
    resamples: int,
) -> list[tuple[str, float, float, float, float]]:
    """(name, baseline, candidate, low, high) of corpus BLEU and chrF over the paired cases
    both sides have statistics for, the interval from one shared draw of those cases."""
    base, cand = _case_stats(baseline, base_name), _case_stats(candidate, cand_name)
    found = []
    for name in CORPUS_METRICS:
        paired = [cid for cid in ids if name in base.get(cid, {}) and name in cand.get(cid, {})]
        if not paired:
            continue
        b_stats = np.stack([base[cid][name] for cid in paired])
        c_stats = np.stack([cand[cid][name] for cid in paired])
        b = scores_from_stats(name, b_stats.sum(axis=0))
        c = scores_from_stats(name, c_stats.sum(axis=0))
        draws = rng.integers(0, len(paired), size=(resamples, len(paired)))
        boot = bootstrap_scores(name, c_stats, draws) - bootstrap_scores(name, b_stats, draws)
        low, high = np.percentile(boot, [2.5, 97.5])
        found.append((f"corpus_{name}", b, c, float(low), float(high)))
    return found


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
    known = {q[0] for q in quantities} | {f"corpus_{name}" for name in CORPUS_METRICS}
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
    corpus = _corpus_deltas(baseline, candidate, base_name, cand_name, ids, rng, resamples)
    for name, b, c, low, high in corpus:
        delta = Delta(
            name, round(b, 6), round(c, 6), round(c - b, 6), round(low, 6), round(high, 6)
        )
        delta.failed = [str(t) for t in thresholds if t.name == name and t.breached(b, c - b)]
        deltas.append(delta)
    missing = [t.name for t in thresholds if t.name not in {d.name for d in deltas}]
    if missing and missing[0].startswith("corpus_"):
        raise InvalidRequestError(
            f"--fail-on names {missing[0]!r}, but the reports have no paired case with a "
            "reference to score it on",
            param="fail_on",
        )
    pairwise = []
    for side, report in (("baseline", baseline), ("candidate", candidate)):
        if side == "candidate" and report.get("run_id") == baseline.get("run_id"):
            break  # the same run on both sides: its pairs once
        for pair in report.get("pairwise") or []:
            stats = pair_stats(pair, resamples=resamples, seed=seed)
            pairwise.append({"report": side, "run_id": report.get("run_id"), **stats})
    return Comparison(
        baseline=f"{baseline.get('run_id', '?')}:{base_name}",
        candidate=f"{candidate.get('run_id', '?')}:{cand_name}",
        paired=len(ids),
        only_baseline=len(set(base_cases) - set(cand_cases)),
        only_candidate=len(set(cand_cases) - set(base_cases)),
        resamples=resamples,
        seed=seed,
        deltas=deltas,
        pairwise=pairwise,
    )

"""Pairwise preference judging with position swapping: a judge alias sees two candidates'
outputs for the same case twice, A first then B first. Judges favour a position; asking in
both orders shows it. A case's outcome is the preference both orders agree on (``a``,
``b`` or ``tie``), or ``inconsistent`` when they disagree.

Verdicts are stored as results of the run under the key candidate ``pairwise#<index>``
(index into the suite's ``pairwise`` list), so a resumed run does not judge again and a
stored run's report shows them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from trellis.errors import TrellisError
from trellis.evals.datasets import Case
from trellis.evals.suite import DEFAULT_PAIRWISE_PROMPT, PAIRWISE_PREFIX, PairwiseSpec, render
from trellis.inference.gateway import Caller, Gateway
from trellis.schema import ChatRequest

__all__ = [
    "DEFAULT_PAIRWISE_PROMPT",
    "PairwiseSpec",
    "judge_pair",
    "pair_key",
    "pair_stats",
    "summarize",
]


def pair_key(index: int) -> str:
    return f"{PAIRWISE_PREFIX}{index}"


def _request(spec: PairwiseSpec, case: Case, first: str, second: str) -> ChatRequest:
    schema = {
        "type": "object",
        "properties": {
            "preference": {"type": "string", "enum": ["1", "2", "tie"]},
            "reason": {"type": "string"},
        },
        "required": ["preference", "reason"],
    }
    values = {**case.fields(), "criteria": spec.criteria, "first": first, "second": second}
    return ChatRequest.model_validate(
        {
            "model": spec.judge,
            "messages": [{"role": "user", "content": render(spec.prompt, values)}],
            "temperature": 0,
            "max_tokens": spec.max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "preference", "schema": schema},
            },
            "trellis": {"cache": False, "semantic_cache": False},
        }
    )


async def _ask(
    gateway: Gateway, spec: PairwiseSpec, case: Case, first: str, second: str, caller: Caller | None
) -> dict[str, Any]:
    """One order's verdict: ``preference`` "1", "2", "tie" or None (unusable), reason, trace."""
    try:
        answer = await gateway.chat(_request(spec, case, first, second), caller)
    except KeyError as exc:
        return {"preference": None, "reason": None, "error": str(exc), "trace_id": None}
    except TrellisError as exc:
        return {"preference": None, "reason": None, "error": exc.message, "trace_id": None}
    response = answer.response
    text = (response.choices[0].message.content or "") if response.choices else ""
    verdict: dict[str, Any] = {"preference": None, "reason": text, "trace_id": answer.trace_id}
    try:
        parsed = json.loads(text)
        preference = str(parsed["preference"]).strip().lower()
    except (ValueError, KeyError, TypeError):
        return verdict
    if preference in ("1", "2", "tie"):
        verdict.update(preference=preference, reason=str(parsed.get("reason", "")))
    return verdict


async def judge_pair(
    gateway: Gateway,
    spec: PairwiseSpec,
    case: Case,
    output_a: str,
    output_b: str,
    caller: Caller | None = None,
) -> dict[str, Any]:
    """Both orders' verdicts and the outcome: a, b, tie, inconsistent, or None (unusable)."""
    ab = await _ask(gateway, spec, case, output_a, output_b, caller)
    ba = await _ask(gateway, spec, case, output_b, output_a, caller)
    # Map each order's "1"/"2" back to the candidates.
    first = {"1": "a", "2": "b", "tie": "tie"}.get(ab["preference"] or "")
    second = {"1": "b", "2": "a", "tie": "tie"}.get(ba["preference"] or "")
    if first is None or second is None:
        outcome = None
    else:
        outcome = first if first == second else "inconsistent"
    error = None if outcome is not None else "the judge gave no usable preference"
    return {"outcome": outcome, "ab": ab, "ba": ba, "error": error}


def summarize(
    specs: Sequence[PairwiseSpec],
    case_ids: Sequence[str],
    repeats: int,
    results: dict[tuple[str, str, int], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Per pair: judged cases, win/tie/loss rates of ``a`` against ``b``, and the position
    disagreement rate (share of judged cases whose two orders disagreed); and each case's
    verdicts (both orders' preference and reason, the outcome)."""
    summaries = []
    for index, spec in enumerate(specs):
        outcomes, rows = [], []
        for case_id in case_ids:
            for repeat in range(repeats):
                result = results.get((case_id, pair_key(index), repeat))
                if result is None:
                    continue
                rows.append({"id": case_id, "repeat": repeat, **result})
                if result.get("outcome") is not None:
                    outcomes.append(result["outcome"])
        n = len(outcomes)

        def rate(kind: str, outcomes: list[str] = outcomes, n: int = n) -> float | None:
            return round(outcomes.count(kind) / n, 6) if n else None

        summaries.append(
            {
                "judge": spec.judge,
                "a": spec.a,
                "b": spec.b,
                "judged": n,
                "wins": outcomes.count("a"),
                "ties": outcomes.count("tie"),
                "losses": outcomes.count("b"),
                "inconsistent": outcomes.count("inconsistent"),
                "win": rate("a"),
                "tie": rate("tie"),
                "loss": rate("b"),
                "position_disagreement": rate("inconsistent"),
                "cases": rows,
            }
        )
    return summaries


def pair_stats(pair: dict[str, Any], *, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """One pair of a report (``summarize``'s entry): win/tie/loss counts and rates of ``a``
    against ``b`` over the judged verdicts (inconsistent ones count as judged, as in the
    report), the position disagreement rate, and a 95% bootstrap interval of the win rate
    that resamples cases (a case's repeats stay together), from a seeded generator."""
    wins: dict[str, int] = {}
    judged: dict[str, int] = {}
    outcomes: list[str] = []
    for row in pair.get("cases") or []:
        outcome = row.get("outcome")
        if outcome is None:
            continue
        outcomes.append(outcome)
        case = str(row.get("id"))
        judged[case] = judged.get(case, 0) + 1
        wins[case] = wins.get(case, 0) + (outcome == "a")
    n = len(outcomes)

    def rate(count: int) -> float | None:
        return round(count / n, 6) if n else None

    low = high = None
    if n:
        cases = list(judged)
        w = np.array([wins[c] for c in cases], dtype=float)
        j = np.array([judged[c] for c in cases], dtype=float)
        draws = np.random.default_rng(seed).integers(0, len(cases), size=(resamples, len(cases)))
        boot = w[draws].sum(axis=1) / j[draws].sum(axis=1)
        low, high = (round(float(v), 6) for v in np.percentile(boot, [2.5, 97.5]))
    return {
        "judge": pair.get("judge"),
        "a": pair.get("a"),
        "b": pair.get("b"),
        "judged": n,
        "wins": outcomes.count("a"),
        "ties": outcomes.count("tie"),
        "losses": outcomes.count("b"),
        "inconsistent": outcomes.count("inconsistent"),
        "win_rate": rate(outcomes.count("a")),
        "tie_rate": rate(outcomes.count("tie")),
        "loss_rate": rate(outcomes.count("b")),
        "position_disagreement": rate(outcomes.count("inconsistent")),
        "win_ci95": [low, high],
    }

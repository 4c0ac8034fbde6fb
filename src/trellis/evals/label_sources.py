"""The items of a new labelling queue: an eval run's scored outputs (with the run's
rubric-judge verdicts, for judge-human agreement) or stored chat traces' prompts and
answers (picked as ``dataset from-traces`` picks them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trellis.errors import InvalidRequestError
from trellis.evals.from_traces import TraceSelection, dataset_from_traces
from trellis.evals.judge import RubricJudge
from trellis.evals.label_scale import Scale
from trellis.evals.metrics import build_metrics
from trellis.evals.store import EvalStore
from trellis.evals.suite import PAIRWISE_PREFIX, parse_suite
from trellis.observe.store import TraceStore

__all__ = ["RunItems", "run_items", "trace_items"]

#: An item row as ``eval_queue_items`` stores it (without queue, number and claim).
Row = dict[str, Any]


def _judges(suite_data: dict[str, Any]) -> dict[str, RubricJudge]:
    """The run's rubric judges by metric name (their scales map scores back)."""
    suite = parse_suite(suite_data, "the run's suite")
    specs = [spec for spec in suite.metrics if spec.name == RubricJudge.name]
    try:
        metrics = build_metrics(specs)  # only the judges: no other metric is built
    except (ValueError, TypeError):
        return {}
    return {m.name: m for m in metrics if isinstance(m, RubricJudge)}


@dataclass(frozen=True, slots=True)
class RunItems:
    """A run's items, where they came from, and the scale to label them on."""

    rows: list[Row]
    source: dict[str, Any]
    scale: Scale
    #: The run's project (its queue's).
    project_id: str = "default"


async def run_items(
    evals: EvalStore,
    run_id: str,
    *,
    candidate: str | None = None,
    scale: Scale | None = None,
    limit: int | None = None,
) -> RunItems:
    """A run's scored outputs (dataset order, then candidates, repeats); ``candidate``
    keeps one candidate's. Without ``scale``: the run's rubric judge's scale (so scores
    compare one to one), else 1-5."""
    record = await evals.run(run_id)
    dataset = await evals.dataset(record.dataset, record.project_id)
    results = await evals.results(run_id)
    judges = _judges(record.suite)
    names = [c["name"] for c in record.suite.get("candidates", [])]
    if candidate is not None and candidate not in names:
        raise InvalidRequestError(
            f"run {run_id} has no candidate {candidate!r} (it has {', '.join(names)})",
            param="candidate",
        )
    if scale is None:
        judge = next(iter(judges.values()), None)
        scale = Scale(min=judge.low, max=judge.high) if judge else Scale()
    repeats = int(record.suite.get("repeats", 1))
    rows: list[Row] = []
    for case in dataset.cases:
        for name in names:
            if name.startswith(PAIRWISE_PREFIX) or candidate not in (None, name):
                continue
            for repeat in range(repeats):
                result = results.get((case.id, name, repeat))
                if not result or result.get("error") is not None:
                    continue
                rows.append(
                    {
                        "case_id": case.id,
                        "candidate": name,
                        "repeat": repeat,
                        "trace_id": result.get("trace_id"),
                        "case": case.model_dump(exclude_defaults=True),
                        "output": str(result.get("output") or ""),
                        "judge": _verdicts(result, judges) or None,
                    }
                )
    if limit is not None:
        rows = rows[:limit]
    source = {"run_id": run_id, "dataset": record.dataset, "candidate": candidate}
    return RunItems(rows, source, scale, record.project_id)


def _verdicts(result: dict[str, Any], judges: dict[str, RubricJudge]) -> dict[str, Any]:
    """The judges' verdicts on one result: normalised and raw score, scale, reason."""
    verdicts = {}
    for metric, judge in judges.items():
        value = (result.get("metrics") or {}).get(metric)
        if value is None:
            continue
        verdict = (result.get("judgements") or {}).get(metric) or {}
        verdicts[metric] = {
            "score": value,
            "raw": verdict.get("score"),
            "low": judge.low,
            "high": judge.high,
            "reason": verdict.get("reason"),
        }
    return verdicts


async def trace_items(traces: TraceStore, selection: TraceSelection) -> list[Row]:
    """Stored chat traces' prompts and answers (newest first; of ``selection.query``'s
    project when it names one); traces with no stored prompt or no answer are left out."""
    picked = TraceSelection(
        query=selection.query,
        limit=selection.limit,
        score=selection.score,
        below=selection.below,
        expected="output",
    )
    built = await dataset_from_traces(traces, "queue", picked)
    rows = []
    for case in built.dataset.cases:
        if case.expected is None:
            continue  # a failed call: no answer to label
        output = case.expected
        case = case.model_copy(update={"expected": None})
        rows.append(
            {
                "case_id": case.id,
                "candidate": None,
                "repeat": None,
                "trace_id": case.id,
                "case": case.model_dump(exclude_defaults=True),
                "output": output,
                "judge": None,
            }
        )
    if not rows:
        raise InvalidRequestError("no matching trace has an answer to label", param="traces")
    return rows

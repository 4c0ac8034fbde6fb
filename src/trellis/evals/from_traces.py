"""A dataset from production traces: the prompts users sent, filtered like ``/v1/traces``,
optionally only those a score marked bad, with human labels as the expected answers.

A case per chat trace whose prompt was stored (``tracing.bodies`` ``full`` or
``redacted``; with ``none`` there is nothing to rebuild and the trace is skipped and
counted). The case's id is the trace id, its input the request's messages (a single user
message becomes a plain string), and its metadata the trace's model, time and scores.

``expected`` comes from ``expected``:

* ``"label"``: the comment of the newest score named ``label`` on the trace: a person
  who scored an answer writes the right one in the score's comment
  (``POST /v1/traces/{id}/scores`` with ``{"name": "label", "value": 1, "comment": "..."}``);
  traces without such a label get none;
* ``"output"``: the answer the model gave then, for regression suites that check a new
  model still says what the old one said;
* ``"none"``: no expected answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from trellis.evals.datasets import NAME_PATTERN, Case, Dataset, DatasetError, content_hash
from trellis.observe.query import TraceQuery, parse_time
from trellis.observe.store import TraceStore
from trellis.observe.tracing import GenAI

__all__ = ["TraceSelection", "FromTraces", "dataset_from_traces"]

ExpectedFrom = Literal["label", "output", "none"]

#: Traces read per page while selecting.
_PAGE = 200


@dataclass(frozen=True, slots=True)
class TraceSelection:
    """Which traces become cases, beyond the trace filters."""

    query: TraceQuery = field(default_factory=lambda: TraceQuery(kind="chat"))
    #: At most this many cases.
    limit: int = 500
    #: Keep only traces with a score of this name below ``below`` (the newest one counts).
    score: str | None = None
    below: float | None = None
    expected: ExpectedFrom = "label"
    #: The score name whose comment is the human label (``expected="label"``).
    label: str = "label"


def chat_traces(
    *,
    since: str | None = None,
    until: str | None = None,
    model: str | None = None,
    status: str | None = None,
    key_id: str | None = None,
    text: str | None = None,
) -> TraceQuery:
    """The chat traces the trace filters select (times as durations ago, Unix seconds or ISO
    8601): one reading for ``dataset from-traces`` and labelling queues, CLI and HTTP alike."""
    return TraceQuery(
        since_ns=None if since is None else parse_time(since, "since"),
        until_ns=None if until is None else parse_time(until, "until"),
        model=model,
        status=status,
        key_id=key_id,
        kind="chat",
        text=text,
    )


@dataclass(slots=True)
class FromTraces:
    dataset: Dataset
    #: Traces that matched the filters but had no stored prompt (bodies not kept).
    skipped_without_prompt: int = 0
    #: Traces left out by the score filter.
    skipped_by_score: int = 0
    #: Cases without an expected answer (``expected="label"`` and no label yet).
    unlabelled: int = 0


def _newest_score(scores: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    named = [s for s in scores if s.get("name") == name]
    return max(named, key=lambda s: s.get("created_at") or 0) if named else None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _root_attributes(trace: dict[str, Any]) -> dict[str, Any]:
    for span in trace.get("spans") or []:
        if span.get("parent_id") is None:
            return dict(span.get("attributes") or {})
    return {}


def case_from_trace(
    trace: dict[str, Any], selection: TraceSelection
) -> tuple[Case | None, str | None]:
    """The case a stored trace makes (None: no prompt stored), and why it has no expected."""
    attributes = _root_attributes(trace)
    messages = attributes.get(GenAI.INPUT_MESSAGES)
    if not isinstance(messages, list) or not messages:
        return None, None
    conversation = [
        {"role": str(m.get("role", "user")), "content": _text(m.get("content"))}
        for m in messages
        if isinstance(m, dict)
    ]
    if not conversation:
        return None, None
    only_user = len(conversation) == 1 and conversation[0]["role"] == "user"
    scores = list(trace.get("scores") or [])
    expected: str | None = None
    missing: str | None = None
    if selection.expected == "label":
        label = _newest_score(scores, selection.label)
        expected = (label or {}).get("comment") or None
        missing = None if expected else "unlabelled"
    elif selection.expected == "output":
        outputs = attributes.get(GenAI.OUTPUT_MESSAGES)
        if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
            expected = _text(outputs[0].get("content")) or None
    case = Case(
        id=str(trace["id"]),
        input=conversation[0]["content"] if only_user else conversation,
        expected=expected,
        metadata={
            "trace_id": trace["id"],
            "model": trace.get("model"),
            "start_ns": trace.get("start_ns"),
            "scores": {
                s["name"]: s["value"]
                for s in sorted(scores, key=lambda s: s.get("created_at") or 0)
            },
        },
    )
    return case, missing


async def dataset_from_traces(
    store: TraceStore, name: str, selection: TraceSelection | None = None
) -> FromTraces:
    """Build a dataset from the traces ``selection`` picks, newest first."""
    selection = selection or TraceSelection()
    if not re.match(NAME_PATTERN, name):
        raise DatasetError(
            f"dataset name {name!r} must be 1-100 letters, digits, '.', '_' or '-'", param="name"
        )
    if (selection.score is None) != (selection.below is None):
        raise DatasetError("score and below go together: keep traces scored NAME below X")
    cases: list[Case] = []
    result = FromTraces(dataset=Dataset(name=name, cases=[], version=""))
    cursor: str | None = None
    while len(cases) < selection.limit:
        page = await store.page(selection.query, limit=_PAGE, cursor=cursor)
        for row in page.rows:
            trace = await store.get(row["id"])
            if trace is None:  # removed by retention meanwhile
                continue
            if selection.score is not None:
                score = _newest_score(list(trace.get("scores") or []), selection.score)
                assert selection.below is not None
                if score is None or not float(score["value"]) < selection.below:
                    result.skipped_by_score += 1
                    continue
            case, missing = case_from_trace(trace, selection)
            if case is None:
                result.skipped_without_prompt += 1
                continue
            result.unlabelled += missing == "unlabelled"
            cases.append(case)
            if len(cases) >= selection.limit:
                break
        cursor = page.next_cursor
        if cursor is None:
            break
    if not cases:
        raise DatasetError(
            "no trace matched with a stored prompt"
            + (
                f" ({result.skipped_without_prompt} matched without one: tracing.bodies is none?)"
                if result.skipped_without_prompt
                else ""
            )
        )
    result.dataset = Dataset(name=name, cases=cases, version=content_hash(cases))
    return result

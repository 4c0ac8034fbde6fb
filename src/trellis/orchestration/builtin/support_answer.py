"""``support-answer``: retrieve → answer with citations → gate (a valid answer, citations
of passages it was given, grounded in them) → retry with more context, fall back to
another model, or refuse.

The route after the gate is plain code (:func:`after_gate`): a grounded answer ends the
run; the first failure searches again with ``more_top_k`` passages; the next one, when
``fallback_model`` differs from ``model`` and has not been tried, answers again with it;
anything else (or an answer the model cannot produce as valid JSON, after the step's
retries) ends in a refusal. With no passages at all there is nothing to ground an answer
in, so a second empty search refuses without asking another model.

Run it: ``await trellis.workflows.run(workflow, {"question": "...", "collections": ["docs"]})``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from trellis.orchestration.kinds.checks import (
    DEFAULT_GROUNDED_MIN,
    Check,
    CheckResult,
    Verdict,
    grounded,
    schema_valid,
)
from trellis.orchestration.kinds.gate import gate
from trellis.orchestration.kinds.llm import llm
from trellis.orchestration.kinds.retrieve import retrieve
from trellis.orchestration.policy import Backoff, Policy
from trellis.orchestration.steps import END
from trellis.orchestration.workflow import Workflow

__all__ = ["Answer", "SupportState", "after_gate", "build", "workflow", "REFUSAL"]

REFUSAL = "I can't answer that from the available documents."


class Answer(BaseModel):
    """An answer and the passages (numbered from 1) it is based on."""

    text: str
    citations: list[int] = Field(default_factory=list)


class SupportState(BaseModel):
    question: str
    collections: list[str] = Field(default_factory=lambda: ["docs"])
    #: The alias that answers first, and the one tried when its answer is not grounded.
    model: str = "local"
    fallback_model: str = "local"
    top_k: int = 3
    more_top_k: int = 8
    # --- filled by the run ---
    passages: list[dict[str, Any]] = Field(default_factory=list)
    answer: Answer | None = None
    verdict: Verdict | None = None
    widened: bool = False
    fell_back: bool = False
    refused: bool = False


def _prompt(s: SupportState) -> list[Any]:
    numbered = "\n".join(f"[{i}] {p['text']}" for i, p in enumerate(s.passages, 1))
    return [
        {
            "role": "system",
            "content": (
                "Answer the question using only the numbered passages. Put the numbers of "
                "the passages you used in citations. If they do not contain the answer, "
                "say so."
            ),
        },
        f"Passages:\n{numbered or '(none)'}\n\nQuestion: {s.question}",
    ]


class CitationsInRange(Check):
    """Every citation names a passage the answer was given (1..len(passages)).

    No citation at all passes: whether the text is supported is the ``grounded`` check's
    question; this one catches citations of passages that do not exist."""

    kind = "citations"

    def __init__(self) -> None:
        super().__init__("citations:answer")

    async def run(self, state: Any, services: Mapping[str, Any]) -> CheckResult:
        answer: Answer | None = state.answer
        count = len(state.passages)
        wrong = [n for n in (answer.citations if answer else []) if not 1 <= n <= count]
        detail = f"no passage {', '.join(map(str, wrong))} (of {count})" if wrong else ""
        return CheckResult(name=self.name, passed=not wrong, detail=detail)


def after_gate(s: SupportState, verdict: Verdict) -> str:
    """Where the run goes after the groundedness gate."""
    if verdict.passed:
        return END
    if not s.widened:
        return "widen"
    if s.passages and not s.fell_back and s.fallback_model != s.model:
        return "fall_back"
    return "refuse"


def _output(s: SupportState) -> dict[str, Any]:
    return {
        "answer": s.answer.model_dump() if s.answer else None,
        "refused": s.refused,
        "model": None if s.refused else (s.fallback_model if s.fell_back else s.model),
        "passages": [
            {k: p.get(k) for k in ("collection", "document_id", "chunk_id")} for p in s.passages
        ],
    }


def build(
    *, max_tokens: int = 160, min_grounded: float = DEFAULT_GROUNDED_MIN
) -> Workflow[SupportState]:
    """The workflow; ``max_tokens`` bounds each answer, ``min_grounded`` is the share of
    the answer's content words that must occur in the passages."""
    flow = Workflow(
        "support-answer",
        state=SupportState,
        output=_output,
    )
    flow.add(
        retrieve(
            "search",
            collections=lambda s: s.collections,
            query=lambda s: s.question,
            top_k=lambda s: s.more_top_k if s.widened else s.top_k,
            into="passages",
        )
    )
    flow.add(
        llm(
            "answer",
            model=lambda s: s.fallback_model if s.fell_back else s.model,
            messages=_prompt,
            output=Answer,
            into="answer",
            repair=1,
            temperature=0.0,
            max_tokens=max_tokens,
            # A run started with a session_id answers follow-ups in context.
            session=True,
            policy=Policy(attempts=2, backoff=Backoff(0.0, 0.0), fallback="refuse"),
        )
    )
    flow.add(
        gate(
            "check",
            [
                schema_valid("answer"),
                CitationsInRange(),
                grounded("answer", "passages", min=min_grounded),
            ],
            into="verdict",
            route=after_gate,
        )
    )

    @flow.step(next="search")
    def widen(s: SupportState) -> dict[str, Any]:
        return {"widened": True}

    @flow.step(next="answer")
    def fall_back(s: SupportState) -> dict[str, Any]:
        return {"fell_back": True}

    @flow.step(next=END)
    def refuse(s: SupportState) -> dict[str, Any]:
        return {"answer": Answer(text=REFUSAL), "refused": True}

    return flow


workflow = build()

"""LLM-as-a-judge, rubric form: any chat alias grades each output against a rubric on an
integer scale and says why. The judge's call goes through the same gateway (its own
trace, tokens and cost), with a JSON schema as ``response_format`` so models that enforce
schemas (the bundled one does) answer ``{"score": n, "reason": "..."}``.

The score is normalised to [0, 1]: ``(score - low) / (high - low)``. An answer that is not
such JSON scores None and its text is kept as the reason.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from trellis.errors import TrellisError
from trellis.evals.datasets import Case
from trellis.evals.metrics import Metric
from trellis.evals.suite import render, template_fields
from trellis.inference.gateway import Caller, Gateway
from trellis.schema import ChatRequest

__all__ = ["RubricJudge", "DEFAULT_PROMPT"]

DEFAULT_PROMPT = (
    "You are grading an answer.\n"
    "Rubric: {rubric}\n\n"
    "Question: {input}\n"
    "Reference answer (may be empty): {expected}\n"
    "Answer to grade: {output}\n\n"
    "Give an integer score from {low} to {high} ({high} is best) and a one-sentence reason, "
    'as JSON: {{"score": <integer>, "reason": "<text>"}}'
)


class RubricJudge(Metric):
    """``{name: judge, model: ALIAS, rubric: "...", scale: [1, 5]}``."""

    name = "judge"
    needs_expected = False
    needs_gateway: ClassVar[bool] = True

    def __init__(
        self,
        model: str | None = None,
        rubric: str | None = None,
        scale: list[int] | None = None,
        prompt: str = DEFAULT_PROMPT,
        max_tokens: int = 128,
    ) -> None:
        if not model:
            raise ValueError("metric 'judge' needs a 'model' option (the judge's alias)")
        if not rubric:
            raise ValueError("metric 'judge' needs a 'rubric' option")
        low, high = scale or [1, 5]
        if not (isinstance(low, int) and isinstance(high, int) and low < high):
            raise ValueError("metric 'judge': scale must be two integers [low, high], low < high")
        self.model, self.rubric, self.low, self.high = model, rubric, low, high
        self.prompt = prompt
        self.max_tokens = max_tokens
        template_fields(prompt)  # plain field names only (a case's metadata keys may be used)

    def _values(self, output: str, case: Case) -> dict[str, Any]:
        return {
            **case.fields(),
            "output": output,
            "rubric": self.rubric,
            "low": self.low,
            "high": self.high,
        }

    def score(self, output: str, case: Case) -> float | None:
        raise RuntimeError("the judge is asynchronous: the runner calls judge()")

    def request(self, output: str, case: Case) -> ChatRequest:
        schema = {
            "type": "object",
            "properties": {
                "score": {"type": "integer", "minimum": self.low, "maximum": self.high},
                "reason": {"type": "string"},
            },
            "required": ["score", "reason"],
        }
        return ChatRequest.model_validate(
            {
                "model": self.model,
                "messages": [
                    {"role": "user", "content": render(self.prompt, self._values(output, case))}
                ],
                "temperature": 0,
                "max_tokens": self.max_tokens,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "grade", "schema": schema},
                },
                "trellis": {"cache": False},
            }
        )

    async def judge(
        self, gateway: Gateway, output: str, case: Case, caller: Caller | None = None
    ) -> tuple[float | None, dict[str, Any]]:
        """(normalised score or None, the verdict: score, reason, trace id)."""
        try:
            request = self.request(output, case)
        except KeyError as exc:  # the prompt names a field this case lacks
            return None, {"score": None, "reason": None, "error": str(exc), "trace_id": None}
        try:
            answer = await gateway.chat(request, caller)
        except TrellisError as exc:
            return None, {"score": None, "reason": None, "error": exc.message, "trace_id": None}
        response = answer.response
        text = (response.choices[0].message.content or "") if response.choices else ""
        verdict: dict[str, Any] = {"score": None, "reason": text, "trace_id": answer.trace_id}
        try:
            parsed = json.loads(text)
            raw = parsed["score"]
            if (
                isinstance(raw, bool)
                or not isinstance(raw, int | float)
                or not self.low <= raw <= self.high
            ):
                raise ValueError(raw)
            verdict.update(score=raw, reason=str(parsed.get("reason", "")))
        except (ValueError, KeyError, TypeError):
            return None, verdict
        return (raw - self.low) / (self.high - self.low), verdict

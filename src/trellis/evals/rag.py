"""RAG answer metrics: context precision and faithfulness, each either deterministic or
graded by a judge alias (``model: ALIAS``) through the gateway (one call per case).

The *passages* are what the answer was grounded on: the citations' snippets of a grounded
candidate (the first 300 characters of each retrieved chunk), then the case's ``context``.

- ``context_precision``: the share of the retrieved documents that are relevant. With the
  case's ``relevant_ids``: by id, no model involved. Without them, and with ``model``: the
  judge says which numbered passages are relevant to the question. Otherwise None.
- ``faithfulness``: the share of the answer's sentences supported by the passages. With
  ``model``: the judge says which numbered sentences the passages support. Without it, a
  lexical fallback: a sentence is supported when at least ``threshold`` (default 0.5) of
  its content words (lowercased letters/digits runs of 3+ characters, or numbers, minus
  common English stop words) occur in the passages. Sentences without content words are
  not counted; an answer without any, or without passages, scores None.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from trellis.errors import TrellisError
from trellis.evals.datasets import Case
from trellis.evals.metrics import Metric, _unique
from trellis.inference.gateway import Caller, Gateway
from trellis.schema import ChatRequest

__all__ = ["ContextPrecision", "Faithfulness", "content_words", "sentences"]

_STOP_WORDS = (
    "the and for are but not you all any can had her was one our out has him his how its "
    "may new now old see two who did get let say she too use that with have this will your "
    "from they been than then them these those what when where which while into onto over "
    "under also just only very more most some such each both about above after again "
    "against because before being below between does doing during further here itself "
    "myself once other ought same should their theirs there through until were would could"
)
_STOP = frozenset(_STOP_WORDS.split())


def sentences(text: str) -> list[str]:
    """The text cut after ``.``, ``!`` or ``?`` followed by space, and at line breaks."""
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return [part.strip() for part in parts if part.strip()]


def content_words(text: str) -> set[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {w for w in words if (len(w) >= 3 or w.isdigit()) and w not in _STOP}


def passages_of(case: Case, passages: Sequence[str] | None) -> list[str]:
    return [*(passages or []), *(case.context or [])]


class _Judged(Metric):
    """A metric that may call a judge alias: ``needs_gateway`` only when ``model`` is set."""

    needs_expected = False
    needs_passages: ClassVar[bool] = True
    cheap = True

    def __init__(self, model: str | None = None, max_tokens: int = 256) -> None:
        if model is not None and (not isinstance(model, str) or not model):
            raise ValueError(f"metric {self.name!r}: model must be a model alias")
        self.model = model
        self.max_tokens = max_tokens
        self.needs_gateway = model is not None

    def score(self, output: str, case: Case) -> float | None:
        return None

    async def _ask(
        self, gateway: Gateway, prompt: str, key: str, caller: Caller | None
    ) -> tuple[list[int] | None, dict[str, Any]]:
        """The judge's list of item numbers under ``key`` (None when unusable), and its verdict."""
        schema = {
            "type": "object",
            "properties": {
                key: {"type": "array", "items": {"type": "integer"}},
                "reason": {"type": "string"},
            },
            "required": [key, "reason"],
        }
        request = ChatRequest.model_validate(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
                "max_tokens": self.max_tokens,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": self.name, "schema": schema},
                },
                "trellis": {"cache": False, "semantic_cache": False},
            }
        )
        try:
            answer = await gateway.chat(request, caller)
        except TrellisError as exc:
            return None, {key: None, "reason": None, "error": exc.message, "trace_id": None}
        response = answer.response
        text = (response.choices[0].message.content or "") if response.choices else ""
        verdict: dict[str, Any] = {key: None, "reason": text, "trace_id": answer.trace_id}
        try:
            parsed = json.loads(text)
            numbers = parsed[key]
            if not isinstance(numbers, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) for n in numbers
            ):
                raise ValueError(numbers)
        except (ValueError, KeyError, TypeError):
            return None, verdict
        verdict.update({key: numbers, "reason": str(parsed.get("reason", ""))})
        return numbers, verdict


def _numbered(items: Sequence[str]) -> str:
    return "\n".join(f"[{n}] {item}" for n, item in enumerate(items, 1))


class ContextPrecision(_Judged):
    """The share of retrieved documents that are relevant (ids, else the judge)."""

    name = "context_precision"

    def __call__(
        self,
        output: str,
        case: Case,
        retrieved: Sequence[str] | None = None,
        passages: Sequence[str] | None = None,
    ) -> float | None:
        if case.relevant_ids is None or not retrieved:
            return None
        unique = _unique(retrieved)
        return len(set(case.relevant_ids).intersection(unique)) / len(unique)

    async def judge(
        self,
        gateway: Gateway,
        output: str,
        case: Case,
        caller: Caller | None = None,
        *,
        retrieved: Sequence[str] | None = None,
        passages: Sequence[str] | None = None,
    ) -> tuple[float | None, dict[str, Any]]:
        if case.relevant_ids is not None:  # ids decide; no call
            return self(output, case, retrieved), {"relevant": None, "reason": "relevant_ids"}
        texts = passages_of(case, passages)
        if not texts:
            return None, {"relevant": None, "reason": "no passages"}
        question = case.fields()["input"]
        prompt = (
            "Which of these retrieved passages are relevant to answering the question?\n\n"
            f"Question: {question}\n\nPassages:\n{_numbered(texts)}\n\n"
            'Reply as JSON: {"relevant": [<passage numbers>], "reason": "<one sentence>"}'
        )
        numbers, verdict = await self._ask(gateway, prompt, "relevant", caller)
        if numbers is None:
            return None, verdict
        relevant = {n for n in numbers if 1 <= n <= len(texts)}
        return len(relevant) / len(texts), verdict


class Faithfulness(_Judged):
    """The share of the answer's sentences the passages support (judge, else lexical)."""

    name = "faithfulness"

    def __init__(
        self, model: str | None = None, max_tokens: int = 256, threshold: float = 0.5
    ) -> None:
        super().__init__(model, max_tokens)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ValueError("metric 'faithfulness': threshold must be a number in (0, 1]")
        if not 0 < threshold <= 1:
            raise ValueError("metric 'faithfulness': threshold must be a number in (0, 1]")
        self.threshold = float(threshold)

    def __call__(
        self,
        output: str,
        case: Case,
        retrieved: Sequence[str] | None = None,
        passages: Sequence[str] | None = None,
    ) -> float | None:
        texts = passages_of(case, passages)
        if not texts:
            return None
        known = content_words(" ".join(texts))
        scored = [words for words in map(content_words, sentences(output)) if words]
        if not scored:
            return None
        supported = sum(len(words & known) / len(words) >= self.threshold for words in scored)
        return supported / len(scored)

    async def judge(
        self,
        gateway: Gateway,
        output: str,
        case: Case,
        caller: Caller | None = None,
        *,
        retrieved: Sequence[str] | None = None,
        passages: Sequence[str] | None = None,
    ) -> tuple[float | None, dict[str, Any]]:
        texts = passages_of(case, passages)
        claims = sentences(output)
        if not texts or not claims:
            return None, {"supported": None, "reason": "no passages or no sentences"}
        prompt = (
            "Which sentences of the answer are supported by the passages? A sentence is "
            "supported when the passages state or directly imply it.\n\n"
            f"Passages:\n{_numbered(texts)}\n\nAnswer sentences:\n{_numbered(claims)}\n\n"
            'Reply as JSON: {"supported": [<sentence numbers>], "reason": "<one sentence>"}'
        )
        numbers, verdict = await self._ask(gateway, prompt, "supported", caller)
        if numbers is None:
            return None, verdict
        supported = {n for n in numbers if 1 <= n <= len(claims)}
        return len(supported) / len(claims), verdict

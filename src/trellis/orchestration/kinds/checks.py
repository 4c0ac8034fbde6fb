"""The checks an eval gate runs on an answer before it is shown.

Each check reads fields of the run's state and returns a :class:`CheckResult`; the gate
collects them into a :class:`Verdict`. Four kinds:

- :func:`schema_valid`: the field is present and matches its type or a given output spec;
- :func:`forbidden`: no forbidden term (whole word or phrase, case-insensitive) and no
  forbidden regular expression occurs in the answer's text;
- :func:`grounded`: the answer's content words occur in the retrieved passages (lexical
  support, see :func:`support_score`), at least ``min`` of them;
- :func:`judge`: a model's pass/fail verdict on stated criteria, through the gateway.

The first three are pure and cheap; the judge costs a model call, so the gate runs checks
in order and by default stops at the first failure (put the judge last).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, TypeAdapter, ValidationError

from trellis.errors import ConfigurationError
from trellis.inference.gateway import Gateway
from trellis.orchestration.kinds.llm import complete
from trellis.orchestration.kinds.structured import OutputSpec, output_schema
from trellis.schema import ChatMessage, ChatRequest, Usage

__all__ = [
    "Check",
    "CheckResult",
    "Verdict",
    "schema_valid",
    "forbidden",
    "grounded",
    "judge",
    "content_words",
    "support_score",
    "text_of",
    "DEFAULT_GROUNDED_MIN",
]

#: Default share of an answer's content words that must occur in the passages. A
#: guess to tune per workflow, not a measured optimum: in the tests a faithful answer and
#: a close paraphrase score 0.6-1.0 and an answer about something else under 0.3.
DEFAULT_GROUNDED_MIN = 0.6

_STOPWORDS_TEXT = """
    a about above after again against all also am an and any are aren't as at be because
    been before being below between both but by can can't cannot could did do does doing
    don't down during each else few for from further had has have having he her here hers
    herself him himself his how however i if in into is isn't it it's its itself just let
    me might more most must my myself no nor not now of off on once only or other our ours
    ourselves out over own per same she should so some such than that the their theirs them
    themselves then there these they this those through thus to too under until up upon us
    very was we were what when where which while who whom why will with within without would
    yes yet you your yours yourself yourselves according answer based document documents
    passage passages provided source sources text"""
#: Function words that carry no claim; they are left out of the support score.
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
#: Citation markers ("[1]", "[2, 3]") refer to passages; they claim nothing themselves.
_CITATION = re.compile(r"\[\s*\d+(?:\s*,\s*\d+)*\s*\]")


class CheckResult(BaseModel):
    """One check's outcome: passed or not, a score where the check has one, and why."""

    name: str
    passed: bool
    score: float | None = None
    detail: str = ""
    _usage: Usage | None = PrivateAttr(default=None)
    #: USD the check's model calls cost (the judge's, repairs included).
    _cost: float = PrivateAttr(default=0.0)


class Verdict(BaseModel):
    """What a gate decided: passed when every check that ran passed.

    Put it in the state (``gate(..., into="verdict")`` with a ``verdict: Verdict | None``
    field) so routing code can read which check failed."""

    passed: bool
    checks: list[CheckResult] = Field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """Names of the checks that failed."""
        return [check.name for check in self.checks if not check.passed]

    def check(self, name: str) -> CheckResult | None:
        return next((check for check in self.checks if check.name == name), None)


class Check(ABC):
    """A named test of the state. ``services`` are the context's (the judge uses the gateway)."""

    kind: str = "check"

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    async def run(self, state: Any, services: Mapping[str, Any]) -> CheckResult: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _field(state: Any, name: str) -> Any:
    if isinstance(state, Mapping):
        return state.get(name)
    if not hasattr(state, name):
        raise ConfigurationError(f"the state has no field {name!r}")
    return getattr(state, name)


def text_of(value: Any) -> str:
    """The prose of a value: a string, or every string inside a model, dict or list
    (numbers, such as citation indexes, are not prose and are left out)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return "\n".join(text for text in map(text_of, value.values()) if text)
    if isinstance(value, (list, tuple)):
        return "\n".join(text for text in map(text_of, value) if text)
    return ""


def _passage_text(passage: Any) -> str:
    """A passage's text: a ``Passage``, a dict with ``text``/``content``, or a string."""
    if isinstance(passage, str):
        return passage
    if isinstance(passage, Mapping):
        return str(passage.get("text") or passage.get("content") or "")
    text = getattr(passage, "text", None)
    return text if isinstance(text, str) else text_of(passage)


def _normal(word: str) -> str:
    # A light plural fold so "passages" is supported by "passage"; no stemming beyond it.
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_words(text: str) -> set[str]:
    """The distinct content words of ``text``: lowercased, stopwords and one- or
    two-letter words dropped (numbers kept), plurals folded."""
    words = set()
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS or (len(word) < 3 and not word.isdigit()):
            continue
        words.add(_normal(word))
    return words


def support_score(answer: str, passages: Iterable[str]) -> tuple[float, list[str]]:
    """Share of the answer's content words that occur in the passages, and those that do not.

    Citation markers (``[1]``) are left out of the answer first. An answer with no
    content words claims nothing and scores 1.0. This is lexical: it
    catches answers about something the passages do not mention (the common failure of a
    small model), not a fluent paraphrase that inverts a fact; use a judge for that.
    """
    claimed = content_words(_CITATION.sub(" ", answer))
    if not claimed:
        return 1.0, []
    available: set[str] = set()
    for passage in passages:
        available |= content_words(passage)
    missing = sorted(claimed - available)
    return (len(claimed) - len(missing)) / len(claimed), missing


# --- the checks -------------------------------------------------------------------------


class SchemaValid(Check):
    kind = "schema_valid"

    def __init__(self, field: str, output: OutputSpec = None, name: str | None = None) -> None:
        super().__init__(name or f"schema_valid:{field}")
        self.field = field
        self.schema = output_schema(output)

    async def run(self, state: Any, services: Mapping[str, Any]) -> CheckResult:
        value = _field(state, self.field)
        if value is None or value == "":
            return CheckResult(name=self.name, passed=False, detail=f"{self.field} is missing")
        try:
            if self.schema is not None:
                self.schema.check(value)
            elif isinstance(state, BaseModel):
                annotation = type(state).model_fields[self.field].annotation
                TypeAdapter(annotation if annotation is not None else Any).validate_python(value)
        except (ValueError, ValidationError) as exc:
            return CheckResult(name=self.name, passed=False, detail=str(exc)[:600])
        return CheckResult(name=self.name, passed=True)


class Forbidden(Check):
    kind = "forbidden"

    def __init__(
        self,
        field: str,
        terms: Sequence[str] = (),
        patterns: Sequence[str | re.Pattern[str]] = (),
        name: str | None = None,
    ) -> None:
        super().__init__(name or f"forbidden:{field}")
        if not terms and not patterns:
            raise ConfigurationError("forbidden() needs terms or patterns")
        self.field = field
        self.rules: list[tuple[str, re.Pattern[str]]] = [
            (term, re.compile(r"(?<!\w)" + re.escape(term) + r"(?!\w)", re.IGNORECASE))
            for term in terms
        ]
        for pattern in patterns:
            compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
            self.rules.append((f"/{compiled.pattern}/", compiled))

    async def run(self, state: Any, services: Mapping[str, Any]) -> CheckResult:
        text = text_of(_field(state, self.field))
        found = [label for label, rule in self.rules if rule.search(text)]
        detail = ("found: " + ", ".join(found)) if found else ""
        return CheckResult(name=self.name, passed=not found, detail=detail)


class Grounded(Check):
    kind = "grounded"

    def __init__(
        self, field: str, passages: str, min: float = DEFAULT_GROUNDED_MIN, name: str | None = None
    ) -> None:
        super().__init__(name or f"grounded:{field}")
        if not 0 <= min <= 1:
            raise ConfigurationError("grounded(min=...) must be between 0 and 1")
        self.field = field
        self.passages = passages
        self.min = min

    async def run(self, state: Any, services: Mapping[str, Any]) -> CheckResult:
        answer = _field(state, self.field)
        passages = _field(state, self.passages) or []
        if answer is None:
            return CheckResult(name=self.name, passed=False, score=0.0, detail="no answer")
        if not passages:
            return CheckResult(name=self.name, passed=False, score=0.0, detail="no passages")
        score, missing = support_score(text_of(answer), map(_passage_text, passages))
        detail = f"min {self.min}"
        if missing:
            detail += "; unsupported: " + ", ".join(missing[:10])
        return CheckResult(
            name=self.name, passed=score >= self.min, score=round(score, 4), detail=detail
        )


class JudgeAnswer(BaseModel):
    """The judge model's structured reply."""

    verdict: Literal["pass", "fail"]
    reason: str


JUDGE_SYSTEM = (
    "You review an answer before it is shown to a user. Decide whether the ANSWER meets "
    "every CRITERION. Reply with JSON only: "
    '{"verdict": "pass" or "fail", "reason": "one short sentence"}.'
)


class Judge(Check):
    kind = "judge"

    def __init__(
        self,
        field: str,
        criteria: str,
        *,
        model: str = "local",
        question: str | None = None,
        passages: str | None = None,
        repair: int = 1,
        max_tokens: int = 128,
        name: str | None = None,
    ) -> None:
        super().__init__(name or f"judge:{field}")
        self.field = field
        self.criteria = criteria
        self.model = model
        self.question = question
        self.passages = passages
        self.repair = repair
        self.max_tokens = max_tokens

    def messages(self, state: Any) -> list[ChatMessage]:
        parts = [f"CRITERIA:\n{self.criteria}"]
        if self.question is not None:
            parts.append(f"QUESTION:\n{text_of(_field(state, self.question))}")
        if self.passages is not None:
            passages = _field(state, self.passages) or []
            numbered = [f"[{i}] {_passage_text(p)}" for i, p in enumerate(passages, 1)]
            parts.append("PASSAGES:\n" + ("\n".join(numbered) or "(none)"))
        parts.append(f"ANSWER:\n{text_of(_field(state, self.field))}")
        return [
            ChatMessage(role="system", content=JUDGE_SYSTEM),
            ChatMessage(role="user", content="\n\n".join(parts)),
        ]

    async def run(self, state: Any, services: Mapping[str, Any]) -> CheckResult:
        gateway: Gateway | None = services.get("gateway")
        if gateway is None:
            raise ConfigurationError(
                "the judge check needs the gateway (context service 'gateway')"
            )
        request = ChatRequest(
            model=self.model,
            messages=self.messages(state),
            temperature=0.0,
            max_tokens=self.max_tokens,
        )
        result = await complete(
            gateway, request, output=JudgeAnswer, repair=self.repair, caller=services.get("caller")
        )
        answer: JudgeAnswer = result.value
        check = CheckResult(
            name=self.name,
            passed=answer.verdict == "pass",
            score=1.0 if answer.verdict == "pass" else 0.0,
            detail=f"{self.model}: {answer.reason}"[:600],
        )
        check._usage = result.usage
        check._cost = result.cost
        return check


def schema_valid(field: str, output: OutputSpec = None, *, name: str | None = None) -> Check:
    """The field is set and valid: against ``output`` (a pydantic model or JSON Schema;
    a JSON string is parsed) when given, else against the state field's own type."""
    return SchemaValid(field, output, name)


def forbidden(
    field: str,
    terms: Sequence[str] = (),
    patterns: Sequence[str | re.Pattern[str]] = (),
    *,
    name: str | None = None,
) -> Check:
    """None of ``terms`` (whole words or phrases, any case) and none of the regular
    expressions ``patterns`` occur in the text of the field."""
    return Forbidden(field, terms, patterns, name)


def grounded(
    field: str, passages: str, min: float = DEFAULT_GROUNDED_MIN, *, name: str | None = None
) -> Check:
    """At least ``min`` of the answer's content words occur in the passages (the state
    field ``passages``: ``Passage`` objects, dicts with ``text``, or strings).
    See :func:`support_score`; no passages fails."""
    return Grounded(field, passages, min, name)


def judge(
    field: str,
    criteria: str,
    *,
    model: str = "local",
    question: str | None = None,
    passages: str | None = None,
    repair: int = 1,
    max_tokens: int = 128,
    name: str | None = None,
) -> Check:
    """A model's pass/fail verdict on ``criteria`` through the gateway (typed JSON reply,
    ``repair`` attempts). ``question`` and ``passages`` name state fields shown to it."""
    return Judge(
        field,
        criteria,
        model=model,
        question=question,
        passages=passages,
        repair=repair,
        max_tokens=max_tokens,
        name=name,
    )

"""An eval suite in YAML: the dataset, the candidates, the metrics, repeats and concurrency.

::

    name: support-answers
    dataset: cases.jsonl            # a file beside the suite, or a stored name@version
    candidates:
      - name: baseline
        model: local
        params: {temperature: 0, max_tokens: 64}
        system: Answer in one sentence.
        prompt: "Question: {input}"
        collections: [docs]         # optional: grounded answers (RAG)
    metrics: [bleu, chrf, {name: contains, ignore_case: true}]
    repeats: 1
    concurrency: 4

Prompt templates are ``str.format`` style over the case's fields (``input``, ``expected``,
``context``, ``id`` and every ``metadata`` key) and nothing else: no attribute or index
access, so a template cannot reach into Python objects.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trellis.errors import InvalidRequestError

__all__ = ["Candidate", "MetricSpec", "PairwiseSpec", "Suite", "SuiteError", "load_suite", "render"]


class SuiteError(InvalidRequestError):
    code = "invalid_suite"


def template_fields(template: str) -> list[str]:
    """The plain field names of a ``str.format`` template; anything else is an error."""
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template {template!r}: {exc}") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier():
            raise ValueError(
                f"template field {{{field}}}: only plain field names are allowed "
                "(no attributes, indexes or positional fields)"
            )
        if conversion or (spec and "{" in spec):
            raise ValueError(
                f"template field {{{field}}}: conversions and nested fields are not allowed"
            )
        names.append(field)
    return names


def render(template: str, values: dict[str, Any]) -> str:
    """Fill a checked template; a field the case lacks is an error naming it."""
    missing = [name for name in template_fields(template) if name not in values]
    if missing:
        raise KeyError(f"the case has no field {missing[0]!r} for the template")
    return template.format_map({k: values[k] for k in template_fields(template)})


class Candidate(BaseModel):
    """One configuration under test: a model alias, its parameters and a prompt."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    #: The model alias; a workflow candidate names ``workflow`` instead.
    model: str | None = Field(default=None, min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    #: The user message; default: the case's input as it is.
    prompt: str = "{input}"
    system: str | None = None
    collections: list[str] | None = None
    #: A registered workflow run once per case instead of a model call: its input is
    #: ``workflow_input`` (string values are templates over the case's fields, others are
    #: passed as they are), its answer the run's output, or the field ``workflow_output``
    #: of it.
    workflow: str | None = None
    workflow_input: dict[str, Any] | None = None
    workflow_output: str | None = None

    @model_validator(mode="after")
    def _model_or_workflow(self) -> Candidate:
        if (self.model is None) == (self.workflow is None):
            raise ValueError("a candidate names either a model or a workflow")
        if self.workflow is not None and self.workflow_input is None:
            raise ValueError(
                "a workflow candidate needs workflow_input: the run's input, e.g. "
                '{"question": "{input}"}'
            )
        if self.workflow is None and (self.workflow_input or self.workflow_output):
            raise ValueError("workflow_input and workflow_output belong to workflow candidates")
        for value in (self.workflow_input or {}).values():
            if isinstance(value, str):
                template_fields(value)
        return self

    @field_validator("prompt", "system")
    @classmethod
    def _safe_template(cls, value: str | None) -> str | None:
        if value is not None:
            template_fields(value)
        return value

    @field_validator("params")
    @classmethod
    def _no_reserved_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = {"model", "messages", "stream", "n"} & value.keys()
        if reserved:
            raise ValueError(f"params may not set {sorted(reserved)}: the suite decides these")
        return value


class MetricSpec(BaseModel):
    """A metric and its options (``{name: regex, pattern: "^yes"}``, or just ``bleu``)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


DEFAULT_PAIRWISE_PROMPT = (
    "You are comparing two answers to the same question.\n"
    "Criteria: {criteria}\n\n"
    "Question: {input}\n"
    "Reference answer (may be empty): {expected}\n"
    "Answer 1: {first}\n"
    "Answer 2: {second}\n\n"
    "Which answer is better? Reply as JSON: "
    '{{"preference": "1" or "2" or "tie", "reason": "<one sentence>"}}'
)

#: The key prefix of stored pairwise verdicts (no candidate may be named so).
PAIRWISE_PREFIX = "pairwise#"


class PairwiseSpec(BaseModel):
    """``{judge: ALIAS, a: CANDIDATE, b: CANDIDATE, criteria: "..."}`` in a suite."""

    model_config = ConfigDict(extra="forbid")

    judge: str = Field(min_length=1)
    a: str = Field(min_length=1)
    b: str = Field(min_length=1)
    criteria: str = "Which answer is more correct, helpful and concise?"
    prompt: str = DEFAULT_PAIRWISE_PROMPT
    max_tokens: int = Field(default=128, ge=1, le=4096)

    @field_validator("prompt")
    @classmethod
    def _safe_template(cls, value: str) -> str:
        template_fields(value)
        return value


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="suite", min_length=1, max_length=100)
    #: A JSONL/CSV path (relative to the suite file) or a stored ``name@version``.
    dataset: str = Field(min_length=1)
    candidates: list[Candidate] = Field(min_length=1)
    metrics: list[MetricSpec] = Field(default_factory=list)
    repeats: int = Field(default=1, ge=1, le=100)
    concurrency: int = Field(default=4, ge=1, le=256)
    #: Pairwise preference judging between two candidates (evals/pairwise.py).
    pairwise: list[PairwiseSpec] = Field(default_factory=list)

    @field_validator("metrics", mode="before")
    @classmethod
    def _names_as_specs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _unique_candidates(self) -> Suite:
        names = [c.name for c in self.candidates]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ValueError(f"two candidates are named {duplicate!r}")
        reserved = next((n for n in names if n.startswith(PAIRWISE_PREFIX)), None)
        if reserved is not None:
            raise ValueError(
                f"candidate {reserved!r}: names starting {PAIRWISE_PREFIX!r} are reserved"
            )
        for spec in self.pairwise:
            for side in (spec.a, spec.b):
                if side not in names:
                    raise ValueError(f"pairwise: no candidate is named {side!r}")
            if spec.a == spec.b:
                raise ValueError("pairwise: a and b must be two different candidates")
        return self


def parse_suite(data: Any, source: str = "suite") -> Suite:
    """Validate suite data (already parsed from YAML or JSON)."""
    if not isinstance(data, dict):
        raise SuiteError(f"{source}: a suite must be a mapping")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "suite"
        raise SuiteError(f"{source}: {where}: {error['msg']}") from None
    from trellis.evals.metrics import build_metrics  # checks names and options early

    try:
        build_metrics(suite.metrics)
    except ValueError as exc:
        raise SuiteError(f"{source}: metrics: {exc}") from None
    return suite


def load_suite(path: str | Path) -> tuple[Suite, Path]:
    """The suite in a YAML file, and the folder its relative dataset path is read from."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(f"suite file {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}") from None
    return parse_suite(data, str(path)), path.parent

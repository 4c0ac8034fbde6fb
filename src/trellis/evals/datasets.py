"""Eval datasets: one case per line of a JSONL or CSV file, validated and versioned by content.

A case has an ``id``, an ``input`` (a string or an OpenAI-style messages list) and
optionally ``expected`` (the reference answer), ``context`` (passages for RAG),
``relevant_ids`` (the documents a retriever should find) and ``metadata``. A mistake names
the file and the line (CSV: the record's first line), so a 10,000-line dataset is fixable.

The version is a hash of the cases' canonical JSON: the same cases in the same order are
the same version whatever the file's format or whitespace.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trellis.errors import InvalidRequestError

__all__ = ["Case", "Dataset", "DatasetError", "load_dataset", "parse_dataset", "content_hash"]

#: Dataset names: what ``name@hash`` references and file stems look like.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class DatasetError(InvalidRequestError):
    """A dataset file that cannot be used; the message names the line."""

    code = "invalid_dataset"


class Case(BaseModel):
    """One evaluation case."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    input: str | list[dict[str, Any]]
    expected: str | None = None
    context: list[str] | None = None
    relevant_ids: list[str] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("input")
    @classmethod
    def _messages_have_roles(cls, value: str | list[dict[str, Any]]) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("a messages list needs at least one message")
            for number, message in enumerate(value, 1):
                if not isinstance(message.get("role"), str) or "content" not in message:
                    raise ValueError(f"message {number} needs a 'role' and a 'content'")
        return value

    def fields(self) -> dict[str, Any]:
        """The values a prompt template may use: the case's own fields and its metadata."""
        values: dict[str, Any] = dict(self.metadata)
        values.update(
            id=self.id,
            input=self.input if isinstance(self.input, str) else _messages_text(self.input),
            expected=self.expected or "",
            context="\n\n".join(self.context or []),
        )
        return values


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    cases: list[Case]
    #: Content hash of the cases (12 hex digits): the dataset's version.
    version: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def content_hash(cases: list[Case]) -> str:
    """The version of a list of cases: sha256 of their canonical JSON, 12 hex digits."""
    canonical = json.dumps(
        [case.model_dump(exclude_defaults=True) for case in cases],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def load_dataset(path: str | Path, name: str | None = None) -> Dataset:
    """Read a ``.jsonl`` or ``.csv`` file into a validated, versioned dataset."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"dataset file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"dataset file {str(path)!r} cannot be read: {exc}") from None
    fmt = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    return parse_dataset(text, fmt=fmt, name=name or path.stem, source=str(path))


def parse_dataset(
    text: str, *, fmt: str = "jsonl", name: str = "dataset", source: str = "dataset"
) -> Dataset:
    """Parse dataset text (``jsonl`` or ``csv``); errors say ``source:line``."""
    if not re.match(NAME_PATTERN, name):
        raise DatasetError(
            f"dataset name {name!r} must be 1-100 letters, digits, '.', '_' or '-'", param="name"
        )
    if fmt == "jsonl":
        rows = list(_jsonl_rows(text, source))
    elif fmt == "csv":
        rows = list(_csv_rows(text, source))
    else:
        raise DatasetError(f"unknown dataset format {fmt!r}: use jsonl or csv", param="format")
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        try:
            case = Case.model_validate(row)
        except ValidationError as exc:
            raise DatasetError(f"{source}:{line}: {_first_error(exc)}") from None
        if case.id in seen:
            raise DatasetError(
                f"{source}:{line}: duplicate id {case.id!r} (first on line {seen[case.id]})"
            )
        seen[case.id] = line
        cases.append(case)
    if not cases:
        raise DatasetError(f"{source}: the dataset has no cases")
    return Dataset(name=name, cases=cases, version=content_hash(cases))


def _jsonl_rows(text: str, source: str) -> Any:
    # Lines end at "\n" only: str.splitlines() would also cut at U+2028, U+0085 ...,
    # which JSON allows unescaped inside strings (jq writes them so).
    for number, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{source}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{source}:{number}: a case must be a JSON object")
        yield number, row


#: CSV columns holding JSON (a messages list in ``input`` starts with ``[``).
_CSV_JSON = ("context", "relevant_ids", "metadata")


def _csv_rows(text: str, source: str) -> Any:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        return
    for column in ("id", "input"):
        if column not in reader.fieldnames:
            raise DatasetError(f"{source}:1: the CSV header needs an {column!r} column")
    line = reader.line_num + 1
    for record in reader:
        if None in record:
            raise DatasetError(f"{source}:{line}: more values than header columns")
        row: dict[str, Any] = {k: v for k, v in record.items() if v not in ("", None)}
        for column in (*_CSV_JSON, "input"):
            value = row.get(column)
            if value is None or (column == "input" and not value.lstrip().startswith("[")):
                continue
            try:
                row[column] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{source}:{line}: column {column!r} is not valid JSON ({exc.msg})"
                ) from None
        yield line, row
        line = reader.line_num + 1


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "missing":
        return f"missing field {where!r}"
    if error["type"] == "extra_forbidden":
        return f"unknown field {where!r} (put extra values under 'metadata')"
    return f"field {where!r}: {error['msg']}"


def _messages_text(messages: list[dict[str, Any]]) -> str:
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(str(content or ""))
    return "\n".join(parts)

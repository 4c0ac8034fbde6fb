"""Typed model output: a pydantic model or a JSON Schema as ``response_format`` and as the
validator of the answer.

Its own module because the ``llm`` step, the agent's constrained JSON and the gate's
``schema_valid``/``judge`` checks all need the same two things from an output spec: what to
ask the model for, and whether (and why not) an answer satisfies it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from trellis.errors import ConfigurationError

__all__ = ["OutputSchema", "OutputSpec", "output_schema", "schema_name"]

#: What ``output=`` accepts: a pydantic model class, a JSON Schema, or None for plain text.
OutputSpec = type[BaseModel] | Mapping[str, Any] | None

_NAME = re.compile(r"[^a-zA-Z0-9_-]")
#: A whole answer fenced as a Markdown code block (hosted models do this despite the schema).
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)
#: Longest error text fed back to the model in a repair message.
MAX_ERROR_CHARS = 600


def schema_name(name: str) -> str:
    """``json_schema.name`` as OpenAI accepts it: ``[a-zA-Z0-9_-]{1,64}``."""
    return (_NAME.sub("_", name) or "output")[:64]


@dataclass(frozen=True, slots=True)
class OutputSchema:
    """The ``response_format`` to send and the parser of the answer.

    ``parse`` returns the typed value (a model instance, or the JSON value for a
    JSON Schema) or raises ``ValueError`` whose message says what is wrong, short
    enough to feed back to the model.
    """

    name: str
    schema: dict[str, Any]
    parse: Callable[[str], Any]

    @property
    def response_format(self) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": self.schema}}

    def check(self, value: Any) -> Any:
        """Validate an already-parsed value (a dict, a model instance, a JSON string)."""
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        text = value if isinstance(value, str) else json.dumps(value)
        return self.parse(text)


def _unfenced(text: str) -> str:
    match = _FENCE.match(text)
    return match.group(1) if match else text


def _short(message: str) -> str:
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 1] + "…"


def _model_parser(model: type[BaseModel]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return model.model_validate_json(_unfenced(text))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or '(root)'}: {error['msg']}"
                for error in exc.errors(include_url=False)[:8]
            )
            raise ValueError(_short(problems)) from None

    return parse


def _schema_parser(schema: dict[str, Any]) -> Callable[[str], Any]:
    try:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError, best_match
    except ImportError as exc:  # pragma: no cover - jsonschema comes with the local extra
        raise ConfigurationError(
            "a JSON Schema output needs the jsonschema package (pip install 'trellis[local]'),"
            " or pass a pydantic model"
        ) from exc
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ConfigurationError(f"output is not a valid JSON Schema: {exc.message}") from None
    validator = Draft202012Validator(schema)

    def parse(text: str) -> Any:
        try:
            value = json.loads(_unfenced(text))
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        error = best_match(validator.iter_errors(value))
        if error is not None:
            raise ValueError(_short(f"{error.message} at {error.json_path}"))
        return value

    return parse


def output_schema(output: OutputSpec, name: str | None = None) -> OutputSchema | None:
    """The schema and parser for ``output``; None for plain-text output."""
    if output is None:
        return None
    if isinstance(output, type) and issubclass(output, BaseModel):
        return OutputSchema(
            schema_name(name or output.__name__), output.model_json_schema(), _model_parser(output)
        )
    if isinstance(output, Mapping):
        schema = dict(output)
        return OutputSchema(
            schema_name(name or str(schema.get("title") or "output")),
            schema,
            _schema_parser(schema),
        )
    raise ConfigurationError(
        f"output must be a pydantic model class or a JSON Schema dict, not {type(output)!r}"
    )

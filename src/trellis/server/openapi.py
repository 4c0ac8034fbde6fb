"""The published OpenAPI schema: what each operation reads, who may call it, how it fails.

Clients are generated from ``/openapi.json``, so it must say what the server does.
FastAPI derives it from endpoint signatures, but Trellis' endpoints read and validate
their bodies themselves (a bounded read, OpenAI-style 400s instead of FastAPI's 422s)
and authenticate in code, so a signature says none of that. Each route declares it
with :func:`operation`; :func:`publish` rewrites FastAPI's schema from those
declarations once, when the schema is first asked for. Nothing here runs per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from trellis.settings import Settings

__all__ = ["ErrorResponse", "OperationDoc", "operation", "publish", "SCHEME", "UPSTREAM_ERRORS"]

#: The security scheme's name in ``components.securitySchemes``.
SCHEME = "bearer"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body: every 4xx and 5xx Trellis sends has this shape."""

    error: ErrorDetail


#: The meaning of each error status, as the published responses describe it.
_ERRORS: dict[int, str] = {
    400: "Invalid request: malformed JSON, a missing or wrong field, or a parameter "
    "out of range (Trellis answers 400, not 422, as OpenAI does).",
    401: "No API key, or an unknown or revoked one.",
    403: "The API key lacks the scope this operation needs, or may not use the model.",
    404: "The model, collection or other resource does not exist.",
    408: "The request body did not arrive within the server's `body_timeout`.",
    409: "The change conflicts with the current state: a write during a re-index, or "
    "revoking the admin key set in the configuration.",
    413: "The request body is larger than the server's `max_body_bytes`.",
    422: "The answer was refused by the model alias's output guard (`output_blocked`); "
    "request validation errors are 400s.",
    429: "Rate limited: a limit of the key or its project is reached (code "
    "`rate_limit_exceeded`, with OpenAI's `x-ratelimit-*` headers) or a budget is spent "
    "(code `budget_exceeded`), every attempt at the upstream provider was, or (starting a "
    "workflow run) the run queue is full (`orchestration.max_queued_runs`); `Retry-After` "
    "says when to try again.",
    502: "The upstream provider failed or answered malformed data.",
    503: "No deployment is available: the provider is unreachable or every breaker is open.",
    504: "The upstream provider timed out.",
}

#: The errors of an operation that calls a model provider.
UPSTREAM_ERRORS = (429, 502, 503, 504)


@dataclass(frozen=True, slots=True)
class OperationDoc:
    """What an operation's signature does not say: its key scope (None: open to all),
    its JSON body, its answer's schema and the errors it may answer."""

    scope: str | tuple[str, ...] | None
    body: type[BaseModel] | None = None
    reply: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    #: Open (no key) when this is true of the settings, as ``/metrics`` by default.
    open_when: Callable[[Settings], bool] | None = None
    #: With ``stream: true`` the answer is server-sent events, each one of these as JSON.
    events: type[BaseModel] | None = None
    #: Statuses other than the success one that answer with ``reply`` (a 503 "not ready").
    reply_also: tuple[int, ...] = ()

    def statuses(self, settings: Settings, *, has_query: bool) -> list[int]:
        """Every error status the operation may answer, in order."""
        found = set(self.errors)
        if self.needs_key(settings):
            found |= {401, 403}
        if self.body is not None:
            found |= {400, 408, 413}
        if has_query:  # a query parameter out of range
            found.add(400)
        return sorted(found)

    def needs_key(self, settings: Settings) -> bool:
        return self.scope is not None and not (self.open_when and self.open_when(settings))


#: The extension key that ties an operation in FastAPI's schema to its declaration.
_MARK = "x-trellis-operation"

#: Every declared contract, by the key its route carries (declared once, at import).
_DECLARED: dict[str, OperationDoc] = {}


def operation(
    *,
    scope: str | tuple[str, ...] | None,
    body: type[BaseModel] | None = None,
    reply: type[BaseModel] | None = None,
    errors: Iterable[int] = (),
    open_when: Callable[[Settings], bool] | None = None,
    events: type[BaseModel] | None = None,
    reply_also: Iterable[int] = (),
) -> dict[str, Any]:
    """A route's published contract (see :class:`OperationDoc`), as keyword arguments for
    its decorator: ``@router.post("/x", **operation(scope=ADMIN, body=X))``. The route
    carries a key in ``openapi_extra``, which :func:`publish` replaces by the contract."""
    doc = OperationDoc(scope, body, reply, tuple(errors), open_when, events, tuple(reply_also))
    key = str(len(_DECLARED))
    _DECLARED[key] = doc
    return {"openapi_extra": {_MARK: key}}


#: A model's JSON schema reference, by (model, "validation" or "serialization").
Refs = dict[Any, dict[str, Any]]


def _components(docs: Iterable[OperationDoc]) -> tuple[Refs, dict[str, Any]]:
    """JSON schemas of every body and answer model: refs by (model, mode), and the
    component schemas those refs point into."""
    models: set[tuple[type[BaseModel], Literal["validation", "serialization"]]] = {
        (ErrorResponse, "serialization")
    }
    for doc in docs:
        if doc.body is not None:
            models.add((doc.body, "validation"))
        if doc.reply is not None:
            models.add((doc.reply, "serialization"))
        if doc.events is not None:
            models.add((doc.events, "serialization"))
    ordered = sorted(models, key=lambda item: (item[0].__name__, item[1]))
    refs, defs = models_json_schema(ordered, ref_template="#/components/schemas/{model}")
    return refs, defs.get("$defs", {})


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _event_schema(event_ref: dict[str, Any], error_ref: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event of a stream (Open API 3.1 describes a stream by its events)."""
    return {
        "type": "object",
        "description": "With `stream: true`: `data: {chunk}` events, then `data: [DONE]`. "
        "A failure mid-stream is a last event with an error body, and no `[DONE]`.",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [event_ref, error_ref]},
                    },
                ]
            },
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    }


def _document(op: dict[str, Any], doc: OperationDoc, settings: Settings, refs: Refs) -> None:
    error_ref = refs[(ErrorResponse, "serialization")]
    responses: dict[str, Any] = op["responses"]
    responses.pop("422", None)  # FastAPI's validation error: Trellis answers 400
    success = next(status for status in responses if status.startswith("2"))
    if doc.reply is not None:
        reply = _json(refs[(doc.reply, "serialization")])
        responses[success]["content"] = reply
        for status in doc.reply_also:
            responses[str(status)] = {"description": HTTPStatus(status).phrase, "content": reply}
    if doc.events is not None:
        responses[success]["content"]["text/event-stream"] = {
            "schema": _event_schema(refs[(doc.events, "serialization")], error_ref)
        }
    has_query = any(param.get("in") == "query" for param in op.get("parameters", ()))
    for status in doc.statuses(settings, has_query=has_query):
        responses[str(status)] = {
            "description": _ERRORS.get(status, HTTPStatus(status).phrase),
            "content": _json(error_ref),
        }
    if doc.body is not None:
        op["requestBody"] = {"required": True, "content": _json(refs[(doc.body, "validation")])}
    if doc.needs_key(settings):
        op["security"] = [{SCHEME: []}, {"apiKeyHeader": []}]
        scopes = (doc.scope,) if isinstance(doc.scope, str) else doc.scope or ()
        named = " or ".join(f"`{scope}`" for scope in scopes)
        scope = f"Needs an API key with the {named} scope (an `admin` key may do anything)."
        op["description"] = f"{op.get('description', '')}\n\n{scope}".strip()
    else:
        op["security"] = []


def publish(schema: dict[str, Any], settings: Settings) -> None:
    """Rewrite FastAPI's ``schema`` (in place) from the routes' :func:`operation` contracts."""
    documented = [
        (op, _DECLARED[op.pop(_MARK)])
        for item in schema.get("paths", {}).values()
        for op in item.values()
        if isinstance(op, dict) and _MARK in op
    ]
    refs, defs = _components(doc for _, doc in documented)
    for op, doc in documented:
        _document(op, doc, settings, refs)
    components = schema.setdefault("components", {})
    shown = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        shown.pop(unused, None)
    shown.update(defs)
    components["securitySchemes"] = {
        SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "A Trellis API key: `Authorization: Bearer <key>`.",
        },
        "apiKeyHeader": {
            "type": "apiKey",
            "in": "header",
            "name": "x-api-key",
            "description": "The same key in an `x-api-key` header, for clients that send it so.",
        },
    }

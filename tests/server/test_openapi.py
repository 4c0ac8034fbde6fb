"""The published ``/openapi.json`` is what the server does: clients are generated from it.

The schema is checked by reading it (request bodies, security, error responses) and by
schemathesis, which generates requests from it and sends them to a real server on
loopback (in front of a fake upstream), checking every answer against the schema.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from trellis.settings import Settings
from trellis.testing.server import ServerThread, wait_for_trace

from .conftest import ADMIN_KEY

OPEN_PATHS = {"/healthz", "/readyz", "/metrics"}
FLOWS = Path(__file__).resolve().parent.parent / "flows"


@pytest.fixture
def server(
    monkeypatch: pytest.MonkeyPatch,
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
) -> ServerThread:
    """The gateway with the test workflows registered, so their routes answer with success."""
    monkeypatch.syspath_prepend(str(FLOWS))
    return make_server(make_settings(workflows=["api_flows:review", "api_flows:slow"]))


@pytest.fixture
def openapi(server: ServerThread) -> dict[str, Any]:
    return httpx.get(server.url + "/openapi.json").json()  # type: ignore[no-any-return]


def _operations(openapi: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def _body_schema(openapi: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    body = openapi["paths"][path][method]["requestBody"]
    assert body["required"] is True
    ref = body["content"]["application/json"]["schema"]["$ref"]
    return openapi["components"]["schemas"][ref.rsplit("/", 1)[1]]  # type: ignore[no-any-return]


def test_request_bodies_are_published(openapi: dict[str, Any]) -> None:
    chat = _body_schema(openapi, "/v1/chat/completions", "post")
    assert {"model", "messages"} <= set(chat["required"])
    assert "temperature" in chat["properties"] and "trellis" in chat["properties"]
    embedding = _body_schema(openapi, "/v1/embeddings", "post")
    assert {"model", "input"} <= set(embedding["required"])
    expected = {
        ("/v1/keys", "post"): "name",
        ("/v1/collections", "post"): "name",
        ("/v1/collections/{name}/documents", "post"): "documents",
        ("/v1/collections/{name}/search", "post"): "query",
        ("/v1/alerts/rules", "post"): "name",
        ("/v1/traces/{trace_id}/scores", "post"): "value",
    }
    for (path, method), field in expected.items():
        assert field in _body_schema(openapi, path, method)["required"], path
    # Every operation that reads a body says so (re-indexing, cancelling and resuming an
    # eval run, running a schedule now read none).
    bodiless = (
        "/reindex",
        "/cancel",
        "/v1/evals/runs/{run_id}/resume",
        "/v1/evals/schedules/{name}/run",
    )
    for path, method, operation in _operations(openapi):
        if method == "post" and not path.endswith(bodiless):
            assert "requestBody" in operation, (method, path)


def test_bearer_keys_are_the_security_scheme_and_probes_are_open(
    openapi: dict[str, Any],
) -> None:
    schemes = openapi["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    for path, method, operation in _operations(openapi):
        if path in OPEN_PATHS:
            assert operation.get("security") == [], path
            assert "401" not in operation["responses"], path
        else:
            assert {"bearer": []} in operation["security"], (method, path)
            assert {"401", "403"} <= set(operation["responses"]), (method, path)


def test_error_responses_are_the_ones_trellis_sends(openapi: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in openapi["components"]["schemas"]
    error = openapi["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    for path, method, operation in _operations(openapi):
        responses = operation["responses"]
        if path != "/v1/chat/completions":  # there only for the output guard's refusal
            assert "422" not in responses, (method, path)
        if "requestBody" in operation:
            assert {"400", "408", "413"} <= set(responses), (method, path)
        if "{" in path:
            assert "404" in responses, (method, path)
        for status, response in responses.items():
            if status.startswith(("4", "5")) and path not in OPEN_PATHS:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
    chat = openapi["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "403", "404", "413", "429", "502", "503", "504"} <= set(chat)
    assert "output_blocked" in chat["422"]["description"]
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}


def test_a_validation_error_is_the_documented_400_not_a_422(
    client: httpx.Client, openapi: dict[str, Any]
) -> None:
    response = client.get("/v1/traces", params={"limit": "many"})
    assert response.status_code == 400
    assert "400" in openapi["paths"]["/v1/traces"]["get"]["responses"]


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,  # an operation that publishes a security requirement enforces it
]


def _conformance_failures(
    operation: APIOperation, headers: dict[str, str], mode: GenerationMode, examples: int
) -> list[str]:
    """Schemathesis' checks on generated requests to one operation: the first failure, as
    text. ``mode`` is valid (positive) or invalid (negative) requests."""
    failures: list[str] = []

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def run(case: Any) -> None:
        try:
            case.call_and_validate(headers=headers, checks=CHECKS)
        except FailureGroup as exc:
            if not failures:  # the first is enough to tell what is wrong
                failures.append(f"{operation.label} ({mode.value}): {exc}")

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE  # nothing of this operation can be invalid
    return failures


def _succeeding_cases(schema: Any, client: httpx.Client) -> list[Any]:
    """Requests that succeed (generated ones mostly name models, collections and traces
    that do not exist), so that success answers are checked against the schema too."""
    hello = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}]}
    answer = client.post("/v1/chat/completions", json=hello)
    trace = {"trace_id": answer.headers["x-trellis-trace-id"]}
    wait_for_trace(client, trace["trace_id"])
    review = {"input": {"text": "a draft long enough to wait"}}
    waiting = client.post("/v1/workflows/review/runs", json=review).json()
    done = client.post("/v1/workflows/slow/runs", json={"input": {}}).json()
    runs = "/v1/runs/{run_id}"
    cases = '{"id": "a", "input": "Hi", "expected": "Hello"}'
    dataset = client.post("/v1/evals/datasets", json={"name": "hi", "content": cases}).json()
    suite = {
        "dataset": f"hi@{dataset['version']}",
        "candidates": [{"name": "a", "model": "gpt-test"}],
        "metrics": ["exact"],
    }
    eval_run = client.post("/v1/evals/runs", json={"suite": suite}).json()
    while client.get(f"/v1/evals/runs/{eval_run['id']}").json()["status"] == "running":
        time.sleep(0.02)
    eval_runs = "/v1/evals/runs/{run_id}"
    return [
        schema["/v1/evals/datasets"]["POST"].Case(body={"name": "hi", "content": cases}),
        schema["/v1/evals/datasets"]["GET"].Case(),
        schema["/v1/evals/runs"]["POST"].Case(body={"suite": suite}),
        schema["/v1/evals/runs"]["GET"].Case(),
        schema[eval_runs]["GET"].Case(path_parameters={"run_id": eval_run["id"]}),
        schema[eval_runs + "/resume"]["POST"].Case(path_parameters={"run_id": eval_run["id"]}),
        schema["/v1/evals/compare"]["POST"].Case(
            body={
                "baseline": eval_run["id"],
                "candidate": eval_run["id"],
                "fail_on": ["exact:-0.1"],
            }
        ),
        schema["/v1/workflows"]["GET"].Case(),
        schema["/v1/workflows/{name}/runs"]["POST"].Case(
            path_parameters={"name": "review"}, body=review
        ),
        schema["/v1/workflows/{name}/runs"]["POST"].Case(
            path_parameters={"name": "slow"}, body={"input": {}, "stream": True}
        ),
        schema["/v1/runs"]["GET"].Case(query={"workflow": "review", "status": "waiting"}),
        schema[runs]["GET"].Case(path_parameters={"run_id": done["id"]}),
        schema[runs + "/resume"]["POST"].Case(
            path_parameters={"run_id": waiting["id"]}, body={"input": True}
        ),
        schema[runs + "/cancel"]["POST"].Case(path_parameters={"run_id": done["id"]}),
        schema["/v1/chat/completions"]["POST"].Case(body=hello),
        schema["/v1/chat/completions"]["POST"].Case(body={**hello, "stream": True}),
        schema["/v1/embeddings"]["POST"].Case(body={"model": "embed-test", "input": ["a", "b"]}),
        schema["/v1/models/{model_id}"]["GET"].Case(path_parameters={"model_id": "gpt-test"}),
        schema["/v1/traces/{trace_id}"]["GET"].Case(path_parameters=trace),
        schema["/v1/traces/{trace_id}/scores"]["POST"].Case(
            path_parameters=trace, body={"name": "helpful", "value": 1}
        ),
        schema["/v1/collections"]["POST"].Case(body={"name": "docs"}),
        schema["/v1/collections/{name}/search"]["POST"].Case(
            path_parameters={"name": "docs"}, body={"query": "otters", "mode": "keyword"}
        ),
        schema["/v1/collections/{name}/documents"]["GET"].Case(path_parameters={"name": "docs"}),
        schema["/v1/alerts/rules"]["POST"].Case(
            body={"name": "slow", "kind": "latency", "threshold": 500}
        ),
    ]


@pytest.mark.timeout(60)
def test_the_server_conforms_to_its_published_schema(
    server: ServerThread, client: httpx.Client
) -> None:
    """Schemathesis against the running server, with a bounded number of valid (12) and
    invalid (4) requests per operation: no 5xx, every status code, content type and
    body is one the schema publishes, and every operation that requires a key refuses a
    request without one. ~400 requests, ~15 s on two busy cores."""
    config = SchemathesisConfig.from_dict({"request-timeout": 10})
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", config=config)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    failures: list[str] = []
    for case in _succeeding_cases(schema, client):
        response = case.call(headers=headers)
        assert response.status_code < 300, (case.operation.label, response.text)
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as exc:
            failures.append(f"{case.operation.label}: {exc}")
    operations = 0
    for result in schema.get_all_operations():
        operations += 1
        operation = result.ok()
        failures += _conformance_failures(operation, headers, GenerationMode.POSITIVE, 12)
        failures += _conformance_failures(operation, headers, GenerationMode.NEGATIVE, 4)
    assert operations >= 20
    assert not failures, "\n\n".join(failures)


def test_metrics_needs_a_key_in_the_schema_when_configured_so(
    make_server: Callable[[Settings], ServerThread], make_settings: Callable[..., Settings]
) -> None:
    server = make_server(make_settings(metrics_require_key=True))
    metrics = httpx.get(server.url + "/openapi.json").json()["paths"]["/metrics"]["get"]
    assert {"bearer": []} in metrics["security"]
    assert {"401", "403"} <= set(metrics["responses"])
    assert httpx.get(server.url + "/metrics").status_code == 401

"""Evals over HTTP through a real server: upload a dataset, start a run in the background,
poll it to its report, compare two runs, resume after a restart; scopes and 4xx errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from trellis.evals.store import EvalStore, RunRecord
from trellis.server.routes.evals import ComparisonReply, DatasetReply, EvalRunList, EvalRunReply
from trellis.settings import Settings
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.server import ServerThread

from .conftest import ADMIN_KEY

CONTENT = "\n".join(
    f'{{"id": "c{i}", "input": "case {i}", "expected": "Hello from the fake upstream"}}'
    for i in range(6)
)


def suite(dataset: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "http",
        "dataset": dataset,
        "candidates": [{"name": "a", "model": "gpt-test", "prompt": "Say: {input}"}],
        "metrics": ["exact", "chrf"],
        "concurrency": 2,
        **extra,
    }


async def stored_run(settings: Settings, run_id: str) -> RunRecord:
    async with Database(settings.resolved_database_url) as db:
        return await EvalStore(db).run(run_id)


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body  # type: ignore[no-any-return]


def key_client(server: ServerThread, client: httpx.Client, *scopes: str) -> httpx.Client:
    created = client.post("/v1/keys", json={"name": "-".join(scopes), "scopes": list(scopes)})
    assert created.status_code == 201, created.text
    return httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {created.json()['key']}"},
        timeout=30,
    )


def upload(http: httpx.Client) -> str:
    response = http.post("/v1/evals/datasets", json={"name": "hello", "content": CONTENT})
    assert response.status_code == 200, response.text
    reply = DatasetReply.model_validate(response.json())
    return f"{reply.name}@{reply.version}"


def finished(http: httpx.Client, run_id: str, timeout: float = 30) -> EvalRunReply:
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(f"/v1/evals/runs/{run_id}")
        assert response.status_code == 200, response.text
        run = EvalRunReply.model_validate(response.json())
        if run.status != "running":
            return run
        assert time.monotonic() < deadline, f"run {run_id} did not finish: {run}"
        time.sleep(0.05)


@pytest.fixture
def inference(server: ServerThread, client: httpx.Client) -> Iterator[httpx.Client]:
    with key_client(server, client, "inference") as http:
        yield http


def test_upload_run_poll_and_compare(
    client: httpx.Client, inference: httpx.Client, upstream: FakeUpstream
) -> None:
    ref = upload(inference)
    again = inference.post("/v1/evals/datasets", json={"name": "hello", "content": CONTENT})
    assert again.json()["created"] is False and again.json()["version"] == ref.split("@")[1]
    started = inference.post("/v1/evals/runs", json={"suite": suite(ref)})
    assert started.status_code == 200, started.text
    run = EvalRunReply.model_validate(started.json())
    assert run.total == 6 and run.dataset == ref
    done = finished(inference, run.id)
    assert done.status == "succeeded" and done.done == 6
    assert done.report is not None
    assert done.report["candidates"]["a"]["metrics"]["exact"] == 1.0
    assert all(row["trace_id"] for row in done.report["cases"])
    page = inference.get(f"/v1/evals/runs/{run.id}/report.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.text.split('id="case-table"')[1].count('<th scope="row">') == 6
    assert "<pre>case 3</pre>" in page.text  # the dataset's input beside the output
    # A second run whose model answers otherwise: compared, it fails the exact threshold.
    upstream.reply = "Something else"
    second = finished(
        inference, inference.post("/v1/evals/runs", json={"suite": suite(ref)}).json()["id"]
    )
    compared = inference.post(
        "/v1/evals/compare",
        json={"baseline": run.id, "candidate": second.id, "fail_on": ["exact:-0.1"]},
    )
    assert compared.status_code == 200, compared.text
    comparison = ComparisonReply.model_validate(compared.json())
    assert comparison.failed and comparison.paired_cases == 6
    exact = next(d for d in comparison.deltas if d["name"] == "exact")
    assert exact["delta"] == -1.0 and exact["failed"] == ["exact:-0.1"]
    assert "**REGRESSION**" in comparison.markdown
    listed = EvalRunList.model_validate(inference.get("/v1/evals/runs").json())
    assert {r.id for r in listed.data} == {run.id, second.id}
    assert client.get("/v1/evals/datasets").json()["data"][0]["cases"] == 6


def test_mistakes_are_4xx_with_openai_error_bodies(inference: httpx.Client) -> None:
    bad = inference.post("/v1/evals/datasets", json={"name": "x", "content": '{"id": "a"}\n'})
    assert "x:1: missing field 'input'" in error(bad, 400)["message"]
    error(inference.post("/v1/evals/datasets", json={"name": "../x", "content": "{}"}), 400)
    assert (
        "stored dataset"
        in error(inference.post("/v1/evals/runs", json={"suite": suite("cases.jsonl")}), 400)[
            "message"
        ]
    )
    error(inference.post("/v1/evals/runs", json={"suite": suite("nope@123456789012")}), 404)
    bad_metric = suite("nope", metrics=["blue"])
    assert (
        "unknown metric 'blue'"
        in error(inference.post("/v1/evals/runs", json={"suite": bad_metric}), 400)["message"]
    )
    error(inference.get("/v1/evals/runs/doesnotexist"), 404)
    error(inference.get("/v1/evals/runs/doesnotexist/report.html"), 404)
    error(inference.get("/v1/evals/runs/bad%20id/report.html"), 400)
    error(
        inference.post(
            "/v1/evals/compare", json={"baseline": "a", "candidate": "b", "fail_on": ["x"]}
        ),
        400,
    )


def test_scopes(server: ServerThread, client: httpx.Client, inference: httpx.Client) -> None:
    ref = upload(inference)
    run_id = inference.post("/v1/evals/runs", json={"suite": suite(ref)}).json()["id"]
    finished(inference, run_id)
    with key_client(server, client, "observer") as observer:
        assert observer.get(f"/v1/evals/runs/{run_id}").status_code == 200
        assert observer.get(f"/v1/evals/runs/{run_id}/report.html").status_code == 200
        error(observer.post("/v1/evals/runs", json={"suite": suite(ref)}), 403)
        error(observer.post("/v1/evals/datasets", json={"name": "x", "content": CONTENT}), 403)
    with key_client(server, client, "inference") as other:
        assert error(other.get(f"/v1/evals/runs/{run_id}"), 403)["code"] == "insufficient_scope"
        error(other.get(f"/v1/evals/runs/{run_id}/report.html"), 403)
        assert other.get("/v1/evals/runs").json()["data"] == []
    error(httpx.get(f"{server.url}/v1/evals/runs"), 401)


def test_a_run_left_unfinished_resumes_when_the_server_starts_again(
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
    upstream: FakeUpstream,
) -> None:
    settings = make_settings()
    server = make_server(settings)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        ref = upload(http)
        upstream.delay = 0.3
        run_id = http.post("/v1/evals/runs", json={"suite": suite(ref, concurrency=1)}).json()["id"]
        deadline = time.monotonic() + 20
        while http.get(f"/v1/evals/runs/{run_id}").json()["done"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    server.stop()  # the background run is stopped, left "running"
    record = asyncio.run(stored_run(settings, run_id))
    done_before = record.done
    assert record.status == "running" and 1 <= done_before < 6
    requests_before = len(upstream.requests)
    upstream.delay = 0.0
    restarted = make_server(settings)
    with httpx.Client(base_url=restarted.url, headers=headers, timeout=30) as http:
        final = finished(http, run_id)
        assert final.status == "succeeded" and final.done == 6
    # The cases stored before the restart were not asked again.
    assert len(upstream.requests) - requests_before <= 6 - done_before

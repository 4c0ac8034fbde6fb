"""Workflows over HTTP, registered by import path in settings, through a real server:
list, run (waiting and streaming), inspect, resume, cancel, list runs, and key scopes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from trellis.errors import ConfigurationError
from trellis.runtime import Trellis
from trellis.server.routes.workflows import RunEvent, RunList, RunReply, WorkflowList
from trellis.settings import Settings
from trellis.testing.server import ServerThread

from .conftest import ADMIN_KEY

FLOWS = Path(__file__).resolve().parent.parent / "flows"


@pytest.fixture
def flows_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FLOWS))


@pytest.fixture
def server(
    flows_path: None,
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
) -> ServerThread:
    return make_server(make_settings(workflows=["api_flows:review", "api_flows:slow"]))


def key_client(server: ServerThread, client: httpx.Client, *scopes: str) -> httpx.Client:
    created = client.post("/v1/keys", json={"name": "-".join(scopes), "scopes": list(scopes)})
    assert created.status_code == 201, created.text
    return httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {created.json()['key']}"},
        timeout=30,
    )


@pytest.fixture
def inference(server: ServerThread, client: httpx.Client) -> Iterator[httpx.Client]:
    with key_client(server, client, "inference") as http:
        yield http


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body  # type: ignore[no-any-return]


def test_registered_workflows_are_listed_with_schemas_and_graph(client: httpx.Client) -> None:
    response = client.get("/v1/workflows")
    assert response.status_code == 200, response.text
    listed = WorkflowList.model_validate(response.json())
    by_name = {flow.name: flow for flow in listed.data}
    assert list(by_name) == ["review", "slow"]
    review = by_name["review"]
    assert review.input_schema["required"] == ["text"]
    assert review.output_schema is not None
    assert set(review.output_schema["properties"]) == {"words", "verdict"}
    assert [s["kind"] for s in review.steps] == ["function", "human", "function"]
    # The router's Literal return annotation gives both of its edges.
    assert review.mermaid.startswith("flowchart TD")
    assert "s0 --> s1" in review.mermaid and "s0 --> s2" in review.mermaid
    assert "s2 --> end_" in review.mermaid


def test_a_run_waits_for_its_result(inference: httpx.Client, client: httpx.Client) -> None:
    response = inference.post("/v1/workflows/review/runs", json={"input": {"text": "short one"}})
    assert response.status_code == 200, response.text
    run = RunReply.model_validate(response.json())
    assert run.status == "succeeded"
    assert run.output == {"words": 2, "verdict": "published"}
    assert run.trace_id == response.headers["x-trellis-trace-id"]
    shown = client.get(f"/v1/runs/{run.id}").json()
    RunReply.model_validate(shown)
    assert [s["step"] for s in shown["steps"]] == ["count", "finish"]
    assert shown["state"]["words"] == 2 and shown["key_id"] == run.key_id is not None


def test_a_waiting_run_is_resumed_with_validated_human_input(inference: httpx.Client) -> None:
    started = inference.post(
        "/v1/workflows/review/runs", json={"input": {"text": "a rather long draft here"}}
    ).json()
    assert started["status"] == "waiting"
    assert started["waiting_for"]["step"] == "approve"
    run_id = started["id"]
    bad = inference.post(f"/v1/runs/{run_id}/resume", json={"input": "not a yes or no"})
    assert "approve" in error(bad, 400)["message"]
    assert error(inference.post(f"/v1/runs/{run_id}/resume", json={}), 400)["param"] == "input"
    resumed = inference.post(f"/v1/runs/{run_id}/resume", json={"input": False})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "succeeded"
    assert resumed.json()["output"] == {"words": 5, "verdict": "rejected"}
    # Not waiting any more: a second answer conflicts.
    again = inference.post(f"/v1/runs/{run_id}/resume", json={"input": True})
    assert "not waiting" in error(again, 409)["message"]
    steps = inference.get(f"/v1/runs/{run_id}").json()["steps"]
    assert [(s["step"], s["status"]) for s in steps][-2:] == [("approve", "ok"), ("finish", "ok")]


def test_bad_requests_are_openai_style_errors(inference: httpx.Client) -> None:
    unknown = inference.post("/v1/workflows/nope/runs", json={"input": {}})
    assert "nope" in error(unknown, 404)["message"]
    invalid = inference.post("/v1/workflows/review/runs", json={"input": {"words": "x"}})
    assert "invalid input" in error(invalid, 400)["message"]
    error(inference.post("/v1/workflows/review/runs", json={"inputs": {}}), 400)
    error(inference.get("/v1/runs/0123abcd"), 404)
    error(inference.post("/v1/runs/0123abcd/cancel"), 404)
    error(inference.get("/v1/runs", params={"status": "sleeping"}), 400)


def _events(response: httpx.Response) -> list[Any]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_a_streamed_run_sends_an_event_per_step_then_the_run(inference: httpx.Client) -> None:
    body = {"input": {"seconds": 0.1}, "stream": True}
    with inference.stream("POST", "/v1/workflows/slow/runs", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    assert events[-1] == "[DONE]"
    parsed = [RunEvent.model_validate(event) for event in events[:-1]]
    assert [(e.type, e.step.step if e.step else None) for e in parsed] == [
        ("step", "first"),
        ("step", "second"),
        ("step", "third"),
        ("run", None),
    ]
    final = parsed[-1].run
    assert final is not None and final.status == "succeeded" and final.state["naps"] == 3
    assert final.id == response.headers["x-trellis-run-id"]


def test_a_run_is_cancelled(inference: httpx.Client, server: ServerThread) -> None:
    # A long run started (and driven) by one request, cancelled through another.
    with httpx.Client(base_url=server.url, headers=inference.headers, timeout=30) as other:
        body = {"input": {"seconds": 30}, "stream": True}
        with other.stream("POST", "/v1/workflows/slow/runs", json=body) as response:
            run_id = response.headers["x-trellis-run-id"]
            cancelled = inference.post(f"/v1/runs/{run_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "cancelled"
            events = _events(response)
    assert events[-2]["type"] == "run" and events[-2]["run"]["status"] == "cancelled"
    listed = inference.get("/v1/runs", params={"status": "cancelled"}).json()
    assert [r["id"] for r in listed["data"]] == [run_id]


def test_runs_beyond_the_limit_queue_and_a_full_queue_answers_429(
    flows_path: None,
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        workflows=["api_flows:slow"],
        orchestration={"max_concurrent_runs": 1, "max_queued_runs": 1},
    )
    server = make_server(settings)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with (
        httpx.Client(base_url=server.url, headers=headers, timeout=30) as first,
        httpx.Client(base_url=server.url, headers=headers, timeout=30) as second,
        httpx.Client(base_url=server.url, headers=headers, timeout=30) as client,
    ):
        slow = {"input": {"seconds": 0.3}, "stream": True}
        quick = {"input": {"seconds": 0}, "stream": True}
        with (
            first.stream("POST", "/v1/workflows/slow/runs", json=slow) as running,
            second.stream("POST", "/v1/workflows/slow/runs", json=quick) as waiting,
        ):
            queued_id = waiting.headers["x-trellis-run-id"]
            listed = client.get("/v1/runs", params={"status": "queued"}).json()["data"]
            assert [r["id"] for r in listed] == [queued_id]
            refused = client.post("/v1/workflows/slow/runs", json={"input": {}})
            body = error(refused, 429)
            assert body["type"] == "rate_limit_error" and body["code"] == "too_many_runs"
            assert refused.headers["retry-after"] == "1"
            # The queued run's stream waits through the queue, then runs to the end.
            events = _events(waiting)
            first_events = _events(running)
    finals = [e["run"] for e in (events[-2], first_events[-2])]
    assert [r["status"] for r in finals] == ["succeeded", "succeeded"]
    assert finals[0]["created_at"] > finals[1]["created_at"]
    assert finals[0]["finished_at"] > finals[1]["finished_at"]
    assert [e["step"]["step"] for e in events[:-2]] == ["first", "second", "third"]


def test_keys_read_their_own_runs_and_observers_read_all(
    server: ServerThread, client: httpx.Client, inference: httpx.Client
) -> None:
    mine = inference.post("/v1/workflows/slow/runs", json={"input": {}}).json()
    admins = client.post("/v1/workflows/slow/runs", json={"input": {}}).json()
    with (
        key_client(server, client, "inference") as stranger,
        key_client(server, client, "observer") as observer,
    ):
        # Another inference key neither sees nor changes this key's runs.
        assert stranger.get("/v1/runs").json()["data"] == []
        assert "observer" in error(stranger.get(f"/v1/runs/{mine['id']}"), 403)["message"]
        error(stranger.post(f"/v1/runs/{mine['id']}/cancel"), 403)
        # An observer reads every run, but may not start one.
        everyone = RunList.model_validate(observer.get("/v1/runs").json())
        assert {r.id for r in everyone.data} == {mine["id"], admins["id"]}
        assert observer.get(f"/v1/runs/{mine['id']}").status_code == 200
        assert observer.get("/v1/workflows").status_code == 200
        error(observer.post("/v1/workflows/slow/runs", json={"input": {}}), 403)
    own = inference.get("/v1/runs", params={"workflow": "slow", "limit": 5}).json()["data"]
    assert [r["id"] for r in own] == [mine["id"]]
    assert inference.get("/v1/runs", params={"workflow": "review"}).json()["data"] == []
    error(httpx.get(f"{server.url}/v1/runs"), 401)


def test_an_unimportable_workflow_path_stops_the_start(
    flows_path: None, make_settings: Callable[..., Settings]
) -> None:
    import asyncio

    cases = {
        "api_flows:missing": "has no 'missing'",
        "no_such_module_xyz:flow": "cannot import 'no_such_module_xyz'",
        "api_flows:not_a_workflow": "is a dict, not a trellis Workflow",
    }
    for path, message in cases.items():
        runtime = Trellis(make_settings(workflows=[path]))
        with pytest.raises(ConfigurationError, match=message):
            asyncio.run(runtime.start())
        assert runtime.db is None  # refused before the database opened
    with pytest.raises(ValueError, match="not an import path"):
        make_settings(workflows=["api_flows.review"])


async def test_python_code_registers_workflows_on_the_runtime(
    flows_path: None, tmp_path: Path
) -> None:
    import api_flows

    settings = Settings(data_dir=tmp_path, include_local_models=False, admin_key=ADMIN_KEY)
    async with Trellis(settings) as runtime:
        runtime.workflows.register(api_flows.slow)
        assert [f.name for f in runtime.workflows.flows] == ["slow"]
        run = await runtime.workflows.run("slow", {})
        assert run.status == "succeeded"
        assert (await runtime.workflows.list(key_id="nobody")) == []
        assert [r.id for r in await runtime.workflows.list(workflow="slow")] == [run.id]


@pytest.mark.postgres
def test_the_scenarios_on_postgres(
    flows_path: None,
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
    new_postgres_database: Callable[[], str],
) -> None:
    """Resume, streaming, cancel and per-key listing again, on a fresh Postgres database."""
    settings = make_settings(
        workflows=["api_flows:review", "api_flows:slow"], database_url=new_postgres_database()
    )
    server = make_server(settings)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        with key_client(server, client, "inference") as inference:
            test_keys_read_their_own_runs_and_observers_read_all(server, client, inference)
        with key_client(server, client, "inference") as inference:
            test_a_waiting_run_is_resumed_with_validated_human_input(inference)
            test_a_streamed_run_sends_an_event_per_step_then_the_run(inference)
            test_a_run_is_cancelled(inference, server)

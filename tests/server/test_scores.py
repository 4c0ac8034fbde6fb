"""Scores over HTTP, and redacted bodies for requests that went through the gateway."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from trellis.settings import Settings
from trellis.testing.server import ServerThread, wait_for_trace

HELLO = {"model": "gpt-test", "messages": [{"role": "user", "content": "I am ann@example.com"}]}


def new_key(client: httpx.Client, *scopes: str) -> dict[str, str]:
    response = client.post("/v1/keys", json={"name": "k", "scopes": list(scopes)})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['key']}"}


def chat(server: ServerThread, headers: dict[str, str]) -> str:
    response = httpx.post(server.base_url + "/chat/completions", json=HELLO, headers=headers)
    assert response.status_code == 200, response.text
    return response.headers["x-trellis-trace-id"]


def test_scores_are_validated_stored_and_shown(client: httpx.Client, server: ServerThread) -> None:
    trace_id = chat(server, dict(client.headers))
    wait_for_trace(client, trace_id)
    url = f"/v1/traces/{trace_id}/scores"

    created = client.post(url, json={"name": "helpful", "value": 1, "comment": "great"})
    assert created.status_code == 201, created.text
    assert created.json()["source"] == "user" and created.json()["value"] == 1.0
    assert client.post(url, json={"name": "judge", "value": 0.4, "source": "eval"}).is_success

    for bad in (
        {"name": "x"},
        {"name": "x", "value": "high"},
        {"name": "x", "value": True},
        {"name": "", "value": 1},
        {"value": 1},
        {"name": "x", "value": 1, "source": "api"},
        {"name": "x", "value": 1, "comment": 5},
    ):
        response = client.post(url, json=bad)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert (
        client.post(
            url,
            content=b'{"name": "x", "value": 1e999}',
            headers={"content-type": "application/json"},
        ).status_code
        == 400
    )

    missing = client.post("/v1/traces/" + "0" * 32 + "/scores", json={"name": "x", "value": 1})
    assert missing.status_code == 404

    scores = wait_for_trace(client, trace_id)["scores"]
    assert [(s["name"], s["value"], s["source"]) for s in scores] == [
        ("helpful", 1.0, "user"),
        ("judge", 0.4, "eval"),
    ]


def test_an_inference_key_scores_only_its_own_traces(
    client: httpx.Client, server: ServerThread
) -> None:
    app_key = new_key(client, "inference")
    other_key = new_key(client, "inference")
    own = chat(server, app_key)
    other = chat(server, other_key)
    wait_for_trace(client, own)
    wait_for_trace(client, other)
    feedback = {"name": "thumbs_up", "value": 1}
    base = server.url
    assert (
        httpx.post(f"{base}/v1/traces/{own}/scores", json=feedback, headers=app_key).status_code
        == 201
    )
    assert (
        httpx.post(f"{base}/v1/traces/{other}/scores", json=feedback, headers=app_key).status_code
        == 404
    )
    # Reading stays observer-only.
    assert httpx.get(f"{base}/v1/traces/{own}", headers=app_key).status_code == 403
    observer = new_key(client, "observer")
    assert (
        httpx.post(f"{base}/v1/traces/{other}/scores", json=feedback, headers=observer).status_code
        == 201
    )
    assert httpx.post(f"{base}/v1/traces/{other}/scores", json=feedback).status_code == 401


def test_redacted_mode_through_the_gateway(
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
    admin_key: str,
) -> None:
    server = make_server(make_settings(tracing={"bodies": "redacted", "flush_interval": 0.05}))
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=server.url, headers=headers) as client:
        trace_id = chat(server, headers)
        trace = wait_for_trace(client, trace_id)
        root = next(s for s in trace["spans"] if s["parent_id"] is None)
        assert root["attributes"]["gen_ai.input.messages"][0]["content"] == "I am [EMAIL]"
        assert client.get("/v1/traces", params={"q": "ann@example"}).json()["data"] == []
        found = client.get("/v1/traces", params={"q": "[EMAIL]"}).json()["data"]
        assert [t["id"] for t in found] == [trace_id]
        client.post(
            f"/v1/traces/{trace_id}/scores",
            json={"name": "x", "value": 0, "comment": "from 10.0.0.7"},
        )
        assert wait_for_trace(client, trace_id)["scores"][0]["comment"] == "from [IP_ADDRESS]"

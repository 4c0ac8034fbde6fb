"""Auth, validation, limits and upstream failures: a clear OpenAI-style error, never a 500."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream, Fault
from trellis.testing.server import ServerThread

HELLO = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}]}


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"


def test_missing_and_wrong_keys_are_401(server: ServerThread) -> None:
    url = server.base_url + "/chat/completions"
    assert_error(httpx.post(url, json=HELLO), 401, "missing_api_key")
    error = assert_error(
        httpx.post(url, json=HELLO, headers={"Authorization": "Bearer tr-nope-nope-nope"}), 401
    )
    assert error["type"] == "authentication_error"
    assert_error(
        httpx.get(server.base_url + "/models", headers={"Authorization": "Basic abc"}), 401
    )


def test_scopes_and_allowed_models(client: httpx.Client, server: ServerThread) -> None:
    created = client.post(
        "/v1/keys", json={"name": "app", "scopes": ["inference"], "allowed_models": ["gpt-test"]}
    )
    assert created.status_code == 201
    secret = created.json()["key"]
    assert secret.startswith("tr-")
    headers = {"Authorization": f"Bearer {secret}"}
    assert (
        httpx.post(server.base_url + "/chat/completions", json=HELLO, headers=headers).status_code
        == 200
    )
    other = {**HELLO, "model": "tiny-context"}
    assert_error(
        httpx.post(server.base_url + "/chat/completions", json=other, headers=headers),
        403,
        "model_not_allowed",
    )
    models = httpx.get(server.base_url + "/models", headers=headers).json()["data"]
    assert [m["id"] for m in models] == ["gpt-test"]
    # An inference key cannot manage keys.
    assert_error(httpx.get(server.base_url + "/keys", headers=headers), 403, "insufficient_scope")


def test_the_configured_admin_key_is_protected(client: httpx.Client, admin_key: str) -> None:
    listed = client.get("/v1/keys").json()["data"]
    (configured,) = [k for k in listed if k["name"] == "admin (configured)"]
    # A short prefix only: at most a quarter of a configured key.
    assert configured["prefix"] == admin_key[: len(admin_key) // 4]
    # Revoking it would lock every admin out until a restart.
    assert_error(client.delete(f"/v1/keys/{configured['id']}"), 409, "configured_admin_key")
    assert client.get("/v1/keys").status_code == 200


def test_key_lifecycle_over_http(client: httpx.Client, server: ServerThread) -> None:
    created = client.post("/v1/keys", json={"name": "temp"}).json()
    listed = client.get("/v1/keys").json()["data"]
    assert any(k["id"] == created["id"] and "key" not in k for k in listed)
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert httpx.get(server.base_url + "/models", headers=headers).status_code == 200
    assert client.delete(f"/v1/keys/{created['id']}").json()["revoked"] is True
    assert_error(httpx.get(server.base_url + "/models", headers=headers), 401)
    # Already revoked: 404, as documented (it answered 200).
    assert_error(client.delete(f"/v1/keys/{created['id']}"), 404)
    assert_error(client.delete("/v1/keys/key_doesnotexist"), 404)
    assert_error(client.post("/v1/keys", json={"name": "x", "scopes": ["root"]}), 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-test"}, "messages"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "model"),
        ({**HELLO, "messages": []}, "messages"),
        ({**HELLO, "temperature": "hot"}, "temperature"),
        ({**HELLO, "temperature": 3}, "temperature"),
        ({**HELLO, "max_tokens": 0}, "max_tokens"),
        ({**HELLO, "messages": [{"role": "wizard", "content": "Hi"}]}, "messages.0.role"),
        ({**HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**HELLO, "messages": [{"role": "user"}]}, "messages.0"),
        ({**HELLO, "stream": "yes"}, "stream"),
        # Strict numbers and flags, as OpenAI's API: what is validated is what is sent.
        ({**HELLO, "temperature": "0.5"}, "temperature"),
        ({**HELLO, "max_tokens": 16.0}, "max_tokens"),
        ({**HELLO, "seed": "42"}, "seed"),
        ({**HELLO, "logit_bias": {"50256": "-100"}}, "logit_bias.50256"),
        ({**HELLO, "stream_options": {"include_usage": "true"}}, "stream_options.include_usage"),
    ],
)
def test_invalid_bodies_are_400(client: httpx.Client, body: dict, param: str) -> None:
    error = assert_error(client.post("/v1/chat/completions", json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_malformed_json_and_non_objects(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    assert_error(
        client.post("/v1/chat/completions", content=b"{not json", headers=headers),
        400,
        "invalid_json",
    )
    assert_error(
        client.post("/v1/chat/completions", content=b"[1, 2]", headers=headers), 400, "invalid_json"
    )
    assert_error(
        client.post("/v1/chat/completions", content=b"", headers=headers), 400, "empty_body"
    )
    assert_error(client.post("/v1/embeddings", json={"model": "embed-test", "input": []}), 400)
    assert_error(
        client.post("/v1/embeddings", json={"model": "embed-test", "input": [[1, 2]]}), 400
    )


def test_unknown_model_and_wrong_kind(client: httpx.Client) -> None:
    assert_error(
        client.post("/v1/chat/completions", json={**HELLO, "model": "nope"}), 404, "model_not_found"
    )
    assert_error(
        client.post("/v1/chat/completions", json={**HELLO, "model": "embed-test"}),
        400,
        "model_not_supported",
    )
    assert_error(client.post("/v1/embeddings", json={"model": "gpt-test", "input": "x"}), 400)


def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nothing-here"), 404)
    assert_error(client.get("/v1/chat/completions"), 405)


def test_oversize_body_is_413(
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
    admin_key: str,
) -> None:
    server = make_server(make_settings(max_body_bytes=2048))
    big = {**HELLO, "messages": [{"role": "user", "content": "x" * 5000}]}
    headers = {"Authorization": f"Bearer {admin_key}"}
    response = httpx.post(server.base_url + "/chat/completions", json=big, headers=headers)
    assert_error(response, 413, "request_too_large")
    # Also without a Content-Length header (chunked upload).
    chunks = iter([b'{"model": "gpt-test", "messages": [', b" " * 4096, b"]}"])
    response = httpx.post(server.base_url + "/chat/completions", content=chunks, headers=headers)
    assert_error(response, 413)


def test_upstream_failures_map_to_gateway_statuses(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    upstream.faults.always(Fault.status(500))
    error = assert_error(client.post("/v1/chat/completions", json=HELLO), 502)
    assert "after 2 attempts" in error["message"]
    upstream.faults.clear()

    upstream.faults.always(Fault.status(429, retry_after=0.01))
    assert_error(client.post("/v1/chat/completions", json=HELLO), 429, "rate_limit_exceeded")
    upstream.faults.clear()

    upstream.faults.always(Fault.delay(3.0))
    assert_error(client.post("/v1/chat/completions", json=HELLO), 504, "upstream_timeout")
    upstream.faults.clear()

    upstream.faults.push(Fault.status(400))
    error = assert_error(client.post("/v1/chat/completions", json=HELLO), 400)
    assert "openai error 400" in error["message"]


def test_unreachable_upstream_is_503(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, admin_key: str
) -> None:
    settings = Settings(
        data_dir=tmp_path / "d",
        admin_key=admin_key,
        include_local_models=False,
        retry={"attempts": 1},
        models=[
            {
                "name": "dead",
                "deployments": [
                    {
                        "provider": "openai-compatible",
                        "model": "x",
                        "base_url": "http://127.0.0.1:9/v1",
                    }
                ],
            }
        ],
    )
    server = make_server(settings)
    response = httpx.post(
        server.base_url + "/chat/completions",
        json={**HELLO, "model": "dead"},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    assert_error(response, 503, "upstream_unreachable")

"""The served app: hot endpoints past FastAPI's pipeline with its behaviour kept, and a
frozen startup heap."""

from __future__ import annotations

import gc
from collections.abc import Callable

import httpx
import pytest

from trellis.server.app import TrellisApp, _route_path, create_app
from trellis.settings import Settings
from trellis.testing.server import ServerThread

HELLO = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}]}


def test_hot_endpoints_are_called_directly_and_still_documented(server: ServerThread) -> None:
    app = server.app
    assert isinstance(app, TrellisApp)
    assert set(app.direct_routes) == {"/v1/chat/completions", "/v1/embeddings"}
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert "post" in paths["/v1/chat/completions"] and "post" in paths["/v1/embeddings"]


def test_an_unexpected_failure_is_a_500_error_body_not_a_dropped_connection(
    server: ServerThread, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = server.app.state.trellis.gateway

    async def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug in a stage")

    monkeypatch.setattr(gateway, "chat", broken)
    response = client.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and "bug" not in error["message"]
    # The server keeps serving on the same connection.
    monkeypatch.undo()
    assert client.post("/v1/chat/completions", json=HELLO).status_code == 200


def test_other_methods_on_hot_paths_go_through_fastapi(client: httpx.Client) -> None:
    response = client.get("/v1/chat/completions")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_route_path_strips_the_root_path() -> None:
    scope = {"path": "/api/v1/embeddings", "root_path": "/api"}
    assert _route_path(scope) == "/v1/embeddings"
    assert _route_path({"path": "/v1/embeddings", "root_path": ""}) == "/v1/embeddings"


def test_the_served_app_freezes_its_startup_objects_out_of_gc(
    make_settings: Callable[..., Settings],
) -> None:
    gc.unfreeze()
    try:
        with ServerThread(create_app(make_settings())) as plain:
            assert httpx.get(plain.url + "/healthz").status_code == 200
            assert gc.get_freeze_count() == 0
        with ServerThread(create_app(make_settings(), freeze_gc=True)) as served:
            assert httpx.get(served.url + "/healthz").status_code == 200
            assert gc.get_freeze_count() > 10_000  # modules, settings, the runtime
    finally:
        gc.unfreeze()

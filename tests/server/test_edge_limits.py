"""Input that used to reach a 500, or hold a connection, at the server's edge.

Each case runs against a real server on loopback: nesting limits on every JSON body,
unexpected errors that must close the connection cleanly, the time a body may take
to arrive, and the ``Allow`` header of a 405.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from trellis.settings import Settings
from trellis.testing.server import ServerThread

HELLO = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}]}


def nested(levels: int) -> Any:
    """An object nested ``levels`` deep: ``{"a": {"a": ... 1}}``."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    return error  # type: ignore[no-any-return]


# --- one nesting limit for every JSON body -------------------------------------------


@pytest.mark.parametrize("levels", [256, 900])
def test_a_deep_value_in_a_cacheable_chat_request_is_400(client: httpx.Client, levels: int) -> None:
    """``temperature: 0`` makes the request cacheable; its cache key could not be encoded."""
    body = {**HELLO, "temperature": 0, "metadata_x": nested(levels)}
    error = assert_error(client.post("/v1/chat/completions", json=body), 400, "nesting_too_deep")
    assert error["param"] == "metadata_x"
    assert "64 levels" in error["message"]
    # The connection and the server are fine afterwards.
    assert client.post("/v1/chat/completions", json={**HELLO, "temperature": 0}).status_code == 200


def test_the_limit_is_a_setting_and_counts_every_level(
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
    admin_key: str,
) -> None:
    server = make_server(make_settings(max_json_depth=10))
    headers = {"Authorization": f"Bearer {admin_key}"}
    url = server.base_url + "/chat/completions"
    # The body is one level, so a value nested 9 levels makes 10: accepted.
    assert httpx.post(url, json={**HELLO, "x": nested(9)}, headers=headers).status_code == 200
    assert_error(
        httpx.post(url, json={**HELLO, "x": [nested(9)]}, headers=headers), 400, "nesting_too_deep"
    )
    # Brackets inside strings are not nesting.
    text = {"role": "user", "content": "[{" * 500}
    assert httpx.post(url, json={**HELLO, "messages": [text]}, headers=headers).status_code == 200
    # The same limit on the embeddings endpoint and on FastAPI routes.
    assert_error(
        httpx.post(
            server.base_url + "/embeddings",
            json={"model": "embed-test", "input": "x", "x": nested(12)},
            headers=headers,
        ),
        400,
        "nesting_too_deep",
    )
    assert_error(
        httpx.post(server.base_url + "/keys", json={"name": "k", "x": nested(12)}, headers=headers),
        400,
        "nesting_too_deep",
    )


def test_deep_collection_metadata_is_refused_and_nothing_is_created(client: httpx.Client) -> None:
    response = client.post("/v1/collections", json={"name": "deep", "metadata": nested(256)})
    error = assert_error(response, 400, "nesting_too_deep")
    assert error["param"] == "metadata"
    assert client.get("/v1/collections/deep").status_code == 404
    listing = client.get("/v1/collections")
    assert listing.status_code == 200 and listing.json()["data"] == []


def test_deep_document_metadata_is_refused_and_listing_and_search_work(
    client: httpx.Client,
) -> None:
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    deep = {"documents": [{"id": "d", "text": "Otters crack shellfish.", "metadata": nested(900)}]}
    assert_error(client.post("/v1/collections/docs/documents", json=deep), 400, "nesting_too_deep")
    fine = {"documents": [{"id": "d", "text": "Otters crack shellfish.", "metadata": nested(20)}]}
    assert client.post("/v1/collections/docs/documents", json=fine).status_code == 200
    assert client.get("/v1/collections/docs/documents").status_code == 200
    hits = client.post("/v1/collections/docs/search", json={"query": "otters"})
    assert hits.status_code == 200 and hits.json()["data"]
    assert client.get("/v1/collections").status_code == 200


# --- an unexpected error answers 500 and closes the connection cleanly ----------------


def test_an_unexpected_error_is_a_json_500_that_closes_the_connection(
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
) -> None:
    server = make_server(make_settings())

    @server.app.get("/test-only/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with httpx.Client(base_url=server.url) as client:
        response = client.get("/test-only/boom")
        error = assert_error(response, 500)
        assert error["type"] == "server_error"
        # The server drops the connection after an unhandled error: it must say so,
        # or a client reusing the kept-alive connection gets a reset on its next request.
        assert response.headers["connection"] == "close"
        assert client.get("/healthz").status_code == 200


# --- the time a request body may take ------------------------------------------------


def _slow_body(server: ServerThread, path: str, admin_key: str) -> tuple[bytes, float]:
    """Send the headers and half the declared body, then wait: what the server answers."""
    started = time.monotonic()
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {admin_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"name": "slow"'
        )
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass  # the server neither answered nor closed within 10 s
    return received, time.monotonic() - started


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/collections"])
def test_a_body_shorter_than_its_content_length_times_out_with_408(
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
    admin_key: str,
    path: str,
) -> None:
    """The raw-ASGI endpoints and the FastAPI routes both bound the wait for a body."""
    server = make_server(make_settings(body_timeout=0.5))
    received, waited = _slow_body(server, path, admin_key)
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert b'"request_timeout"' in body
    assert 0.4 < waited < 5


# --- 405 names every allowed method ------------------------------------------------


def test_405_lists_every_method_the_path_allows(client: httpx.Client) -> None:
    response = client.put("/v1/keys")
    assert_error(response, 405)
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    response = client.get("/v1/chat/completions")
    assert_error(response, 405)
    assert response.headers["allow"] == "POST"
    response = client.post("/v1/collections/docs")
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "DELETE"}


# --- the `trellis` options object is strict; the OpenAI body around it is not --------


def test_an_unknown_trellis_option_is_a_400_naming_it(client: httpx.Client) -> None:
    typo = {**HELLO, "trellis": {"colections": ["docs"]}}
    error = assert_error(client.post("/v1/chat/completions", json=typo), 400, "unknown_parameter")
    assert error["param"] == "trellis.colections"
    assert "trellis.colections" in error["message"]
    # Streaming requests are validated the same way.
    typo = {**HELLO, "stream": True, "trellis": {"cache": True, "semantic": True}}
    error = assert_error(client.post("/v1/chat/completions", json=typo), 400, "unknown_parameter")
    assert error["param"] == "trellis.semantic"
    # Unknown OpenAI fields at the top level still pass through to the upstream.
    ok = {**HELLO, "trellis": {"cache": False}, "metadata": {"a": "b"}, "logprobs": False}
    assert client.post("/v1/chat/completions", json=ok).status_code == 200

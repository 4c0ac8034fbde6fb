"""Middleware a user adds runs on every endpoint, the hot ones included.

``TrellisApp`` calls ``/v1/chat/completions`` and ``/v1/embeddings`` straight from its
ASGI entry point, past FastAPI's middleware stack; that is only right while the stack
is FastAPI's own. Once a user adds middleware (``add_middleware``, or a wrapper of the
stack as OpenTelemetry's FastAPI instrumentation installs), those requests go through
the whole stack.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from trellis.server.app import TrellisApp, create_app
from trellis.settings import Settings
from trellis.testing.server import ServerThread

from .conftest import ADMIN_KEY

HELLO = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}]}
ORIGIN = "https://app.example"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_cors_middleware_answers_on_the_hot_endpoints(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings())
    app.add_middleware(
        CORSMiddleware, allow_origins=[ORIGIN], allow_methods=["*"], allow_headers=["*"]
    )
    with ServerThread(app) as server:
        assert not app.calls_hot_endpoints_directly
        preflight = httpx.options(
            server.url + "/v1/chat/completions",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        for path, body in (
            ("/v1/chat/completions", HELLO),
            ("/v1/embeddings", {"model": "embed-test", "input": "hi"}),
        ):
            answer = httpx.post(server.url + path, json=body, headers={**AUTH, "Origin": ORIGIN})
            assert answer.status_code == 200, answer.text
            assert answer.headers["access-control-allow-origin"] == ORIGIN, path
        # Errors, which the fast path builds from the app's exception handlers, too.
        refused = httpx.post(
            server.url + "/v1/chat/completions", json=HELLO, headers={"Origin": ORIGIN}
        )
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == ORIGIN


class _Recorder:
    """An outermost ASGI middleware that records request paths, as OpenTelemetry's is."""

    def __init__(self, app: ASGIApp, seen: list[str]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(scope["path"])
        await self.app(scope, receive, send)


def test_a_wrapper_of_the_middleware_stack_sees_the_hot_endpoints(
    make_settings: Callable[..., Settings],
) -> None:
    """OpenTelemetry's ``FastAPIInstrumentor.instrument_app`` does not call
    ``add_middleware``: it replaces the app's ``build_middleware_stack`` with one that
    wraps the stack in its own middleware. That must not be skipped either."""
    app = create_app(make_settings())
    seen: list[str] = []
    build = app.build_middleware_stack

    def instrumented() -> ASGIApp:
        return _Recorder(build(), seen)

    app.build_middleware_stack = instrumented  # type: ignore[method-assign]
    with ServerThread(app) as server:
        answer = httpx.post(server.url + "/v1/chat/completions", json=HELLO, headers=AUTH)
        assert answer.status_code == 200
    assert "/v1/chat/completions" in seen


def test_without_user_middleware_the_hot_endpoints_are_called_directly(
    server: ServerThread, client: httpx.Client
) -> None:
    app = server.app
    assert isinstance(app, TrellisApp)
    assert app.calls_hot_endpoints_directly
    assert client.post("/v1/chat/completions", json=HELLO).status_code == 200

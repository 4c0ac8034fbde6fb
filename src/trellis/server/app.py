"""The FastAPI application factory: one Trellis runtime per app, routers per resource."""

from __future__ import annotations

import gc
import inspect
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from trellis.runtime import Trellis
from trellis.server.errors import install_error_handlers
from trellis.server.openapi import publish
from trellis.server.routes import (
    alerts,
    audit,
    collections,
    eval_queues,
    evals,
    guard,
    health,
    inference,
    keys,
    limits,
    memories,
    metrics,
    projects,
    sessions,
    stats,
    traces,
    workflows,
)
from trellis.settings import Settings
from trellis.ui import mount as mount_ui

__all__ = ["create_app", "create_server_app", "announce_admin_key", "TrellisApp"]

#: A hot endpoint: the runtime and the raw ASGI request in, a response out.
Endpoint = Callable[[Trellis, Scope, Receive], Awaitable[Response]]

#: Stands for "no plain middleware stack": never the app's ``middleware_stack``.
_NOT_PLAIN = object()


class TrellisApp(FastAPI):
    """FastAPI, with the gateway's hot endpoints called straight from the server.

    ``POST /v1/chat/completions`` and ``POST /v1/embeddings`` are what every model call
    goes through. FastAPI passes each request through routing, six middleware layers
    and dependency solving first, which on a small VM costs more than the gateway's
    own work; these two endpoints take no dependencies, so they are called directly
    on the raw ASGI request (no ``Request`` object unless one fails), and their
    errors go to the app's own exception handlers. They stay ordinary routes too
    (the OpenAPI schema and ``/docs`` list them, and the routes call the same code).

    Skipping the stack is only right while it is FastAPI's own: once a user adds
    middleware (``add_middleware``: CORS...) or wraps the stack (OpenTelemetry's
    ``instrument_app`` replaces ``build_middleware_stack``), every request goes
    through it, the hot endpoints' included.
    """

    def __init__(self, runtime: Trellis, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runtime = runtime
        self.direct_routes: dict[str, Endpoint] = {}
        #: The middleware stack as FastAPI builds it without user middleware, once built.
        self._plain_stack: object = _NOT_PLAIN

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        self._plain_stack = _NOT_PLAIN if self.user_middleware else stack
        return stack

    @property
    def calls_hot_endpoints_directly(self) -> bool:
        """Whether the hot endpoints skip the middleware stack now: once it is built, and
        only if it is FastAPI's own (a wrapped stack is not the one built here)."""
        return self.middleware_stack is self._plain_stack

    def openapi(self) -> dict[str, Any]:
        """FastAPI's schema, completed from each route's declared contract (``openapi.py``):
        built once, on the first request for it."""
        if self.openapi_schema is None:
            schema = super().openapi()
            self.openapi_schema = None  # kept only once complete
            publish(schema, self.runtime.settings)
            self.openapi_schema = schema
        return self.openapi_schema

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and self.middleware_stack is self._plain_stack  # calls_hot_endpoints_directly
        ):
            endpoint = self.direct_routes.get(_route_path(scope))
            if endpoint is not None:
                await self._call_direct(endpoint, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _call_direct(
        self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send
    ) -> None:
        scope["app"] = self
        try:
            response = await endpoint(self.runtime, scope, receive)
        except Exception as exc:
            response = await self._error_response(Request(scope, receive, send), exc)
        await response(scope, receive, send)

    async def _error_response(self, request: Request, exc: Exception) -> Response:
        """What the app's exception handler for ``exc`` (``install_error_handlers``) answers."""
        for kind in type(exc).__mro__:
            handler = self.exception_handlers.get(kind)
            if handler is not None:
                result = handler(request, exc)
                return await result if inspect.isawaitable(result) else result
        raise exc


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def announce_admin_key(secret: str) -> None:
    """Show a newly created admin key once; only its hash is stored."""
    print(
        "\n  Created the admin API key (shown once, store it now):\n\n"
        f"    {secret}\n\n  Set TRELLIS_ADMIN_KEY to choose your own.\n",
        file=sys.stderr,
        flush=True,
    )


def create_app(
    settings: Settings | None = None, *, trellis: Trellis | None = None, freeze_gc: bool = False
) -> TrellisApp:
    """An app that starts its runtime on startup and flushes/closes it on shutdown.

    Pass ``trellis`` to serve an already-started runtime (its owner closes it).
    ``freeze_gc`` is for a process that exists to serve this app (``trellis serve``):
    after startup, the objects alive then are frozen out of garbage collection.
    """
    owned = trellis is None
    runtime = trellis or Trellis(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await runtime.start()
            # A serving process continues runs its previous life (or a dead replica) left.
            runtime.workflows.start_recovery()
            if runtime.db is not None and runtime.db.is_sqlite:
                # One process owns a SQLite database: eval runs it left unfinished go on.
                # (With Postgres and several replicas: POST /v1/evals/runs/{id}/resume.)
                await evals.service_of(app, runtime).resume_unfinished()
        if runtime.settings.evals.schedules and runtime.settings.evals.scheduler:
            # Scheduled eval runs (evals.schedules): after the resume above, so a scheduled
            # run the previous life left is judged when its eval run ends.
            await evals.scheduler_of(app, runtime).start()
        if runtime.new_admin_key:
            announce_admin_key(runtime.new_admin_key)
        if freeze_gc:
            # Everything alive now (modules, settings, the runtime) lives as long as the
            # process: moved out of the collector's reach, each full collection no longer
            # walks them all, which under load cost a large share of the gateway's CPU
            # and showed in its p99 (figures: README, Performance).
            gc.collect()
            gc.freeze()
        app.state.trellis = runtime
        try:
            yield
        finally:
            service = getattr(app.state, "evals", None)
            if service is not None:
                await service.aclose()
            if owned:
                await runtime.aclose()

    app = TrellisApp(
        runtime,
        title="Trellis",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.trellis = runtime
    install_error_handlers(app)
    for module in (
        health,
        inference,
        keys,
        limits,
        traces,
        stats,
        metrics,
        collections,
        alerts,
        memories,
        sessions,
        workflows,
        evals,
        eval_queues,
        projects,
        audit,
        guard,
    ):
        app.include_router(module.router)
    mount_ui(
        app,
        lambda: evals.service_of(app, runtime),
        lambda: evals.scheduler_of(app, runtime),
    )
    app.direct_routes.update(
        {
            "/v1/chat/completions": inference.chat_completions_direct,
            "/v1/embeddings": inference.embeddings_direct,
        }
    )
    return app


def create_server_app() -> TrellisApp:
    """The app ``trellis serve`` runs in each worker process (settings from the environment)."""
    return create_app(freeze_gc=True)

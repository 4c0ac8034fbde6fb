"""The FastAPI application factory: one Trellis runtime per app, routers per resource."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from trellis.runtime import Trellis
from trellis.server.errors import install_error_handlers
from trellis.server.routes import (
    alerts,
    collections,
    health,
    inference,
    keys,
    metrics,
    stats,
    traces,
)
from trellis.settings import Settings

__all__ = ["create_app", "announce_admin_key"]


def announce_admin_key(secret: str) -> None:
    """Show a newly created admin key once; only its hash is stored."""
    print(
        "\n  Created the admin API key (shown once, store it now):\n\n"
        f"    {secret}\n\n  Set TRELLIS_ADMIN_KEY to choose your own.\n",
        file=sys.stderr,
        flush=True,
    )


def create_app(settings: Settings | None = None, *, trellis: Trellis | None = None) -> FastAPI:
    """An app that starts its runtime on startup and flushes/closes it on shutdown.

    Pass ``trellis`` to serve an already-started runtime (its owner closes it).
    """
    owned = trellis is None
    runtime = trellis or Trellis(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await runtime.start()
        if runtime.new_admin_key:
            announce_admin_key(runtime.new_admin_key)
        app.state.trellis = runtime
        try:
            yield
        finally:
            if owned:
                await runtime.aclose()

    app = FastAPI(
        title="Trellis",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.trellis = runtime
    install_error_handlers(app)
    for module in (health, inference, keys, traces, stats, metrics, collections, alerts):
        app.include_router(module.router)
    return app

"""The web UI under ``/ui/``: server-rendered pages over the runtime's services.

Pages call the same services as the ``/v1`` routes (traces, stats, retrieval, keys,
alerts, evals, workflows), gated by the signed-in key's scopes (``access.allowed``).
Templates, htmx and uPlot ship in the package: no build step, no CDN, works offline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from trellis.evals.service import EvalService
from trellis.ui.pages import (
    alerts,
    auth,
    chat,
    collections,
    dashboard,
    evals,
    keys,
    traces,
    workflows,
)

__all__ = ["mount"]

STATIC = Path(__file__).parent / "static"


def mount(app: FastAPI, evals_service: Callable[[], EvalService]) -> None:
    """Add the UI's pages and static files to ``app``. ``evals_service`` gives the app's
    eval service (the server builds it once, on first use, for its routes and these pages)."""
    app.state.ui_sessions = None  # made on first use, once the database is open
    app.state.ui_evals = evals_service
    for module in (auth, chat, traces, dashboard, collections, alerts, keys, evals, workflows):
        app.include_router(module.router, include_in_schema=False)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")

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

from trellis.evals.scheduler import EvalScheduler
from trellis.evals.service import EvalService
from trellis.ui.pages import (
    alerts,
    auth,
    budgets,
    chat,
    collections,
    dashboard,
    evals,
    guard,
    keys,
    queues,
    traces,
    workflows,
)

__all__ = ["PAGES", "mount"]

STATIC = Path(__file__).parent / "static"

#: Every page module: each has a ``router`` of ``UiRoute`` routes (tests walk them all).
PAGES = (
    auth,
    chat,
    traces,
    dashboard,
    collections,
    alerts,
    keys,
    queues,
    evals,
    workflows,
    budgets,
    guard,
)


def mount(
    app: FastAPI,
    evals_service: Callable[[], EvalService],
    eval_scheduler: Callable[[], EvalScheduler],
) -> None:
    """Add the UI's pages and static files to ``app``. ``evals_service`` and
    ``eval_scheduler`` give the app's eval service and its scheduler (the server builds
    them once, on first use, for its routes and these pages)."""
    app.state.ui_sessions = None  # made on first use, once the database is open
    app.state.ui_evals = evals_service
    app.state.ui_eval_scheduler = eval_scheduler
    for module in PAGES:
        app.include_router(module.router, include_in_schema=False)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")

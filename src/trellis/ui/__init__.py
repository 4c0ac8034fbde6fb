"""The web UI under ``/ui/``: server-rendered pages over the runtime's services.

Pages call the same services as the ``/v1`` routes (traces, stats, retrieval, keys,
alerts, evals, workflows), gated by the signed-in key's scopes (``access.allowed``).
Templates, htmx and uPlot ship in the package: no build step, no CDN, works offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from trellis.ui.pages import alerts, auth, chat, collections, dashboard, keys, traces
from trellis.ui.sessions import UiSessions

__all__ = ["mount"]

STATIC = Path(__file__).parent / "static"


def mount(app: FastAPI) -> None:
    """Add the UI's pages and static files to ``app``."""
    app.state.ui_sessions = UiSessions()
    for module in (auth, chat, traces, dashboard, collections, alerts, keys):
        app.include_router(module.router, include_in_schema=False)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")

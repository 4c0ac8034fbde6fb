"""``trellis serve``: migrate once, then start uvicorn with the server app factory."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from trellis.cli._common import ConfigOption, console, load_settings, run


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Start the HTTP server (OpenAI-compatible API under /v1)."""
    import uvicorn

    from trellis.server.app import announce_admin_key

    settings = load_settings(config, host=host, port=port)
    if config:  # worker processes build their own Settings from the environment
        os.environ["TRELLIS_CONFIG"] = os.path.abspath(config)
    if host:
        os.environ["TRELLIS_HOST"] = host
    if port is not None:
        os.environ["TRELLIS_PORT"] = str(port)

    async def prepare() -> str | None:
        # Deployments' files (TLS) and proxies are checked here, so a mistake is one clear
        # line and exit 1 rather than a worker's start-up traceback. Then migrate and
        # create the admin key once, before any worker starts.
        from trellis.access.keys import KeyStore
        from trellis.inference.providers import build_provider
        from trellis.orchestration.registry import load_workflows
        from trellis.store.db import Database

        load_workflows(settings.workflows)  # a wrong import path: "invalid settings", exit 2

        for alias in settings.all_models():
            for deployment in alias.deployments:
                if deployment.provider not in ("local", "local-embedder"):
                    await build_provider(deployment, settings.local).aclose()

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        await db.connect()
        try:
            return await KeyStore(db).ensure_admin(settings.admin_key)
        finally:
            await db.close()

    secret = run(prepare)
    if secret:
        announce_admin_key(secret)
    console.print(
        f"Trellis listening on http://{settings.host}:{settings.port}/v1", style="bold green"
    )
    console.print(
        f"Web UI: http://{settings.host}:{settings.port}/ui/ (sign in with an API key)",
        style="green",
    )
    uvicorn.run(
        "trellis.server.app:create_server_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level=log_level,
        access_log=False,
        # Trellis reads no client address (API keys identify callers), so uvicorn's
        # X-Forwarded-* handling would be one more layer on every request for nothing.
        proxy_headers=False,
    )

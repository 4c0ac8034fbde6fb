"""What every command shares: the consoles, the common options, settings and running async work."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from trellis.errors import ConfigurationError, TrellisError
from trellis.settings import Settings

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    str | None, typer.Option("--config", "-c", help="Path to trellis.yaml (default ./trellis.yaml)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def load_settings(config: str | None, **overrides: Any) -> Settings:
    """Settings from ``config`` and the environment; a bad file is exit 2, not a traceback."""
    try:
        return Settings.load(config, **{k: v for k, v in overrides.items() if v is not None})
    except FileNotFoundError as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    except ValueError as exc:
        err_console.print(f"[red]invalid settings:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


def run(make: Callable[[], Awaitable[T]]) -> T:
    """Run async work to completion; a Trellis error is a red line and exit status 1, settings
    that cannot work (a workflow path that does not import) exit 2 as a bad file does."""
    try:
        return asyncio.run(make())  # type: ignore[arg-type]
    except ConfigurationError as exc:
        err_console.print(f"[red]invalid settings:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from None
    except TrellisError as exc:
        err_console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(1) from None


async def with_db(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(db)`` over the configured database, connected (and migrated) for the call."""
    from trellis.store.db import Database

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    await db.connect()
    try:
        return await action(db)
    finally:
        await db.close()

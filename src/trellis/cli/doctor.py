"""``trellis doctor``: settings, the database, and a probe of every deployment."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from trellis.cli._common import ConfigOption, JsonOption, console, load_settings, run
from trellis.errors import TrellisError
from trellis.settings import Settings


def doctor(
    config: ConfigOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds per deployment check")] = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Check settings, the database, and that every deployment answers."""
    settings = load_settings(config)
    results = run(lambda: _doctor(settings, timeout))
    if as_json:
        console.print_json(
            json.dumps([{"check": c, "ok": ok, "detail": d} for c, ok, d in results])
        )
    else:
        table = Table("check", "status", "detail")
        for check, ok, detail in results:
            table.add_row(
                escape(check), "[green]ok[/green]" if ok else "[red]fail[/red]", escape(detail)
            )
        console.print(table)
    if not all(ok for _, ok, _ in results):
        raise typer.Exit(1)


async def _doctor(settings: Settings, timeout: float) -> list[tuple[str, bool, str]]:
    from trellis.inference.router import Router
    from trellis.runtime import Trellis
    from trellis.store.db import Database

    results: list[tuple[str, bool, str]] = [
        ("settings", True, f"{len(settings.all_models())} model aliases")
    ]
    db = Database(settings.resolved_database_url)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await db.connect()
        from sqlalchemy.engine import make_url

        shown = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
        results.append(("database", True, shown))
    except (OSError, TrellisError, ValueError) as exc:
        results.append(("database", False, f"{type(exc).__name__}: {exc}"))
    finally:
        await db.close()
    router = Router(settings.all_models(), provider_factory=Trellis(settings)._provider)
    try:
        for deployment, provider in router.providers():
            try:
                async with asyncio.timeout(timeout):
                    await provider.probe()
                results.append((f"deployment {deployment.label}", True, "answered"))
            except TimeoutError:
                results.append(
                    (f"deployment {deployment.label}", False, f"no answer in {timeout:g}s")
                )
            except TrellisError as exc:
                results.append((f"deployment {deployment.label}", False, exc.message))
    finally:
        await router.aclose()
    return results

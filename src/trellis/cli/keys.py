"""``trellis keys create|list|revoke``: API keys in the configured database."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from trellis.cli._common import (
    ConfigOption,
    JsonOption,
    T,
    console,
    err_console,
    load_settings,
    run,
    with_db,
)
from trellis.cli.limits import (
    AlertOption,
    ConcurrentOption,
    DailyOption,
    MonthlyOption,
    RpmOption,
    TpmOption,
    limit_values,
)
from trellis.settings import Settings

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


async def _with_keys(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    from trellis.access.keys import KeyStore

    return await with_db(settings, lambda db: action(KeyStore(db, admin_key=settings.admin_key)))


def _key_dict(record: Any) -> dict[str, Any]:
    return record.to_dict()  # type: ignore[no-any-return]


@app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A label for the key")],
    scope: Annotated[
        list[str] | None, typer.Option("--scope", "-s", help="admin, inference or observer")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Allow only these model aliases")
    ] = None,
    cache: Annotated[
        bool, typer.Option("--cache", help="Cache answers even when not deterministic")
    ] = False,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    concurrent: ConcurrentOption = None,
    daily_usd: DailyOption = None,
    monthly_usd: MonthlyOption = None,
    alert_at: AlertOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key; its secret is shown once. Limit options store the key's own limits
    (as ``trellis limits set key:<id>`` would)."""
    settings = load_settings(config)
    limits = limit_values(rpm, tpm, concurrent, daily_usd, monthly_usd, alert_at)

    async def create(ks: Any) -> tuple[Any, str]:
        from trellis.access.limits import LimitStore

        record, secret = await ks.create(
            name, scopes=scope or ["inference"], allowed_models=model, cache=cache
        )
        if not limits.empty:
            await LimitStore(ks.db).put(f"key:{record.id}", limits)
        return record, secret

    record, secret = run(lambda: _with_keys(settings, create))
    if as_json:
        extra = {} if limits.empty else {"limits": limits.model_dump()}
        console.print_json(json.dumps({**_key_dict(record), "key": secret, **extra}))
        return
    console.print(f"Created key [bold]{record.id}[/bold] ({', '.join(record.scopes)}):")
    console.print(f"  {secret}", style="bold yellow", soft_wrap=True)
    console.print("Store it now: it is not shown again.")


@app.command("list")
def keys_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List keys (secrets are never shown)."""
    settings = load_settings(config)
    records = run(lambda: _with_keys(settings, lambda ks: ks.list()))
    rows = [_key_dict(r) for r in records]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("id", "name", "prefix", "scopes", "models", "created", "revoked")
    for row in rows:
        table.add_row(
            row["id"],
            row["name"],
            row["prefix"] + "…",
            ", ".join(row["scopes"]),
            ", ".join(row["allowed_models"] or ["all"]),
            str(row["created_at"])[:19],
            str(row["revoked_at"] or "")[:19],
        )
    console.print(table)


@app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `trellis keys list`)")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key at once."""
    settings = load_settings(config)
    if not run(lambda: _with_keys(settings, lambda ks: ks.revoke(key_id))):
        err_console.print(f"[red]no active key with id {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"Revoked {key_id}.")

"""``trellis keys create|list|update|rotate|revoke``: API keys in the configured database.

The CLI acts as the operator (it holds the database): its changes are audited with no key
as the actor, and running servers follow them within ``key_poll_seconds``.
"""

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

app = typer.Typer(help="Create, list, change, rotate and revoke API keys.", no_args_is_help=True)

ProjectOption = Annotated[
    str, typer.Option("--project", "-p", help="The key's project ('*': every project)")
]


def _cli_audit(action: str, project: str, detail: dict[str, Any] | None = None) -> Any:
    from trellis.access.audit import Actor, AuditEntry

    return AuditEntry(Actor(key_name="cli"), action, project, detail=detail or {})


def _expiry(text: str | None) -> float | None:
    """Epoch seconds ``text`` (a duration: 30d) from now."""
    import time

    from trellis.durations import duration_seconds

    if text is None:
        return None
    try:
        return time.time() + duration_seconds(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--expires") from None


async def _with_keys(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    from trellis.access.keys import KeyStore

    return await with_db(settings, lambda db: action(KeyStore(db, admin_key=settings.admin_key)))


def _key_dict(record: Any) -> dict[str, Any]:
    return record.to_dict()  # type: ignore[no-any-return]


@app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A label for the key")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--role", "--scope", "-r", "-s", help="admin, inference, observer, ingest or eval"
        ),
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
    project: ProjectOption = "default",
    expires: Annotated[
        str | None, typer.Option("--expires", help="Expire after this long: 30d, 12h")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key in a project; its secret is shown once. Limit options store the key's
    own limits (as ``trellis limits set key:<id>`` would)."""
    settings = load_settings(config)
    expires_at = _expiry(expires)
    limits = limit_values(rpm, tpm, concurrent, daily_usd, monthly_usd, alert_at)

    async def create(ks: Any) -> tuple[Any, str]:
        from trellis.access.limits import LimitStore
        from trellis.access.projects import ALL_PROJECTS, ProjectStore

        if project != ALL_PROJECTS:
            await ProjectStore(ks.db).require(project)
        record, secret = await ks.create(
            name,
            scopes=scope or ["inference"],
            allowed_models=model,
            cache=cache,
            project_id=project,
            expires_at=expires_at,
            audit=_cli_audit("key.create", project, {"expires_in": expires}),
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
def keys_list(
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Only this project's keys")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List keys (secrets are never shown)."""
    settings = load_settings(config)
    records = run(lambda: _with_keys(settings, lambda ks: ks.list(project_id=project)))
    rows = [_key_dict(r) for r in records]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("id", "name", "project", "prefix", "roles", "models", "expires", "revoked")
    for row in rows:
        table.add_row(
            row["id"],
            row["name"],
            row["project"],
            row["prefix"] + "…",
            ", ".join(row["scopes"]),
            ", ".join(row["allowed_models"] or ["all"]),
            str(row["expires_at"] or "")[:19],
            str(row["revoked_at"] or "")[:19],
        )
    console.print(table)


@app.command("update")
def keys_update(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `trellis keys list`)")],
    role: Annotated[
        list[str] | None, typer.Option("--role", "-r", help="The key's new roles")
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Expire after this long from now: 30d")
    ] = None,
    never_expires: Annotated[bool, typer.Option("--never-expires")] = False,
    config: ConfigOption = None,
) -> None:
    """Change a key's roles or expiry; servers follow within a second."""
    settings = load_settings(config)
    expires_at = _expiry(expires)
    detail = {"scopes": role, "expires_in": expires, "never_expires": never_expires}
    record = run(
        lambda: _with_keys(
            settings,
            lambda ks: ks.update(
                key_id,
                scopes=role or None,
                expires_at=expires_at,
                clear_expiry=never_expires,
                audit=_cli_audit("key.update", "default", detail),
            ),
        )
    )
    if record is None:
        err_console.print(f"[red]no active key with id {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"Updated {key_id}: {', '.join(record.scopes)}, expires {record.expires_at}.")


@app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `trellis keys list`)")],
    grace: Annotated[
        str | None, typer.Option("--grace", help="How long the old secret still works: 24h")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """A new secret for a key (shown once); the old one works for --grace."""
    settings = load_settings(config)
    seconds = 0.0
    if grace is not None:
        from trellis.durations import duration_seconds

        try:
            seconds = duration_seconds(grace)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--grace") from None
    rotated = run(
        lambda: _with_keys(
            settings,
            lambda ks: ks.rotate(
                key_id, seconds, audit=_cli_audit("key.rotate", "default", {"grace": grace})
            ),
        )
    )
    if rotated is None:
        err_console.print(f"[red]no active key with id {key_id}[/red]")
        raise typer.Exit(1)
    record, secret = rotated
    if as_json:
        console.print_json(json.dumps({**_key_dict(record), "key": secret}))
        return
    console.print(f"Rotated [bold]{record.id}[/bold]; the new secret:")
    console.print(f"  {secret}", style="bold yellow", soft_wrap=True)
    console.print(f"The old secret works until {record.previous_expires_at or 'now'}.")


@app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `trellis keys list`)")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key at once."""
    settings = load_settings(config)
    if not run(
        lambda: _with_keys(
            settings, lambda ks: ks.revoke(key_id, audit=_cli_audit("key.revoke", "default"))
        )
    ):
        err_console.print(f"[red]no active key with id {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"Revoked {key_id}.")

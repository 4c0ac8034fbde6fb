"""``trellis limits set|show|delete|usage``: rate limits and budgets of keys and projects."""

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
from trellis.settings import LimitValues, Settings

app = typer.Typer(
    help="Rate limits and budgets of API keys (key:<id>) and projects (project:<id>).",
    no_args_is_help=True,
)

SubjectArg = Annotated[str, typer.Argument(help="key:<key id> or project:<project id>")]
RpmOption = Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute")]
TpmOption = Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute")]
ConcurrentOption = Annotated[
    int | None, typer.Option("--concurrent", min=1, help="Requests in flight at once")
]
DailyOption = Annotated[
    float | None, typer.Option("--daily-usd", min=0, help="Spend per UTC day (USD)")
]
MonthlyOption = Annotated[
    float | None, typer.Option("--monthly-usd", min=0, help="Spend per UTC month (USD)")
]
AlertOption = Annotated[
    list[float] | None,
    typer.Option("--alert-at", help="Budget fraction that alerts (repeatable; default 0.8, 1)"),
]


async def with_limiter(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(limiter)`` over the configured database and limits backend."""
    from trellis.access.limits import build_limiter

    async def act(db: Any) -> T:
        limiter = build_limiter(db, settings.limits, redis_url=settings.cache.redis_url)
        try:
            return await action(limiter)
        finally:
            await limiter.aclose()

    return await with_db(settings, act)


def limit_values(
    rpm: int | None,
    tpm: int | None,
    concurrent: int | None,
    daily_usd: float | None,
    monthly_usd: float | None,
    alert_at: list[float] | None,
) -> LimitValues:
    """The options as validated limits (a bad threshold is one red line, exit 1)."""
    data: dict[str, Any] = {
        "rpm": rpm,
        "tpm": tpm,
        "max_concurrent": concurrent,
        "daily_usd": daily_usd,
        "monthly_usd": monthly_usd,
    }
    if alert_at:
        data["alert_thresholds"] = alert_at
    try:
        return LimitValues.model_validate(data)
    except ValueError as exc:
        err_console.print(f"[red]invalid limits:[/red] {exc}")
        raise typer.Exit(1) from None


async def _cli_audit(
    limiter: Any, action: str, subject: str, values: LimitValues | None = None
) -> Any:
    """The audit entry of a limit change from the command line, in the subject's project
    (a key's, or the one named)."""
    from sqlalchemy import select

    from trellis.access.audit import Actor, AuditEntry
    from trellis.access.limits import parse_subject
    from trellis.store.tables import api_keys

    kind, ident = parse_subject(subject)
    project = ident
    if kind == "key":
        async with limiter.store.db.engine.connect() as conn:
            found = (
                await conn.execute(select(api_keys.c.project_id).where(api_keys.c.id == ident))
            ).scalar_one_or_none()
        project = found or "default"
    detail = {} if values is None else values.model_dump(exclude_none=True)
    return AuditEntry(Actor(key_name="cli"), action, project, detail=detail)


@app.command("set")
def limits_set(
    subject: SubjectArg,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    concurrent: ConcurrentOption = None,
    daily_usd: DailyOption = None,
    monthly_usd: MonthlyOption = None,
    alert_at: AlertOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set a subject's limits, replacing any before (an option left out: no such limit)."""
    settings = load_settings(config)
    values = limit_values(rpm, tpm, concurrent, daily_usd, monthly_usd, alert_at)

    async def put(limiter: Any) -> None:
        from trellis.access.limits import parse_subject

        parse_subject(subject)
        audit = await _cli_audit(limiter, "limit.set", subject, values)
        await limiter.store.put(subject, values, audit=audit)

    run(lambda: with_limiter(settings, put))
    if as_json:
        console.print_json(json.dumps({"subject": subject, **values.model_dump()}))
        return
    console.print(f"Set the limits of {subject}.")


@app.command("show")
def limits_show(
    subject: Annotated[str | None, typer.Argument(help="One subject (default: all)")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show stored limits (and the settings' defaults)."""
    settings = load_settings(config)

    async def read(limiter: Any) -> list[tuple[str, LimitValues]]:
        if subject is None:
            return await limiter.store.list()  # type: ignore[no-any-return]
        values = await limiter.store.get(subject)
        return [] if values is None else [(subject, values)]

    rows = run(lambda: with_limiter(settings, read))
    data = [{"subject": s, **v.model_dump()} for s, v in rows]
    if subject is not None and not rows:
        err_console.print(f"[yellow]no stored limits for {subject}; defaults apply[/yellow]")
    if as_json:
        console.print_json(json.dumps(data))
        return
    table = Table("subject", "rpm", "tpm", "concurrent", "daily $", "monthly $", "alerts")
    for row in data:
        table.add_row(
            row["subject"],
            *(
                "-" if row[name] is None else f"{row[name]:g}"
                for name in ("rpm", "tpm", "max_concurrent", "daily_usd", "monthly_usd")
            ),
            ", ".join(f"{t:g}" for t in row["alert_thresholds"]),
        )
    console.print(table)
    for kind, default in (
        ("key", settings.limits.default_key),
        ("project", settings.limits.default_project),
    ):
        if default is not None and subject is None:
            console.print(f"default for every {kind}: {default.model_dump(exclude_none=True)}")


@app.command("delete")
def limits_delete(subject: SubjectArg, config: ConfigOption = None) -> None:
    """Delete a subject's stored limits (the settings' defaults apply again)."""
    settings = load_settings(config)

    async def delete(limiter: Any) -> bool:
        audit = await _cli_audit(limiter, "limit.delete", subject)
        return await limiter.store.delete(subject, audit=audit)  # type: ignore[no-any-return]

    if not run(lambda: with_limiter(settings, delete)):
        err_console.print(f"[red]no stored limits for {subject}[/red]")
        raise typer.Exit(1)
    console.print(f"Deleted the limits of {subject}.")


@app.command("usage")
def limits_usage(subject: SubjectArg, config: ConfigOption = None) -> None:
    """Current usage against the limits, from the configured backend (with the in-process
    ``memory`` backend a CLI process sees only itself: use GET /v1/usage on the server)."""
    settings = load_settings(config)
    view = run(lambda: with_limiter(settings, lambda limiter: limiter.usage(subject)))
    console.print_json(json.dumps(view))

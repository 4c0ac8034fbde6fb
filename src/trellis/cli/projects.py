"""``trellis projects create|list|guard|delete`` and ``trellis audit``: the tenants and the log of
administrative actions, in the configured database."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from trellis.cli._common import ConfigOption, JsonOption, console, load_settings, run, with_db

projects_app = typer.Typer(
    help="Create, list and delete projects; set their guard overrides.", no_args_is_help=True
)


def _operator(action: str, project: str, detail: dict[str, Any] | None = None) -> Any:
    from trellis.access.audit import Actor, AuditEntry

    return AuditEntry(Actor(key_name="cli"), action, project, detail=detail or {})


@projects_app.command("create")
def projects_create(
    project_id: Annotated[str, typer.Argument(help="lower-case letters, digits, - and _")],
    name: Annotated[str | None, typer.Option("--name", help="A display name")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a project; then `trellis keys create --project ID` gives it keys."""
    from trellis.access.projects import ProjectStore

    settings = load_settings(config)
    project = run(
        lambda: with_db(
            settings,
            lambda db: ProjectStore(db).create(
                project_id, name, audit=_operator("project.create", project_id)
            ),
        )
    )
    if as_json:
        console.print_json(json.dumps(project.to_dict()))
        return
    console.print(f"Created project [bold]{project.id}[/bold].")


@projects_app.command("list")
def projects_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List projects."""
    from trellis.access.projects import ProjectStore

    settings = load_settings(config)
    found = run(lambda: with_db(settings, lambda db: ProjectStore(db).list()))
    if as_json:
        console.print_json(json.dumps([p.to_dict() for p in found]))
        return
    table = Table("id", "name", "created", "guard")
    for project in found:
        table.add_row(project.id, project.name, _time(project.created_at), _guard(project.guard))
    console.print(table)


def _guard(guard: dict[str, Any] | None) -> str:
    """``input=block retrieved=flag@0.7``: the project's overrides, or ``-`` for none."""
    if not guard:
        return "-"
    shown = []
    for where, stage in guard.items():
        threshold = stage.get("threshold", 0.5)
        shown.append(f"{where}={stage['mode']}" + (f"@{threshold:g}" if threshold != 0.5 else ""))
    return " ".join(shown)


_MODE_HELP = "off, flag or block (not given: the server's guard setting)"


@projects_app.command("guard")
def projects_guard(
    project_id: Annotated[str, typer.Argument(help="The project's id")],
    input_mode: Annotated[str | None, typer.Option("--input", help=_MODE_HELP)] = None,
    retrieved: Annotated[str | None, typer.Option("--retrieved", help=_MODE_HELP)] = None,
    tool_outputs: Annotated[str | None, typer.Option("--tool-outputs", help=_MODE_HELP)] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Score that flags, for the stages given")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every override")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set the project's prompt-injection guard overrides (they replace the previous ones).

    A model alias's own `guard` wins over these; what neither sets is the server's `guard`.
    """
    from trellis.access.projects import ProjectStore, parse_guard
    from trellis.errors import InvalidRequestError

    given = {"input": input_mode, "retrieved": retrieved, "tool_outputs": tool_outputs}
    stages: dict[str, Any] = {}
    for where, mode in given.items():
        if mode is not None:
            stages[where] = {"mode": mode} | ({} if threshold is None else {"threshold": threshold})
    if clear == bool(stages):
        raise typer.BadParameter("give --input, --retrieved or --tool-outputs, or --clear alone")
    try:
        guard = None if clear else parse_guard(stages)
    except InvalidRequestError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = load_settings(config)
    project = run(
        lambda: with_db(
            settings,
            lambda db: ProjectStore(db).set_guard(
                project_id,
                guard,
                audit=_operator(
                    "project.update",
                    project_id,
                    {"guard": guard.model_dump(mode="json", exclude_none=True) if guard else None},
                ),
            ),
        )
    )
    if as_json:
        console.print_json(json.dumps(project.to_dict()))
        return
    console.print(f"Project [bold]{project.id}[/bold] guard: {_guard(project.guard)}")


@projects_app.command("delete")
def projects_delete(
    project_id: Annotated[str, typer.Argument(help="The project's id")],
    config: ConfigOption = None,
) -> None:
    """Delete an empty project (refused while it owns keys, collections, traces...)."""
    from trellis.access.projects import ProjectStore

    settings = load_settings(config)
    run(
        lambda: with_db(
            settings,
            lambda db: ProjectStore(db).delete(
                project_id, audit=_operator("project.delete", project_id)
            ),
        )
    )
    console.print(f"Deleted project {project_id}.")


def _time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()[:19]


def audit(
    project: Annotated[str | None, typer.Option("--project", "-p", help="One project")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="The acting key's id")] = None,
    action: Annotated[
        str | None, typer.Option("--action", help="key.create, or a prefix: key.")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="How far back: 1h, 7d")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The audit log of administrative actions, newest first."""
    import time

    from trellis.access.audit import AuditLog
    from trellis.durations import duration_seconds

    start = None
    if since is not None:
        try:
            start = time.time() - duration_seconds(since)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--since") from None
    settings = load_settings(config)
    page = run(
        lambda: with_db(
            settings,
            lambda db: AuditLog(db).page(
                project_id=project, actor_id=actor, action=action, since=start, limit=limit
            ),
        )
    )
    if as_json:
        console.print_json(json.dumps(page.rows))
        return
    table = Table("when", "project", "who", "action", "target", "from")
    for row in page.rows:
        who = row["actor_name"] or "-"
        if row["actor_id"]:
            who = f"{who} ({row['actor_id']})"
        table.add_row(
            _time(row["at"]),
            row["project_id"],
            who,
            row["action"],
            row["target"] or "",
            row["client_ip"] or "",
        )
    console.print(table)

"""``trellis workflows list|graph``, ``trellis run`` and ``trellis runs list|show|resume|cancel``.

In process, against the configured database, like the other commands: the workflows are the
ones ``workflows:`` in trellis.yaml names. Running and resuming start a Trellis runtime (LLM
steps need its gateway); listing and showing runs only read the database.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
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
from trellis.settings import Settings

workflows_app = typer.Typer(
    help="List the registered workflows and draw them.", no_args_is_help=True
)
runs_app = typer.Typer(help="List, inspect, resume and cancel workflow runs.", no_args_is_help=True)

InputOption = Annotated[
    str, typer.Option("--input", "-i", help='The input as a JSON object: \'{"text": "..."}\'')
]
RunIdArgument = Annotated[str, typer.Argument(help="The run's id (see `trellis runs list`)")]


def _flows(settings: Settings) -> list[Any]:
    from trellis.orchestration.registry import load_workflows

    return run(lambda: _loaded(settings, load_workflows))


async def _loaded(settings: Settings, load: Callable[[list[str]], T]) -> T:
    # Inside run(): a path that does not import is "invalid settings", exit 2.
    return load(settings.workflows)


def _parse_input(text: str, *, object_only: bool) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--input") from None
    if object_only and not isinstance(value, dict):
        raise typer.BadParameter("the input must be a JSON object", param_hint="--input")
    return value


async def _with_runtime(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    from trellis.runtime import Trellis

    async with Trellis(settings) as trellis:
        if trellis.new_admin_key:  # the database's first start: its admin key, shown once
            from trellis.server.app import announce_admin_key

            announce_admin_key(trellis.new_admin_key)
        return await action(trellis.workflows)


async def _with_runs(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """``action(workflows)`` reading the database only: no runtime, no workflows imported."""
    from trellis.orchestration.service import Workflows

    async def act(db: Any) -> T:
        async with Workflows(db) as workflows:
            return await action(workflows)

    return await with_db(settings, act)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _show_run(row: dict[str, Any]) -> None:
    """A run in a few lines: status, output or error, what it waits for."""
    colour = {"succeeded": "green", "failed": "red", "waiting": "yellow"}.get(row["status"], "")
    status = f"[{colour}]{row['status']}[/{colour}]" if colour else row["status"]
    console.print(f"run [bold]{row['id']}[/bold] ({escape(row['workflow'])}): {status}")
    console.print(f"  trace {row['trace_id']}")
    if row["output"] is not None:
        console.print(f"  output: {escape(json.dumps(row['output']))}", soft_wrap=True)
    if row["error"]:
        console.print(f"  error: {escape(json.dumps(row['error']))}", soft_wrap=True)
    if row["waiting_for"]:
        waiting = row["waiting_for"]
        prompt = waiting.get("prompt") or "input"
        console.print(f"  waiting at {escape(waiting['step'])}: {escape(prompt)}")
        console.print(f"  answer with: trellis runs resume {row['id']} --input JSON")


def _finish(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(row))
    else:
        _show_run(row)
    if row["status"] == "failed":
        raise typer.Exit(1)


# --- trellis workflows ---------------------------------------------------------------------


@workflows_app.command("list")
def workflows_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """The workflows trellis.yaml registers (``workflows:``)."""
    from trellis.orchestration.views import workflow_dict

    settings = load_settings(config)
    rows = [workflow_dict(flow) for flow in _flows(settings)]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    if not rows:
        console.print("No workflows registered: list import paths under `workflows:`.")
        return
    table = Table("name", "version", "steps", "input")
    for row in rows:
        table.add_row(
            row["name"],
            row["version"],
            " → ".join(f"{s['name']} ({s['kind']})" for s in row["steps"]),
            ", ".join(row["input_schema"].get("properties", {})),
        )
    console.print(table)


@workflows_app.command("graph")
def workflows_graph(
    name: Annotated[str, typer.Argument(help="The workflow's name")],
    config: ConfigOption = None,
) -> None:
    """The workflow's step graph as Mermaid (paste it into any Mermaid renderer)."""
    settings = load_settings(config)
    for flow in _flows(settings):
        if flow.name == name:
            print(flow.mermaid())
            return
    err_console.print(f"[red]error:[/red] no workflow named {escape(name)!r}")
    raise typer.Exit(1)


# --- trellis run ---------------------------------------------------------------------------


def run_workflow(
    name: Annotated[str, typer.Argument(help="The workflow's name (see `trellis workflows list`)")],
    input: InputOption = "{}",
    session: Annotated[
        str | None,
        typer.Option(
            "--session",
            help="Make the run a turn of this session (the in-process namespace, no key)",
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a workflow to its end (or until it waits for input) and show the result."""
    from trellis.orchestration.views import run_dict

    settings = load_settings(config)
    value = _parse_input(input, object_only=True)

    async def start(workflows: Any) -> dict[str, Any]:
        return run_dict(await workflows.run(name, value, session_id=session))

    _finish(run(lambda: _with_runtime(settings, start)), as_json)


# --- trellis runs --------------------------------------------------------------------------


@runs_app.command("list")
def runs_list(
    workflow: Annotated[str | None, typer.Option("--workflow", "-w")] = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status", "-s", help="queued, running, waiting, succeeded, failed, cancelled"
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000)] = 20,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Runs, newest first."""
    from trellis.orchestration.records import RunStatus
    from trellis.orchestration.views import run_dict

    if status is not None and status not in set(RunStatus):
        raise typer.BadParameter(f"not a run status: {status!r}", param_hint="--status")
    settings = load_settings(config)

    async def listed(workflows: Any) -> list[dict[str, Any]]:
        runs = await workflows.list(workflow=workflow, status=status, limit=limit)
        return [run_dict(r) for r in runs]

    rows = run(lambda: _with_runs(settings, listed))
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("id", "workflow", "status", "created", "finished", "cost")
    for row in rows:
        table.add_row(
            row["id"],
            row["workflow"],
            row["status"],
            _when(row["created_at"]),
            _when(row["finished_at"]),
            f"{row['usage']['cost']:.6f}",
        )
    console.print(table)


@runs_app.command("show")
def runs_show(
    run_id: RunIdArgument, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """A run with its state and every completed step."""
    from trellis.orchestration.views import run_dict

    settings = load_settings(config)

    async def shown(workflows: Any) -> dict[str, Any]:
        return run_dict(await workflows.get(run_id), await workflows.steps(run_id))

    row = run(lambda: _with_runs(settings, shown))
    if as_json:
        console.print_json(json.dumps(row))
        return
    _show_run(row)
    console.print(f"  state: {escape(json.dumps(row['state']))}", soft_wrap=True)
    table = Table("seq", "step", "kind", "status", "attempts", "ms", "next")
    for step in row["steps"]:
        table.add_row(
            str(step["seq"]),
            step["step"] + (f" [{step['branch']}]" if step["branch"] else ""),
            step["kind"],
            step["status"],
            str(step["attempts"]),
            f"{step['duration_ms']:.1f}",
            step["next_step"] or "",
        )
    console.print(table)


@runs_app.command("resume")
def runs_resume(
    run_id: RunIdArgument,
    input: Annotated[
        str, typer.Option("--input", "-i", help="What the waiting step asked for, as JSON")
    ],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give a waiting run its input and continue it."""
    from trellis.orchestration.views import run_dict

    settings = load_settings(config)
    value = _parse_input(input, object_only=False)

    async def resumed(workflows: Any) -> dict[str, Any]:
        return run_dict(await workflows.resume(run_id, value))

    _finish(run(lambda: _with_runtime(settings, resumed)), as_json)


@runs_app.command("cancel")
def runs_cancel(
    run_id: RunIdArgument, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Cancel a run: at once when nobody drives it, else at its owner's next step."""
    from trellis.orchestration.views import run_dict

    settings = load_settings(config)

    async def cancelled(workflows: Any) -> dict[str, Any]:
        return run_dict(await workflows.cancel(run_id))

    row = run(lambda: _with_runtime(settings, cancelled))
    if as_json:
        console.print_json(json.dumps(row))
    else:
        _show_run(row)

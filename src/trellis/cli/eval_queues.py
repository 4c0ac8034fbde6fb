"""``trellis eval queue create|list|show|next|label|export``: human labelling queues over
the configured database, in process (the HTTP API under ``/v1/evals/queues`` does the same
for several people at once). The labeller is ``--labeller`` (default: the login name)."""

from __future__ import annotations

import getpass
import json
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from trellis.cli._common import (
    ConfigOption,
    JsonOption,
    console,
    err_console,
    load_settings,
    run,
    with_db,
)
from trellis.errors import InvalidRequestError, TrellisError

queue_app = typer.Typer(
    help="Human labelling queues: label outputs, measure the judge, export a dataset.",
    no_args_is_help=True,
)

LabellerOption = Annotated[
    str | None, typer.Option("--labeller", help="Who labels (default: the login name)")
]


def _labeller(name: str | None) -> str:
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _dump(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _fail(exc: TrellisError) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {escape(exc.message)}")
    return typer.Exit(2)


def _on_queues(settings: Any, action: Any) -> Any:
    """``action(queues)`` over the configured database (an error: a red line, exit 1)."""
    from trellis.evals.labels import LabelQueues

    async def go(db: Any) -> Any:
        return await action(LabelQueues(db))

    return run(lambda: with_db(settings, go))


@queue_app.command("create")
def queue_create(
    run_id: Annotated[
        str | None, typer.Option("--run", help="Label this eval run's outputs")
    ] = None,
    candidate: Annotated[
        str | None, typer.Option("--candidate", help="With --run: only this candidate")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Traces: 1h (ago), Unix seconds, ISO")] = None,
    until: Annotated[str | None, typer.Option(help="Traces: same forms as --since")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Traces: the model")] = None,
    status: Annotated[str | None, typer.Option(help="Traces: ok or error")] = None,
    key_id: Annotated[str | None, typer.Option("--key", help="Traces: API key id")] = None,
    text: Annotated[str | None, typer.Option("--q", help="Traces: text in prompt/answer")] = None,
    score: Annotated[str | None, typer.Option(help="Traces scored NAME below --below")] = None,
    below: Annotated[float | None, typer.Option(help="The score threshold")] = None,
    project: Annotated[
        str, typer.Option("--project", "-p", help="Traces: this project's (and the queue's)")
    ] = "default",
    scale: Annotated[
        str | None,
        typer.Option(help="MIN-MAX, MIN-MAX:PASS or pass_fail (default: the judge's, or 1-5)"),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="The queue's name")] = None,
    instructions: Annotated[str | None, typer.Option(help="What labellers should judge")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=100_000)] = 500,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """A queue from an eval run (--run) or from stored chat traces (the trace filters)."""
    from trellis.evals.from_traces import TraceSelection, chat_traces
    from trellis.evals.labels import parse_scale

    settings = load_settings(config)
    try:
        chosen = None if scale is None else parse_scale(scale)
        filters = {
            "since": since,
            "until": until,
            "model": model,
            "status": status,
            "key_id": key_id,
            "q": text,
            "score": score,
            "below": below,
        }
        filters = {k: v for k, v in filters.items() if v is not None}
        if run_id is not None and filters:
            raise InvalidRequestError("give --run or trace filters, not both")
        selection = TraceSelection(
            query=chat_traces(
                since=since, until=until, model=model, status=status, key_id=key_id, text=text
            ),
            limit=limit,
            score=score,
            below=below,
        )
    except TrellisError as exc:
        raise _fail(exc) from None

    async def create(queues: Any) -> Any:
        if run_id is not None:
            return await queues.from_run(
                run_id,
                name=name,
                candidate=candidate,
                scale=chosen,
                limit=limit,
                instructions=instructions,
            )
        return await queues.from_traces(
            selection,
            name=name,
            scale=chosen,
            instructions=instructions,
            filters=filters,
            project_id=project,
        )

    queue = _on_queues(settings, create)
    if as_json:
        _dump(queue.to_dict())
        return
    console.print(f"queue {queue.id} ({escape(queue.name)}): {queue.items} items to label")


@queue_app.command("list")
def queue_list(
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Only this project's queues")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queues and their progress, newest first."""
    settings = load_settings(config)

    async def read(queues: Any) -> Any:
        return await queues.queues(project_id=project)

    found = _on_queues(settings, read)
    if as_json:
        _dump([q.to_dict() for q in found])
        return
    table = Table("id", "name", "scale", "labelled", "items", "passed")
    for queue in found:
        scale = queue.scale
        table.add_row(
            queue.id,
            escape(queue.name),
            "pass/fail" if scale.type == "pass_fail" else f"{scale.min:g}-{scale.max:g}",
            str(queue.labelled),
            str(queue.items),
            str(queue.passed),
        )
    console.print(table)


@queue_app.command("show")
def queue_show(
    queue_id: Annotated[str, typer.Argument(metavar="QUEUE")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """A queue's progress and the judge-human agreement so far."""
    settings = load_settings(config)

    async def read(queues: Any) -> Any:
        return await queues.queue(queue_id), await queues.agreement(queue_id)

    queue, agreement = _on_queues(settings, read)
    if as_json:
        _dump({**queue.to_dict(), "agreement": [a.to_dict() for a in agreement]})
        return
    progress = queue.to_dict()["progress"]
    console.print(
        f"queue {queue.id} ({escape(queue.name)}): {progress['labelled']}/{progress['items']} "
        f"labelled, {progress['claimed']} claimed, {progress['passed']} passed, mean score "
        f"{'-' if progress['mean_score'] is None else format(progress['mean_score'], '.4g')}"
    )
    if not agreement:
        return
    table = Table(title="judge-human agreement")
    for column in ("metric", "n", "exact", "pass agree", "kappa", "spearman", "mean |diff|"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in agreement:
        values = [row.exact, row.pass_agreement, row.kappa, row.spearman, row.mean_abs_diff]
        table.add_row(
            escape(row.metric),
            str(row.n),
            *("-" if v is None else f"{v:.4f}" for v in values),
        )
    console.print(table)


@queue_app.command("next")
def queue_next(
    queue_id: Annotated[str, typer.Argument(metavar="QUEUE")],
    labeller: LabellerOption = None,
    claim_minutes: Annotated[
        float, typer.Option(min=0.01, help="Skip items others claimed this recently")
    ] = 10,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Claim the next item to label and show it (exit 3 when nothing is left)."""
    settings = load_settings(config)
    who = _labeller(labeller)

    async def claim(queues: Any) -> Any:
        return await queues.next_item(queue_id, who, claim_seconds=claim_minutes * 60)

    item = _on_queues(settings, claim)
    if item is None:
        if as_json:
            _dump(None)
        err_console.print("nothing left to label")
        raise typer.Exit(3)
    if as_json:
        _dump(item.to_dict())
        return
    data = item.to_dict()
    console.print(f"[bold]item {item.id}[/bold] (case {escape(item.case.id)})")
    prompt = data["input"] if isinstance(data["input"], str) else json.dumps(data["input"])
    console.print(f"[bold]input:[/bold] {escape(prompt)}")
    if item.case.expected is not None:
        console.print(f"[bold]expected:[/bold] {escape(item.case.expected)}")
    console.print(f"[bold]output:[/bold] {escape(item.output)}")
    for metric, verdict in (item.judge or {}).items():
        console.print(
            f"[dim]{escape(metric)}: {verdict.get('raw')} ({escape(str(verdict.get('reason')))})"
            "[/dim]"
        )


@queue_app.command("label")
def queue_label(
    queue_id: Annotated[str, typer.Argument(metavar="QUEUE")],
    item_id: Annotated[int, typer.Argument(metavar="ITEM", min=1)],
    score: Annotated[float | None, typer.Option(help="On the queue's scale")] = None,
    passed: Annotated[
        bool | None, typer.Option("--pass/--fail", help="The verdict (pass/fail queues)")
    ] = None,
    reference: Annotated[str | None, typer.Option(help="The corrected or reference answer")] = None,
    comment: Annotated[str | None, typer.Option(help="A note for whoever reads it")] = None,
    labeller: LabellerOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Label an item (again: the new label replaces the old)."""
    settings = load_settings(config)
    who = _labeller(labeller)

    async def label(queues: Any) -> Any:
        return await queues.label(
            queue_id,
            item_id,
            score=score,
            passed=passed,
            reference=reference,
            comment=comment,
            labeller=who,
            labeller_name=who,
        )

    item = _on_queues(settings, label)
    if as_json:
        _dump(item.to_dict())
        return
    verdict = "pass" if item.label["passed"] else "fail"
    console.print(f"item {item.id}: {item.label['score']:g} ({verdict}) by {escape(who)}")


@queue_app.command("export")
def queue_export(
    queue_id: Annotated[str, typer.Argument(metavar="QUEUE")],
    dataset: Annotated[str, typer.Option("--dataset", help="The new dataset's name")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Store the labels as a dataset version: the corrected answer (or the output that
    passed) as ``expected``, the human label in ``metadata.human``."""
    settings = load_settings(config)

    async def export(queues: Any) -> Any:
        return await queues.export(queue_id, dataset)

    built, created, skipped = _on_queues(settings, export)
    info = {
        "name": built.name,
        "version": built.version,
        "cases": len(built.cases),
        "created": created,
        "skipped": skipped,
    }
    if as_json:
        _dump(info)
        return
    state = "stored" if created else "already stored"
    console.print(
        f"{escape(built.ref)}: {len(built.cases)} cases, {state} ({skipped} labelled items "
        "failed without a corrected answer)"
    )

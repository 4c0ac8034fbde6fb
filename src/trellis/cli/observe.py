"""``trellis traces list|show`` and ``trellis stats``: read what the trace writer recorded."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
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

traces_app = typer.Typer(help="Read recorded traces.", no_args_is_help=True)


def _when(ns: int | None) -> str:
    from datetime import datetime

    return "" if ns is None else datetime.fromtimestamp(ns / 1e9).isoformat(" ", "seconds")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


@traces_app.command("list")
def traces_list(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Requested model")] = None,
    key_id: Annotated[str | None, typer.Option("--key", help="API key id")] = None,
    status: Annotated[str | None, typer.Option(help="ok or error")] = None,
    kind: Annotated[str | None, typer.Option(help="chat, embeddings...")] = None,
    since: Annotated[str | None, typer.Option(help="1h (ago), Unix seconds or ISO 8601")] = None,
    text: Annotated[str | None, typer.Option("--q", help="Text in prompt or response")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000)] = 20,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the newest traces in the local database."""
    from trellis.observe.query import TraceQuery, parse_time
    from trellis.observe.store import TraceStore

    settings = load_settings(config)

    async def fetch(db: Any) -> Any:
        query = TraceQuery(
            since_ns=None if since is None else parse_time(since, "since"),
            model=model,
            key_id=key_id,
            status=status,
            kind=kind,
            text=text,
        )
        return await TraceStore(db).page(query, limit=limit)

    page = run(lambda: with_db(settings, fetch))
    if as_json:
        console.print_json(
            json.dumps({"data": page.rows, "next_cursor": page.next_cursor}, default=str)
        )
        return
    table = Table("id", "started", "kind", "model", "key", "status", "ms", "tokens", "cost")
    table.columns[0].no_wrap = True  # ids are for copying into `trellis traces show`
    for row in page.rows:
        table.add_row(
            row["id"],
            _when(row["start_ns"]),
            row["kind"],
            row["model"] or "-",
            row["key_id"] or "-",
            row["status"] if row["status"] == "ok" else f"[red]{row['status']}[/red]",
            _ms(row["duration_ms"]),
            f"{row['input_tokens'] or 0}/{row['output_tokens'] or 0}",
            f"{row['cost'] or 0:.6f}",
        )
    console.print(table)


@traces_app.command("show")
def traces_show(
    trace_id: Annotated[str, typer.Argument(help="The trace id (see `trellis traces list`)")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one trace as a tree of spans with timings and attributes."""
    from rich.tree import Tree

    from trellis.observe.store import TraceStore

    settings = load_settings(config)
    trace = run(lambda: with_db(settings, lambda db: TraceStore(db).get(trace_id)))
    if trace is None:
        err_console.print(f"[red]no trace with id {trace_id}[/red]")
        raise typer.Exit(1)
    if as_json:
        console.print_json(json.dumps(trace, default=str))
        return
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in trace["spans"]:
        children.setdefault(span["parent_id"], []).append(span)

    def label(span: dict[str, Any]) -> str:
        status = "" if span["status"] == "ok" else f" [red]{span['status']}[/red]"
        return f"[bold]{span['name']}[/bold]  {_ms(span['duration_ms'])} ms{status}"

    def add(node: Tree, span: dict[str, Any]) -> None:
        for key, value in (span["attributes"] or {}).items():
            shown = json.dumps(value, default=str)
            node.add(f"[dim]{key}[/dim] = {shown[:200] + '…' if len(shown) > 200 else shown}")
        for event in span["events"] or []:
            node.add(f"[yellow]event[/yellow] {event.get('name')} {event.get('attributes') or ''}")
        for child in children.get(span["id"], []):
            add(node.add(label(child)), child)

    summary = (
        f"trace {trace['id']}  {trace['kind']}  {trace['model'] or '-'}  "
        f"{_when(trace['start_ns'])}  {_ms(trace['duration_ms'])} ms  cost {trace['cost'] or 0:.6f}"
    )
    tree = Tree(summary)
    known = {span["id"] for span in trace["spans"]}
    for span in trace["spans"]:
        if span["parent_id"] is None or span["parent_id"] not in known:
            add(tree.add(label(span)), span)
    console.print(tree)


def stats(
    window: Annotated[str, typer.Option(help="How far back: 15m, 1h, 7d")] = "1h",
    bucket: Annotated[str, typer.Option(help="Bucket size: 1m, 5m, 1h")] = "5m",
    group_by: Annotated[str, typer.Option("--group-by", "-g", help="model, key, kind or none")] = (
        "model"
    ),
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Latency percentiles, error rate, tokens and cost per group over a window."""
    import time

    from trellis.observe.query import parse_duration
    from trellis.observe.stats import StatsQuery, TraceStats
    from trellis.server.routes.stats import stats_body

    settings = load_settings(config)

    async def compute(db: Any) -> dict[str, Any]:
        until_ns = time.time_ns()
        query = StatsQuery(
            since_ns=until_ns - int(parse_duration(window, "window") * 1e9),
            until_ns=until_ns,
            bucket_ns=int(parse_duration(bucket, "bucket") * 1e9),
            group_by=group_by,
        )
        return stats_body(query, await TraceStats(db).compute(query), window, bucket)

    body = run(lambda: with_db(settings, compute))
    if as_json:
        console.print_json(json.dumps(body))
        return
    table = Table(
        group_by, "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "tokens in", "out", "cost",
        title=f"last {window}",
    )  # fmt: skip
    for group in body["data"]:
        totals = group["totals"]
        latency = totals["latency_ms"]
        table.add_row(
            str(group["group"] if group["group"] is not None else "-"),
            f"{totals['count']:,}",
            f"{totals['error_rate']:.1%}",
            _ms(latency["p50"]),
            _ms(latency["p95"]),
            _ms(latency["p99"]),
            f"{totals['input_tokens']:,}",
            f"{totals['output_tokens']:,}",
            f"{totals['cost']:.4f}",
        )
    console.print(table)

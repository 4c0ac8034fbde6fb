"""``trellis eval run|compare``, ``trellis eval dataset add|list``,
``trellis eval schedules [run NAME]`` (``eval queue``: in ``eval_queues.py``).

``run`` starts a Trellis runtime in process (its gateway answers, its database keeps the
results) and shows a progress bar on stderr; ``--run-id`` of an interrupted run resumes it.
``compare`` reads two JSON reports and exits 1 on a ``--fail-on`` regression, for CI.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
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
from trellis.cli.eval_queues import queue_app
from trellis.errors import TrellisError

eval_app = typer.Typer(
    help="Evaluate models and prompts on datasets; compare runs.", no_args_is_help=True
)
dataset_app = typer.Typer(help="Store and list eval datasets.", no_args_is_help=True)
eval_app.add_typer(dataset_app, name="dataset")
schedules_app = typer.Typer(
    help="Scheduled eval runs (evals.schedules): list them, or run one now.",
    invoke_without_command=True,
)
eval_app.add_typer(schedules_app, name="schedules")
eval_app.add_typer(queue_app, name="queue")


def _write_json(data: Any, path: str | None) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if path is None or path == "-":
        sys.stdout.write(text + "\n")
    else:
        Path(path).write_text(text + "\n", encoding="utf-8")


@eval_app.command("run")
def eval_run(
    suite_path: Annotated[Path, typer.Argument(metavar="SUITE.yaml", help="The suite to run")],
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write the JSON report here ('-': stdout)")
    ] = None,
    html_out: Annotated[
        Path | None,
        typer.Option("--html", help="Write the self-contained HTML report (charts, cases) here"),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Resume this run (or start one with this id)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
    config: ConfigOption = None,
) -> None:
    """Run a suite: every case through every candidate, scored, stored as it finishes."""
    from trellis.evals import EvalRunner, EvalStore, load_suite, resolve_dataset
    from trellis.runtime import Trellis

    settings = load_settings(config)
    try:
        suite, base = load_suite(suite_path)
    except TrellisError as exc:
        err_console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from None

    cases: list[Any] = []

    async def go() -> dict[str, Any]:
        async with Trellis(settings) as trellis:
            assert trellis.db is not None and trellis.gateway is not None
            store = EvalStore(trellis.db)
            dataset = await resolve_dataset(suite.dataset, base, store)
            cases.extend(dataset.cases)
            runner = EvalRunner(
                trellis.gateway, store, embedder=trellis.minilm, workflows=trellis.workflows
            )
            if quiet:
                return await runner.run(suite, dataset, run_id=run_id)
            with Progress(
                TextColumn(f"[bold]{escape(suite.name)}[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=False,
            ) as bar:
                task = bar.add_task("eval", total=None)

                def progress(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                return await runner.run(suite, dataset, run_id=run_id, progress=progress)

    report = run(go)
    if json_out is not None:
        _write_json(report, json_out)
    if html_out is not None:
        from trellis.evals.html import render_run

        html_out.write_text(render_run(report, cases), encoding="utf-8")
    if json_out != "-":
        _print_summary(report)


def _print_summary(report: dict[str, Any]) -> None:
    table = Table(title=f"{report['suite']} on {report['dataset']} (run {report['run_id']})")
    table.add_column("candidate")
    for name in report["metrics"]:
        table.add_column(name, justify="right")
    corpus = any(s.get("corpus") for s in report["candidates"].values())
    for name in ("corpus BLEU", "corpus chrF") if corpus else ():
        table.add_column(name, justify="right")
    for column in ("p50 ms", "p95 ms", "tokens", "cost $", "errors"):
        table.add_column(column, justify="right")
    for name, summary in report["candidates"].items():
        values = [summary["metrics"].get(m) for m in report["metrics"]]
        scores = summary.get("corpus") or {}
        latency = summary["latency_ms"]
        table.add_row(
            escape(name),
            *("-" if v is None else f"{v:.4f}" for v in values),
            *(
                ("-" if v is None else f"{v:.4f}" for v in (scores.get("bleu"), scores.get("chrf")))
                if corpus
                else ()
            ),
            "-" if latency["p50"] is None else f"{latency['p50']:.0f}",
            "-" if latency["p95"] is None else f"{latency['p95']:.0f}",
            str(summary["tokens"]["total"]),
            f"{summary['cost']:.6f}",
            str(summary["errors"]),
        )
    console.print(table)
    if report.get("pairwise"):
        _print_pairwise(report["pairwise"])


def _print_pairwise(pairs: list[dict[str, Any]]) -> None:
    """Win/tie/loss of a against b, and how often the two orders disagreed."""
    table = Table(title="pairwise preference (both orders)")
    for column in ("a", "b", "judge", "judged", "win", "tie", "loss", "inconsistent"):
        table.add_column(column, justify="left" if column in ("a", "b", "judge") else "right")
    for pair in pairs:
        rates = [pair[k] for k in ("win", "tie", "loss", "position_disagreement")]
        table.add_row(
            escape(pair["a"]),
            escape(pair["b"]),
            escape(pair["judge"]),
            str(pair["judged"]),
            *("-" if v is None else f"{v:.4f}" for v in rates),
        )
    console.print(table)


@eval_app.command("init")
def eval_init(
    directory: Annotated[Path, typer.Argument(help="Where to put the example suite")] = Path("."),
) -> None:
    """Copy the example suites (bundled model, offline: capitals, red team) into DIRECTORY."""
    from importlib.resources import files

    directory.mkdir(parents=True, exist_ok=True)
    examples = files("trellis.evals") / "examples"
    for name in ("capitals.yaml", "capitals.jsonl", "redteam.yaml", "redteam.jsonl"):
        target = directory / name
        if target.exists():
            err_console.print(f"[yellow]{escape(str(target))} exists; left as it is[/yellow]")
            continue
        target.write_text((examples / name).read_text(encoding="utf-8"), encoding="utf-8")
        console.print(f"wrote {escape(str(target))}")


@eval_app.command("compare")
def eval_compare(
    baseline: Annotated[Path, typer.Argument(metavar="BASELINE.json")],
    candidate: Annotated[Path, typer.Argument(metavar="CANDIDATE.json")],
    fail_on: Annotated[
        list[str] | None,
        typer.Option("--fail-on", help="NAME:+X or NAME:-X (X or X%), e.g. rougeL:-0.02"),
    ] = None,
    markdown: Annotated[
        str | None, typer.Option("--markdown", help="Write the Markdown summary to this file")
    ] = None,
    html_out: Annotated[
        Path | None,
        typer.Option("--html", help="Write the self-contained HTML report (diffs, charts) here"),
    ] = None,
    baseline_name: Annotated[
        str | None,
        typer.Option("--baseline-candidate", help="Candidate in BASELINE (default: first)"),
    ] = None,
    candidate_name: Annotated[
        str | None, typer.Option("--candidate", help="Candidate in CANDIDATE (default: first)")
    ] = None,
    resamples: Annotated[int, typer.Option(min=100, help="Bootstrap resamples")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Per-metric deltas with bootstrap CIs; exit 1 when a --fail-on threshold is passed."""
    from trellis.evals import compare_reports, parse_threshold

    try:
        reports = [_read_report(path) for path in (baseline, candidate)]
        thresholds = [parse_threshold(text) for text in fail_on or []]
        comparison = compare_reports(
            reports[0],
            reports[1],
            thresholds=thresholds,
            baseline_candidate=baseline_name,
            candidate_candidate=candidate_name,
            resamples=resamples,
            seed=seed,
        )
    except TrellisError as exc:
        err_console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from None
    text = comparison.markdown()
    if markdown is not None:
        Path(markdown).write_text(text, encoding="utf-8")
    if html_out is not None:
        from trellis.evals.html import render_compare

        html_out.write_text(render_compare(reports[0], reports[1], comparison), encoding="utf-8")
    if as_json:
        _write_json(comparison.to_dict(), None)
    elif markdown is None:
        sys.stdout.write(text)
    if comparison.failed:
        failed = [f"{d.name} ({', '.join(d.failed)})" for d in comparison.deltas if d.failed]
        err_console.print(f"[red]regression:[/red] {escape('; '.join(failed))}")
        raise typer.Exit(1)


def _read_report(path: Path) -> dict[str, Any]:
    from trellis.errors import InvalidRequestError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRequestError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(f"{path}: not a JSON report ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"{path}: not a Trellis eval report")
    return data


@dataset_app.command("add")
def dataset_add(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="A .jsonl or .csv dataset")],
    name: Annotated[str | None, typer.Option("--name", help="Default: the file's stem")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Validate a dataset and store it, versioned by its content hash."""
    from trellis.evals import EvalStore, load_dataset

    settings = load_settings(config)
    try:
        dataset = load_dataset(path, name)
    except TrellisError as exc:
        err_console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from None

    async def save(db: Any) -> bool:
        return await EvalStore(db).save_dataset(dataset)

    created = run(lambda: with_db(settings, save))
    info = {
        "name": dataset.name,
        "version": dataset.version,
        "cases": len(dataset.cases),
        "created": created,
    }
    if as_json:
        _write_json(info, None)
    else:
        state = "stored" if created else "already stored"
        console.print(f"{escape(dataset.ref)}: {len(dataset.cases)} cases, {state}")


@eval_app.command("retrieval")
def eval_retrieval(
    collection: Annotated[
        str | None,
        typer.Argument(help="The collection to search (or --corpus to ingest into scratch)"),
    ] = None,
    queries: Annotated[
        Path | None, typer.Option(help="BEIR queries.jsonl: {_id, text} per line")
    ] = None,
    qrels: Annotated[
        Path | None, typer.Option(help="BEIR qrels TSV: query-id corpus-id score")
    ] = None,
    corpus: Annotated[
        Path | None,
        typer.Option(help="BEIR corpus.jsonl: ingested once per --chunking into scratch"),
    ] = None,
    chunking: Annotated[
        list[str] | None,
        typer.Option(
            "--chunking", help="TARGET/OVERLAP word pieces, with --corpus; repeat for each"
        ),
    ] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "--setting",
            "-s",
            help="keyword, vector, hybrid, hybrid:rrf[:K], hybrid:weighted[:WK,WV]; repeat "
            "for each (default: keyword, vector, hybrid:rrf, hybrid:weighted)",
        ),
    ] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Write the results here")] = None,
    config: ConfigOption = None,
) -> None:
    """Search a collection with judged queries under several settings, side by side."""
    from trellis.cli.retrieval import _with_retrieval
    from trellis.evals.retrieval import (
        evaluate_chunkings,
        evaluate_retrieval,
        parse_chunking,
        parse_setting,
        read_qrels,
        read_queries,
    )

    settings = load_settings(config)
    names = setting or ["keyword", "vector", "hybrid:rrf", "hybrid:weighted"]
    if queries is None or qrels is None or (collection is None) == (corpus is None):
        err_console.print(
            "[red]error:[/red] give --queries and --qrels, and a COLLECTION or a --corpus"
        )
        raise typer.Exit(2)
    try:
        chosen = [parse_setting(name) for name in names]
        for text in chunking or []:
            parse_chunking(text)
        asked = read_queries(queries)
        judged = read_qrels(qrels)
    except (TrellisError, OSError) as exc:
        message = exc.message if isinstance(exc, TrellisError) else str(exc)
        err_console.print(f"[red]error:[/red] {escape(message)}")
        raise typer.Exit(2) from None

    if corpus is not None:
        from trellis.inference.local.embedder import MiniLMEmbedder

        async def scratch() -> dict[str, Any]:
            embedder = MiniLMEmbedder(cache_dir=settings.data_dir / "models")
            with tempfile.TemporaryDirectory(prefix="trellis-eval-retrieval-") as tmp:
                return await evaluate_chunkings(
                    embedder, corpus, chunking or ["256/32"], asked, judged, chosen, Path(tmp)
                )

        result = run(scratch)
        sections = list(result["chunkings"].items())
    else:
        assert collection is not None

        async def go(retrieval: Any) -> dict[str, Any]:
            return await evaluate_retrieval(retrieval, collection, asked, judged, chosen)

        result = run(lambda: _with_retrieval(settings, go))  # an unknown collection: exit 1
        sections = [("", result)]
    if json_out is not None:
        _write_json(result, json_out)
    table = Table("chunking", "setting", "nDCG@10", "recall@100", "p50 ms", "p95 ms")
    for label, section in sections:
        for name, row in section["settings"].items():
            table.add_row(
                escape(label or "as stored"),
                escape(name),
                f"{row['ndcg@10']:.4f}",
                f"{row['recall@100']:.4f}",
                f"{row['latency_p50_ms']:.1f}",
                f"{row['latency_p95_ms']:.1f}",
            )
    console.print(table)
    console.print(f"{sections[0][1]['queries']} judged queries")


@dataset_app.command("from-traces")
def dataset_from_traces_command(
    name: Annotated[str, typer.Option("--name", help="The dataset's name")],
    since: Annotated[str | None, typer.Option(help="1h (ago), Unix seconds or ISO 8601")] = None,
    until: Annotated[str | None, typer.Option(help="Same forms as --since")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Requested model")] = None,
    status: Annotated[str | None, typer.Option(help="ok or error")] = None,
    key_id: Annotated[str | None, typer.Option("--key", help="API key id")] = None,
    text: Annotated[str | None, typer.Option("--q", help="Text in prompt or response")] = None,
    score: Annotated[
        str | None, typer.Option(help="Keep traces with a score of this name below --below")
    ] = None,
    below: Annotated[float | None, typer.Option(help="The score threshold (with --score)")] = None,
    expected: Annotated[
        str, typer.Option(help="label (a score's comment), output (the answer then) or none")
    ] = "label",
    label: Annotated[str, typer.Option(help="The score name whose comment is the label")] = (
        "label"
    ),
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=100_000)] = 500,
    out: Annotated[Path | None, typer.Option("--out", help="Also write it as JSONL here")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Build a dataset from stored chat traces (newest first) and store it, versioned."""
    from trellis.evals import EvalStore
    from trellis.evals.from_traces import TraceSelection, chat_traces, dataset_from_traces
    from trellis.observe.store import TraceStore

    settings = load_settings(config)
    if expected not in ("label", "output", "none"):
        err_console.print("[red]error:[/red] --expected is label, output or none")
        raise typer.Exit(2)
    try:
        selection = TraceSelection(
            query=chat_traces(
                since=since, until=until, model=model, status=status, key_id=key_id, text=text
            ),
            limit=limit,
            score=score,
            below=below,
            expected=expected,  # type: ignore[arg-type]
            label=label,
        )
    except TrellisError as exc:
        err_console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from None

    async def build(db: Any) -> Any:
        built = await dataset_from_traces(TraceStore(db), name, selection)
        await EvalStore(db).save_dataset(built.dataset)
        return built

    built = run(lambda: with_db(settings, build))  # no matching trace: exit 1
    dataset = built.dataset
    if out is not None:
        out.write_text(
            "".join(
                json.dumps(case.model_dump(exclude_defaults=True), ensure_ascii=False) + "\n"
                for case in dataset.cases
            ),
            encoding="utf-8",
        )
    info = {
        "name": dataset.name,
        "version": dataset.version,
        "cases": len(dataset.cases),
        "unlabelled": built.unlabelled,
        "skipped_without_prompt": built.skipped_without_prompt,
        "skipped_by_score": built.skipped_by_score,
    }
    if as_json:
        _write_json(info, None)
        return
    console.print(
        f"stored {escape(dataset.ref)}: {len(dataset.cases)} cases "
        f"({built.unlabelled} without a label; skipped {built.skipped_without_prompt} "
        f"without a stored prompt, {built.skipped_by_score} by score)"
    )


@dataset_app.command("list")
def dataset_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Stored datasets and their versions."""
    from trellis.evals import EvalStore

    settings = load_settings(config)

    async def read(db: Any) -> list[Any]:
        return await EvalStore(db).datasets()

    infos = run(lambda: with_db(settings, read))
    if as_json:
        _write_json(
            [
                {"name": i.name, "version": i.version, "cases": i.cases, "created_at": i.created_at}
                for i in infos
            ],
            None,
        )
        return
    table = Table("name", "version", "cases")
    for info in infos:
        table.add_row(escape(info.name), info.version, str(info.cases))
    console.print(table)


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


@schedules_app.callback()
def schedules_list(
    ctx: typer.Context, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """The schedules in the settings: next due time, last outcome, baseline run."""
    if ctx.invoked_subcommand is not None:
        return
    import time

    from trellis.evals.schedule_store import ScheduleStore
    from trellis.evals.scheduler import describe_schedules

    settings = load_settings(config)

    async def read(db: Any) -> list[dict[str, Any]]:
        schedules = settings.evals.schedules
        return await describe_schedules(ScheduleStore(db), schedules, time.time())

    described = run(lambda: with_db(settings, read))
    if as_json:
        _write_json(described, None)
        return
    if not described:
        console.print("No eval schedules: add them under evals.schedules in trellis.yaml.")
        return
    table = Table("name", "cron", "next due", "last outcome", "last run", "baseline run")
    for item in described:
        last = item["last"] or {}
        cron = f"{item['cron']} ({item['timezone']})" + ("" if item["enabled"] else " off")
        table.add_row(
            escape(item["name"]),
            escape(cron),
            _when(item["next_due_at"]),
            escape(str(last.get("status", "-"))),
            str(last.get("run_id") or "-"),
            str(item["baseline_run_id"] or "-"),
        )
    console.print(table)


@schedules_app.command("run")
def schedules_run(
    name: Annotated[str, typer.Argument(help="The schedule's name")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a schedule now in this process, as at a due time: compared with its last passing
    run, recorded, alert rules evaluated (the webhook told). Exits 1 unless it passed."""
    from trellis.evals.scheduler import EvalScheduler
    from trellis.evals.service import EvalService
    from trellis.runtime import Trellis

    settings = load_settings(config)
    names = [schedule.name for schedule in settings.evals.schedules]
    if name not in names:
        known = ", ".join(names) or "none are configured under evals.schedules"
        err_console.print(
            f"[red]error:[/red] no eval schedule named {escape(repr(name))} ({escape(known)})"
        )
        raise typer.Exit(2)

    async def go() -> dict[str, Any]:
        async with Trellis(settings) as trellis:
            assert trellis.db is not None and trellis.gateway is not None
            service = EvalService(
                trellis.gateway, trellis.db, embedder=trellis.minilm, workflows=trellis.workflows
            )
            scheduler = EvalScheduler(service, settings.evals.schedules, alerts=trellis.alerts)
            try:
                scheduler.check()
                outcome = await scheduler.run_now(name, wait=True)
            finally:
                await service.aclose()
            return outcome.to_dict()

    outcome = run(go)
    if as_json:
        _write_json(outcome, None)
    else:
        colour = {"passed": "green", "regressed": "red", "failed": "red"}[outcome["status"]]
        console.print(
            f"[{colour}]{outcome['status']}[/{colour}] {escape(name)}: run {outcome['run_id']}"
            f", baseline {outcome['baseline_run_id'] or '-'}: {escape(outcome['reason'] or '')}"
        )
    if outcome["status"] != "passed":
        raise typer.Exit(1)

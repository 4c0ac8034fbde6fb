"""``trellis ingest``, ``trellis search`` and ``trellis collections ...``: retrieval."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
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
from trellis.settings import Settings

collections_app = typer.Typer(
    help="List, inspect and delete retrieval collections.", no_args_is_help=True
)


async def _with_retrieval(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(retrieval)`` over the configured database with the bundled embedder."""
    from trellis.inference.local.embedder import MiniLMEmbedder
    from trellis.retrieval import Retrieval, index_for

    async def open_retrieval(db: Any) -> T:
        index = index_for(db, postgres_keyword_rank=settings.retrieval.postgres_keyword_rank)
        embedder = MiniLMEmbedder(cache_dir=settings.data_dir / "models")
        retrieval = Retrieval(index, embedder, max_json_depth=settings.max_json_depth)  # type: ignore[arg-type]
        return await action(retrieval)

    return await with_db(settings, open_retrieval)


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Hold back per-file warnings while a progress bar runs: the summary reports them."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


#: Collection names are a project's own: every command names the project (default: default).
ProjectOption = Annotated[str, typer.Option("--project", "-p", help="The collection's project")]


def _collection_row(info: Any) -> list[str]:
    from datetime import datetime

    return [
        info.name,
        info.project_id,
        f"{info.documents:,}",
        f"{info.chunks:,}",
        f"{info.embedder} ({info.dimension})",
        datetime.fromtimestamp(info.created_at).isoformat(" ", "seconds"),
    ]


def ingest(
    collection: Annotated[str, typer.Argument(help="Collection to ingest into")],
    paths: Annotated[list[str], typer.Argument(help="Files and folders (.txt .md .html .pdf ...)")],
    create: Annotated[
        bool, typer.Option("--create", help="Create the collection if it does not exist")
    ] = False,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Load, chunk, embed and index files; unchanged documents are skipped.

    A file that cannot be read is reported and skipped; the rest are ingested. The
    exit status is 1 only when files failed and nothing else was ingested.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from trellis.errors import NotFoundError
    from trellis.retrieval.loaders import iter_files

    settings = load_settings(config)
    files = list(iter_files(paths))
    # JSON and JSON Lines files hold many documents each; otherwise a file is one.
    many = any(f.suffix.lower() in (".json", ".jsonl") for f in files)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[chunks]:,} chunks"),
        TimeElapsedColumn(),
        console=err_console,
        disable=as_json,
    )

    async def ingest_files(retrieval: Any) -> Any:
        try:
            await retrieval.get_collection(collection, project)
        except NotFoundError:
            if not create:
                raise NotFoundError(
                    f"no collection named {collection!r}; pass --create to make it"
                ) from None
            await retrieval.create_collection(collection, project_id=project)
        with progress:
            task = progress.add_task(
                f"ingesting into {collection}", total=None if many else len(files), chunks=0
            )

            def advance(docs: int, chunks: int) -> None:
                done = progress.tasks[0].fields["chunks"] + chunks
                progress.update(task, advance=docs, chunks=done)

            with _quiet_loggers("pypdf", "trellis.retrieval"):
                report = await retrieval.ingest(
                    collection, files, progress=advance, project_id=project
                )
            finished = progress.tasks[0].completed + len(report.failed)
            progress.update(task, total=finished, completed=finished)
            return report

    report = run(lambda: _with_retrieval(settings, ingest_files))
    ok = report.added or report.replaced or report.unchanged
    if as_json:
        console.print_json(json.dumps({"collection": collection, **report.to_dict()}))
    else:
        table = Table("ingested", "replaced", "unchanged", "failed", "chunks written")
        table.add_row(
            str(len(report.added)),
            str(len(report.replaced)),
            str(len(report.unchanged)),
            f"[red]{len(report.failed)}[/red]" if report.failed else "0",
            f"{report.chunks:,}",
        )
        console.print(table)
        for source, reason in report.failed.items():
            console.print(f"[red]skipped[/red] {source}: {reason}", soft_wrap=True)
    if report.failed and not ok:
        raise typer.Exit(1)


def search(
    collection: Annotated[str, typer.Argument(help="Collection to search")],
    query: Annotated[str, typer.Argument(help="What to look for")],
    mode: Annotated[
        str, typer.Option("--mode", help="keyword (BM25), vector (cosine) or hybrid (fused)")
    ] = "hybrid",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=1000)] = 10,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Search a collection and show the best chunks with their scores."""
    settings = load_settings(config)
    hits = run(
        lambda: _with_retrieval(
            settings,
            lambda r: r.search(collection, query, mode=mode, top_k=top_k, project_id=project),
        )
    )
    if as_json:
        console.print_json(json.dumps([hit.to_dict() for hit in hits]))
        return
    if not hits:
        console.print("no matches")
        return
    table = Table("#", "score", "document", "chars", "text", title=f"{mode} search: {query}")
    for rank, hit in enumerate(hits, 1):
        snippet = " ".join(hit.text.split())
        table.add_row(
            str(rank),
            f"{hit.score:.4f}",
            hit.document_id,
            f"{hit.start}-{hit.end}",
            snippet[:160] + ("…" if len(snippet) > 160 else ""),
        )
    console.print(table)


@collections_app.command("list")
def collections_list(
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Only this project's")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every collection (of every project, unless --project) with its size and embedder."""
    settings = load_settings(config)
    found = run(lambda: _with_retrieval(settings, lambda r: r.list_collections(project)))
    if as_json:
        console.print_json(json.dumps([info.to_dict() for info in found]))
        return
    table = Table("name", "project", "documents", "chunks", "embedder", "created")
    for info in found:
        table.add_row(*_collection_row(info))
    console.print(table)


@collections_app.command("show")
def collections_show(
    name: Annotated[str, typer.Argument(help="Collection name")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000)] = 20,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One collection: its size, embedder and first documents."""
    settings = load_settings(config)

    async def fetch(retrieval: Any) -> tuple[Any, Any]:
        info = await retrieval.get_collection(name, project)
        return info, await retrieval.list_documents(name, limit=limit, project_id=project)

    info, docs = run(lambda: _with_retrieval(settings, fetch))
    if as_json:
        body = {**info.to_dict(), "documents_page": [doc.to_dict() for doc in docs]}
        console.print_json(json.dumps(body))
        return
    summary = Table("name", "project", "documents", "chunks", "embedder", "created")
    summary.add_row(*_collection_row(info))
    console.print(summary)
    table = Table("document", "source", "chunks", title=f"first {len(docs)} documents")
    table.columns[0].overflow = "fold"  # ids are for copying, never cut short
    for doc in docs:
        # A file's id is its path: repeating it as the source would only add noise.
        source = "-" if doc.source in (None, doc.id) else doc.source
        table.add_row(doc.id, source, str(doc.chunks))
    console.print(table)


@collections_app.command("reindex")
def collections_reindex(
    name: Annotated[str, typer.Argument(help="Collection name")],
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-chunk and re-embed a collection with the current embedder (to switch embedder).

    Searches keep using the old vectors until the new ones replace them in one step;
    if interrupted, the collection stays as it was.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    settings = load_settings(config)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[chunks]:,} chunks"),
        console=err_console,
        disable=as_json,
    )

    async def reindex_all(retrieval: Any) -> Any:
        info = await retrieval.get_collection(name, project)
        with progress:
            task = progress.add_task(f"re-indexing {name}", total=info.documents, chunks=0)

            def advance(docs: int, chunks: int) -> None:
                done = progress.tasks[0].fields["chunks"] + chunks
                progress.update(task, advance=docs, chunks=done)

            with _quiet_loggers("trellis.retrieval"):
                report = await retrieval.reindex(name, progress=advance, project_id=project)
            return report, await retrieval.get_collection(name, project)

    report, info = run(lambda: _with_retrieval(settings, reindex_all))
    if as_json:
        console.print_json(json.dumps({**info.to_dict(), "reindexed": report.to_dict()}))
        return
    console.print(
        f"Re-indexed {name}: {len(report.replaced)} documents, {report.chunks:,} chunks, "
        f"embedder {info.embedder} ({info.dimension} dimensions)."
    )


@collections_app.command("delete")
def collections_delete(
    name: Annotated[str, typer.Argument(help="Collection name")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Delete a collection with all its documents and chunks."""
    settings = load_settings(config)
    if not yes:
        typer.confirm(f"Delete collection {name!r} and everything in it?", abort=True)
    run(lambda: _with_retrieval(settings, lambda r: r.delete_collection(name, project)))
    console.print(f"Deleted collection {name}.")

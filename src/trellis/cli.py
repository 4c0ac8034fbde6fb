"""The ``trellis`` command: serve, chat, models, keys, doctor, traces, stats, retrieval."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from trellis.errors import TrellisError
from trellis.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    help="Trellis: an LLM gateway with retrieval, workflows and observability.",
    no_args_is_help=True,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    str | None, typer.Option("--config", "-c", help="Path to trellis.yaml (default ./trellis.yaml)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def _settings(config: str | None, **overrides: Any) -> Settings:
    try:
        return Settings.load(config, **{k: v for k, v in overrides.items() if v is not None})
    except FileNotFoundError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except ValueError as exc:
        err_console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None


def _run(make: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(make())  # type: ignore[arg-type]
    except TrellisError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None


# --- serve ------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Start the HTTP server (OpenAI-compatible API under /v1)."""
    import uvicorn

    from trellis.server.app import announce_admin_key

    settings = _settings(config, host=host, port=port)
    if config:  # worker processes build their own Settings from the environment
        os.environ["TRELLIS_CONFIG"] = os.path.abspath(config)
    if host:
        os.environ["TRELLIS_HOST"] = host
    if port is not None:
        os.environ["TRELLIS_PORT"] = str(port)

    async def prepare() -> str | None:
        # Migrate and create the admin key once, before any worker starts.
        from trellis.access.keys import KeyStore
        from trellis.store.db import Database

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        await db.connect()
        try:
            return await KeyStore(db).ensure_admin(settings.admin_key)
        finally:
            await db.close()

    secret = _run(prepare)
    if secret:
        announce_admin_key(secret)
    console.print(
        f"Trellis listening on http://{settings.host}:{settings.port}/v1", style="bold green"
    )
    uvicorn.run(
        "trellis.server.app:create_server_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level=log_level,
        access_log=False,
        # Trellis reads no client address (API keys identify callers), so uvicorn's
        # X-Forwarded-* handling would be one more layer on every request for nothing.
        proxy_headers=False,
    )


# --- chat -------------------------------------------------------------------


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="What to ask")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model alias")] = None,
    system: Annotated[str | None, typer.Option(help="System message")] = None,
    temperature: Annotated[float | None, typer.Option(min=0, max=2)] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    url: Annotated[
        str | None, typer.Option(help="Talk to a running server (e.g. http://127.0.0.1:8080/v1)")
    ] = None,
    key: Annotated[
        str | None, typer.Option(envvar="TRELLIS_API_KEY", help="API key for --url")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Ask a model and stream the answer to the terminal."""
    settings = _settings(config)
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    body: dict[str, Any] = {
        "model": model or settings.default_model,
        "messages": messages,
        "stream": True,
    }
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if url:
        _run(lambda: _chat_remote(url, key, body))
    else:
        _run(lambda: _chat_local(settings, body))
    sys.stdout.write("\n")


async def _chat_local(settings: Settings, body: dict[str, Any]) -> None:
    from trellis.runtime import Trellis
    from trellis.schema import ChatRequest

    async with Trellis(settings) as trellis:
        assert trellis.gateway is not None
        result = await trellis.gateway.chat_stream(ChatRequest.model_validate(body))
        async for chunk in result.chunks:
            for choice in chunk.choices:
                if choice.delta.content:
                    sys.stdout.write(choice.delta.content)
                    sys.stdout.flush()


async def _chat_remote(url: str, key: str | None, body: dict[str, Any]) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(300, connect=5)) as client,
        client.stream(
            "POST", url.rstrip("/") + "/chat/completions", json=body, headers=headers
        ) as response,
    ):
        if response.status_code >= 400:
            await response.aread()
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            err_console.print(f"[red]error {response.status_code}:[/red] {message}")
            raise typer.Exit(1)
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                err_console.print(f"\n[red]error:[/red] {data['error'].get('message')}")
                raise typer.Exit(1)
            for choice in data.get("choices", []):
                content = (choice.get("delta") or {}).get("content")
                if content:
                    sys.stdout.write(content)
                    sys.stdout.flush()


# --- models -----------------------------------------------------------------


@app.command()
def models(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List the model aliases and their deployments."""
    settings = _settings(config)
    aliases = settings.all_models()
    if as_json:
        console.print_json(json.dumps([alias.model_dump(mode="json") for alias in aliases]))
        return
    table = Table("alias", "kind", "deployments", "context", "fallbacks", "routing")
    for alias in aliases:
        table.add_row(
            alias.name,
            alias.kind,
            "\n".join(d.label for d in alias.deployments),
            str(alias.context_window),
            ", ".join(alias.fallbacks) or "-",
            alias.routing,
        )
    console.print(table)


# --- keys -------------------------------------------------------------------


async def _with_keys(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    from trellis.access.keys import KeyStore
    from trellis.store.db import Database

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    await db.connect()
    try:
        return await action(KeyStore(db))
    finally:
        await db.close()


def _key_dict(record: Any) -> dict[str, Any]:
    return record.to_dict()  # type: ignore[no-any-return]


@keys_app.command("create")
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
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key; its secret is shown once."""
    settings = _settings(config)
    record, secret = _run(
        lambda: _with_keys(
            settings,
            lambda ks: ks.create(
                name, scopes=scope or ["inference"], allowed_models=model, cache=cache
            ),
        )
    )
    if as_json:
        console.print_json(json.dumps({**_key_dict(record), "key": secret}))
        return
    console.print(f"Created key [bold]{record.id}[/bold] ({', '.join(record.scopes)}):")
    console.print(f"  {secret}", style="bold yellow", soft_wrap=True)
    console.print("Store it now: it is not shown again.")


@keys_app.command("list")
def keys_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List keys (secrets are never shown)."""
    settings = _settings(config)
    records = _run(lambda: _with_keys(settings, lambda ks: ks.list()))
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


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `trellis keys list`)")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key at once."""
    settings = _settings(config)
    if not _run(lambda: _with_keys(settings, lambda ks: ks.revoke(key_id))):
        err_console.print(f"[red]no active key with id {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"Revoked {key_id}.")


# --- doctor -----------------------------------------------------------------


@app.command()
def doctor(
    config: ConfigOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds per deployment check")] = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Check settings, the database, and that every deployment answers."""
    settings = _settings(config)
    results = _run(lambda: _doctor(settings, timeout))
    if as_json:
        console.print_json(
            json.dumps([{"check": c, "ok": ok, "detail": d} for c, ok, d in results])
        )
    else:
        table = Table("check", "status", "detail")
        for check, ok, detail in results:
            table.add_row(check, "[green]ok[/green]" if ok else "[red]fail[/red]", detail)
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


# --- traces and stats -------------------------------------------------------

traces_app = typer.Typer(help="Read recorded traces.", no_args_is_help=True)
app.add_typer(traces_app, name="traces")


async def _with_db(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    from trellis.store.db import Database

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    await db.connect()
    try:
        return await action(db)
    finally:
        await db.close()


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

    settings = _settings(config)

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

    page = _run(lambda: _with_db(settings, fetch))
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

    settings = _settings(config)
    trace = _run(lambda: _with_db(settings, lambda db: TraceStore(db).get(trace_id)))
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


@app.command("stats")
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

    settings = _settings(config)

    async def compute(db: Any) -> dict[str, Any]:
        until_ns = time.time_ns()
        query = StatsQuery(
            since_ns=until_ns - int(parse_duration(window, "window") * 1e9),
            until_ns=until_ns,
            bucket_ns=int(parse_duration(bucket, "bucket") * 1e9),
            group_by=group_by,
        )
        return stats_body(query, await TraceStats(db).compute(query), window, bucket)

    body = _run(lambda: _with_db(settings, compute))
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


# --- retrieval: ingest, search, collections ---------------------------------

collections_app = typer.Typer(
    help="List, inspect and delete retrieval collections.", no_args_is_help=True
)
app.add_typer(collections_app, name="collections")


async def _with_retrieval(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(retrieval)`` over the configured database with the bundled embedder."""
    from trellis.inference.providers.local_embedder import MiniLMEmbedder
    from trellis.retrieval import Retrieval, index_for

    async def run(db: Any) -> T:
        index = index_for(db, postgres_keyword_rank=settings.retrieval.postgres_keyword_rank)
        embedder = MiniLMEmbedder(cache_dir=settings.data_dir / "models")
        return await action(Retrieval(index, embedder))  # type: ignore[arg-type]

    return await _with_db(settings, run)


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


def _collection_row(info: Any) -> list[str]:
    from datetime import datetime

    return [
        info.name,
        f"{info.documents:,}",
        f"{info.chunks:,}",
        f"{info.embedder} ({info.dimension})",
        datetime.fromtimestamp(info.created_at).isoformat(" ", "seconds"),
    ]


@app.command()
def ingest(
    collection: Annotated[str, typer.Argument(help="Collection to ingest into")],
    paths: Annotated[list[str], typer.Argument(help="Files and folders (.txt .md .html .pdf ...)")],
    create: Annotated[
        bool, typer.Option("--create", help="Create the collection if it does not exist")
    ] = False,
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

    settings = _settings(config)
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

    async def run(retrieval: Any) -> Any:
        try:
            await retrieval.get_collection(collection)
        except NotFoundError:
            if not create:
                raise NotFoundError(
                    f"no collection named {collection!r}; pass --create to make it"
                ) from None
            await retrieval.create_collection(collection)
        with progress:
            task = progress.add_task(
                f"ingesting into {collection}", total=None if many else len(files), chunks=0
            )

            def advance(docs: int, chunks: int) -> None:
                done = progress.tasks[0].fields["chunks"] + chunks
                progress.update(task, advance=docs, chunks=done)

            with _quiet_loggers("pypdf", "trellis.retrieval"):
                report = await retrieval.ingest(collection, files, progress=advance)
            finished = progress.tasks[0].completed + len(report.failed)
            progress.update(task, total=finished, completed=finished)
            return report

    report = _run(lambda: _with_retrieval(settings, run))
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


@app.command()
def search(
    collection: Annotated[str, typer.Argument(help="Collection to search")],
    query: Annotated[str, typer.Argument(help="What to look for")],
    mode: Annotated[
        str, typer.Option("--mode", help="keyword (BM25), vector (cosine) or hybrid (fused)")
    ] = "hybrid",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=1000)] = 10,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Search a collection and show the best chunks with their scores."""
    settings = _settings(config)
    hits = _run(
        lambda: _with_retrieval(
            settings, lambda r: r.search(collection, query, mode=mode, top_k=top_k)
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
def collections_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every collection with its size and embedder."""
    settings = _settings(config)
    found = _run(lambda: _with_retrieval(settings, lambda r: r.list_collections()))
    if as_json:
        console.print_json(json.dumps([info.to_dict() for info in found]))
        return
    table = Table("name", "documents", "chunks", "embedder", "created")
    for info in found:
        table.add_row(*_collection_row(info))
    console.print(table)


@collections_app.command("show")
def collections_show(
    name: Annotated[str, typer.Argument(help="Collection name")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000)] = 20,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One collection: its size, embedder and first documents."""
    settings = _settings(config)

    async def fetch(retrieval: Any) -> tuple[Any, Any]:
        info = await retrieval.get_collection(name)
        return info, await retrieval.list_documents(name, limit=limit)

    info, docs = _run(lambda: _with_retrieval(settings, fetch))
    if as_json:
        body = {**info.to_dict(), "documents_page": [doc.to_dict() for doc in docs]}
        console.print_json(json.dumps(body))
        return
    summary = Table("name", "documents", "chunks", "embedder", "created")
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
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-chunk and re-embed a collection with the current embedder (to switch embedder).

    Searches keep using the old vectors until the new ones replace them in one step;
    if interrupted, the collection stays as it was.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    settings = _settings(config)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[chunks]:,} chunks"),
        console=err_console,
        disable=as_json,
    )

    async def run(retrieval: Any) -> Any:
        info = await retrieval.get_collection(name)
        with progress:
            task = progress.add_task(f"re-indexing {name}", total=info.documents, chunks=0)

            def advance(docs: int, chunks: int) -> None:
                done = progress.tasks[0].fields["chunks"] + chunks
                progress.update(task, advance=docs, chunks=done)

            with _quiet_loggers("trellis.retrieval"):
                report = await retrieval.reindex(name, progress=advance)
            return report, await retrieval.get_collection(name)

    report, info = _run(lambda: _with_retrieval(settings, run))
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
    config: ConfigOption = None,
) -> None:
    """Delete a collection with all its documents and chunks."""
    settings = _settings(config)
    if not yes:
        typer.confirm(f"Delete collection {name!r} and everything in it?", abort=True)
    _run(lambda: _with_retrieval(settings, lambda r: r.delete_collection(name)))
    console.print(f"Deleted collection {name}.")


if __name__ == "__main__":
    app()

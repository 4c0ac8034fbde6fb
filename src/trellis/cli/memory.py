"""``trellis memories list|add|recall|delete|forget`` and ``trellis sessions show|delete``.

In process, against the configured database, like ``trellis runs``. Memories and sessions
belong to the API key that wrote them: ``--key`` names its id (``trellis keys list``);
without it the commands see what in-process (library) use wrote, the keyless namespace.
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

memories_app = typer.Typer(
    help="List, add, recall and delete long-term memories about users.", no_args_is_help=True
)
sessions_app = typer.Typer(help="Show and delete stored conversations.", no_args_is_help=True)

KeyOption = Annotated[
    str,
    typer.Option(
        "--key", "-k", help="The id of the API key the memories belong to (default: in-process)"
    ),
]
UserOption = Annotated[str, typer.Option("--user", "-u", help="The user the memories are about")]


async def _with_memories(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """``action(memories)`` over the database; the embedder loads only if a command embeds."""
    from trellis.memory.longterm import LongTermMemory

    embedder: list[Any] = []

    def minilm() -> Any:
        if not embedder:
            from trellis.inference.local.embedder import MiniLMEmbedder

            embedder.append(MiniLMEmbedder(cache_dir=settings.data_dir / "models"))
        return embedder[0]

    memory = settings.memory
    return await with_db(
        settings,
        lambda db: action(
            LongTermMemory(
                db,
                minilm,
                top_k=memory.top_k,
                min_score=memory.min_score,
                dedupe_threshold=memory.dedupe_threshold,
            )
        ),
    )


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print(value: Any) -> None:
    console.print_json(json.dumps(value))


@memories_app.command("list")
def memories_list(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's")] = None,
    key: KeyOption = "",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The key's memories (of one user), oldest first."""
    settings = load_settings(config)
    found = run(lambda: _with_memories(settings, lambda m: m.list_memories(key, user)))
    rows = [m.to_dict() for m in found]
    if as_json:
        _print(rows)
        return
    if not rows:
        console.print("No memories.")
        return
    table = Table("id", "user", "text", "updated")
    for row in rows:
        table.add_row(row["id"], escape(row["user"]), escape(row["text"]), _when(row["updated_at"]))
    console.print(table)


@memories_app.command("add")
def memories_add(
    text: Annotated[str, typer.Argument(help="The fact, e.g. 'I am allergic to peanuts.'")],
    user: UserOption,
    key: KeyOption = "",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remember a fact; a near-duplicate of a memory updates it instead."""
    if not text.strip():
        raise typer.BadParameter("the text is empty", param_hint="TEXT")
    settings = load_settings(config)
    memory, created = run(lambda: _with_memories(settings, lambda m: m.add(key, user, text)))
    row = {**memory.to_dict(), "updated": not created}
    if as_json:
        _print(row)
    else:
        verb = "added" if created else "updated near-duplicate"
        console.print(f"{verb} [bold]{row['id']}[/bold]: {escape(row['text'])}")


@memories_app.command("recall")
def memories_recall(
    query: Annotated[str, typer.Argument(help="What a prompt would be about")],
    user: UserOption,
    top_k: Annotated[int | None, typer.Option("--top-k", "-n", min=1, max=50)] = None,
    key: KeyOption = "",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The memories a chat request about QUERY would recall, best first."""
    settings = load_settings(config)
    found = run(lambda: _with_memories(settings, lambda m: m.recall(key, user, query, top_k=top_k)))
    rows = [{"id": m.id, "text": m.text, "score": round(m.score, 4)} for m in found]
    if as_json:
        _print(rows)
        return
    if not rows:
        console.print("Nothing recalled.")
        return
    table = Table("id", "score", "text")
    for row in rows:
        table.add_row(row["id"], f"{row['score']:.3f}", escape(row["text"]))
    console.print(table)


@memories_app.command("delete")
def memories_delete(
    memory_id: Annotated[str, typer.Argument(help="The memory's id (see `trellis memories list`)")],
    key: KeyOption = "",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete one memory."""
    settings = load_settings(config)
    run(lambda: _with_memories(settings, lambda m: m.delete(key, memory_id)))
    if as_json:
        _print({"id": memory_id, "deleted": True})
    else:
        console.print(f"deleted {escape(memory_id)}")


@memories_app.command("forget")
def memories_forget(
    user: UserOption,
    key: KeyOption = "",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete everything the key remembers about one user."""
    settings = load_settings(config)
    deleted = run(lambda: _with_memories(settings, lambda m: m.forget_user(key, user)))
    if as_json:
        _print({"user": user, "deleted": deleted})
    else:
        console.print(f"deleted {deleted} memories of {escape(user)}")


# --- trellis sessions ------------------------------------------------------------------


async def _with_sessions(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    from trellis.memory.sessions import SessionMemory

    return await with_db(settings, lambda db: action(SessionMemory(db, None)))


SessionArgument = Annotated[str, typer.Argument(help="The session id (trellis.session_id)")]


def _session_key(key: str, session_id: str) -> Any:
    from trellis.inference.conversation import SessionKey

    return SessionKey(key, session_id)


@sessions_app.command("show")
def sessions_show(
    session_id: SessionArgument,
    key: KeyOption = "",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The running summary and the turns after it: what the next request will get."""
    from trellis.schema import message_text

    settings = load_settings(config)
    found = run(
        lambda: _with_sessions(settings, lambda s: s.messages(_session_key(key, session_id)))
    )
    if found is None:
        err_console.print(f"[red]error:[/red] no session {escape(session_id)!r}")
        raise typer.Exit(1)
    summary, messages = found
    if as_json:
        _print(
            {
                "id": session_id,
                "summary": summary,
                "messages": [m.model_dump(mode="json", exclude_none=True) for m in messages],
            }
        )
        return
    console.print(f"session [bold]{escape(session_id)}[/bold]: {len(messages)} messages")
    if summary:
        console.print(f"  summary: {escape(summary)}", soft_wrap=True)
    for message in messages:
        console.print(
            f"  [bold]{message.role}[/bold]: {escape(message_text(message))}", soft_wrap=True
        )


@sessions_app.command("delete")
def sessions_delete(
    session_id: SessionArgument,
    key: KeyOption = "",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Forget a conversation: its turns and summary."""
    settings = load_settings(config)
    deleted = run(
        lambda: _with_sessions(settings, lambda s: s.delete(_session_key(key, session_id)))
    )
    if not deleted:
        err_console.print(f"[red]error:[/red] no session {escape(session_id)!r}")
        raise typer.Exit(1)
    if as_json:
        _print({"id": session_id, "deleted": True})
    else:
        console.print(f"deleted session {escape(session_id)}")

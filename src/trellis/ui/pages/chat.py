"""The chat playground: a model alias and collections, the answer streamed token by token.

The answer comes from the gateway's own streaming path (as ``stream: true`` on
``/v1/chat/completions``), relayed to the page as server-sent events that name what they
carry (``token``, ``citations``, ``done``, ``error``). Conversations are Trellis sessions
(``trellis.session_id``) of the signed-in key, so the server keeps their turns.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from sqlalchemy import select
from starlette.responses import Response, StreamingResponse

from trellis.errors import InvalidRequestError, NotFoundError, TrellisError
from trellis.inference.conversation import SessionKey
from trellis.schema import ChatRequest
from trellis.store.tables import memory_sessions
from trellis.ui.pages.alerts import invalid
from trellis.ui.web import SECURITY_HEADERS, UiRoute, Viewer, render, runtime, viewer

router = APIRouter(route_class=UiRoute)

SESSION_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,200}$")
#: How long the summary waits for the answer's trace (written in batches) to be stored.
TRACE_WAIT_SECONDS = 5.0


def _session_id(raw: str | None) -> str:
    if raw is None or raw == "":
        return "ui-" + secrets.token_hex(6)
    if not SESSION_ID.match(raw):
        raise InvalidRequestError(
            "A session id has 1 to 200 letters, digits or . _ : @ -", param="session"
        )
    return raw


async def _recent_sessions(request: Request, me: Viewer) -> list[dict[str, Any]]:
    db = runtime(request).db
    assert db is not None
    statement = (
        select(memory_sessions.c.session_id, memory_sessions.c.updated_at)
        .where(memory_sessions.c.owner == me.key.id)
        .order_by(memory_sessions.c.updated_at.desc())
        .limit(20)
    )
    async with db.engine.connect() as conn:
        return [dict(row) for row in (await conn.execute(statement)).mappings()]


@router.get("/ui/chat")
async def chat_page(request: Request) -> Response:
    me = await viewer(request, "chat")
    rt = runtime(request)
    gateway = rt.gateway
    assert gateway is not None
    session_id = _session_id(request.query_params.get("session"))
    models = [c.id for c in gateway.models(me.caller).data if c.kind == "chat"]
    collections = (
        [c.name for c in await rt.retrieval.list_collections(me.project_id)]
        if me.can("collections")
        else []
    )
    history: list[dict[str, Any]] = []
    summary = None
    if rt.sessions is not None:
        found = await rt.sessions.messages(SessionKey(me.key.id, session_id))
        if found is not None:
            summary, messages = found
            history = [
                {"role": m.role, "content": m.content if isinstance(m.content, str) else ""}
                for m in messages
                if m.role in ("user", "assistant")
            ]
    context = {
        "title": "Chat",
        "models": models,
        "collections": collections,
        "session_id": session_id,
        "history": history,
        "summary": summary,
        "sessions": await _recent_sessions(request, me),
        "chosen_model": request.query_params.get("model") or (models[0] if models else ""),
    }
    return render(request, "chat.html", context, me=me)


def _event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@router.post("/ui/chat/stream")
async def chat_stream(request: Request) -> Response:
    """One turn, streamed: ``{model, message, collections, session_id}`` in (JSON), SSE out."""
    me = await viewer(request, "chat")
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise InvalidRequestError("The body must be JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The body must be a JSON object.")
    message = str(body.get("message") or "").strip()
    if not message:
        raise InvalidRequestError("Type a message first.", param="message")
    collections = body.get("collections") or []
    if collections and not me.can("collections"):
        raise InvalidRequestError("This key may not read collections.", param="collections")
    options: dict[str, Any] = {"session_id": _session_id(body.get("session_id"))}
    if collections:
        options["collections"] = collections
    try:
        chat = ChatRequest.model_validate(
            {
                "model": body.get("model") or "",
                "messages": [{"role": "user", "content": message}],
                "stream": True,
                "stream_options": {"include_usage": True},
                "trellis": options,
            }
        )
    except ValidationError as exc:
        raise invalid(exc) from None
    gateway = runtime(request).gateway
    assert gateway is not None
    started = time.perf_counter()
    now = time.time_ns()
    # The API's caller of this key (its project: limits, traces, grounding), as if just
    # authenticated: the session was checked a moment ago.
    caller = dataclasses.replace(me.caller, auth_start_ns=now, auth_end_ns=now)
    result = await gateway.chat_stream(chat, caller)
    return StreamingResponse(
        _relay(result.chunks, result.trace_id, result.cache_hit, started),
        media_type="text/event-stream",
        headers={**SECURITY_HEADERS, "x-trellis-trace-id": result.trace_id},
    )


async def _relay(
    chunks: AsyncIterator[Any], trace_id: str, cache_hit: bool, started: float
) -> AsyncIterator[bytes]:
    yield _event("meta", {"trace_id": trace_id, "cache_hit": cache_hit})
    first: float | None = None
    usage: dict[str, Any] | None = None
    try:
        async for chunk in chunks:
            for choice in chunk.choices:
                text = choice.delta.content
                if text:
                    if first is None:
                        first = time.perf_counter()
                    yield _event("token", {"text": text})
            if chunk.usage is not None:
                usage = chunk.usage.model_dump(exclude_none=True)
            citations = getattr(chunk, "citations", None)
            if citations:
                yield _event("citations", citations)
    except TrellisError as exc:
        yield _event("error", {"message": exc.message})
        return
    end = time.perf_counter()
    yield _event(
        "done",
        {
            "trace_id": trace_id,
            "usage": usage,
            "latency_ms": round((end - started) * 1000, 1),
            "ttft_ms": None if first is None else round((first - started) * 1000, 1),
        },
    )


@router.get("/ui/chat/summary/{trace_id}")
async def answer_summary(trace_id: str, request: Request) -> Response:
    """The stored trace's figures for one answer: tokens, cost, latency (as recorded)."""
    me = await viewer(request, "chat")
    store = runtime(request).traces
    assert store is not None
    deadline = time.monotonic() + TRACE_WAIT_SECONDS
    while True:
        exists, owner, project_id = await store.owner(trace_id)
        if exists:
            break
        if time.monotonic() > deadline:
            raise NotFoundError(f"The trace `{trace_id}` is not stored yet.")
        await asyncio.sleep(0.1)
    me.outside(project_id, f"trace with id `{trace_id}`")
    if owner != me.key.id and not me.can("traces"):
        raise NotFoundError(f"No trace with id `{trace_id}`.")
    trace = await store.get(trace_id)
    return render(request, "_answer_summary.html", {"trace": trace}, me=me)

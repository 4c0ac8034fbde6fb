"""Stored conversations: turns per session, assembled into each request, compressed
into a running summary when they outgrow the model's context budget.

A session belongs to the API key that created it: the key id is part of its identity
(``memory_sessions.owner``), so another key naming the same ``session_id`` starts its
own, separate conversation and never sees the first one.

Each exchange (the request's new user/tool messages and the answer) is stored in one
transaction after the answer is complete, so a failed or interrupted call leaves no
half turn. When the stored turns plus the new messages exceed the budget, the oldest
turns are summarized (an LLM call through the gateway, on the same model; a plain
extractive summary if that call fails), and the session's ``summary`` and
``summarized_through`` are updated in one compare-and-set statement. Compressed turns
stay in ``memory_turns``: the summary replaces them in prompts, not in storage.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from trellis.inference.call import Caller
from trellis.inference.conversation import Compression, SessionHistory, SessionKey
from trellis.inference.tokens import count_message_tokens
from trellis.schema import ChatMessage, ChatRequest, TrellisOptions, message_text
from trellis.store.db import Database
from trellis.store.tables import memory_sessions, memory_turns

if TYPE_CHECKING:
    from trellis.inference.gateway import Gateway

__all__ = ["SessionMemory", "Summarizer", "GatewaySummarizer", "SUMMARY_PREFIX"]

#: How the running summary is introduced to the model (a system message).
SUMMARY_PREFIX = "Summary of the earlier conversation (older turns, compressed):\n"
_PINNED = ("system", "developer")
_SENTENCE = re.compile(r"(?<=[.!?])\s")
_EXTRACT_CHARS = 200


class Summarizer(Protocol):
    async def summarize(
        self,
        model: str,
        previous: str | None,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        caller: Caller,
    ) -> tuple[str, str | None]:
        """The new running summary and the trace id of the call that wrote it."""
        ...


SUMMARY_INSTRUCTIONS = (
    "You maintain the running summary of a conversation between a user and an assistant. "
    "Rewrite the summary so far together with the new turns below into one concise summary "
    "that keeps every fact, name, number, preference and open question. Write only the summary."
)


def transcript(previous: str | None, messages: Sequence[ChatMessage]) -> str:
    """The compressed turns as plain text, after the summary so far."""
    lines = [f"Summary so far: {previous}", ""] if previous else []
    lines.append("New turns:")
    lines.extend(f"{m.role}: {message_text(m)}" for m in messages)
    return "\n".join(lines)


def summary_prompt(previous: str | None, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The messages of one summary call (sized by ``SessionMemory`` to fit the model)."""
    return [
        ChatMessage(role="system", content=SUMMARY_INSTRUCTIONS),
        ChatMessage(role="user", content=transcript(previous, messages)),
    ]


def _first_sentence(message: ChatMessage) -> str:
    text = " ".join(message_text(message).split())
    return _SENTENCE.split(text, maxsplit=1)[0][:_EXTRACT_CHARS]


class GatewaySummarizer:
    """Summarizes through the gateway, on the session's own model, as the same caller,
    so routing, access rules, cost and tracing apply to the summary call as well."""

    def __init__(self, gateway: Callable[[], Gateway]) -> None:
        self._gateway = gateway

    async def summarize(
        self,
        model: str,
        previous: str | None,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        caller: Caller,
    ) -> tuple[str, str | None]:
        request = ChatRequest(
            model=model,
            messages=summary_prompt(previous, messages),
            max_tokens=max_tokens,
            temperature=0.0,
            trellis=TrellisOptions(cache=False, trim=False),
        )
        result = await self._gateway().chat(request, caller)
        text = result.response.choices[0].message.content if result.response.choices else None
        return (text if isinstance(text, str) else "").strip(), result.trace_id


def extractive_summary(previous: str | None, messages: Sequence[ChatMessage]) -> str:
    """The fallback when the summary call fails: the first sentence of each turn."""
    lines = [previous] if previous else []
    for message in messages:
        first = _first_sentence(message)
        if first:
            lines.append(f"{message.role}: {first}")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _Summary:
    text: str
    method: str
    calls: int
    trace_id: str | None
    error: str | None


@dataclass(slots=True)
class _Turn:
    id: int
    message: ChatMessage
    tokens: int


@dataclass(slots=True)
class _Session:
    pk: int
    summary: str | None
    summarized_through: int


def _summary_message(summary: str) -> ChatMessage:
    return ChatMessage(role="system", content=SUMMARY_PREFIX + summary)


def assemble(
    summary: str | None, turns: Sequence[ChatMessage], messages: Sequence[ChatMessage]
) -> list[ChatMessage]:
    """The request's leading system messages, the summary, the stored turns, the rest."""
    head = 0
    while head < len(messages) and messages[head].role in _PINNED:
        head += 1
    middle = [_summary_message(summary)] if summary else []
    return [*messages[:head], *middle, *turns, *messages[head:]]


class SessionMemory:
    """Implements ``trellis.inference.conversation.SessionStore`` over Trellis' database."""

    def __init__(
        self,
        db: Database,
        summarizer: Summarizer | None = None,
        *,
        count_message: Callable[[list[ChatMessage]], int] = count_message_tokens,
        summary_share: float = 0.25,
    ) -> None:
        self.db = db
        #: None: always the extractive summary (no model call).
        self.summarizer = summarizer
        self._count = count_message
        #: The share of the budget the running summary may take.
        self.summary_share = summary_share

    # --- reading ----------------------------------------------------------------

    async def _load(self, key: SessionKey) -> tuple[_Session | None, list[_Turn]]:
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        memory_sessions.c.id,
                        memory_sessions.c.summary,
                        memory_sessions.c.summarized_through,
                    ).where(
                        memory_sessions.c.owner == key.owner,
                        memory_sessions.c.session_id == key.session_id,
                    )
                )
            ).first()
            if row is None:
                return None, []
            session = _Session(row.id, row.summary, row.summarized_through)
            rows = await conn.execute(
                sa.select(memory_turns.c.id, memory_turns.c.message, memory_turns.c.tokens)
                .where(
                    memory_turns.c.session_pk == session.pk,
                    memory_turns.c.id > session.summarized_through,
                )
                .order_by(memory_turns.c.id)
            )
            turns = [_Turn(r.id, ChatMessage.model_validate(r.message), r.tokens) for r in rows]
        return session, turns

    async def messages(self, key: SessionKey) -> tuple[str | None, list[ChatMessage]] | None:
        """The running summary and the turns after it (what the next request gets);
        None when the key has no such session."""
        session, turns = await self._load(key)
        if session is None:
            return None
        return session.summary, [t.message for t in turns]

    async def history(
        self,
        key: SessionKey,
        messages: Sequence[ChatMessage],
        *,
        model: str,
        budget: int,
        count: Callable[[list[ChatMessage]], int],
        caller: Caller,
    ) -> SessionHistory:
        for _ in range(3):  # a concurrent compression of the same session: load again
            session, turns = await self._load(key)
            if session is None:
                return SessionHistory(list(messages), 0, False)
            full = assemble(session.summary, [t.message for t in turns], messages)
            tokens = count(full)
            if tokens <= budget or not turns:
                return SessionHistory(full, len(turns), bool(session.summary))
            compressed = await self._compress(
                session, turns, messages, model=model, budget=budget, count=count, caller=caller
            )
            if compressed is not None:
                summary, kept, done = compressed
                result = assemble(summary, [t.message for t in kept], messages)
                done = replace(done, tokens_before=tokens, tokens_after=count(result))
                return SessionHistory(result, len(kept), True, done)
        raise RuntimeError(f"session {key.session_id!r} kept changing during compression")

    async def _compress(
        self,
        session: _Session,
        turns: list[_Turn],
        messages: Sequence[ChatMessage],
        *,
        model: str,
        budget: int,
        count: Callable[[list[ChatMessage]], int],
        caller: Caller,
    ) -> tuple[str, list[_Turn], Compression] | None:
        """Summarize the oldest turns so the rest fits; None if another writer won."""
        summary_budget = max(16, int(budget * self.summary_share))
        fixed = count(assemble("x", [], messages)) + summary_budget
        cut = 0
        remaining = sum(t.tokens for t in turns)
        # At least one turn, then whole exchanges only: the kept history starts with a
        # user message, so no tool result loses the assistant message that asked for it.
        while cut < len(turns) and (
            cut == 0
            or fixed + remaining > budget
            or turns[cut].message.role in ("assistant", "tool")
        ):
            remaining -= turns[cut].tokens
            cut += 1
        old = [t.message for t in turns[:cut]]
        done = await self._summarize(
            session.summary,
            old,
            model=model,
            summary_budget=summary_budget,
            limit=budget - summary_budget,
            count=count,
            caller=caller,
        )
        text = self._fit_summary(done.text, summary_budget)
        tokens = self._count([ChatMessage(role="system", content=text)])
        async with self.db.write() as conn:
            updated = await conn.execute(
                sa.update(memory_sessions)
                .where(
                    memory_sessions.c.id == session.pk,
                    memory_sessions.c.summarized_through == session.summarized_through,
                )
                .values(summary=text, summarized_through=turns[cut - 1].id, updated_at=time.time())
            )
        if updated.rowcount != 1:
            return None
        return (
            text,
            turns[cut:],
            Compression(
                compressed_messages=cut,
                tokens_before=0,  # filled in by ``history``, which counted the whole request
                tokens_after=0,
                summary_tokens=tokens,
                method=done.method,
                summary_calls=done.calls,
                summary_trace_id=done.trace_id,
                summary_error=done.error,
            ),
        )

    async def _summarize(
        self,
        previous: str | None,
        old: list[ChatMessage],
        *,
        model: str,
        summary_budget: int,
        limit: int,
        count: Callable[[list[ChatMessage]], int],
        caller: Caller,
    ) -> _Summary:
        """Fold ``old`` into the summary, in as few model calls as fit ``limit`` tokens each.

        The turns to compress rarely fit one call (they are what overflowed the window),
        so they go in batches, each folded into the summary so far. A message too long
        for any call goes in as its first sentence. If a call fails, what is left is
        added extractively to what the model summarized until then.
        """
        summary, trace_id, calls, i = previous, None, 0, 0
        if self.summarizer is None:
            return _Summary(extractive_summary(previous, old), "extractive", 0, None, None)
        try:
            while i < len(old):
                j = i + 1
                while j < len(old) and count(summary_prompt(summary, old[i : j + 1])) <= limit:
                    j += 1
                batch = old[i:j]
                if count(summary_prompt(summary, batch)) > limit:
                    batch = [ChatMessage(role=old[i].role, content=_first_sentence(old[i]))]
                    if count(summary_prompt(summary, batch)) > limit:
                        raise ValueError("the context window is too small for a summary call")
                text, trace_id = await self.summarizer.summarize(
                    model, summary, batch, summary_budget, caller
                )
                calls += 1
                if not text:
                    raise ValueError("the summary call returned no text")
                summary, i = self._fit_summary(text, summary_budget), j
            return _Summary(summary or "", "llm", calls, trace_id, None)
        except Exception as exc:  # the model failed: compress the rest without it
            error = f"{type(exc).__name__}: {exc}"[:300]
            return _Summary(
                extractive_summary(summary, old[i:]), "extractive", calls, trace_id, error
            )

    def _fit_summary(self, text: str, budget: int) -> str:
        """Cut a summary that overshoots its budget, keeping its newest lines."""
        lines = text.splitlines()
        while len(lines) > 1 and self._count([ChatMessage(role="system", content=text)]) > budget:
            lines.pop(0)
            text = "\n".join(lines)
        return text

    # --- writing ----------------------------------------------------------------

    async def record(
        self, key: SessionKey, messages: Sequence[ChatMessage], *, trace_id: str | None
    ) -> None:
        now = time.time()
        rows: list[dict[str, Any]] = [
            {
                "role": m.role,
                "message": m.model_dump(mode="json", exclude_none=True),
                "tokens": self._count([m]),
                "trace_id": trace_id,
                "created_at": now,
            }
            for m in messages
        ]
        for attempt in range(2):
            try:
                async with self.db.write() as conn:
                    pk = await self._session_pk(conn, key, now)
                    if rows:
                        await conn.execute(
                            sa.insert(memory_turns), [{**r, "session_pk": pk} for r in rows]
                        )
                return
            except IntegrityError:  # another request created the session at the same time
                if attempt:
                    raise

    @staticmethod
    async def _session_pk(conn: AsyncConnection, key: SessionKey, now: float) -> int:
        where = (memory_sessions.c.owner == key.owner) & (
            memory_sessions.c.session_id == key.session_id
        )
        pk = (await conn.execute(sa.select(memory_sessions.c.id).where(where))).scalar()
        if pk is not None:
            await conn.execute(sa.update(memory_sessions).where(where).values(updated_at=now))
            return int(pk)
        inserted = await conn.execute(
            sa.insert(memory_sessions)
            .values(owner=key.owner, session_id=key.session_id, created_at=now, updated_at=now)
            .returning(memory_sessions.c.id)
        )
        return int(inserted.scalar_one())

    async def delete(self, key: SessionKey) -> bool:
        """Forget a session and all its turns; False if there was none."""
        async with self.db.write() as conn:
            where = (memory_sessions.c.owner == key.owner) & (
                memory_sessions.c.session_id == key.session_id
            )
            pk = (await conn.execute(sa.select(memory_sessions.c.id).where(where))).scalar()
            if pk is None:
                return False
            # Explicit: SQLite enforces ON DELETE CASCADE only with foreign keys on.
            await conn.execute(sa.delete(memory_turns).where(memory_turns.c.session_pk == pk))
            await conn.execute(sa.delete(memory_sessions).where(memory_sessions.c.id == pk))
        return True

"""Long-term memories: facts about a user, kept across sessions and recalled by relevance.

A memory belongs to the API key that wrote it and the user it is about (``owner``,
``user_id``): one key never reads another key's memories, even for the same user id.
Each memory is stored with its embedding from the bundled embedder (the one retrieval
and the semantic cache use), encoded as ``chunks.embedding`` is. Recall compares the
request's last user message with that user's memories in memory (numpy): a user has
tens to hundreds of memories, so an exact scan of one user's rows is cheaper than
keeping a per-user index, and it needs no collection visible in the collections API.

Writing a memory that restates an existing one (cosine at least ``dedupe_threshold``,
0.95) updates that memory instead of adding a second. The threshold is high on
purpose: sentence embeddings cannot tell a changed fact from a different one ("My son
is allergic to peanuts" is 0.93 from "My daughter is ...", "I live in Berlin" only 0.58
from "I live in Paris"), so merging lower would overwrite true facts. A changed fact is
updated with ``update`` (PATCH), or by extraction (``trellis.memory.extraction``), whose
model says which fact a statement supersedes; its operations go through ``apply``, one
transaction with the same dedupe.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import sqlalchemy as sa
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from trellis.errors import NotFoundError
from trellis.inference.conversation import Recalled
from trellis.store.db import Database
from trellis.store.tables import memories

__all__ = ["LongTermMemory", "Memory", "Embedder", "MemoryOp", "Applied"]


class Embedder(Protocol):
    """The part of the bundled MiniLM embedder memories use (unit vectors)."""

    @property
    def name(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class Memory:
    id: str
    user_id: str
    text: str
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "memory",
            "id": self.id,
            "user": self.user_id,
            "text": self.text,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class MemoryOp:
    """One change to a user's memories: add a fact, replace a memory's text, delete one."""

    kind: Literal["add", "update", "delete"]
    text: str = ""
    memory_id: str | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """A change ``apply`` made: ``added``, ``merged`` (an add that updated its near-
    duplicate), ``updated`` or ``deleted``, and the memory as it is now (or was)."""

    op: Literal["added", "merged", "updated", "deleted"]
    memory: Memory

    def to_dict(self) -> dict[str, str]:
        return {"op": self.op, "id": self.memory.id, "text": self.memory.text}


def _encode(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def _memory(row: Any) -> Memory:
    return Memory(row.id, row.user_id, row.text, row.created_at, row.updated_at)


class LongTermMemory:
    """Memories per (API key, user) in Trellis' database; implements ``MemoryRecall``."""

    def __init__(
        self,
        db: Database,
        embedder: Callable[[], Embedder],
        *,
        top_k: int = 3,
        min_score: float = 0.3,
        dedupe_threshold: float = 0.95,
    ) -> None:
        self.db = db
        #: A factory, so the embedder's model loads on the first memory, not at start-up.
        self._embedder = embedder
        self.top_k = top_k
        self.min_score = min_score
        self.dedupe_threshold = dedupe_threshold

    async def _embed(self, text: str) -> tuple[np.ndarray, str]:
        embedder = self._embedder()
        vectors = await asyncio.to_thread(embedder.embed, [text])
        return np.asarray(vectors[0], dtype=np.float32), embedder.name

    async def _vectors(
        self, owner: str, user_id: str, embedder: str
    ) -> list[tuple[Any, np.ndarray]]:
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(memories).where(
                        memories.c.owner == owner,
                        memories.c.user_id == user_id,
                        memories.c.embedder == embedder,
                    )
                )
            ).all()
        return [(row, np.frombuffer(row.embedding, dtype="<f4")) for row in rows]

    async def add(self, owner: str, user_id: str, text: str) -> tuple[Memory, bool]:
        """Store a fact; (the memory, True) if new, (the updated near-duplicate, False)."""
        applied, _ = await self.apply(owner, user_id, [MemoryOp("add", text)])
        return applied[0].memory, applied[0].op == "added"

    async def apply(
        self, owner: str, user_id: str, ops: Sequence[MemoryOp]
    ) -> tuple[list[Applied], int]:
        """Apply ``ops`` in order, in one transaction that holds the user's lock; the changes
        made and how many ops were skipped (an id that is not this user's, an empty text).

        An add that restates a memory (cosine >= ``dedupe_threshold``, also one added
        earlier in ``ops``) updates it. The lock keeps two writers for one user (the
        HTTP API and a background extraction) from adding the same fact twice.
        """
        texts = [op.text.strip() for op in ops]
        wanted = [t for op, t in zip(ops, texts, strict=True) if op.kind != "delete" and t]
        vectors: dict[str, np.ndarray] = {}
        embedder_name = ""
        if wanted:
            embedder = self._embedder()
            found = await asyncio.to_thread(embedder.embed, wanted)
            embedder_name = embedder.name
            vectors = {
                t: np.asarray(v, dtype=np.float32) for t, v in zip(wanted, found, strict=True)
            }
        applied: list[Applied] = []
        ignored = 0
        async with self.db.exclusive(f"memories:{owner}:{user_id}") as conn:
            rows = (
                await conn.execute(
                    sa.select(memories).where(
                        memories.c.owner == owner, memories.c.user_id == user_id
                    )
                )
            ).all()
            live: dict[str, tuple[Memory, np.ndarray | None]] = {
                row.id: (
                    _memory(row),
                    np.frombuffer(row.embedding, dtype="<f4")
                    if row.embedder == embedder_name
                    else None,
                )
                for row in rows
            }
            for op, text in zip(ops, texts, strict=True):
                done = await self._apply_one(
                    conn, owner, user_id, op, text, vectors, embedder_name, live
                )
                if done is None:
                    ignored += 1
                else:
                    applied.append(done)
        return applied, ignored

    async def _apply_one(
        self,
        conn: AsyncConnection,
        owner: str,
        user_id: str,
        op: MemoryOp,
        text: str,
        vectors: dict[str, np.ndarray],
        embedder: str,
        live: dict[str, tuple[Memory, np.ndarray | None]],
    ) -> Applied | None:
        now = time.time()
        if op.kind == "delete":
            if op.memory_id not in live:
                return None
            await conn.execute(sa.delete(memories).where(memories.c.id == op.memory_id))
            gone, _ = live.pop(op.memory_id)
            return Applied("deleted", gone)
        if not text:
            return None
        vector = vectors[text]
        target: str | None = None
        kind: Literal["added", "merged", "updated"] = "added"
        if op.kind == "update":
            if op.memory_id not in live:
                return None
            target, kind = op.memory_id, "updated"
        else:
            best, best_score = None, -1.0
            for memory_id, (_, other) in live.items():
                if other is not None:
                    score = float(np.dot(vector, other))
                    if score > best_score:
                        best, best_score = memory_id, score
            if best is not None and best_score >= self.dedupe_threshold:
                target, kind = best, "merged"
        if target is not None:
            await conn.execute(
                sa.update(memories)
                .where(memories.c.id == target)
                .values(text=text, embedding=_encode(vector), embedder=embedder, updated_at=now)
            )
            old, _ = live[target]
            memory = Memory(target, user_id, text, old.created_at, now)
        else:
            memory = Memory(f"mem_{secrets.token_hex(12)}", user_id, text, now, now)
            await conn.execute(
                sa.insert(memories).values(
                    id=memory.id,
                    owner=owner,
                    user_id=user_id,
                    text=text,
                    embedding=_encode(vector),
                    embedder=embedder,
                    created_at=now,
                    updated_at=now,
                )
            )
        live[memory.id] = (memory, vector)
        return Applied(kind, memory)

    async def update(self, owner: str, memory_id: str, text: str) -> Memory:
        text = text.strip()
        vector, embedder = await self._embed(text)
        now = time.time()
        async with self.db.write() as conn:
            row = await _owned(conn, owner, memory_id)
            await conn.execute(
                sa.update(memories)
                .where(memories.c.id == memory_id)
                .values(text=text, embedding=_encode(vector), embedder=embedder, updated_at=now)
            )
        return Memory(memory_id, row.user_id, text, row.created_at, now)

    async def list_memories(self, owner: str, user_id: str | None = None) -> list[Memory]:
        """The key's memories (of one user, when given), oldest first."""
        query = sa.select(memories).where(memories.c.owner == owner)
        if user_id is not None:
            query = query.where(memories.c.user_id == user_id)
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(query.order_by(memories.c.created_at, memories.c.id))
            return [_memory(row) for row in rows]

    async def get(self, owner: str, memory_id: str) -> Memory:
        async with self.db.engine.connect() as conn:
            return _memory(await _owned(conn, owner, memory_id))

    async def delete(self, owner: str, memory_id: str) -> None:
        async with self.db.write() as conn:
            deleted = await conn.execute(
                sa.delete(memories).where(memories.c.id == memory_id, memories.c.owner == owner)
            )
        if deleted.rowcount != 1:
            raise NotFoundError(f"No memory `{memory_id}`.", param="id")

    async def forget_user(self, owner: str, user_id: str) -> int:
        """Delete every memory the key holds about ``user_id``; how many there were."""
        async with self.db.write() as conn:
            deleted = await conn.execute(
                sa.delete(memories).where(memories.c.owner == owner, memories.c.user_id == user_id)
            )
        return int(deleted.rowcount)

    async def recall(
        self, owner: str, user_id: str, query: str, *, top_k: int | None = None
    ) -> list[Recalled]:
        """The ``top_k`` memories closest to ``query`` with cosine at least ``min_score``."""
        if not query.strip():
            return []
        async with self.db.engine.connect() as conn:
            present = (
                await conn.execute(
                    sa.select(memories.c.id)
                    .where(memories.c.owner == owner, memories.c.user_id == user_id)
                    .limit(1)
                )
            ).first()
        if present is None:  # no memories: no embedding either
            return []
        vector, embedder = await self._embed(query)
        scored = [
            Recalled(row.id, row.text, float(np.dot(vector, other)))
            for row, other in await self._vectors(owner, user_id, embedder)
        ]
        scored = [m for m in scored if m.score >= self.min_score]
        scored.sort(key=lambda m: m.score, reverse=True)
        return scored[: self.top_k if top_k is None else top_k]


async def _owned(conn: AsyncConnection, owner: str, memory_id: str) -> Row[Any]:
    """The key's memory ``memory_id``; a 404 when it has none by that id."""
    row = (
        await conn.execute(
            sa.select(memories).where(memories.c.id == memory_id, memories.c.owner == owner)
        )
    ).first()
    if row is None:
        raise NotFoundError(f"No memory `{memory_id}`.", param="id")
    return row

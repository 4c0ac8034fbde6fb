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
updated with ``update`` (PATCH); deciding which fact a statement supersedes needs a
model, which the planned extraction step will do.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import sqlalchemy as sa
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from trellis.errors import NotFoundError
from trellis.inference.conversation import Recalled
from trellis.store.db import Database
from trellis.store.tables import memories

__all__ = ["LongTermMemory", "Memory", "Embedder"]


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
        text = text.strip()
        vector, embedder = await self._embed(text)
        now = time.time()
        existing = await self._vectors(owner, user_id, embedder)
        best, best_score = None, -1.0
        for row, other in existing:
            score = float(np.dot(vector, other))
            if score > best_score:
                best, best_score = row, score
        async with self.db.write() as conn:
            if best is not None and best_score >= self.dedupe_threshold:
                await conn.execute(
                    sa.update(memories)
                    .where(memories.c.id == best.id)
                    .values(text=text, embedding=_encode(vector), updated_at=now)
                )
                return Memory(best.id, user_id, text, best.created_at, now), False
            memory_id = f"mem_{secrets.token_hex(12)}"
            await conn.execute(
                sa.insert(memories).values(
                    id=memory_id,
                    owner=owner,
                    user_id=user_id,
                    text=text,
                    embedding=_encode(vector),
                    embedder=embedder,
                    created_at=now,
                    updated_at=now,
                )
            )
        return Memory(memory_id, user_id, text, now, now), True

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

    async def recall(self, owner: str, user_id: str, query: str) -> list[Recalled]:
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
        return scored[: self.top_k]


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

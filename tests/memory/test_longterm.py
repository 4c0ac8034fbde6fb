"""Long-term memories on the real database (SQLite and Postgres) with the bundled
embedder: writing, deduplicating updates, recall by relevance, isolation, deletion."""

from __future__ import annotations

import uuid

import pytest

from trellis.errors import NotFoundError
from trellis.inference.local.embedder import MiniLMEmbedder
from trellis.memory.longterm import LongTermMemory
from trellis.store.db import Database

FACTS = [
    "My daughter is allergic to peanuts.",
    "I prefer answers in French.",
    "I drive a red Volvo estate.",
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    model = MiniLMEmbedder()
    model.load()
    return model


@pytest.fixture
def user() -> str:
    """A fresh user id (the Postgres database is shared by the tests of a run)."""
    return f"user-{uuid.uuid4().hex[:12]}"


async def test_recall_finds_the_relevant_memory(
    db: Database, embedder: MiniLMEmbedder, user: str
) -> None:
    memory = LongTermMemory(db, lambda: embedder)  # type: ignore[arg-type,return-value]
    for fact in FACTS:
        _, created = await memory.add("key-a", user, fact)
        assert created
    found = await memory.recall("key-a", user, "Can my daughter eat peanut butter?")
    assert found and found[0].text == FACTS[0]
    assert [m.score for m in found] == sorted((m.score for m in found), reverse=True)
    car = await memory.recall("key-a", user, "What car do I drive?")
    assert car[0].text == FACTS[2]
    assert await memory.recall("key-a", user, "") == []


async def test_memories_are_scoped_to_key_and_user(
    db: Database, embedder: MiniLMEmbedder, user: str
) -> None:
    memory = LongTermMemory(db, lambda: embedder)  # type: ignore[arg-type,return-value]
    stored, _ = await memory.add("key-a", user, FACTS[0])
    question = "Is my daughter allergic to anything?"
    assert await memory.recall("key-b", user, question) == []
    assert await memory.recall("key-a", f"{user}-other", question) == []
    assert await memory.list_memories("key-b") == []
    with pytest.raises(NotFoundError):
        await memory.get("key-b", stored.id)
    with pytest.raises(NotFoundError):
        await memory.delete("key-b", stored.id)
    assert [m.id for m in await memory.list_memories("key-a", user)] == [stored.id]


async def test_a_near_duplicate_updates_the_memory(
    db: Database, embedder: MiniLMEmbedder, user: str
) -> None:
    memory = LongTermMemory(db, lambda: embedder)  # type: ignore[arg-type,return-value]
    first, _ = await memory.add("key-a", user, "I prefer answers in French.")
    again, created = await memory.add("key-a", user, "I prefer answers in French!")
    assert not created and again.id == first.id
    assert [m.text for m in await memory.list_memories("key-a", user)] == [
        "I prefer answers in French!"
    ]
    # A similar but different fact is a memory of its own, not an overwrite.
    daughter, _ = await memory.add("key-a", user, "My daughter is allergic to peanuts.")
    son, created = await memory.add("key-a", user, "My son is allergic to peanuts.")
    assert created and son.id != daughter.id
    changed = await memory.update("key-a", first.id, "I prefer answers in German.")
    assert changed.text == "I prefer answers in German."
    found = await memory.recall("key-a", user, "Which language should answers be in?")
    assert found[0].text == "I prefer answers in German."


async def test_forgetting_a_user_deletes_only_that_users_memories(
    db: Database, embedder: MiniLMEmbedder, user: str
) -> None:
    memory = LongTermMemory(db, lambda: embedder)  # type: ignore[arg-type,return-value]
    for fact in FACTS:
        await memory.add("key-a", user, fact)
    kept, _ = await memory.add("key-a", f"{user}-2", FACTS[0])
    assert await memory.forget_user("key-a", user) == 3
    assert await memory.list_memories("key-a", user) == []
    assert [m.id for m in await memory.list_memories("key-a", f"{user}-2")] == [kept.id]
    await memory.delete("key-a", kept.id)
    with pytest.raises(NotFoundError):
        await memory.delete("key-a", kept.id)

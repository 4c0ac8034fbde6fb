"""Stored conversations on the real database (SQLite and Postgres): history assembly,
ownership, compression into a running summary, and its fallbacks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest
import sqlalchemy as sa

from trellis.inference.call import Caller
from trellis.inference.conversation import SessionKey
from trellis.inference.tokens import count_message_tokens
from trellis.memory.sessions import SUMMARY_PREFIX, SessionMemory
from trellis.schema import ChatMessage
from trellis.store.db import Database
from trellis.store.tables import memory_sessions, memory_turns


@pytest.fixture
def alice() -> SessionKey:
    """A fresh session (the Postgres database is shared by the tests of a run)."""
    return SessionKey("key-alice", f"chat-{uuid.uuid4().hex}")


async def _turn_count(db: Database, key: SessionKey) -> int:
    async with db.engine.connect() as conn:
        count = await conn.execute(
            sa.select(sa.func.count())
            .select_from(memory_turns.join(memory_sessions))
            .where(memory_sessions.c.owner == key.owner)
            .where(memory_sessions.c.session_id == key.session_id)
        )
    return int(count.scalar_one())


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def assistant(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


class RecordingSummarizer:
    """A summarizer that writes a known summary and keeps what it was asked."""

    def __init__(self, reply: str = "SUMMARY: the user likes otters", fail: bool = False) -> None:
        self.reply = reply
        self.fail = fail
        self.calls: list[tuple[str, str | None, list[ChatMessage], int]] = []

    async def summarize(
        self,
        model: str,
        previous: str | None,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        caller: Caller,
    ) -> tuple[str, str | None]:
        self.calls.append((model, previous, list(messages), max_tokens))
        if self.fail:
            raise ConnectionError("the summary model is down")
        return self.reply, "trace-of-summary"


async def history(
    memory: SessionMemory, key: SessionKey, messages: list[ChatMessage], budget: int = 10_000
) -> list[ChatMessage]:
    result = await memory.history(
        key, messages, model="m", budget=budget, count=count_message_tokens, caller=Caller()
    )
    return result.messages


async def test_turns_are_stored_and_supplied_in_order(db: Database, alice: SessionKey) -> None:
    memory = SessionMemory(db)
    first = [user("My name is Ada.")]
    assert await history(memory, alice, first) == first  # a new session: nothing stored yet
    await memory.record(alice, [*first, assistant("Hello Ada.")], trace_id="t1")

    system = ChatMessage(role="system", content="Be brief.")
    sent = await history(memory, alice, [system, user("What is my name?")])
    assert [(m.role, m.content) for m in sent] == [
        ("system", "Be brief."),
        ("user", "My name is Ada."),
        ("assistant", "Hello Ada."),
        ("user", "What is my name?"),
    ]
    async with db.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(memory_turns)
                .join(memory_sessions)
                .where(memory_sessions.c.session_id == alice.session_id)
                .order_by(memory_turns.c.id)
            )
        ).all()
    assert [r.role for r in rows] == ["user", "assistant"]
    assert {r.trace_id for r in rows} == {"t1"}


async def test_sessions_belong_to_the_key_that_created_them(
    db: Database, alice: SessionKey
) -> None:
    memory = SessionMemory(db)
    await memory.record(alice, [user("secret"), assistant("noted")], trace_id=None)
    mallory = SessionKey("key-mallory", alice.session_id)
    question = [user("What did I say?")]
    assert await history(memory, mallory, question) == question
    await memory.record(mallory, [*question, assistant("nothing yet")], trace_id=None)
    _, alice_turns = await memory.messages(alice) or (None, [])
    _, mallory_turns = await memory.messages(mallory) or (None, [])
    assert [m.content for m in alice_turns] == ["secret", "noted"]
    assert [m.content for m in mallory_turns] == ["What did I say?", "nothing yet"]


async def test_concurrent_first_turns_create_one_session(db: Database, alice: SessionKey) -> None:
    memory = SessionMemory(db)
    await asyncio.gather(
        *(
            memory.record(alice, [user(f"q{i}"), assistant(f"a{i}")], trace_id=None)
            for i in range(8)
        )
    )
    async with db.engine.connect() as conn:
        sessions = await conn.execute(
            sa.select(sa.func.count())
            .select_from(memory_sessions)
            .where(memory_sessions.c.session_id == alice.session_id)
        )
        assert sessions.scalar_one() == 1
    assert await _turn_count(db, alice) == 16
    _, stored = await memory.messages(alice) or (None, [])
    # Each exchange stays together (one transaction each).
    for question, answer in zip(stored[::2], stored[1::2], strict=True):
        assert question.content[1:] == answer.content[1:]  # type: ignore[index]


def _long(i: int) -> str:
    return f"Turn {i}: " + " ".join(f"word{i}x{j}" for j in range(30))


async def _fill(memory: SessionMemory, alice: SessionKey, exchanges: int) -> None:
    for i in range(exchanges):
        await memory.record(alice, [user(_long(i)), assistant(f"Answer {i}.")], trace_id=None)


async def test_over_budget_the_oldest_turns_become_a_running_summary(
    db: Database, alice: SessionKey
) -> None:
    summarizer = RecordingSummarizer()
    memory = SessionMemory(db, summarizer)
    await _fill(memory, alice, 6)
    new = [user("And now?")]
    full = await history(memory, alice, new)
    budget = count_message_tokens(full) // 2
    result = await memory.history(
        alice, new, model="m", budget=budget, count=count_message_tokens, caller=Caller()
    )
    compression = result.compression
    assert compression is not None and compression.method == "llm"
    assert compression.summary_trace_id == "trace-of-summary"
    assert compression.tokens_before > budget >= compression.tokens_after
    sent = result.messages
    assert sent[0].role == "system" and sent[0].content == SUMMARY_PREFIX + summarizer.reply
    assert sent[1].role == "user"  # the kept history starts with a whole exchange
    assert sent[-1].content == "And now?"
    # The turns went in batches that fit the model, oldest first, each folded into the
    # summary so far.
    assert len(summarizer.calls) == compression.summary_calls
    assert [c[1] for c in summarizer.calls] == [None] + [summarizer.reply] * (
        len(summarizer.calls) - 1
    )
    compressed = [m for c in summarizer.calls for m in c[2]]
    assert len(compressed) == compression.compressed_messages
    assert compressed[0].content == _long(0)
    assert {(c[0], c[3]) for c in summarizer.calls} == {("m", budget // 4)}
    rounds = len(summarizer.calls)

    # The summary is stored: the next request starts from it without a model call.
    again = await history(memory, alice, new, budget)
    assert again == sent and len(summarizer.calls) == rounds
    # Nothing is deleted: the compressed turns are still in the table.
    assert await _turn_count(db, alice) == 12

    # A later compression folds the previous summary into the new one.
    await _fill(memory, alice, 4)
    await memory.history(
        alice, new, model="m", budget=budget, count=count_message_tokens, caller=Caller()
    )
    assert summarizer.calls[rounds][1] == summarizer.reply


async def test_a_failing_summary_call_falls_back_to_an_extractive_summary(
    db: Database, alice: SessionKey
) -> None:
    memory = SessionMemory(db, RecordingSummarizer(fail=True))
    await _fill(memory, alice, 6)
    new = [user("And now?")]
    budget = count_message_tokens(await history(memory, alice, new)) // 2
    result = await memory.history(
        alice, new, model="m", budget=budget, count=count_message_tokens, caller=Caller()
    )
    assert result.compression is not None and result.compression.method == "extractive"
    summary = result.messages[0].content
    assert isinstance(summary, str) and summary.startswith(SUMMARY_PREFIX)
    assert "Answer" in summary  # the compressed turns' sentences, not nothing


async def test_compression_never_splits_a_tool_call_from_its_result(
    db: Database, alice: SessionKey
) -> None:
    memory = SessionMemory(db, RecordingSummarizer())
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    await memory.record(
        alice,
        [user(_long(0)), ChatMessage(role="assistant", content=None, tool_calls=[call])],
        trace_id=None,
    )
    await memory.record(
        alice,
        [ChatMessage(role="tool", tool_call_id="c1", content=_long(1)), assistant("Done.")],
        trace_id=None,
    )
    await memory.record(alice, [user(_long(2)), assistant("Ok.")], trace_id=None)
    new = [user("next")]
    budget = count_message_tokens(await history(memory, alice, new)) - 10
    result = await memory.history(
        alice, new, model="m", budget=budget, count=count_message_tokens, caller=Caller()
    )
    kept = [m.role for m in result.messages[1:-1]]
    assert kept == ["user", "assistant"]  # the tool exchange went into the summary whole

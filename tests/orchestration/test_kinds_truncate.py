"""The ``truncate`` step kind: messages, passages and text fitted to a token budget."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from trellis.errors import ConfigurationError, ContextLengthExceededError
from trellis.inference.gateway import TokenCounter
from trellis.observe.tracing import Span
from trellis.orchestration import Context
from trellis.orchestration.kinds.truncate import fit_text, truncate
from trellis.schema import ChatMessage

COUNTER = TokenCounter()


class State(BaseModel):
    messages: list[dict[str, Any]] = []
    passages: list[dict[str, Any]] = []
    notes: str | None = None
    budget: int = 100


def ctx(counter: Any = None) -> Context:
    return Context(
        run_id="r",
        workflow="w",
        step="fit",
        seq=1,
        span=Span(name="fit", trace_id="t" * 32),
        services={"counter": counter} if counter is not None else {},
    )


def turn(role: str, words: int, tag: str) -> dict[str, Any]:
    return {"role": role, "content": f"{tag} " + " ".join(["lorem"] * words)}


async def test_messages_lose_their_oldest_turns_and_keep_system_and_the_last() -> None:
    messages = [
        turn("system", 5, "rules"),
        turn("user", 60, "u1"),
        turn("assistant", 60, "a1"),
        turn("user", 60, "u2"),
        turn("assistant", 60, "a2"),
        turn("user", 10, "u3"),
    ]
    kept_part = [messages[0], *messages[-2:]]
    budget = COUNTER.messages([ChatMessage.model_validate(m) for m in kept_part]) + 5
    context = ctx()
    state = State(messages=messages)
    outcome = await truncate("fit", field="messages", budget=budget).execute(context, state)
    kept = outcome.update["messages"]  # type: ignore[index]
    assert [m["content"].split()[0] for m in kept] == ["rules", "a2", "u3"]
    assert kept[0] is state.messages[0]  # the items themselves, not re-encoded copies
    assert outcome.output["shape"] == "messages" and outcome.output["dropped"] == 3
    assert outcome.output["tokens_after"] <= budget < outcome.output["tokens_before"]
    span = context.span
    assert span is not None
    [event] = span.events
    assert event["name"] == "truncation"
    assert event["attributes"]["dropped"] == 3 and event["attributes"]["field"] == "messages"


async def test_a_conversation_that_cannot_fit_fails_the_step() -> None:
    messages = [turn("system", 200, "rules"), turn("user", 5, "q")]
    with pytest.raises(ContextLengthExceededError):
        await truncate("fit", field="messages", budget=50).execute(ctx(), State(messages=messages))


async def test_passages_keep_the_leading_ones_that_fit() -> None:
    passages = [{"text": " ".join([f"w{i}"] * 30), "chunk_id": i} for i in range(5)]
    one = COUNTER.text(passages[0]["text"])
    step = truncate("fit", field="passages", budget=lambda s: s.budget)
    outcome = await step.execute(ctx(), State(passages=passages, budget=2 * one + one // 2))
    assert [p["chunk_id"] for p in outcome.update["passages"]] == [0, 1]  # type: ignore[index]
    assert outcome.output == {
        "shape": "items",
        "dropped": 3,
        "tokens_before": sum(COUNTER.text(p["text"]) for p in passages),
        "tokens_after": COUNTER.text(passages[0]["text"]) + COUNTER.text(passages[1]["text"]),
    }


async def test_nothing_dropped_means_no_update_and_no_event() -> None:
    context = ctx()
    outcome = await truncate("fit", field="passages", budget=10_000).execute(
        context, State(passages=[{"text": "short"}])
    )
    assert outcome.update is None and outcome.output["dropped"] == 0
    assert context.span is not None and context.span.events == []
    assert (await truncate("fit", field="notes", budget=5).execute(ctx(), State())).update is None


async def test_text_keeps_its_head_cut_at_a_word_boundary() -> None:
    notes = " ".join(f"word{i}" for i in range(200))
    outcome = await truncate("fit", field="notes", budget=20).execute(ctx(), State(notes=notes))
    head = outcome.update["notes"]  # type: ignore[index]
    assert notes.startswith(head) and notes[len(head)] == " "
    assert COUNTER.text(head) <= 20 < COUNTER.text(head + notes[len(head) : len(head) + 8])
    fitted = fit_text("x" * 500, 10, COUNTER)  # no whitespace: a plain cut
    assert COUNTER.text(fitted.value) <= 10 and fitted.dropped == 500 - len(fitted.value)


async def test_the_counter_service_is_used() -> None:
    class Words(TokenCounter):
        def text(self, text: str) -> int:
            return len(text.split())

    outcome = await truncate("fit", field="passages", budget=3).execute(
        ctx(Words()), State(passages=[{"text": "a b"}, {"text": "c d"}])
    )
    assert outcome.update == {"passages": [{"text": "a b"}]}


async def test_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        truncate("fit", field="passages", budget=0)
    with pytest.raises(ConfigurationError):
        truncate("fit", field="", budget=10)
    with pytest.raises(ConfigurationError):
        await truncate("fit", field="budget", budget=10).execute(ctx(), State())
    with pytest.raises(ConfigurationError):
        await truncate("fit", field="notes", budget=lambda s: 0).execute(ctx(), State(notes="x"))

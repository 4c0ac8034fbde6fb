"""Tools: typed arguments, tool steps, the effect journal's outcomes (done, failed, unknown)."""

from __future__ import annotations

import hashlib
import time

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from trellis.orchestration import (
    Context,
    EffectOutcomeUnknown,
    MemoryRunStore,
    RunStatus,
    Workflow,
    Workflows,
    tool,
)
from trellis.orchestration.records import Effect


class Order(BaseModel):
    id: str
    total: float = 0.0
    label: str | None = None


@tool
def price(quantity: int, unit: float = 2.5) -> float:
    """Price of ``quantity`` units."""
    return quantity * unit


def _ctx(store: MemoryRunStore, seq: int = 1) -> Context:
    return Context(run_id="r", workflow="w", step="s", seq=seq, store=store)


async def test_tool_describes_and_validates_its_arguments() -> None:
    assert price.name == "price" and price.description == "Price of ``quantity`` units."
    assert price.schema["required"] == ["quantity"]
    assert set(price.schema["properties"]) == {"quantity", "unit"}
    store = MemoryRunStore()
    assert await price(_ctx(store), quantity="4") == 10.0  # coerced by the signature's types
    with pytest.raises(ValidationError):
        await price(_ctx(store), quantity="four")
    with pytest.raises(ValidationError):
        await price(_ctx(store), quantity=1, surprise=True)
    assert store.effects == {}  # pure tools leave no record


async def test_tool_step_puts_the_result_into_the_state() -> None:
    flow = Workflow("tool-step", state=Order)
    flow.add(price.step("quote", args=lambda s: {"quantity": 3}, into="total"))
    async with Workflows() as workflows:
        run = await workflows.run(flow, {"id": "o1"})
        (step,) = await workflows.steps(run.id)
    assert run.state["total"] == 7.5 and step.kind == "tool" and step.output == 7.5


async def test_side_effect_result_is_replayed_with_its_type() -> None:
    calls: list[str] = []

    @tool(side_effect=True)
    async def ship(order: str) -> Order:
        calls.append(order)
        return Order(id=order, label="parcel-1")

    store = MemoryRunStore()
    first = await ship(_ctx(store), order="o1")
    again = await ship(_ctx(store), order="o1")
    assert first == again == Order(id="o1", label="parcel-1") and isinstance(again, Order)
    assert calls == ["o1"]
    # Another step position (seq) is another key: a new effect.
    await ship(_ctx(store, seq=2), order="o1")
    assert calls == ["o1", "o1"] and len(store.effects) == 2


async def test_failed_effect_is_recorded_and_retried() -> None:
    attempts: list[int] = []

    @tool(side_effect=True)
    async def flaky(n: int) -> int:
        attempts.append(n)
        if len(attempts) == 1:
            raise ConnectionError("reset")
        return n

    store = MemoryRunStore()
    with pytest.raises(ConnectionError):
        await flaky(_ctx(store), n=1)
    (effect,) = store.effects.values()
    assert effect.status == "failed" and effect.error is not None
    assert effect.error["type"] == "ConnectionError"
    assert await flaky(_ctx(store), n=1) == 1
    assert effect.status == "done" and effect.attempts == 2


async def test_unknown_outcome_after_a_crash_follows_on_unknown() -> None:
    calls: list[int] = []

    @tool(side_effect=True, on_unknown="fail")
    async def careful(n: int) -> int:
        calls.append(n)
        return n

    @tool(side_effect=True)  # on_unknown="retry": at-least-once
    async def eager(n: int) -> int:
        calls.append(n)
        return n

    store = MemoryRunStore()
    ctx = _ctx(store)
    for name in ("careful", "eager"):
        # What a crash between "started" and "done" leaves behind.
        key = ctx.idempotency_key(name)
        args_hash = hashlib.sha256(orjson.dumps({"n": 1})).hexdigest()
        store.effects[key] = Effect(key, "r", "s", 1, args_hash, "started", time.time())
    with pytest.raises(EffectOutcomeUnknown):
        await careful(ctx, n=1)
    assert await eager(ctx, n=1) == 1
    assert calls == [1]


async def test_tool_failure_inside_a_run_fails_the_step_with_its_error() -> None:
    @tool(side_effect=True)
    async def refuse(order: str) -> str:
        raise PermissionError("card declined")

    flow = Workflow("declined", state=Order)
    flow.add(refuse.step(args=lambda s: {"order": s.id}, into="label"))
    async with Workflows() as workflows:
        run = await workflows.run(flow, {"id": "o1"})
        effects = list(workflows.store.effects.values())  # type: ignore[attr-defined]
    assert run.status == RunStatus.FAILED and run.error is not None
    assert run.error["type"] == "PermissionError" and run.error["step"] == "refuse"
    assert [e.status for e in effects] == ["failed"]

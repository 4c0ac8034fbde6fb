"""Labelling queues on real SQLite: a queue from a judged run, claims that keep two
labellers apart, labels checked against the queue's scale, judge-human agreement, and the
labels exported as a dataset version."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from trellis.errors import InvalidRequestError, NotFoundError
from trellis.evals import EvalRunner, EvalStore, parse_suite
from trellis.evals.labels import LabelQueues, parse_scale
from trellis.store import Database
from trellis.store.tables import eval_queue_items
from trellis.testing.fake_upstream import FakeUpstream

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import answer, dataset_of, make_gateway  # noqa: E402


def reply(body: dict[str, Any]) -> str:
    """The judge gives 5 to a right sum and 2 to a wrong one."""
    prompt = str(body["messages"][-1]["content"])
    if "Rubric:" not in prompt:
        return answer(body)
    graded = prompt.split("Answer to grade: ", 1)[1].split("\n", 1)[0]
    expected = prompt.split("Reference answer (may be empty): ", 1)[1].split("\n", 1)[0]
    return json.dumps({"score": 5 if graded == expected else 2, "reason": "checked"})


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai", reply=reply).start()
    yield server
    server.stop()


async def judged_run(upstream: FakeUpstream, db: Database) -> str:
    suite = parse_suite(
        {
            "dataset": "sums",
            "candidates": [
                {"name": "good", "model": "good", "prompt": "What is {input}?"},
                {"name": "bad", "model": "bad", "prompt": "What is {input}?"},
            ],
            "metrics": ["exact", {"name": "judge", "model": "good", "rubric": "Right sum?"}],
        }
    )
    report = await EvalRunner(make_gateway(upstream.base_url), EvalStore(db)).run(
        suite, dataset_of(4)
    )
    return str(report["run_id"])


async def test_a_queue_from_a_judged_run(upstream: FakeUpstream, db: Database) -> None:
    sqlite_db = db
    run_id = await judged_run(upstream, sqlite_db)
    queues = LabelQueues(sqlite_db)
    queue = await queues.from_run(run_id, name="sums review")
    # 4 cases x 2 candidates; the judge's 1-5 scale by default, passing at 3.
    assert queue.items == 8 and queue.labelled == 0
    assert queue.scale.to_dict() == {"type": "range", "min": 1, "max": 5, "pass": 3}
    items = await queues.items(queue.id)
    first = items[0]
    assert (first.case.id, first.candidate, first.repeat, first.output) == ("c0", "good", 0, "1")
    assert first.judge is not None and first.judge["judge"]["raw"] == 5
    assert first.judge["judge"]["score"] == 1.0 and first.trace_id

    # Two labellers at once never get the same item; asking again returns what one holds.
    alice = await queues.next_item(queue.id, "alice")
    bob = await queues.next_item(queue.id, "bob")
    assert alice is not None and bob is not None
    assert (alice.id, bob.id) == (1, 2)
    assert (await queues.next_item(queue.id, "alice")).id == 1  # type: ignore[union-attr]
    assert (await queues.queue(queue.id)).claimed == 2
    # A claim older than the window frees the item.
    async with sqlite_db.write() as conn:
        await conn.execute(
            sa.update(eval_queue_items)
            .where(eval_queue_items.c.item_id == 1)
            .values(claimed_at=1.0)
        )
    carol = await queues.next_item(queue.id, "carol", claim_seconds=600)
    assert carol is not None and carol.id == 1

    # The human agrees with the judge on the good answers and grades the bad ones 3.
    for item in items:
        if item.candidate == "good":
            await queues.label(queue.id, item.id, score=5, labeller="alice")
        else:
            await queues.label(
                queue.id,
                item.id,
                score=3 if item.case.id != "c3" else 1,
                reference=item.case.expected if item.case.id == "c3" else None,
                comment="off by one",
                labeller="bob",
                labeller_name="Bob",
            )
    relabelled = await queues.label(queue.id, 2, score=2, labeller="bob")  # replaces
    assert relabelled.label is not None and relabelled.label["score"] == 2
    assert relabelled.label["passed"] is False and relabelled.label["comment"] is None
    done = await queues.queue(queue.id)
    assert done.labelled == 8 and done.claimed == 0
    assert await queues.next_item(queue.id, "alice") is None

    (agreement,) = await queues.agreement(queue.id)
    # judge: good 5 x4, bad 2 x4; human: good 5 x4, bad [2 (relabelled), 3, 3, 1].
    assert agreement.metric == "judge" and agreement.n == 8
    assert agreement.exact == pytest.approx(5 / 8)
    # pass at 3: judge fails every bad; human passes two bad ones (the 3s).
    assert agreement.pass_agreement == pytest.approx(6 / 8)
    assert agreement.kappa == pytest.approx((0.75 - 0.5) / (1 - 0.5))
    assert agreement.mean_abs_diff == pytest.approx((0.25 + 0.25 + 0.25) / 8)

    dataset, created, skipped = await queues.export(queue.id, "sums-human")
    assert created and skipped == 1  # bad c0 failed (2); c3 failed but has a corrected answer
    by_id = {case.id: case for case in dataset.cases}
    assert by_id["c1#3"].expected == "3"  # good output, passed: the output itself
    assert by_id["c3#8"].expected == "7"  # failed, corrected by the labeller
    assert by_id["c3#8"].metadata["human"]["corrected"] is True
    assert by_id["c1#4"].metadata["human"]["score"] == 3
    assert by_id["c1#4"].metadata["human"]["labeller"] == "Bob"
    stored = await EvalStore(sqlite_db).dataset(dataset.ref)
    assert [c.id for c in stored.cases] == [c.id for c in dataset.cases]
    again = await queues.export(queue.id, "sums-human")
    assert again[1] is False  # the same labels: the same version


async def test_labellers_at_once_never_share_an_item(upstream: FakeUpstream, db: Database) -> None:
    run_id = await judged_run(upstream, db)
    queues = LabelQueues(db)
    queue = await queues.from_run(run_id)
    claimed = await asyncio.gather(
        *(queues.next_item(queue.id, f"labeller-{n}") for n in range(10))
    )
    ids = [item.id for item in claimed if item is not None]
    assert sorted(ids) == list(range(1, 9))  # eight items, eight labellers; two got none
    assert claimed.count(None) == 2
    assert (await queues.queue(queue.id)).claimed == 8


async def test_labels_must_fit_the_scale(upstream: FakeUpstream, sqlite_db: Database) -> None:
    run_id = await judged_run(upstream, sqlite_db)
    queues = LabelQueues(sqlite_db)
    queue = await queues.from_run(run_id, candidate="bad", scale=parse_scale("0-10:7"))
    assert queue.items == 4
    with pytest.raises(InvalidRequestError, match="outside the queue's scale 0-10"):
        await queues.label(queue.id, 1, score=11)
    with pytest.raises(InvalidRequestError, match="labels a score"):
        await queues.label(queue.id, 1, passed=True)
    with pytest.raises(InvalidRequestError, match="passed says otherwise"):
        await queues.label(queue.id, 1, score=6, passed=True)
    with pytest.raises(NotFoundError):
        await queues.label(queue.id, 99, score=5)
    with pytest.raises(NotFoundError):
        await queues.queue("nope")
    with pytest.raises(InvalidRequestError, match="no candidate 'ugly'"):
        await queues.from_run(run_id, candidate="ugly")
    binary = await queues.from_run(run_id, scale=parse_scale("pass_fail"), limit=2)
    assert binary.items == 2
    labelled = await queues.label(binary.id, 1, passed=False, comment="wrong")
    assert labelled.label is not None and labelled.label["score"] == 0.0
    with pytest.raises(InvalidRequestError, match="0 or 1"):
        await queues.label(binary.id, 2, score=0.5)
    with pytest.raises(InvalidRequestError, match="no labelled item gives"):
        await queues.export(binary.id, "nothing")
    with pytest.raises(InvalidRequestError, match="bad scale"):
        parse_scale("5-1")
    with pytest.raises(InvalidRequestError, match="bad scale"):
        parse_scale("one to five")

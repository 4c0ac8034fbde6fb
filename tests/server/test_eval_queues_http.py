"""Human evaluation over HTTP through a real server: a queue from a judged run, two
labellers taking items without colliding, labels, agreement, export as a dataset; a queue
from traces; scopes and 4xx errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from trellis.server.routes.eval_queues import (
    AgreementReply,
    ExportReply,
    ItemList,
    ItemReply,
    NextReply,
    QueueList,
    QueueReply,
)
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.server import ServerThread, wait_for_trace

from .test_evals_http import error, finished, key_client, upload


def judge_reply(body: dict[str, Any]) -> str:
    """Answers as the fake model; as a judge, 4 to case 0-2 and 2 to the rest."""
    prompt = str(body["messages"][-1]["content"])
    if "Rubric:" not in prompt:
        return "Hello from the fake upstream"
    question = prompt.split("Question: ", 1)[1].split("\n", 1)[0]
    return json.dumps({"score": 4 if question[-1] in "012" else 2, "reason": "looked"})


@pytest.fixture
def inference(server: ServerThread, client: httpx.Client) -> Iterator[httpx.Client]:
    with key_client(server, client, "inference") as http:
        yield http


def judged_run(http: httpx.Client, upstream: FakeUpstream) -> str:
    upstream.reply = judge_reply
    ref = upload(http)
    suite = {
        "name": "judged",
        "dataset": ref,
        "candidates": [{"name": "a", "model": "gpt-test", "prompt": "Say: {input}"}],
        "metrics": ["exact", {"name": "judge", "model": "gpt-test", "rubric": "Polite?"}],
    }
    run_id = http.post("/v1/evals/runs", json={"suite": suite}).json()["id"]
    assert finished(http, run_id).status == "succeeded"
    return str(run_id)


def test_label_a_judged_run_with_two_labellers(
    server: ServerThread, client: httpx.Client, inference: httpx.Client, upstream: FakeUpstream
) -> None:
    run_id = judged_run(inference, upstream)
    created = inference.post("/v1/evals/queues", json={"run_id": run_id, "name": "politeness"})
    assert created.status_code == 200, created.text
    queue = QueueReply.model_validate(created.json())
    assert queue.progress.items == 6 and queue.scale["min"] == 1 and queue.scale["max"] == 5
    listed = QueueList.model_validate(inference.get("/v1/evals/queues").json())
    assert [q.id for q in listed.data] == [queue.id]

    with key_client(server, client, "observer") as reviewer:
        mine = NextReply.model_validate(inference.get(f"/v1/evals/queues/{queue.id}/next").json())
        theirs = NextReply.model_validate(reviewer.get(f"/v1/evals/queues/{queue.id}/next").json())
        assert mine.item is not None and theirs.item is not None
        assert (mine.item.id, theirs.item.id) == (1, 2)
        assert mine.progress.claimed == 1 and theirs.progress.claimed == 2
        assert mine.item.judge is not None and mine.item.judge["judge"]["raw"] == 4
        assert mine.item.output == "Hello from the fake upstream"
        labelled = reviewer.post(
            f"/v1/evals/queues/{queue.id}/items/{theirs.item.id}/label",
            json={"score": 4, "comment": "fine"},
        )
        assert labelled.status_code == 200, labelled.text
        item = ItemReply.model_validate(labelled.json())
        assert item.label is not None and item.label["passed"] is True
        assert item.label["labeller_name"] == "observer"
        # The labellers go on until nothing is left; nobody gets an item twice.
        seen = {theirs.item.id}
        for http, score in ((inference, 2), (reviewer, 4)) * 5:
            step = NextReply.model_validate(http.get(f"/v1/evals/queues/{queue.id}/next").json())
            if step.item is None:
                continue
            assert step.item.id not in seen
            seen.add(step.item.id)
            answer = http.post(
                f"/v1/evals/queues/{queue.id}/items/{step.item.id}/label",
                json={"score": score, **({"reference": "Hello!"} if score == 2 else {})},
            )
            assert answer.status_code == 200, answer.text
        assert seen == {1, 2, 3, 4, 5, 6}
        last = NextReply.model_validate(reviewer.get(f"/v1/evals/queues/{queue.id}/next").json())
        assert last.item is None and last.progress.labelled == 6 and last.progress.remaining == 0

    items = ItemList.model_validate(
        inference.get(f"/v1/evals/queues/{queue.id}/items", params={"limit": 4}).json()
    )
    assert [i.id for i in items.data] == [1, 2, 3, 4] and items.has_more
    judge_scores = {i.id: i.judge["judge"]["raw"] for i in items.data if i.judge}
    assert judge_scores == {1: 4, 2: 4, 3: 4, 4: 2}
    agreement = AgreementReply.model_validate(
        inference.get(f"/v1/evals/queues/{queue.id}/agreement").json()
    )
    (judge,) = agreement.data
    assert judge["metric"] == "judge" and judge["n"] == 6
    shown = QueueReply.model_validate(inference.get(f"/v1/evals/queues/{queue.id}").json())
    assert shown.agreement == agreement.data and shown.progress.labelled == 6

    exported = inference.post(
        f"/v1/evals/queues/{queue.id}/export", json={"dataset": "polite-human"}
    )
    assert exported.status_code == 200, exported.text
    dataset = ExportReply.model_validate(exported.json())
    assert dataset.cases == 6 and dataset.skipped == 0 and dataset.created
    names = {d["name"] for d in inference.get("/v1/evals/datasets").json()["data"]}
    assert "polite-human" in names


def test_a_queue_from_traces(client: httpx.Client, server: ServerThread) -> None:
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "gpt-test", "messages": [{"role": "user", "content": "Hi there"}]},
    )
    assert chat.status_code == 200, chat.text
    trace_id = chat.headers["x-trellis-trace-id"]
    wait_for_trace(client, trace_id)
    created = client.post(
        "/v1/evals/queues",
        json={"traces": {"model": "gpt-test", "q": "Hi there"}, "scale": {"type": "pass_fail"}},
    )
    assert created.status_code == 200, created.text
    queue = QueueReply.model_validate(created.json())
    assert queue.progress.items == 1 and queue.source == {
        "traces": {"model": "gpt-test", "q": "Hi there"}
    }
    step = NextReply.model_validate(client.get(f"/v1/evals/queues/{queue.id}/next").json())
    assert step.item is not None and step.item.trace_id == trace_id
    assert step.item.input == "Hi there" and step.item.output == "Hello from the fake upstream"
    assert step.item.judge is None
    bad = client.post(f"/v1/evals/queues/{queue.id}/items/1/label", json={"score": 3})
    assert "0 or 1" in error(bad, 400)["message"]
    good = client.post(f"/v1/evals/queues/{queue.id}/items/1/label", json={"passed": True})
    assert good.status_code == 200, good.text
    # The label is on the trace too: a `label` score whose comment is the right answer.
    (label,) = client.get(f"/v1/traces/{trace_id}").json()["scores"]
    assert (label["name"], label["value"], label["source"]) == ("label", 1.0, "eval")
    assert label["comment"] == "Hello from the fake upstream"
    assert client.get(f"/v1/evals/queues/{queue.id}/agreement").json()["data"] == []


def test_scopes_and_mistakes(
    server: ServerThread, client: httpx.Client, inference: httpx.Client, upstream: FakeUpstream
) -> None:
    run_id = judged_run(inference, upstream)
    queue_id = inference.post("/v1/evals/queues", json={"run_id": run_id}).json()["id"]
    with key_client(server, client, "inference") as other:
        assert error(other.get(f"/v1/evals/queues/{queue_id}"), 403)["code"] == (
            "insufficient_scope"
        )
        error(other.post("/v1/evals/queues", json={"run_id": run_id}), 403)
        error(other.get(f"/v1/evals/queues/{queue_id}/next"), 403)
        assert other.get("/v1/evals/queues").json()["data"] == []
    error(inference.post("/v1/evals/queues", json={"traces": {}}), 403)  # traces: observer
    error(inference.post("/v1/evals/queues", json={}), 400)
    error(inference.post("/v1/evals/queues", json={"run_id": run_id, "traces": {}}), 400)
    error(inference.post("/v1/evals/queues", json={"run_id": "nope"}), 404)
    bad_scale = {"run_id": run_id, "scale": {"type": "range", "min": 5, "max": 1}}
    assert "bad scale" in error(inference.post("/v1/evals/queues", json=bad_scale), 400)["message"]
    error(inference.get("/v1/evals/queues/nope"), 404)
    error(inference.get("/v1/evals/queues/bad%20id"), 400)
    error(inference.post(f"/v1/evals/queues/{queue_id}/items/99/label", json={"score": 3}), 404)
    error(inference.post(f"/v1/evals/queues/{queue_id}/items/1/label", json={"score": 9}), 400)
    error(inference.post(f"/v1/evals/queues/{queue_id}/items/1/label", json={"x": 1}), 400)
    error(inference.get(f"/v1/evals/queues/{queue_id}/next", params={"claim_minutes": 0}), 400)
    assert (
        "no labelled item"
        in error(inference.post(f"/v1/evals/queues/{queue_id}/export", json={"dataset": "x"}), 400)[
            "message"
        ]
    )
    error(inference.post(f"/v1/evals/queues/{queue_id}/export", json={"dataset": "../x"}), 400)
    error(httpx.get(f"{server.url}/v1/evals/queues"), 401)

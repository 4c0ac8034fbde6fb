"""Alerts end to end: real traffic through a loopback fake provider makes each rule fire,
then resolve, and a loopback webhook receiver checks what it was told."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream, Fault
from trellis.testing.server import ServerThread
from trellis.testing.webhook_receiver import WebhookReceiver

HELLO = {"model": "gpt-test", "messages": [{"role": "user", "content": "Tell me about otters"}]}
WINDOW = "1s"


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def start(
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
    hook: WebhookReceiver,
    admin_key: str,
) -> Iterator[Callable[..., httpx.Client]]:
    clients: list[httpx.Client] = []

    def run(rules: list[dict[str, Any]], **overrides: Any) -> httpx.Client:
        alerts = {
            "rules": rules,
            "webhook_url": hook.url,
            "interval_seconds": 0.1,
            "webhook_backoff": 0.01,
        }
        server = make_server(make_settings(alerts=alerts, **overrides))
        client = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
        )
        clients.append(client)
        return client

    yield run
    for client in clients:
        client.close()


def chat(client: httpx.Client, n: int, expect: int = 200) -> None:
    for _ in range(n):
        response = client.post("/v1/chat/completions", json=HELLO)
        assert response.status_code == expect, response.text


def wait_for_alert(client: httpx.Client, status: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/v1/alerts")
        assert response.status_code == 200, response.text
        rows = response.json()["data"]
        if rows and rows[0]["status"] == status:
            return rows[0]  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"no {status} alert within {timeout}s")


def fire_and_resolve(client: httpx.Client, hook: WebhookReceiver, name: str) -> dict[str, Any]:
    firing = wait_for_alert(client, "firing")
    assert firing["rule"]["name"] == name
    told = hook.wait_for(lambda p: p["status"] == "firing" and p["rule"]["name"] == name)
    assert told["id"] == firing["id"] and told["window"] == WINDOW
    resolved = wait_for_alert(client, "resolved")
    assert resolved["id"] == firing["id"]
    hook.wait_for(lambda p: p["status"] == "resolved" and p["id"] == firing["id"])
    return told


def test_error_rate_fires_and_resolves_and_a_failing_webhook_is_retried(
    start: Callable[..., httpx.Client], upstream: FakeUpstream, hook: WebhookReceiver
) -> None:
    rule = {"name": "errors", "kind": "error_rate", "threshold": 0.5, "window": WINDOW,
            "min_requests": 3}  # fmt: skip
    client = start([rule])
    chat(client, 2)
    upstream.faults.always(Fault.status(500))
    hook.fail_next(2)  # the first two deliveries fail: the firing payload is retried
    chat(client, 1, expect=502)
    time.sleep(0.3)
    assert client.get("/v1/alerts").json()["data"] == []  # 1 of 3 failed: under the bound
    chat(client, 3, expect=502)
    told = fire_and_resolve(client, hook, "errors")
    assert told["value"] > 0.5 and told["threshold"] == 0.5
    assert hook.requests >= 4  # 2 refused + firing + resolved
    upstream.faults.clear()


def test_latency_rule_created_through_the_api(
    start: Callable[..., httpx.Client], upstream: FakeUpstream, hook: WebhookReceiver
) -> None:
    client = start([])
    rule = {"name": "slow", "kind": "latency", "threshold": 150, "window": WINDOW}
    created = client.post("/v1/alerts/rules", json=rule)
    assert created.status_code == 201, created.text
    assert created.json()["source"] == "api" and created.json()["id"].startswith("rule_")
    chat(client, 2)
    time.sleep(0.3)
    assert client.get("/v1/alerts").json()["data"] == []
    upstream.delay = 0.25
    chat(client, 2)
    upstream.delay = 0.0
    told = fire_and_resolve(client, hook, "slow")
    assert told["value"] >= 150


def test_model_mismatch(
    start: Callable[..., httpx.Client], upstream: FakeUpstream, hook: WebhookReceiver
) -> None:
    rules = [
        {"name": "mismatch", "kind": "model_mismatch", "window": WINDOW, "group_by": "model"},
    ]
    client = start(rules)
    chat(client, 2)  # served as asked (a dated snapshot is no mismatch)
    time.sleep(0.3)
    assert client.get("/v1/alerts").json()["data"] == []
    upstream.served_model = "gpt-9-turbo"
    chat(client, 1)
    upstream.served_model = None
    told = fire_and_resolve(client, hook, "mismatch")
    assert told["group"] == "gpt-test" and told["value"] == 1


def test_cost_spike_per_key(start: Callable[..., httpx.Client], hook: WebhookReceiver) -> None:
    rule = {"name": "spend", "kind": "cost", "threshold": 0.5, "window": WINDOW,
            "group_by": "key"}  # fmt: skip
    # A dollar per token in and out: every request costs well over the bound.
    client = start([rule], prices={"gpt-4o-mini": {"input": 1e6, "output": 1e6}})
    chat(client, 1)
    told = fire_and_resolve(client, hook, "spend")
    assert told["value"] > 0.5 and told["group"]


def test_scopes_and_rule_management(start: Callable[..., httpx.Client]) -> None:
    client = start([{"name": "from-settings", "kind": "model_mismatch"}])
    observer = client.post("/v1/keys", json={"name": "o", "scopes": ["observer"]}).json()["key"]
    plain = client.post("/v1/keys", json={"name": "i", "scopes": ["inference"]}).json()["key"]

    def as_key(secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    assert client.get("/v1/alerts", headers=as_key(plain)).status_code == 403
    assert client.get("/v1/alerts/rules", headers=as_key(plain)).status_code == 403
    rules = client.get("/v1/alerts/rules", headers=as_key(observer))
    assert rules.status_code == 200
    (settings_rule,) = rules.json()["data"]
    assert settings_rule["source"] == "settings" and settings_rule["threshold"] == 0.0
    assert client.get("/v1/alerts", headers=as_key(observer)).status_code == 200
    body = {"name": "c", "kind": "cost", "threshold": 1}
    assert client.post("/v1/alerts/rules", json=body, headers=as_key(observer)).status_code == 403
    bad = client.post("/v1/alerts/rules", json={"name": "c", "kind": "cost"})
    assert bad.status_code == 400 and "threshold" in bad.text
    for window in ("0s", "99999999999d"):  # accepted once, then failed every evaluation
        bad = client.post("/v1/alerts/rules", json={**body, "window": window})
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["param"] == "window"
    created = client.post("/v1/alerts/rules", json=body)
    assert created.status_code == 201
    assert client.post("/v1/alerts/rules", json=body).status_code == 400  # duplicate name
    rule_id = created.json()["id"]
    assert client.delete(f"/v1/alerts/rules/{rule_id}", headers=as_key(observer)).status_code == 403
    assert client.delete(f"/v1/alerts/rules/{rule_id}").status_code == 200
    assert client.delete(f"/v1/alerts/rules/{rule_id}").status_code == 404
    assert client.delete(f"/v1/alerts/rules/{settings_rule['id']}").status_code == 400
    assert client.get("/v1/alerts", params={"state": "bogus"}).status_code == 400


def test_retrieval_failures_from_grounded_chat(
    start: Callable[..., httpx.Client], hook: WebhookReceiver
) -> None:
    rule = {"name": "no-context", "kind": "retrieval_failures", "window": WINDOW}
    client = start([rule])
    assert client.post("/v1/collections", json={"name": "empty"}).status_code == 201
    chat(client, 2)  # no retrieval asked: nothing to alert on
    time.sleep(0.3)
    assert client.get("/v1/alerts").json()["data"] == []
    grounded = {**HELLO, "trellis": {"collections": ["empty"]}}
    # Load the embedder first: a first grounded request that spends longer than the 1 s
    # window loading it would be out of the window by the time its trace is written.
    warm = client.post("/v1/collections/empty/search", json={"query": "otters", "mode": "vector"})
    assert warm.status_code == 200, warm.text
    response = client.post("/v1/chat/completions", json=grounded)
    assert response.status_code == 200, response.text  # answered without context
    told = fire_and_resolve(client, hook, "no-context")
    assert told["value"] == 1

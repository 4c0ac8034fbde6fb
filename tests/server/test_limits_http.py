"""Rate limits and budgets through a real server in front of a loopback fake provider."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from trellis.settings import Prices, Settings
from trellis.testing.fake_upstream import FakeUpstream, Fault
from trellis.testing.server import ServerThread
from trellis.testing.webhook_receiver import WebhookReceiver

from .conftest import ADMIN_KEY, gateway_settings

#: USD per million tokens: one cent a token, so a few calls spend a budget of cents.
CENT_A_TOKEN = {"input": 10_000.0, "output": 10_000.0}

RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def priced_settings(tmp_path: Path, upstream: FakeUpstream, **overrides: Any) -> Settings:
    settings = gateway_settings(tmp_path, upstream, **overrides)
    for alias in settings.models:
        for deployment in alias.deployments:
            deployment.prices = Prices(**CENT_A_TOKEN)
    return settings


def admin(server: ServerThread) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    )


def new_key(client: httpx.Client, **limits: Any) -> tuple[str, str]:
    body: dict[str, Any] = {"name": "limited", "scopes": ["inference"]}
    if limits:
        body["limits"] = limits
    created = client.post("/v1/keys", json=body)
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["key"]


def chat(server: ServerThread, secret: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], **extra},
        timeout=30,
    )


def test_limits_crud_and_validation(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, upstream: FakeUpstream
) -> None:
    server = make_server(gateway_settings(tmp_path, upstream))
    with admin(server) as client:
        key_id, secret = new_key(client)
        put = client.put(f"/v1/limits/key:{key_id}", json={"rpm": 5, "daily_usd": 2.5})
        assert put.status_code == 200, put.text
        assert put.json()["rpm"] == 5 and put.json()["alert_thresholds"] == [0.8, 1.0]
        got = client.get(f"/v1/limits/key:{key_id}").json()
        assert got["subject"] == f"key:{key_id}" and got["daily_usd"] == 2.5
        client.put("/v1/limits/project:default", json={"tpm": 1000})
        listed = [row["subject"] for row in client.get("/v1/limits").json()["data"]]
        assert listed == [f"key:{key_id}", "project:default"]
        # The caller's mistakes: 400 with the field, 404 for an unknown key.
        bad = client.put(f"/v1/limits/key:{key_id}", json={"rpm": 0})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "rpm"
        assert client.put(f"/v1/limits/key:{key_id}", json={"rps": 1}).status_code == 400
        # Past what the counters hold exactly (64-bit rows, the Redis scripts' doubles): 400.
        for field, value in (("rpm", 2**63), ("tpm", 2**53 + 1), ("daily_usd", 1e300)):
            huge = client.put(f"/v1/limits/key:{key_id}", json={field: value})
            assert huge.status_code == 400, huge.text
            assert huge.json()["error"]["param"] == field
        bad_subject = client.put("/v1/limits/user:x", json={"rpm": 1})
        assert bad_subject.status_code == 400
        assert bad_subject.json()["error"]["code"] == "invalid_subject"
        assert client.put("/v1/limits/key:key_nope", json={"rpm": 1}).status_code == 404
        # A key reads its own usage and its project's, not another's; admins read all.
        own = httpx.get(
            f"{server.url}/v1/usage/key:{key_id}", headers={"Authorization": f"Bearer {secret}"}
        )
        assert own.status_code == 200 and own.json()["requests"]["limit"] == 5
        other = httpx.get(
            f"{server.url}/v1/usage/key:someone", headers={"Authorization": f"Bearer {secret}"}
        )
        assert other.status_code == 403
        assert client.get("/v1/usage/key:key_nope").status_code == 404
        assert client.get("/v1/usage/project:default").json()["tokens"]["limit"] == 1000
        # Only admins manage limits.
        refused = httpx.put(
            f"{server.url}/v1/limits/key:{key_id}",
            json={"rpm": 1000},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert refused.status_code == 403
        assert client.delete(f"/v1/limits/key:{key_id}").json()["deleted"] is True
        assert client.delete(f"/v1/limits/key:{key_id}").status_code == 404
        assert client.get(f"/v1/limits/key:{key_id}").status_code == 404


def test_rpm_limit_gives_429_with_openai_headers(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, upstream: FakeUpstream
) -> None:
    server = make_server(gateway_settings(tmp_path, upstream))
    with admin(server) as client:
        _, secret = new_key(client, rpm=2, tpm=10_000)
    first = chat(server, secret)
    assert first.status_code == 200
    assert all(name in first.headers for name in RATE_HEADERS)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 10_000
    assert chat(server, secret, stream=True).status_code == 200
    refused = chat(server, secret)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert "requests per minute" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert all(name in refused.headers for name in RATE_HEADERS)
    # Embeddings count against the same limits.
    embedded = httpx.post(
        f"{server.url}/v1/embeddings",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "embed-test", "input": "hello"},
    )
    assert embedded.status_code == 429


def test_embeddings_carry_the_headers_and_spend_their_tokens(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, upstream: FakeUpstream
) -> None:
    server = make_server(gateway_settings(tmp_path, upstream))
    with admin(server) as client:
        key_id, secret = new_key(client, tpm=1000)
        embedded = httpx.post(
            f"{server.url}/v1/embeddings",
            headers={"Authorization": f"Bearer {secret}"},
            json={"model": "embed-test", "input": ["one two three", "four"]},
        )
        assert embedded.status_code == 200, embedded.text
        assert embedded.headers["x-ratelimit-limit-tokens"] == "1000"
        used = embedded.json()["usage"]["prompt_tokens"]
        usage = client.get(f"/v1/usage/key:{key_id}").json()
        assert 1000 - used - 1 <= usage["tokens"]["remaining"] <= 1000 - used + 1


def test_budget_is_reconciled_from_usage_and_price_alerts_once_then_refuses(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, upstream: FakeUpstream
) -> None:
    with WebhookReceiver() as receiver:
        settings = priced_settings(
            tmp_path,
            upstream,
            alerts={"webhook_url": receiver.url, "interval_seconds": 3600},
        )
        server = make_server(settings)
        with admin(server) as client:
            key_id, secret = new_key(client, daily_usd=0.5, alert_thresholds=[0.5])
            spent = 0.0
            answers = 0
            while True:
                reply = chat(server, secret)
                if reply.status_code != 200:
                    break
                usage = reply.json()["usage"]
                spent += (usage["prompt_tokens"] + usage["completion_tokens"]) * 0.01
                answers += 1
                assert answers < 50
            assert reply.status_code == 429
            error = reply.json()["error"]
            assert error["code"] == "budget_exceeded"
            assert f"API key '{key_id}' daily budget of $0.50 is spent" in error["message"]
            assert int(reply.headers["retry-after"]) >= 1
            # Spend is what the provider's usage cost at the deployment's price.
            usage = client.get(f"/v1/usage/key:{key_id}").json()
            assert usage["daily"]["spent_usd"] == pytest.approx(spent)
            assert spent >= 0.5 and spent - 0.5 < spent / answers
            alert = receiver.wait_for(lambda p: p.get("subject") == f"key:{key_id}")
            assert alert["budget"] == "daily" and alert["fraction"] == 0.5
            assert alert["rule"]["kind"] == "budget"
            time.sleep(0.3)
            assert len([p for p in receiver.payloads if p.get("subject")]) == 1


def test_cached_answers_count_requests_but_cost_nothing(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, upstream: FakeUpstream
) -> None:
    server = make_server(priced_settings(tmp_path, upstream))
    with admin(server) as client:
        key_id, secret = new_key(client, rpm=10, daily_usd=10)
        first = chat(server, secret, temperature=0)
        assert first.headers["x-trellis-cache"] == "miss"
        spent = client.get(f"/v1/usage/key:{key_id}").json()["daily"]["spent_usd"]
        assert spent > 0
        second = chat(server, secret, temperature=0)
        assert second.headers["x-trellis-cache"] == "hit"
        assert second.headers["x-ratelimit-remaining-requests"] == "8"
        usage = client.get(f"/v1/usage/key:{key_id}").json()
        assert usage["daily"]["spent_usd"] == pytest.approx(spent)


def test_concurrency_slot_released_after_stream_end_and_after_upstream_error(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, upstream: FakeUpstream
) -> None:
    server = make_server(gateway_settings(tmp_path, upstream))
    with admin(server) as client:
        key_id, secret = new_key(client, max_concurrent=1)
        upstream.chunk_delay = 0.15
        opened = threading.Event()
        chunks: list[bytes] = []

        def stream() -> None:
            with httpx.stream(
                "POST",
                f"{server.url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {secret}"},
                json={
                    "model": "gpt-test",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                timeout=30,
            ) as response:
                for chunk in response.iter_bytes():
                    opened.set()
                    chunks.append(chunk)

        worker = threading.Thread(target=stream)
        worker.start()
        assert opened.wait(10)
        busy = chat(server, secret)
        assert busy.status_code == 429
        assert "concurrent requests" in busy.json()["error"]["message"]
        worker.join(30)
        assert b"[DONE]" in b"".join(chunks)
        upstream.chunk_delay = 0.0
        assert client.get(f"/v1/usage/key:{key_id}").json()["concurrent"]["in_flight"] == 0
        assert chat(server, secret).status_code == 200
        # An upstream failure releases its slot too (stream or not).
        upstream.faults.always(Fault.status(500))
        assert chat(server, secret).status_code >= 500
        assert chat(server, secret, stream=True).status_code >= 500
        upstream.faults.clear()
        assert client.get(f"/v1/usage/key:{key_id}").json()["concurrent"]["in_flight"] == 0
        assert chat(server, secret).status_code == 200
        # A stream cut mid-way (an error event) releases its slot as well.
        upstream.faults.push(Fault.cut_stream(after_chunks=1))
        cut = chat(server, secret, stream=True)
        assert cut.status_code == 200 and b"error" in cut.content
        assert client.get(f"/v1/usage/key:{key_id}").json()["concurrent"]["in_flight"] == 0


def test_project_default_limits_apply_to_every_key(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, upstream: FakeUpstream
) -> None:
    server = make_server(
        gateway_settings(tmp_path, upstream, limits={"default_project": {"rpm": 3}})
    )
    with admin(server) as client:
        _, one = new_key(client)
        _, two = new_key(client)
    assert [chat(server, s).status_code for s in (one, two, one, two)] == [200, 200, 200, 429]
    refused = chat(server, one)
    assert "project 'default'" in refused.json()["error"]["message"]

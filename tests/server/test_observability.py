"""Traces, stats and metrics over HTTP, with real traffic through a loopback fake provider."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from trellis.observe.query import encode_cursor
from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream, Fault
from trellis.testing.server import ServerThread

HELLO = {"model": "gpt-test", "messages": [{"role": "user", "content": "Tell me about otters"}]}


def wait_for_traces(client: httpx.Client, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = client.get("/v1/traces", params={"limit": 500}).json()["data"]
        if len(rows) >= n:
            return rows  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} traces were recorded")


def key(client: httpx.Client, *scopes: str) -> str:
    response = client.post("/v1/keys", json={"name": "k", "scopes": list(scopes)})
    assert response.status_code == 201, response.text
    return response.json()["key"]  # type: ignore[no-any-return]


def traffic(client: httpx.Client, upstream: FakeUpstream) -> None:
    for _ in range(3):
        assert client.post("/v1/chat/completions", json=HELLO).status_code == 200
    upstream.faults.push(Fault.status(500), Fault.status(500))  # both attempts fail
    assert client.post("/v1/chat/completions", json=HELLO).status_code == 502
    upstream.faults.push(Fault.status(500))  # one retry, then success
    assert client.post("/v1/chat/completions", json=HELLO).status_code == 200
    assert client.post("/v1/chat/completions", json={**HELLO, "model": "nope"}).status_code == 404


def test_trace_filters_and_pagination(client: httpx.Client, upstream: FakeUpstream) -> None:
    traffic(client, upstream)
    rows = wait_for_traces(client, 6)
    assert [r["status"] for r in rows].count("error") == 2

    def ids(**params: Any) -> list[str]:
        response = client.get("/v1/traces", params=params)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["data"]]

    assert len(ids(status="error")) == 2
    assert len(ids(model="gpt-test")) == 5
    # has_error includes the request that succeeded after a failed attempt.
    assert len(ids(has_error="true")) == 3
    assert len(ids(q="OTTERS")) == 6
    assert ids(q="badgers") == []
    assert len(ids(since="1h", kind="chat")) == 6
    assert ids(until="1h") == []
    # Cursor pages walk the same rows in the same order.
    walked: list[str] = []
    params: dict[str, Any] = {"limit": 4}
    while True:
        page = client.get("/v1/traces", params=params).json()
        walked += [r["id"] for r in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        params["cursor"] = page["next_cursor"]
    assert walked == [r["id"] for r in rows]


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/traces?since=yesterday", "since"),
        ("/v1/traces?cursor=zzz", "cursor"),
        ("/v1/traces?status=broken", "status"),
        ("/v1/traces?min_latency_ms=-5", "min_latency_ms"),
        ("/v1/traces?min_latency_ms=fast", "min_latency_ms"),
        ("/v1/traces?has_error=perhaps", "has_error"),
        ("/v1/traces?limit=0", "limit"),
        ("/v1/stats?window=forever", "window"),
        ("/v1/stats?bucket=0s", "bucket"),
        ("/v1/stats?window=30d&bucket=1s", "bucket"),
        ("/v1/stats?group_by=provider", "group_by"),
        # Out of the 64-bit nanosecond range the database stores: 400, not an overflow (500).
        ("/v1/traces?since=99999999999999999999", "since"),
        ("/v1/traces?since=" + "9" * 400, "since"),
        ("/v1/traces?until=9999-12-31T23:59:59Z", "until"),
        ("/v1/traces?since=0001-01-01T00:00:00%2B01:00", "since"),
        ("/v1/traces?cursor=" + encode_cursor(10**20, "abc"), "cursor"),
        ("/v1/stats?until=9999-12-31T23:59:59Z", "until"),
        ("/v1/stats?until=99999999999999999999", "until"),
        ("/v1/stats?window=99999999999d", "window"),
        ("/v1/stats?window=" + "9" * 400 + "w", "window"),
        ("/v1/stats?window=1h&bucket=99999999999d", "bucket"),
    ],
)
def test_invalid_filters_are_400(client: httpx.Client, path: str, param: str) -> None:
    response = client.get(path)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert param in (error["param"] or "") or param in error["message"]


def test_stats(client: httpx.Client, upstream: FakeUpstream) -> None:
    traffic(client, upstream)
    wait_for_traces(client, 6)
    body = client.get("/v1/stats", params={"window": "1h", "bucket": "5m"}).json()
    assert body["object"] == "stats" and body["group_by"] == "model"
    groups = {g["group"]: g for g in body["data"]}
    assert set(groups) == {"gpt-test", "nope"}
    totals = groups["gpt-test"]["totals"]
    assert totals["count"] == 5 and totals["errors"] == 1
    assert totals["error_rate"] == pytest.approx(0.2)
    assert totals["latency_ms"]["p50"] > 0
    assert totals["latency_ms"]["p99"] >= totals["latency_ms"]["p95"] >= totals["latency_ms"]["p50"]
    assert totals["input_tokens"] > 0 and totals["output_tokens"] > 0
    assert sum(b["count"] for b in groups["gpt-test"]["buckets"]) == 5
    assert "start" in groups["gpt-test"]["buckets"][0]
    by_key = client.get("/v1/stats", params={"group_by": "key"}).json()["data"]
    assert [g["totals"]["count"] for g in by_key] == [6]


def test_metrics_endpoint(client: httpx.Client, upstream: FakeUpstream) -> None:
    traffic(client, upstream)
    wait_for_traces(client, 6)
    response = httpx.get(str(client.base_url) + "/metrics")  # no key: open by default
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'trellis_requests_total{kind="chat",model="gpt-test",status="ok"} 4.0' in text
    assert 'trellis_requests_total{kind="chat",model="gpt-test",status="error"} 1.0' in text
    assert 'trellis_requests_total{kind="chat",model="unknown",status="error"} 1.0' in text
    assert 'trellis_retries_total{kind="chat",model="gpt-test"} 2.0' in text
    assert 'trellis_breaker_state{deployment="openai-compatible/gpt-4o-mini"' in text
    assert "trellis_trace_queue_depth" in text and "trellis_traces_written_total" in text


def test_scopes(
    client: httpx.Client,
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
    admin_key: str,
) -> None:
    observer, inference = key(client, "observer"), key(client, "inference")
    base = str(client.base_url)

    def get(path: str, secret: str | None) -> int:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.get(base + path, headers=headers).status_code

    for path in ("/v1/traces", "/v1/stats", "/v1/traces/nope"):
        assert get(path, inference) == 403
        assert get(path, None) == 401
        assert get(path, observer) in (200, 404)
    # An observer reads; it does not call models or manage keys.
    assert get("/v1/keys", observer) == 403
    chat = httpx.post(
        base + "/v1/chat/completions", json=HELLO, headers={"Authorization": f"Bearer {observer}"}
    )
    assert chat.status_code == 403
    # /metrics can be made to require a key.
    locked = make_server(make_settings(metrics_require_key=True))
    assert httpx.get(locked.url + "/metrics").status_code == 401
    with httpx.Client(base_url=locked.url) as other:
        assert other.get("/metrics", headers={"Authorization": f"Bearer {admin_key}"}).is_success

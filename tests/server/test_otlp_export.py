"""OTLP export of real traffic: a server in front of a loopback fake provider, and a
loopback receiver that decodes the protobuf it is sent."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from trellis.observe.otlp import decode_spans, plain_attributes
from trellis.observe.tracing import GenAI
from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream, Fault
from trellis.testing.server import ServerThread
from trellis.testing.webhook_receiver import WebhookReceiver


def attrs(span: Span) -> dict[str, Any]:
    return plain_attributes(span.attributes)


def spans_of(bodies: list[bytes]) -> list[Span]:
    return [span for body in bodies for span in decode_spans(body)]


@pytest.fixture
def collector() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def test_real_traffic_is_exported(
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
    upstream: FakeUpstream,
    collector: WebhookReceiver,
    admin_key: str,
) -> None:
    tracing = {"flush_interval": 0.05, "otlp_endpoint": collector.url}
    server = make_server(make_settings(tracing=tracing))
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi otters"}]}
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
    ) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        upstream.faults.push(Fault.status(500), Fault.status(500))
        assert client.post("/v1/chat/completions", json=body).status_code == 502
        deadline = time.monotonic() + 10
        roots: list[Span] = []
        while time.monotonic() < deadline and len(roots) < 2:
            roots = [s for s in spans_of(collector.bodies) if not s.parent_span_id]
            time.sleep(0.05)
        stored = client.get("/v1/traces").json()["data"]
    assert len(roots) == 2
    assert {r.trace_id.hex() for r in roots} == {t["id"] for t in stored}
    ok, failed = sorted(roots, key=lambda s: s.status.code == Status.STATUS_CODE_ERROR)
    values = attrs(ok)
    assert values[GenAI.REQUEST_MODEL] == "gpt-test"
    assert values[GenAI.RESPONSE_MODEL].startswith("gpt-4o-mini")
    assert values[GenAI.INPUT_TOKENS] > 0 and values[GenAI.OUTPUT_TOKENS] > 0
    assert values[GenAI.OPERATION] == "chat"
    assert ok.status.code == Status.STATUS_CODE_OK
    assert failed.status.code == Status.STATUS_CODE_ERROR and failed.status.message

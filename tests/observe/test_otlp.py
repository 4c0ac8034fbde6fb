"""OTLP/HTTP protobuf export: the message mapping, batching, retries and drops."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from trellis.observe.otlp import (
    OtlpExporter,
    decode_spans,
    export_request,
    plain_attributes,
    traces_url,
)
from trellis.observe.tracing import GenAI, Trace
from trellis.settings import TracingSettings
from trellis.testing.proxy import LoopbackProxy
from trellis.testing.webhook_receiver import WebhookReceiver


@pytest.fixture
def collector() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def attrs(item: Any) -> dict[str, Any]:
    return plain_attributes(item.attributes)


def spans_of(bodies: list[bytes]) -> list[Span]:
    return [span for body in bodies for span in decode_spans(body)]


def sample_trace(**root_attributes: Any) -> Trace:
    trace = Trace(kind="chat", name="chat gpt-test")
    assert trace.root is not None
    trace.root.attributes.update(root_attributes)
    with trace.span("provider call", attributes={GenAI.PROVIDER: "openai"}) as span:
        span.add_event("retry", attempt=1, error="fake 500")
    trace.finish()
    return trace


def test_traces_url() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("http://c/custom/path") == "http://c/custom/path"


def test_mapping_of_spans_attributes_events_and_bodies() -> None:
    messages = [{"role": "user", "content": "mail me at jane@example.com"}]
    trace = sample_trace(
        **{
            GenAI.REQUEST_MODEL: "gpt-test",
            GenAI.INPUT_TOKENS: 12,
            "trellis.cost_usd": 0.25,
            "trellis.cache_hit": False,
            GenAI.FINISH_REASONS: ["stop"],
            GenAI.INPUT_MESSAGES: messages,
        }
    )
    request = export_request([trace], service_name="svc")
    (resource_spans,) = request.resource_spans
    assert attrs(resource_spans.resource) == {"service.name": "svc"}
    root, child = resource_spans.scope_spans[0].spans
    assert root.trace_id.hex() == trace.trace_id and root.parent_span_id == b""
    assert child.parent_span_id == root.span_id
    assert child.kind == Span.SPAN_KIND_CLIENT and root.kind == Span.SPAN_KIND_INTERNAL
    values = attrs(root)
    assert values[GenAI.REQUEST_MODEL] == "gpt-test" and values[GenAI.INPUT_TOKENS] == 12
    assert values["trellis.cost_usd"] == 0.25 and values["trellis.cache_hit"] is False
    assert values[GenAI.FINISH_REASONS] == ["stop"]
    assert values[GenAI.INPUT_MESSAGES] == messages
    assert root.end_time_unix_nano >= root.start_time_unix_nano > 0
    (event,) = child.events
    assert event.name == "retry" and attrs(event) == {"attempt": 1, "error": "fake 500"}
    # The storage privacy setting applies to the export too.
    hidden = attrs(export_request([trace], bodies="none").resource_spans[0].scope_spans[0].spans[0])
    assert GenAI.INPUT_MESSAGES not in hidden
    redacted = export_request([trace], bodies="redacted").resource_spans[0].scope_spans[0].spans[0]
    assert "jane@example.com" not in str(attrs(redacted)[GenAI.INPUT_MESSAGES])


async def test_exporter_batches_retries_and_counts_drops(collector: WebhookReceiver) -> None:
    settings = TracingSettings(otlp_endpoint=collector.url, batch_size=3, flush_interval=0.05)
    exporter = OtlpExporter(settings)
    await exporter.start()
    collector.fail_next(1, status=503)  # retried after a short backoff
    for _ in range(7):
        exporter.submit(sample_trace())
    await exporter.close()
    assert exporter.exported_spans == 14 and exporter.dropped == 0
    assert len(spans_of(collector.bodies)) == 14
    assert len(collector.bodies) == 3  # batches of 3, 3 and 1
    assert exporter.requests == 4

    refused = OtlpExporter(settings)
    await refused.start()
    collector.fail_next(1, status=400)  # a refused payload is not retried
    refused.submit(sample_trace())
    await refused.close()
    assert refused.dropped == 1 and refused.failures == 1 and refused.requests == 1
    refused.submit(sample_trace())  # after close: dropped, never raises
    assert refused.dropped == 2


async def test_export_goes_through_the_proxy_of_the_environment(
    collector: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with LoopbackProxy(credentials="ops:secret") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("//", "//ops:secret@"))
        port = collector.url.rsplit(":", 1)[1].split("/", 1)[0]
        exporter = OtlpExporter(
            TracingSettings(otlp_endpoint=f"http://collector.test:{port}", flush_interval=0.01)
        )
        await exporter.start()
        exporter.submit(sample_trace())
        await exporter.close()
    assert exporter.exported_spans == 2 and len(spans_of(collector.bodies)) == 2
    assert proxy.request_lines == [f"POST http://collector.test:{port}/v1/traces HTTP/1.1"]
    assert proxy.authorizations == ["Basic b3BzOnNlY3JldA=="]  # ops:secret

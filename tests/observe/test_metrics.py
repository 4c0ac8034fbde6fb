"""Prometheus metrics fed by finished traces, and live state read at scrape time."""

from __future__ import annotations

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families

from trellis.inference.router import Router
from trellis.observe.metrics import FLUSH_DELAY, MAX_QUEUED, UNKNOWN_MODEL, GatewayMetrics
from trellis.observe.tracing import Trace
from trellis.settings import ModelAlias


def finished(model: str, *, kind: str = "chat", error: bool = False, **summary: object) -> Trace:
    trace = Trace(kind=kind, name=f"{kind} {model}")
    trace.summary.update(model=model, **summary)
    if error:
        trace.root.record_error(TimeoutError("slow"))  # type: ignore[union-attr]
        trace.summary["error"] = "TimeoutError"
    trace.finish("error" if error else None)
    return trace


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    result = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def test_traces_are_counted() -> None:
    metrics = GatewayMetrics(["gpt"])
    for _ in range(3):
        metrics.observe(
            finished(
                "gpt", input_tokens=10, output_tokens=4, cost=0.25, ttft_ms=20.0, retries=1,
                fallbacks=1, cache_hit=True, model_mismatch=True,
            )
        )  # fmt: skip
    metrics.observe(finished("gpt", error=True))
    metrics.observe(finished("no-such-model", error=True))
    got = samples(metrics)
    labels = (("kind", "chat"), ("model", "gpt"))
    assert got[("trellis_requests_total", (*labels, ("status", "ok")))] == 3
    assert got[("trellis_requests_total", (*labels, ("status", "error")))] == 1
    assert got[("trellis_request_errors_total", (("error", "TimeoutError"), *labels))] == 1
    assert got[("trellis_tokens_total", (*labels, ("type", "input")))] == 30
    assert got[("trellis_tokens_total", (*labels, ("type", "output")))] == 12
    assert got[("trellis_cost_usd_total", labels)] == 0.75
    assert got[("trellis_cache_hits_total", labels)] == 3
    assert got[("trellis_retries_total", labels)] == 3
    assert got[("trellis_fallbacks_total", labels)] == 3
    assert got[("trellis_model_mismatches_total", labels)] == 3
    assert got[("trellis_request_duration_seconds_count", labels)] == 4
    assert got[("trellis_time_to_first_token_seconds_count", labels)] == 3
    assert (
        got[
            (
                "trellis_time_to_first_token_seconds_bucket",
                tuple(sorted((*labels, ("le", "0.025")))),
            )
        ]
        == 3
    )
    # A model nobody configured does not create a series of its own.
    unknown = (("kind", "chat"), ("model", UNKNOWN_MODEL), ("status", "error"))
    assert got[("trellis_requests_total", unknown)] == 1
    assert not any(dict(lbl).get("model") == "no-such-model" for _, lbl in got)


def test_registries_are_per_instance() -> None:
    first, second = GatewayMetrics(["gpt"]), GatewayMetrics(["gpt"])
    first.observe(finished("gpt"))
    assert any(name == "trellis_requests_total" for name, _ in samples(first))
    assert not any(name == "trellis_requests_total" for name, _ in samples(second))


def test_bad_summary_values_never_raise() -> None:
    metrics = GatewayMetrics(["gpt"])
    metrics.observe(finished("gpt", input_tokens="many"))
    metrics.flush()
    assert metrics.hook_errors == 1


async def test_queued_traces_are_counted_soon_without_a_scrape() -> None:
    metrics = GatewayMetrics(["gpt"])
    ok = metrics.requests.labels("gpt", "chat", "ok")
    metrics.observe(finished("gpt"))
    assert ok._value.get() == 0  # queued: the request did not wait for the counting
    await asyncio.sleep(FLUSH_DELAY + 0.1)
    assert ok._value.get() == 1
    for _ in range(MAX_QUEUED):  # a burst is counted at once, whatever the delay
        metrics.observe(finished("gpt"))
    assert ok._value.get() == 1 + MAX_QUEUED


def test_breaker_state_and_writer_are_read_at_scrape_time() -> None:
    alias = ModelAlias(
        name="gpt",
        deployments=[
            {"provider": "openai-compatible", "model": "m", "base_url": "http://127.0.0.1:9"}
        ],
    )
    router = Router([alias])

    class Writer:
        queued, dropped, written_traces, written_spans, write_errors = 7, 2, 40, 320, 1

    metrics = GatewayMetrics(router=router, writer=Writer())  # type: ignore[arg-type]
    target = router.targets["gpt"][0]
    label = target.deployment.label

    def state(name: str) -> float:
        key = (("deployment", label), ("model", "gpt"), ("state", name))
        return samples(metrics)[("trellis_breaker_state", key)]

    assert (state("closed"), state("open")) == (1, 0)
    for _ in range(target.breaker.failure_threshold):
        target.breaker.record_failure()
    assert (state("closed"), state("open")) == (0, 1)
    got = samples(metrics)
    assert got[("trellis_trace_queue_depth", ())] == 7
    assert got[("trellis_traces_dropped_total", ())] == 2
    assert got[("trellis_traces_written_total", ())] == 40


def test_hook_cost_per_trace() -> None:
    """The hook runs on the request path: it must stay in the microseconds."""
    metrics = GatewayMetrics(["gpt"])
    trace = finished("gpt", input_tokens=10, output_tokens=4, cost=0.1, ttft_ms=12.0)
    for _ in range(200):
        metrics.observe(trace)
    n = 5000
    started = time.perf_counter()
    for _ in range(n):
        metrics.observe(trace)
    metrics.flush()
    per_call_us = (time.perf_counter() - started) / n * 1e6
    assert per_call_us < 50, per_call_us


def test_background_job_counters_are_exported() -> None:
    class RetentionJob:
        deleted_traces, deleted_spans, errors = 5, 40, 0

    class Notifier:
        sent, failed = 3, 1

    metrics = GatewayMetrics(background=[RetentionJob(), Notifier()])
    got = samples(metrics)
    assert got[("trellis_retention_deleted_traces_total", ())] == 5
    assert got[("trellis_retention_deleted_spans_total", ())] == 40
    assert got[("trellis_alert_notifications_sent_total", ())] == 3
    assert got[("trellis_alert_notifications_failed_total", ())] == 1

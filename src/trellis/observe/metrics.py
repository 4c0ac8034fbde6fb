"""Prometheus metrics: counted from finished traces, plus live state read at scrape time.

:meth:`GatewayMetrics.observe` is appended to ``Gateway.on_trace`` and runs on
the request path, so it only queues the trace. The queue is counted (a handful of
lock-protected additions per trace, on label children resolved once) a quarter of
a second later, when a scrape comes, or when 1,024 traces are waiting, whichever
is first: off the request's critical path, and a scrape never misses a finished
request. State that already lives elsewhere (circuit breakers, the trace writer's queue
and counters) is not copied on every request but read when Prometheus scrapes.

Each runtime owns its own :class:`CollectorRegistry`, so two runtimes in one
process (tests, a library user embedding two gateways) never share series.
Label values are bounded: ``model`` is a configured alias or ``"unknown"``
(requests naming a model that does not exist must not create new series), and
there is deliberately no per-API-key label.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from trellis.observe.tracing import Trace

if TYPE_CHECKING:
    from trellis.observe.writer import TraceWriter

__all__ = [
    "GatewayMetrics",
    "BreakerSource",
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "TTFT_BUCKETS",
    "UNKNOWN_MODEL",
]

logger = logging.getLogger(__name__)

#: The ``Content-Type`` of :meth:`GatewayMetrics.render` (Prometheus text format 0.0.4).
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The ``model`` label of requests for a model that is not configured.
UNKNOWN_MODEL = "unknown"

#: Seconds; LLM calls range from a cache hit (milliseconds) to long generations (minutes).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0
)  # fmt: skip
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_LOG_INTERVAL = 60.0
#: Seconds a finished trace may wait before it is counted (a scrape counts it at once).
FLUSH_DELAY = 0.25
#: Traces queued before they are counted at once, whatever the delay.
MAX_QUEUED = 1024


class BreakerSource(Protocol):
    """What the metrics read from the router (``inference.router.Router`` is one).

    Declared here, on the lower layer, so observe never imports inference: the
    dependency points from the router to this contract, not the other way.
    """

    @property
    def aliases(self) -> Mapping[str, Any]:
        """The configured model aliases."""
        ...

    def breaker_states(self) -> Iterable[tuple[str, str, Enum]]:
        """(alias, deployment label, breaker state) per deployment; every member of the
        state's enum is exported, 1 for the current one."""
        ...


@dataclass(slots=True)
class _Series:
    """The label children of one (model, kind) pair, resolved once and reused."""

    ok: Any
    error: Any
    duration: Any
    ttft: Any
    input_tokens: Any
    output_tokens: Any
    cost: Any
    cache_hits: Any
    retries: Any
    fallbacks: Any
    mismatches: Any


class GatewayMetrics:
    """Request metrics fed by finished traces; ``render()`` is the ``/metrics`` body."""

    def __init__(
        self,
        models: Iterable[str] = (),
        *,
        router: BreakerSource | None = None,
        writer: TraceWriter | None = None,
        background: Iterable[Any] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.models = frozenset(models) | (frozenset(router.aliases) if router else frozenset())
        self.hook_errors = 0
        self._last_error_log = float("-inf")
        self._series: dict[tuple[str, str], _Series] = {}
        #: (kind, root status, seconds, summary) of finished traces not counted yet.
        self._queued: list[tuple[str, str, float | None, dict[str, Any]]] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        r = self.registry
        by_model = ["model", "kind"]
        self.requests = Counter(
            "trellis_requests", "Finished requests.", [*by_model, "status"], registry=r
        )
        self.errors = Counter(
            "trellis_request_errors",
            "Failed requests by error class.",
            [*by_model, "error"],
            registry=r,
        )
        self.duration = Histogram(
            "trellis_request_duration_seconds",
            "End-to-end request latency, authentication to last byte.",
            by_model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "trellis_time_to_first_token_seconds",
            "Time to the first streamed token from the serving deployment.",
            by_model,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "trellis_tokens", "Tokens processed.", [*by_model, "type"], registry=r
        )
        self.cost = Counter("trellis_cost_usd", "Cost in US dollars.", by_model, registry=r)
        self.cache_hits = Counter(
            "trellis_cache_hits", "Requests answered from the response cache.", by_model, registry=r
        )
        self.retries = Counter(
            "trellis_retries", "Retried upstream attempts.", by_model, registry=r
        )
        self.fallbacks = Counter(
            "trellis_fallbacks", "Fallbacks to another deployment or model.", by_model, registry=r
        )
        self.mismatches = Counter(
            "trellis_model_mismatches",
            "Responses from another model than the deployment asked for.",
            by_model,
            registry=r,
        )
        jobs = list(background)
        if router is not None or writer is not None or jobs:
            self.registry.register(_LiveCollector(router, writer, jobs))

    # --- the hook (hot path) --------------------------------------------------------

    def observe(self, trace: Trace) -> None:
        """Queue one finished trace to be counted soon. Never raises or blocks.

        Only what the counting reads is kept (not the spans and messages), so a
        queued trace does not outlive its request in memory.
        """
        root = trace.root
        if root is None:
            status, seconds = "ok", None
        else:
            status = root.status
            seconds = (root.end_ns - root.start_ns) / 1e9 if root.end_ns is not None else None
        queued = self._queued
        queued.append((trace.kind, status, seconds, trace.summary))
        if len(queued) >= MAX_QUEUED:
            self.flush()
        elif self._flush_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no event loop (a script, a test): counted by the next flush or scrape
            self._flush_timer = loop.call_later(FLUSH_DELAY, self.flush)

    __call__ = observe

    def flush(self) -> None:
        """Count every queued trace. A metrics bug is logged, never raised to a request."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        queued, self._queued = self._queued, []
        for kind, status, seconds, summary in queued:
            try:
                self._observe(kind, status, seconds, summary)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                self.hook_errors += 1
                now = time.monotonic()
                if now - self._last_error_log >= _LOG_INTERVAL:
                    self._last_error_log = now
                    logger.warning("could not count a trace in the metrics: %r", exc)

    def _observe(
        self, kind: str, status: str, seconds: float | None, summary: dict[str, Any]
    ) -> None:
        model = summary.get("model")
        if model not in self.models:
            model = UNKNOWN_MODEL
        series = self._series.get((model, kind))
        if series is None:
            series = self._resolve(model, kind)
        if seconds is not None:
            series.duration.observe(seconds)
        if status == "error":
            series.error.inc()
            self.errors.labels(model, kind, str(summary.get("error") or "unknown")).inc()
        else:
            series.ok.inc()
        ttft = summary.get("ttft_ms")
        if ttft is not None:
            series.ttft.observe(ttft / 1000)
        for field, counter in (
            ("input_tokens", series.input_tokens),
            ("output_tokens", series.output_tokens),
            ("cost", series.cost),
            ("retries", series.retries),
            ("fallbacks", series.fallbacks),
        ):
            value = summary.get(field)
            if value:
                counter.inc(value)
        if summary.get("cache_hit"):
            series.cache_hits.inc()
        if summary.get("model_mismatch"):
            series.mismatches.inc()

    def _resolve(self, model: str, kind: str) -> _Series:
        """Label children for a new (model, kind); series appear at zero from then on."""
        series = _Series(
            ok=self.requests.labels(model, kind, "ok"),
            error=self.requests.labels(model, kind, "error"),
            duration=self.duration.labels(model, kind),
            ttft=self.ttft.labels(model, kind),
            input_tokens=self.tokens.labels(model, kind, "input"),
            output_tokens=self.tokens.labels(model, kind, "output"),
            cost=self.cost.labels(model, kind),
            cache_hits=self.cache_hits.labels(model, kind),
            retries=self.retries.labels(model, kind),
            fallbacks=self.fallbacks.labels(model, kind),
            mismatches=self.mismatches.labels(model, kind),
        )
        self._series[(model, kind)] = series
        return series

    # --- scraping -----------------------------------------------------------------

    def render(self) -> bytes:
        """Every metric in the Prometheus text exposition format, queued traces counted."""
        self.flush()
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """State read at scrape time: breaker per deployment, trace writer queue and counters."""

    def __init__(
        self,
        router: BreakerSource | None,
        writer: TraceWriter | None,
        jobs: list[Any] | None = None,
    ) -> None:
        self.router = router
        self.writer = writer
        #: Background jobs whose counters are exported: retention, OTLP export, alerts.
        self.jobs = jobs or []

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        if self.router is not None:
            state = GaugeMetricFamily(
                "trellis_breaker_state",
                "Circuit breaker state per deployment: 1 for the current state, else 0.",
                labels=["model", "deployment", "state"],
            )
            for alias, deployment, current in self.router.breaker_states():
                for member in type(current):
                    state.add_metric(
                        [alias, deployment, str(member.value)], 1.0 if member is current else 0.0
                    )
            yield state
        writer = self.writer
        if writer is not None:
            yield GaugeMetricFamily(
                "trellis_trace_queue_depth",
                "Traces waiting for the background writer.",
                value=writer.queued,
            )
            for name, help_text, value in (
                (
                    "trellis_traces_dropped",
                    "Traces dropped (queue full or closed).",
                    writer.dropped,
                ),
                ("trellis_traces_written", "Traces written to the store.", writer.written_traces),
                ("trellis_spans_written", "Spans written to the store.", writer.written_spans),
                (
                    "trellis_trace_write_errors",
                    "Traces lost to database errors.",
                    writer.write_errors,
                ),
            ):
                yield CounterMetricFamily(name, help_text, value=value)
        for job in self.jobs:
            for attribute, name, help_text in _JOB_COUNTERS.get(type(job).__name__, ()):
                yield CounterMetricFamily(name, help_text, value=getattr(job, attribute))


#: Counters of the background jobs, by class name: (attribute, metric, help).
_JOB_COUNTERS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "RetentionJob": (
        ("deleted_traces", "trellis_retention_deleted_traces", "Traces deleted by retention."),
        ("deleted_spans", "trellis_retention_deleted_spans", "Spans deleted by retention."),
        ("errors", "trellis_retention_errors", "Retention runs that failed."),
    ),
    "OtlpExporter": (
        ("exported_spans", "trellis_otlp_exported_spans", "Spans exported over OTLP."),
        ("dropped", "trellis_otlp_dropped", "Traces dropped by the OTLP exporter."),
        ("failures", "trellis_otlp_failures", "OTLP export requests that failed."),
    ),
    "Notifier": (
        ("sent", "trellis_alert_notifications_sent", "Alert notifications delivered."),
        ("failed", "trellis_alert_notifications_failed", "Alert notifications given up on."),
    ),
}

"""What a request's trace needs and its answer does not: attributes, cost, summary, and
the hand-off of the finished trace to the hooks (metrics) and the sink (the writer).

The gateway's stages time their own spans as they run; everything else about the trace
is done here, inline for library callers, or, with ``defer`` (what the server sets), on
a later turn of the event loop: the request is described while its upstream call is in
flight and the answer is recorded once it has been written. A failure is described and
recorded at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from trellis.errors import TrellisError
from trellis.inference.call import Call
from trellis.inference.pricing import PriceBook
from trellis.inference.router import Outcome
from trellis.inference.semantic_cache import SemanticMatch
from trellis.observe.tracing import GenAI, Span, Trace, TraceSink
from trellis.schema import ChatResponse, Usage

__all__ = ["Bookkeeper", "model_mismatch"]

log = logging.getLogger(__name__)


class Bookkeeper:
    """Describes and records the traces of one gateway's calls."""

    def __init__(
        self, *, prices: PriceBook, sink: TraceSink, store_bodies: bool, defer: bool
    ) -> None:
        self.prices = prices
        self.sink = sink
        #: Put prompts and answers on the trace (the writer redacts them when asked to).
        self.store_bodies = store_bodies
        #: Describe and record on a later turn of the event loop instead of inline.
        self.defer = defer
        #: Called with every finished trace before the sink gets it (the metrics hook).
        self.on_trace: list[Callable[[Trace], None]] = []

    def later(self, work: Callable[..., None], *args: Any) -> None:
        """Run trace bookkeeping now, or on the next turn of the event loop when
        ``defer`` is set (the answer does not wait for it)."""
        if self.defer:
            asyncio.get_running_loop().call_soon(_deferred, work, *args)
        else:
            work(*args)

    def describe(self, call: Call) -> None:
        """Put the request's attributes on the root span (once)."""
        if call.described:
            return
        call.described = True
        request, trace, caller = call.received, call.trace, call.caller
        root = trace.root
        assert root is not None
        if caller.auth_start_ns is not None:
            auth = Span(
                name="authenticate",
                trace_id=trace.trace_id,
                parent_id=root.span_id,
                start_ns=caller.auth_start_ns,
                end_ns=caller.auth_end_ns or caller.auth_start_ns,
            )
            auth.set("trellis.key_id", caller.key_id)
            trace.spans.insert(1, auth)  # the first stage, as it happened
        if call.authorize_span is not None and call.route is not None:
            call.authorize_span.set("trellis.plan", [t.label for t in call.route.plan])
        root.update(
            {
                GenAI.OPERATION: trace.kind,
                GenAI.REQUEST_MODEL: request.model,
                GenAI.TEMPERATURE: request.temperature,
                GenAI.TOP_P: request.top_p,
                GenAI.MAX_TOKENS: request.output_limit,
                GenAI.SEED: request.seed,
                GenAI.STOP: request.stop_list() if request.stop is not None else None,
                "trellis.stream": request.stream,
            }
        )
        trace.summary.update(
            model=request.model, key_id=caller.key_id, project_id=caller.project_id
        )
        if self.store_bodies:
            # Kept as models; the trace writer dumps them to JSON, off the request path.
            messages = list(request.messages)
            if call.trace_view is not None:  # PII under a privacy policy: placeholders
                messages = call.trace_view(messages)
            root.attributes[GenAI.INPUT_MESSAGES] = messages

    def complete(
        self,
        call: Call,
        response: ChatResponse,
        *,
        cache_hit: bool,
        match: SemanticMatch | None = None,
    ) -> None:
        """End the trace now; describe and record it now or later (``later``)."""
        call.trace.finish()
        self.later(self.finish_chat, call, response, cache_hit, match)

    def cost(self, call: Call, response: ChatResponse) -> float:
        """What the answer cost (USD): the figure ``finish_chat`` puts on the trace."""
        target = call.outcome.target
        if target is None:
            return 0.0
        return self.prices.cost(target.deployment, response.usage or Usage(), response.model).total

    def finish_chat(
        self,
        call: Call,
        response: ChatResponse,
        cache_hit: bool,
        match: SemanticMatch | None = None,
    ) -> None:
        """The answer's attributes, cost and summary on the trace, then record it."""
        self.describe(call)
        trace, outcome = call.trace, call.outcome
        root = trace.root
        assert root is not None
        usage = response.usage or Usage()
        target = outcome.target
        summary = trace.summary
        summary.update(
            response_model=response.model,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            cache_hit=cache_hit,
            ttft_ms=outcome.ttft_ms,
            retries=outcome.retries,
            fallbacks=outcome.fallbacks,
            attempts=outcome.attempts,
        )
        if target is not None:
            cost = self.prices.cost(target.deployment, usage, response.model)
            mismatch = model_mismatch(target.deployment.model, response.model)
            summary.update(
                provider=target.provider.system,
                deployment=target.label,
                upstream_model=target.deployment.model,
                cost=cost.total,
                priced=cost.priced,
                model_mismatch=mismatch,
            )
            root.update({GenAI.PROVIDER: target.provider.system, "trellis.cost_usd": cost.total})
            if mismatch:
                root.add_event(
                    "model_mismatch", requested=target.deployment.model, served=response.model
                )
        else:
            summary["cost"] = 0.0
        root.update(
            {
                GenAI.RESPONSE_MODEL: response.model,
                GenAI.RESPONSE_ID: response.id,
                GenAI.INPUT_TOKENS: usage.prompt_tokens,
                GenAI.OUTPUT_TOKENS: usage.completion_tokens,
                GenAI.FINISH_REASONS: [c.finish_reason for c in response.choices],
                "trellis.cache_hit": cache_hit,
                GenAI.TTFT: outcome.ttft_ms / 1000 if outcome.ttft_ms is not None else None,
            }
        )
        if match is not None:
            root.update(
                {
                    "trellis.cache.kind": "semantic",
                    "trellis.semantic_cache.similarity": round(match.similarity, 4),
                    "trellis.semantic_cache.matched_trace_id": match.trace_id,
                }
            )
            summary["semantic_cache_hit"] = True
        if self.store_bodies:
            output = [c.message for c in response.choices]
            if call.trace_view is not None:
                output = call.trace_view(output)
            root.attributes[GenAI.OUTPUT_MESSAGES] = output
        self.record(trace)

    def fail(self, call: Call, exc: BaseException) -> None:
        """Describe and record a failed call at once (once, however many stages see it)."""
        root = call.trace.root
        assert root is not None
        if root.end_ns is not None:
            return  # already recorded
        self.describe(call)
        root.record_error(exc)
        if isinstance(exc, TrellisError):
            root.set("http.response.status_code", exc.status_code)
        call.trace.summary.update(
            attempts=call.outcome.attempts,
            retries=call.outcome.retries,
            fallbacks=call.outcome.fallbacks,
            error=type(exc).__name__,
        )
        if call.outcome.target is not None:
            call.trace.summary["provider"] = call.outcome.target.provider.system
        self.record(call.trace, status="error")

    def finish_embeddings(
        self, trace: Trace, outcome: Outcome, model: str, prompt_tokens: int, inputs: int
    ) -> None:
        """The answer's attributes, cost and summary on an embeddings trace; record it."""
        root = trace.root
        assert root is not None
        target = outcome.target
        assert target is not None
        cost = self.prices.cost(target.deployment, Usage(prompt_tokens=prompt_tokens), model)
        trace.summary.update(
            response_model=model,
            provider=target.provider.system,
            deployment=target.label,
            input_tokens=prompt_tokens,
            output_tokens=0,
            cost=cost.total,
            retries=outcome.retries,
            fallbacks=outcome.fallbacks,
            attempts=outcome.attempts,
        )
        root.set(GenAI.PROVIDER, target.provider.system)
        root.set(GenAI.RESPONSE_MODEL, model)
        root.set(GenAI.INPUT_TOKENS, prompt_tokens)
        root.set("trellis.input_count", inputs)
        self.record(trace)

    def fail_embeddings(self, trace: Trace, outcome: Outcome, exc: BaseException) -> None:
        root = trace.root
        assert root is not None
        root.record_error(exc)
        trace.summary.update(error=type(exc).__name__, attempts=outcome.attempts)
        self.record(trace, status="error")

    def record(self, trace: Trace, status: str | None = None) -> None:
        """Finish ``trace`` and hand it to the hooks and the sink."""
        trace.finish(status)
        for hook in self.on_trace:
            hook(trace)
        self.sink.submit(trace)


def _deferred(work: Callable[..., None], *args: Any) -> None:
    """Deferred trace bookkeeping: a bug in it is logged, and never reaches a request."""
    try:
        work(*args)
    except Exception:
        log.exception("trace bookkeeping failed")


def model_mismatch(requested: str, served: str | None) -> bool:
    """True when the provider served another model than asked — not merely a dated
    snapshot of it (``gpt-4o-mini`` → ``gpt-4o-mini-2024-07-18`` is expected)."""
    if not served:
        return False
    requested_bare = requested.rsplit("/", 1)[-1].lower()
    served_bare = served.rsplit("/", 1)[-1].lower()
    return not (served_bare == requested_bare or served_bare.startswith(requested_bare + "-"))

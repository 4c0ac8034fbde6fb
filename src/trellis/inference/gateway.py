"""The request path: one explicit chain of stages for every chat and embeddings call.

authorize → cache lookup (exact, then semantic when enabled) → retrieve (grounded
requests only) → context fitting → route (attempts, retries, fallbacks) → cache store →
record. Each stage is a span on the request's trace; the finished trace goes to a
non-blocking sink (the background writer), so nothing on this path waits for the database.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trellis.errors import (
    InvalidRequestError,
    PermissionDeniedError,
    RequestError,
    TrellisError,
    UnsupportedFeatureError,
)
from trellis.inference import grounding
from trellis.inference.cache import ResponseCache
from trellis.inference.context import ContextFitter
from trellis.inference.pricing import PriceBook
from trellis.inference.router import Outcome, Route, Router
from trellis.inference.semantic_cache import SemanticCache, SemanticMatch, semantic_prompt
from trellis.observe.tracing import GenAI, NullSink, Span, Trace, TraceSink
from trellis.schema import (
    ChatChoice,
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    ChunkChoice,
    ChunkDelta,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    ModelCard,
    ModelList,
    Usage,
)

__all__ = ["Gateway", "Caller", "ChatResult", "StreamResult", "TokenCounter"]

log = logging.getLogger(__name__)


class TokenCounter:
    """Counts tokens when a provider does not report usage (wraps ``trellis.inference.tokens``)."""

    def messages(self, messages: list[ChatMessage]) -> int:
        from trellis.inference.tokens import count_message_tokens

        return count_message_tokens(messages)

    def text(self, text: str) -> int:
        from trellis.inference.tokens import count_text_tokens

        return count_text_tokens(text)


@dataclass(slots=True)
class Caller:
    """Who is calling: the verified API key (None for in-process library use) and
    the time authentication took, so it shows as the trace's first stage."""

    key: Any = None  # trellis.access.keys.ApiKeyRecord
    auth_start_ns: int | None = None
    auth_end_ns: int | None = None
    no_cache: bool = False  # Cache-Control: no-cache — skip the lookup
    no_store: bool = False  # Cache-Control: no-store — do not store the answer

    @property
    def key_id(self) -> str | None:
        return getattr(self.key, "id", None)


@dataclass(slots=True)
class ChatResult:
    response: ChatResponse
    cache_hit: bool
    trace_id: str
    #: Set on a semantic-cache hit: how close the cached prompt was (exact hits: None).
    similarity: float | None = None


@dataclass(slots=True)
class StreamResult:
    chunks: AsyncIterator[ChatChunk]
    cache_hit: bool
    trace_id: str
    similarity: float | None = None


@dataclass(slots=True)
class _Call:
    """State shared by the stages of one chat call."""

    request: ChatRequest
    caller: Caller
    trace: Trace
    route: Route
    #: The request as it arrived (``request`` may be grounded or trimmed later).
    received: ChatRequest
    outcome: Outcome = field(default_factory=Outcome)
    cache_key: str | None = None
    started: float = field(default_factory=time.perf_counter)
    retrieval: grounding.RetrievalPlan | None = None
    #: The ``citations`` field of a grounded answer (None when nothing was retrieved).
    citations: list[dict[str, Any]] | None = None
    #: Semantic-cache scope and prompt vector, kept from the lookup to store the answer.
    semantic_scope: str | None = None
    semantic_vector: np.ndarray | None = None
    #: The request's attributes are on the trace (``Gateway._describe``).
    described: bool = False
    authorize_span: Span | None = None


class Gateway:
    def __init__(
        self,
        router: Router,
        *,
        cache: ResponseCache | None = None,
        prices: PriceBook | None = None,
        sink: TraceSink | None = None,
        counter: TokenCounter | None = None,
        store_bodies: bool = True,
        retriever: grounding.Retriever | None = None,
        semantic_cache: SemanticCache | None = None,
        defer_bookkeeping: bool = False,
    ) -> None:
        self.router = router
        #: Describe and record traces on a later turn of the event loop instead of
        #: inline. The server sets it: describing a request while its upstream call is
        #: in flight, and recording it after its answer is written, keeps that work off
        #: the latency the caller sees. Library callers get their trace inline.
        self.defer_bookkeeping = defer_bookkeeping
        #: Near-duplicate prompt cache; None (the default) means no prompt is ever embedded.
        self.semantic_cache = semantic_cache
        #: Searches collections for grounded requests; None means retrieval is unavailable.
        self.retriever = retriever
        self.cache = cache
        self.prices = prices or PriceBook()
        self.sink: TraceSink = sink or NullSink()
        self.counter = counter or TokenCounter()
        self.fitter = ContextFitter(lambda messages: self.counter.messages(messages))
        self.store_bodies = store_bodies
        self.on_trace: list[Callable[[Trace], None]] = []

    # --- models ---------------------------------------------------------------

    def models(self, caller: Caller | None = None) -> ModelList:
        key = caller.key if caller else None
        cards = [
            ModelCard(id=name, owned_by="trellis", kind=alias.kind)
            for name, alias in self.router.aliases.items()
            if key is None or key.allows_model(name)
        ]
        return ModelList(data=cards)

    # --- chat -------------------------------------------------------------------

    async def chat(self, request: ChatRequest, caller: Caller | None = None) -> ChatResult:
        call = self._begin(request, caller or Caller(), "chat")
        try:
            cached = await self._cache_lookup(call)
            if cached is not None:
                self._complete(call, cached, cache_hit=True)
                return ChatResult(cached, True, call.trace.trace_id)
            match = await self._semantic_lookup(call)
            if match is not None:
                self._complete(call, match.response, cache_hit=True, match=match)
                return ChatResult(match.response, True, call.trace.trace_id, match.similarity)
            await self._retrieve(call)
            self._fit(call)
            with call.trace.span("route", attributes={GenAI.REQUEST_MODEL: request.model}) as span:
                response = await self.router.chat(
                    call.route, call.request, call.trace, span, call.outcome, later=self._later
                )
            if call.citations is not None:
                # An extra top-level field of the answer (the model keeps unknown fields).
                response.citations = call.citations  # type: ignore[attr-defined]
            self._ensure_usage(call, response)
            await self._cache_store(call, response)
            self._complete(call, response, cache_hit=False)
            return ChatResult(response, False, call.trace.trace_id)
        except BaseException as exc:
            self._fail(call, exc)
            raise

    async def chat_stream(self, request: ChatRequest, caller: Caller | None = None) -> StreamResult:
        """Start a stream. Everything up to the first chunk happens here, so failures
        before it surface as ordinary errors; later ones end the stream with an error."""
        call = self._begin(request, caller or Caller(), "chat")
        try:
            cached = await self._cache_lookup(call)
            if cached is not None:
                self._complete(call, cached, cache_hit=True)
                return StreamResult(_replay(cached, request), True, call.trace.trace_id)
            match = await self._semantic_lookup(call)
            if match is not None:
                self._complete(call, match.response, cache_hit=True, match=match)
                return StreamResult(
                    _replay(match.response, request),
                    True,
                    call.trace.trace_id,
                    match.similarity,
                )
            await self._retrieve(call)
            self._fit(call)
            route_span = call.trace.start_span(
                "route", attributes={GenAI.REQUEST_MODEL: request.model}
            )
            try:
                upstream = await self.router.stream(
                    call.route, call.request, call.trace, route_span, call.outcome
                )
            except BaseException as exc:
                route_span.record_error(exc)
                route_span.end()
                raise
        except BaseException as exc:
            self._fail(call, exc)
            raise
        return StreamResult(self._relay(call, upstream, route_span), False, call.trace.trace_id)

    async def _relay(
        self, call: _Call, upstream: AsyncIterator[ChatChunk], route_span: Span
    ) -> AsyncIterator[ChatChunk]:
        """Pass chunks through, collecting the answer for usage, cache and trace."""
        request = call.request
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        texts: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        saw_tools = False
        usage: Usage | None = None
        last: ChatChunk | None = None
        try:
            async for chunk in upstream:
                last = chunk
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        texts.setdefault(choice.index, []).append(choice.delta.content)
                    if choice.delta.tool_calls:
                        saw_tools = True
                    if choice.finish_reason:
                        finish[choice.index] = choice.finish_reason
                if not chunk.choices and chunk.usage is not None:
                    continue  # the usage chunk is re-emitted at the end, if asked for
                if chunk.usage is not None:
                    chunk = chunk.model_copy(update={"usage": None})
                yield chunk
            route_span.end()
            response = ChatResponse(
                id=last.id if last else call.trace.trace_id,
                model=last.model if last else request.model,
                choices=[
                    ChatChoice(
                        index=index,
                        message={"role": "assistant", "content": "".join(parts)},  # type: ignore[arg-type]
                        finish_reason=finish.get(index, "stop"),
                    )
                    for index, parts in sorted(texts.items())
                ]
                or [ChatChoice(message={"role": "assistant", "content": ""}, finish_reason="stop")],  # type: ignore[arg-type]
                usage=usage,
            )
            self._ensure_usage(call, response)
            if include_usage or call.citations is not None:
                # One final chunk carries usage (when asked for) and citations (when grounded).
                final = ChatChunk(
                    id=response.id,
                    model=response.model,
                    choices=[],
                    usage=response.usage if include_usage else None,
                )
                if call.citations is not None:
                    final.citations = call.citations  # type: ignore[attr-defined]
                yield final
            if not saw_tools:
                await self._cache_store(call, response)
            self._complete(call, response, cache_hit=False)
        except BaseException as exc:
            route_span.record_error(exc)
            route_span.end()
            self._fail(call, exc)
            raise

    # --- stages -----------------------------------------------------------------

    def _begin(self, request: ChatRequest, caller: Caller, operation: str) -> _Call:
        trace = Trace(kind=operation, name=f"{operation} {request.model}")
        root = trace.root
        assert root is not None
        if caller.auth_start_ns is not None:
            root.start_ns = caller.auth_start_ns  # its span is added by _describe
        call = _Call(
            request=request,
            caller=caller,
            trace=trace,
            route=None,  # type: ignore[arg-type]
            received=request,
        )
        try:
            with trace.span("authorize") as span:
                call.authorize_span = span
                call.route = self._authorize(caller, request.model, "chat")
                call.retrieval = grounding.retrieval_plan(
                    request, getattr(call.route.alias, "retrieval", None)
                )
        except BaseException as exc:
            self._fail(call, exc)
            raise
        self._later(self._describe, call)
        return call

    def _later(self, work: Callable[..., None], *args: Any) -> None:
        """Run trace bookkeeping now, or on the next turn of the event loop when
        ``defer_bookkeeping`` is set (the answer does not wait for it)."""
        if self.defer_bookkeeping:
            asyncio.get_running_loop().call_soon(_bookkeeping, work, *args)
        else:
            work(*args)

    def _describe(self, call: _Call) -> None:
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
        trace.summary.update(model=request.model, key_id=caller.key_id)
        if self.store_bodies:
            # Kept as models; the trace writer dumps them to JSON, off the request path.
            root.attributes[GenAI.INPUT_MESSAGES] = list(request.messages)

    _OTHER_ENDPOINT = {"chat": "/v1/embeddings", "embedding": "/v1/chat/completions"}

    def _authorize(self, caller: Caller, model: str, kind: str) -> Route:
        """The route for ``model``: it exists (404), the key may use it (403), and it is a
        model of the ``kind`` this endpoint serves (400)."""
        alias = self.router.alias(model)
        self._check_access(caller, alias.name)
        if alias.kind != kind:
            raise InvalidRequestError(
                f"`{alias.name}` is a {alias.kind} model; use {self._OTHER_ENDPOINT[kind]}",
                param="model",
                code="model_not_supported",
            )
        return self.router.route(model)

    @staticmethod
    def _check_access(caller: Caller, alias: str) -> None:
        key = caller.key
        if key is not None and not key.allows_model(alias):
            raise PermissionDeniedError(
                f"This API key may not use the model `{alias}`.",
                code="model_not_allowed",
                param="model",
            )

    async def _cache_lookup(self, call: _Call) -> ChatResponse | None:
        # Grounded answers are never cached: they must follow the collections as they change.
        if self.cache is None or call.request.n not in (None, 1) or call.retrieval is not None:
            return None
        opted_in = bool(call.route.alias.cache) or bool(getattr(call.caller.key, "cache", False))
        if not ResponseCache.cacheable(call.request, opted_in=opted_in):
            return None
        call.cache_key = self.cache.key(call.route.alias.name, call.request, call.caller.key_id)
        if call.caller.no_cache:
            return None
        with call.trace.span("cache_lookup") as span:
            cached = await self.cache.get(call.cache_key)
            span.set("trellis.cache.hit", cached is not None)
        return cached

    def _semantic_wanted(self, call: _Call) -> bool:
        """Whether this request may use the semantic cache at all (before any embedding).

        Grounded requests are excluded, like in the exact cache: their answer follows the
        collections as they change, and a cached answer's citations may name chunks that
        have since been deleted. ``trellis.semantic_cache`` decides when given; otherwise
        the exact cache's rule applies (deterministic, or opted in by alias, key or
        ``trellis.cache``), because reusing a sampled answer changes what the caller asked for.
        """
        if self.semantic_cache is None or call.retrieval is not None:
            return False
        if call.caller.no_cache and call.caller.no_store:
            return False
        options = call.request.trellis
        if options is not None and options.semantic_cache is not None:
            return options.semantic_cache
        opted_in = bool(call.route.alias.cache) or bool(getattr(call.caller.key, "cache", False))
        return ResponseCache.cacheable(call.request, opted_in=opted_in)

    async def _semantic_lookup(self, call: _Call) -> SemanticMatch | None:
        """Embed an eligible single-turn prompt (in a worker thread) and look for a near one.

        The vector is kept on the call so the answer can be stored without embedding
        twice. An embedder failure skips the cache instead of failing the request.
        """
        semantic = self.semantic_cache
        if semantic is None or not self._semantic_wanted(call):
            return None
        prompt = semantic_prompt(call.request)
        if prompt is None:
            return None
        text, system = prompt
        scope = semantic.scope(call.route.alias.name, call.request, call.caller.key_id, system)
        with call.trace.span(
            "semantic_cache_lookup",
            attributes={"trellis.semantic_cache.threshold": semantic.threshold},
        ) as span:
            try:
                vector = await semantic.embed(text)
            except TrellisError as exc:  # e.g. a prompt longer than the embedder reads
                span.set("trellis.semantic_cache.skipped", exc.code or type(exc).__name__)
                return None
            except Exception as exc:  # the embedder broke: answer without the cache
                log.warning("semantic cache embedding failed: %r", exc)
                span.add_event("semantic_cache_error", **{"error.type": type(exc).__name__})
                return None
            call.semantic_scope, call.semantic_vector = scope, vector
            if call.caller.no_cache:
                span.set("trellis.semantic_cache.skipped", "no_cache")
                return None
            match, best = semantic.lookup(scope, vector)
            span.set("trellis.semantic_cache.hit", match is not None)
            if best is not None:
                span.set("trellis.semantic_cache.similarity", round(best, 4))
            if match is not None:
                span.set("trellis.semantic_cache.matched_trace_id", match.trace_id)
        return match

    async def _retrieve(self, call: _Call) -> None:
        """Ground the request: search its collections and add the passages as context.

        The caller's mistakes (an unknown collection, an invalid name) fail the request;
        a retrieval that finds nothing or breaks is a ``retrieval_failure`` event and the
        request goes on without context, because an answer beats an outage.
        """
        plan = call.retrieval
        if plan is None:
            return
        if self.retriever is None:
            raise UnsupportedFeatureError(
                "retrieval is not available in this gateway", param="trellis.collections"
            )
        trace = call.trace
        root = trace.root
        assert root is not None
        query = grounding.retrieval_query(call.request.messages)
        with trace.span(
            "retrieve",
            attributes={
                "trellis.retrieval.collections": list(plan.collections),
                "trellis.retrieval.top_k": plan.top_k,
            },
        ) as span:
            if self.store_bodies:
                span.set("trellis.retrieval.query", query)
            failure: dict[str, Any] | None = None
            passages: list[grounding.Passage] = []
            if not query:
                failure = {"reason": "no_query"}
            else:
                try:
                    passages = await self.retriever.retrieve(plan.collections, query, plan.top_k)
                except RequestError:
                    raise
                except Exception as exc:  # any backend fault: record it, answer ungrounded
                    log.warning("retrieval failed for %s: %r", list(plan.collections), exc)
                    failure = {"reason": "error", "error.type": type(exc).__name__}
                    failure["error.message"] = str(exc)[:500]
            if failure is None and not passages:
                failure = {"reason": "no_hits"}
            budget = max(1, call.route.alias.context_window // 2)
            message, used = grounding.context_message(
                passages, lambda text: self.counter.text(text) <= budget
            )
            if failure is None and not used:
                failure = {"reason": "context_too_small"}
            span.set("trellis.retrieval.hits", len(passages))
            span.set("trellis.retrieval.chunk_ids", [p.chunk_id for p in used])
            span.set("trellis.retrieval.document_ids", [p.document_id for p in used])
            span.set("trellis.retrieval.scores", [p.score for p in used])
            if len(used) < len(passages):
                span.set("trellis.retrieval.dropped_for_context", len(passages) - len(used))
            trace.summary["retrieval_hits"] = len(used)
            if failure is not None:
                failure["collections"] = list(plan.collections)
                span.add_event("retrieval_failure", **failure)
                root.add_event("retrieval_failure", **failure)
            if message is not None:
                call.request = call.request.model_copy(
                    update={"messages": grounding.with_context(call.request.messages, message)}
                )
                call.citations = grounding.citations(used)

    def _fit(self, call: _Call) -> None:
        alias = call.route.alias
        options = call.request.trellis
        trim = options.trim if options is not None and options.trim is not None else alias.trim
        with call.trace.span(
            "context_fit", attributes={"trellis.context_window": alias.context_window}
        ) as span:
            result = self.fitter.fit(call.request, alias.context_window, trim)
            span.set("trellis.prompt_tokens", result.prompt_tokens)
            if result.dropped:
                call.request = call.request.model_copy(update={"messages": result.messages})
                event = {
                    "dropped_messages": result.dropped,
                    "tokens_before": result.tokens_before,
                    "tokens_after": result.prompt_tokens,
                    "context_window": alias.context_window,
                }
                span.add_event("truncation", **event)
                call.trace.root.add_event("truncation", **event)  # type: ignore[union-attr]
                call.trace.summary["truncated"] = True

    def _ensure_usage(self, call: _Call, response: ChatResponse) -> None:
        """Fill usage the provider did not report, by counting locally."""
        if response.usage is not None and (
            response.usage.prompt_tokens or response.usage.completion_tokens
        ):
            return
        prompt = self.counter.messages(call.request.messages)
        completion = sum(self.counter.text(c.message.content or "") for c in response.choices)
        response.usage = Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )
        call.trace.summary["usage_counted_locally"] = True

    async def _cache_store(self, call: _Call, response: ChatResponse) -> None:
        if call.caller.no_store:
            return
        if self.cache is not None and call.cache_key is not None:
            with call.trace.span("cache_store"):
                await self.cache.put(call.cache_key, response)
        semantic = self.semantic_cache
        if (
            semantic is not None
            and call.semantic_scope is not None
            and call.semantic_vector is not None
            and not any(choice.message.tool_calls for choice in response.choices)
        ):
            semantic.put(call.semantic_scope, call.semantic_vector, response, call.trace.trace_id)

    def _complete(
        self,
        call: _Call,
        response: ChatResponse,
        *,
        cache_hit: bool,
        match: SemanticMatch | None = None,
    ) -> None:
        """End the trace now; describe and record it now or later (``_later``)."""
        call.trace.finish()
        self._later(self._finish_chat, call, response, cache_hit, match)

    def _finish_chat(
        self,
        call: _Call,
        response: ChatResponse,
        cache_hit: bool,
        match: SemanticMatch | None = None,
    ) -> None:
        self._describe(call)
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
            mismatch = _model_mismatch(target.deployment.model, response.model)
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
            root.attributes[GenAI.OUTPUT_MESSAGES] = [c.message for c in response.choices]
        self._record(trace)

    def _fail(self, call: _Call, exc: BaseException) -> None:
        root = call.trace.root
        assert root is not None
        if root.end_ns is not None:
            return  # already recorded
        self._describe(call)
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
        self._record(call.trace, status="error")

    def _record(self, trace: Trace, status: str | None = None) -> None:
        trace.finish(status)
        for hook in self.on_trace:
            hook(trace)
        self.sink.submit(trace)

    # --- embeddings ---------------------------------------------------------

    async def embed(
        self, request: EmbeddingRequest, caller: Caller | None = None
    ) -> EmbeddingResponse:
        caller = caller or Caller()
        trace = Trace(kind="embeddings", name=f"embeddings {request.model}")
        root = trace.root
        assert root is not None
        root.set(GenAI.OPERATION, "embeddings")
        root.set(GenAI.REQUEST_MODEL, request.model)
        trace.summary.update(model=request.model, key_id=caller.key_id)
        outcome = Outcome()
        try:
            with trace.span("authorize"):
                route = self._authorize(caller, request.model, "embedding")
                try:
                    texts = request.texts()
                except ValueError as exc:
                    raise InvalidRequestError(str(exc), param="input") from None
            with trace.span("route") as span:
                result = await self.router.embed(
                    route, texts, request.dimensions, trace, span, outcome
                )
            prompt_tokens = result.prompt_tokens or sum(self.counter.text(t) for t in texts)
            data = [
                EmbeddingData(index=i, embedding=_encode(vector, request.encoding_format))
                for i, vector in enumerate(result.vectors)
            ]
            target = outcome.target
            assert target is not None
            cost = self.prices.cost(
                target.deployment, Usage(prompt_tokens=prompt_tokens), result.model
            )
            trace.summary.update(
                response_model=result.model,
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
            root.set(GenAI.RESPONSE_MODEL, result.model)
            root.set(GenAI.INPUT_TOKENS, prompt_tokens)
            root.set("trellis.input_count", len(texts))
            self._record(trace)
            return EmbeddingResponse(
                data=data,
                model=result.model,
                usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
            )
        except BaseException as exc:
            root.record_error(exc)
            trace.summary.update(error=type(exc).__name__, attempts=outcome.attempts)
            self._record(trace, status="error")
            raise

    async def aclose(self) -> None:
        await self.router.aclose()
        if self.cache is not None:
            await self.cache.aclose()


def _bookkeeping(work: Callable[..., None], *args: Any) -> None:
    """Deferred trace bookkeeping: a bug in it is logged, and never reaches a request."""
    try:
        work(*args)
    except Exception:
        log.exception("trace bookkeeping failed")


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


def _model_mismatch(requested: str, served: str | None) -> bool:
    """True when the provider served another model than asked — not merely a dated
    snapshot of it (``gpt-4o-mini`` → ``gpt-4o-mini-2024-07-18`` is expected)."""
    if not served:
        return False
    requested_bare = requested.rsplit("/", 1)[-1].lower()
    served_bare = served.rsplit("/", 1)[-1].lower()
    return not (served_bare == requested_bare or served_bare.startswith(requested_bare + "-"))


async def _replay(response: ChatResponse, request: ChatRequest) -> AsyncIterator[ChatChunk]:
    """A cached answer as stream chunks: role, content, finish, then usage if asked for."""
    for choice in response.choices:
        yield ChatChunk(
            id=response.id,
            model=response.model,
            choices=[
                ChunkChoice(index=choice.index, delta=ChunkDelta(role="assistant", content=""))
            ],
        )
        message = choice.message
        delta: dict[str, Any] = {"content": message.content}
        if message.tool_calls:
            delta["tool_calls"] = [
                {"index": i, **call.model_dump(exclude_none=True)}
                for i, call in enumerate(message.tool_calls)
            ]
        yield ChatChunk(
            id=response.id,
            model=response.model,
            choices=[ChunkChoice(index=choice.index, delta=ChunkDelta(**delta))],
        )
        yield ChatChunk(
            id=response.id,
            model=response.model,
            choices=[
                ChunkChoice(
                    index=choice.index, delta=ChunkDelta(), finish_reason=choice.finish_reason
                )
            ],
        )
    if request.stream_options and request.stream_options.include_usage:
        yield ChatChunk(id=response.id, model=response.model, choices=[], usage=response.usage)

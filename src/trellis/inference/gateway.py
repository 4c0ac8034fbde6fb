"""The request path: one explicit chain of stages for every chat and embeddings call.

authorize → admit (the key's and its project's rate limits and budgets) → guard (prompt
injection; when on) → memory (stored conversation, recalled facts; on request) → privacy
(PII: placeholders, in-house routing or refusal) → cache lookup (exact, then semantic when
enabled) → retrieve (grounded requests only; passages screened and spotlighted; privacy
runs after it for them) → guard setup (canary token, output checks) → context fitting →
route (attempts, retries, fallbacks) → output checks and placeholder restoring → session
store → cache store → record.
Each stage is a span on the request's trace; the finished trace goes to a non-blocking
sink (the background writer), so nothing on this path waits for the database.

This module is the sequence of stages. Streams are relayed and cached answers replayed
by ``streaming``; what only the trace needs (attributes, cost, summary, recording) is
done by ``bookkeeping``; the state a call carries between them is ``call.Call``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from trellis.access.limits import Limiter
from trellis.errors import (
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RequestError,
    TrellisError,
    UnsupportedFeatureError,
)
from trellis.guard import privacy
from trellis.guard.canary import new_canary, with_canary
from trellis.guard.injection import InjectionDetector, Verdict, default_detector
from trellis.guard.output import OutputCheck, wants_json
from trellis.guard.placeholders import Placeholders
from trellis.guard.privacy import PiiDetectedError
from trellis.inference import grounding
from trellis.inference.bookkeeping import Bookkeeper
from trellis.inference.cache import ResponseCache
from trellis.inference.call import Call, Caller
from trellis.inference.context import ContextFitter
from trellis.inference.conversation import (
    ExtractionJob,
    MemoryExtractor,
    MemoryRecall,
    SessionKey,
    SessionStore,
    memory_message,
)
from trellis.inference.pricing import PriceBook
from trellis.inference.router import Outcome, Route, Router
from trellis.inference.semantic_cache import SemanticCache, SemanticMatch, semantic_prompt
from trellis.inference.streaming import relay, replay
from trellis.observe.tracing import GenAI, NullSink, Trace, TraceSink, new_trace_id
from trellis.schema import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    ModelCard,
    ModelList,
    Usage,
    message_text,
)
from trellis.settings import GuardSettings, GuardStage, OutputGuard

__all__ = ["Gateway", "Caller", "ChatResult", "StreamResult", "TokenCounter"]

log = logging.getLogger(__name__)

#: What a trace holds in place of a message the injection guard blocked.
BLOCKED_MESSAGE = "[withheld: blocked by the prompt-injection guard]"
#: Longer messages are scored in a worker thread, so the event loop is not held up.
_GUARD_INLINE_CHARS = 20_000


class TokenCounter:
    """Counts tokens when a provider does not report usage (wraps ``trellis.inference.tokens``)."""

    def messages(self, messages: list[ChatMessage]) -> int:
        from trellis.inference.tokens import count_message_tokens

        return count_message_tokens(messages)

    def text(self, text: str) -> int:
        from trellis.inference.tokens import count_text_tokens

        return count_text_tokens(text)


@dataclass(slots=True)
class ChatResult:
    response: ChatResponse
    cache_hit: bool
    trace_id: str
    #: Set on a semantic-cache hit: how close the cached prompt was (exact hits: None).
    similarity: float | None = None
    #: What the call cost in USD: the figure its trace records (0 for a cache hit or an
    #: unpriced model), so callers that add up costs (workflow steps) need no price book.
    cost: float = 0.0


@dataclass(slots=True)
class StreamResult:
    chunks: AsyncIterator[ChatChunk]
    cache_hit: bool
    trace_id: str
    similarity: float | None = None


def _set_trace_view(call: Call, view: Callable[[list[Any]], list[Any]]) -> None:
    """From now on the trace records the call's messages through ``view`` (privacy
    placeholders, a withheld message); the copy it may hold already is rewritten too."""
    call.trace_view = view
    root = call.trace.root
    if call.described and root is not None and GenAI.INPUT_MESSAGES in root.attributes:
        root.attributes[GenAI.INPUT_MESSAGES] = view(list(call.received.messages))


class Gateway:
    """The chat and embeddings request path: built once from settings, shared by all calls."""

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
        sessions: SessionStore | None = None,
        memories: MemoryRecall | None = None,
        extractor: MemoryExtractor | None = None,
        extract: str = "request",
        limiter: Limiter | None = None,
        guard: GuardSettings | None = None,
        detector: InjectionDetector | None = None,
    ) -> None:
        self.router = router
        #: Rate limits and budgets per key and project; None: nothing is limited.
        self.limiter = limiter
        #: Prompt-injection screening (``guard``): user input, retrieved passages, tool output.
        self.guard = guard or GuardSettings()
        #: The classifier; None loads the shipped weights the first time a stage is on.
        self.detector = detector
        #: Describes and records the traces. With ``defer_bookkeeping`` (the server sets
        #: it) that happens on later turns of the event loop instead of inline: describing
        #: a request while its upstream call is in flight, and recording it after its
        #: answer is written, keeps that work off the latency the caller sees. Library
        #: callers get their trace inline.
        self.book = Bookkeeper(
            prices=prices or PriceBook(),
            sink=sink or NullSink(),
            store_bodies=store_bodies,
            defer=defer_bookkeeping,
        )
        #: Near-duplicate prompt cache; None (the default) means no prompt is ever embedded.
        self.semantic_cache = semantic_cache
        #: Searches collections for grounded requests; None means retrieval is unavailable.
        self.retriever = retriever
        #: Whether project P has collection N (``has_collection(P, N)``), so an unknown
        #: collection is the caller's 404 before retrieval; None here: not checked.
        self.has_collection: Callable[[str, str], Awaitable[bool]] | None = None
        #: A project's guard overrides (``ProjectGuard`` or None), read from memory on
        #: every call; None here: projects override nothing.
        self.project_guard: Callable[[str], Any] | None = None
        #: Stores conversations for ``trellis.session_id``; None means sessions are unavailable.
        self.sessions = sessions
        #: Recalls long-term memories for ``trellis.user_id``/``user``; None: no recall.
        self.memories = memories
        #: Extracts memories from turns in the background; None: extraction unavailable.
        self.extractor = extractor
        #: When to extract (``memory.extract``): "off", "request" (when asked), "always".
        self.extract = extract
        self.cache = cache
        self.counter = counter or TokenCounter()
        self.fitter = ContextFitter(lambda messages: self.counter.messages(messages))

    # --- what the bookkeeper keeps, under the gateway's names ---------------------

    @property
    def on_trace(self) -> list[Callable[[Trace], None]]:
        """Hooks called with every finished trace (the Prometheus metrics)."""
        return self.book.on_trace

    @property
    def sink(self) -> TraceSink:
        return self.book.sink

    @sink.setter
    def sink(self, sink: TraceSink) -> None:
        self.book.sink = sink

    @property
    def prices(self) -> PriceBook:
        return self.book.prices

    @prices.setter
    def prices(self, prices: PriceBook) -> None:
        self.book.prices = prices

    @property
    def store_bodies(self) -> bool:
        return self.book.store_bodies

    @store_bodies.setter
    def store_bodies(self, store: bool) -> None:
        self.book.store_bodies = store

    @property
    def defer_bookkeeping(self) -> bool:
        return self.book.defer

    @defer_bookkeeping.setter
    def defer_bookkeeping(self, defer: bool) -> None:
        self.book.defer = defer

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
        book = self.book
        call = self._begin(request, caller or Caller(), "chat")
        try:
            await self._admit(call)
            await self._guard_input(call)
            await self._memory(call)
            if call.retrieval is None:
                self._privacy(call)
            cached = await self._cache_lookup(call)
            if cached is not None:
                book.complete(call, cached, cache_hit=True)
                await self._settle(call)
                return ChatResult(self._restore(call, cached), True, call.trace.trace_id)
            match = await self._semantic_lookup(call)
            if match is not None:
                book.complete(call, match.response, cache_hit=True, match=match)
                await self._settle(call)
                answer = self._restore(call, match.response)
                return ChatResult(answer, True, call.trace.trace_id, match.similarity)
            await self._retrieve(call)
            if call.retrieval is not None:
                self._privacy(call)
            self._guard_setup(call)
            self._fit(call)
            with call.trace.span("route", attributes={GenAI.REQUEST_MODEL: request.model}) as span:
                response = await self.router.chat(
                    call.route, call.request, call.trace, span, call.outcome, later=book.later
                )
            if call.citations is not None:
                # An extra top-level field of the answer (the model keeps unknown fields).
                response.citations = call.citations  # type: ignore[attr-defined]
            self._ensure_usage(call, response)
            # What the checks let through, placeholders kept, is cached and traced; the
            # caller gets it with the placeholders restored.
            response = self._check_output(call, response)
            answer = self._restore(call, response)
            await self._remember(call, answer)
            await self._cache_store(call, response)
            book.complete(call, response, cache_hit=False)
            cost = book.cost(call, response)
            await self._settle(call, response, cost)
            return ChatResult(answer, False, call.trace.trace_id, cost=cost)
        except BaseException as exc:
            book.fail(call, exc)
            await self._settle(call)
            raise

    async def chat_stream(self, request: ChatRequest, caller: Caller | None = None) -> StreamResult:
        """Start a stream. Everything up to the first chunk happens here, so failures
        before it surface as ordinary errors; later ones end the stream with an error."""
        book = self.book
        call = self._begin(request, caller or Caller(), "chat")
        try:
            await self._admit(call)
            await self._guard_input(call)
            await self._memory(call)
            if call.retrieval is None:
                self._privacy(call)
            cached = await self._cache_lookup(call)
            if cached is not None:
                book.complete(call, cached, cache_hit=True)
                await self._settle(call)
                answer = self._restore(call, cached)
                return StreamResult(replay(answer, request), True, call.trace.trace_id)
            match = await self._semantic_lookup(call)
            if match is not None:
                book.complete(call, match.response, cache_hit=True, match=match)
                await self._settle(call)
                return StreamResult(
                    replay(self._restore(call, match.response), request),
                    True,
                    call.trace.trace_id,
                    match.similarity,
                )
            await self._retrieve(call)
            if call.retrieval is not None:
                self._privacy(call)
            self._guard_setup(call)
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
            book.fail(call, exc)
            await self._settle(call)
            raise
        return StreamResult(relay(self, call, upstream, route_span), False, call.trace.trace_id)

    # --- stages -----------------------------------------------------------------

    def _begin(self, request: ChatRequest, caller: Caller, operation: str) -> Call:
        trace = Trace(kind=operation, name=f"{operation} {request.model}")
        root = trace.root
        assert root is not None
        if caller.auth_start_ns is not None:
            root.start_ns = caller.auth_start_ns  # its span is added by Bookkeeper.describe
        call = Call(
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
            self.book.fail(call, exc)
            raise
        self.book.later(self.book.describe, call)
        return call

    # --- privacy and output guard (trellis.guard) ----------------------------------

    def _privacy(self, call: Call) -> None:
        """The privacy policies of the plan's deployments on the request's PII: pass it,
        put placeholders in (``redact``), keep only in-house deployments (``route``) or
        refuse it (``block``, 400 ``pii_detected``). The trace gets the kinds and counts;
        its copy of the messages gets placeholders, never the values."""
        route = call.route
        decision = privacy.decide(
            call.request.messages, [(t.alias, t.deployment) for t in route.plan]
        )
        if not decision.found:
            return
        found = decision.found
        kinds = sorted(found)
        with call.trace.span("privacy") as span:
            span.set("trellis.privacy.action", decision.action)
            span.set("trellis.privacy.kinds", kinds)
            span.set("trellis.privacy.values", sum(found.values()))
            for kind in kinds:
                span.set(f"trellis.privacy.count.{kind}", found[kind])
            call.trace.summary["pii_kinds"] = kinds
            view = Placeholders(decision.redact_kinds if decision.action == "redact" else None)
            view.reserve(privacy.message_texts(call.request.messages))
            if decision.action == "redact":
                messages = privacy.redact_messages(call.request.messages, view)
                call.request = call.request.model_copy(update={"messages": messages})
                call.placeholders = view
                span.set("trellis.privacy.placeholders", sum(view.counts.values()))
            self._scrub_trace(call, view)
            named = ", ".join(kinds)
            if decision.action == "block":
                raise PiiDetectedError(
                    f"The request holds personal data or secrets ({named}) that the privacy "
                    f"policy of `{route.alias.name}` does not let leave.",
                    param="messages",
                )
            if len(decision.keep) < len(route.plan):
                skipped = [t.label for i, t in enumerate(route.plan) if i not in decision.keep]
                span.add_event("privacy_route", skipped=skipped)
                if not decision.keep:
                    raise PiiDetectedError(
                        f"The request holds personal data or secrets ({named}) that may only "
                        f"go to an in-house deployment, and `{route.alias.name}` has none.",
                        param="messages",
                    )
                call.route = Route(alias=route.alias, plan=[route.plan[i] for i in decision.keep])
            if decision.action == "route":
                call.uncacheable = True  # the values stay out of the caches too

    def _scrub_trace(self, call: Call, view: Placeholders) -> None:
        """From now on the trace records messages through ``view``; what it holds
        already (the request's messages, a retrieval query) is rewritten."""
        _set_trace_view(call, lambda messages: privacy.redact_messages(messages, view))
        for span in call.trace.spans:
            query = span.attributes.get("trellis.retrieval.query")
            if isinstance(query, str):
                span.attributes["trellis.retrieval.query"] = view.redact(query)

    def _guard_setup(self, call: Call) -> None:
        """The alias's guards: a canary token in the system prompt (after the cache
        lookup: it is new on every request) and the output checks of this call."""
        guard = call.route.alias.guard
        if guard is None:
            return
        if guard.canary:
            call.canary = new_canary()
            messages = with_canary(call.request.messages, call.canary)
            call.request = call.request.model_copy(update={"messages": messages})
            call.trace.root.set("trellis.guard.canary", True)  # type: ignore[union-attr]
        settings = guard.output or (OutputGuard() if guard.canary else None)
        if settings is None:
            return
        check = OutputCheck(settings, call.canary, wants_json(call.request.response_format))
        if check.active:
            call.output = check

    def _check_output(self, call: Call, response: ChatResponse) -> ChatResponse:
        """A whole answer through the output checks: the same one when they change
        nothing, a redacted copy, or ``OutputBlockedError``."""
        check = call.output
        if check is None:
            return response
        try:
            changed: dict[int, str] = {}
            for i, choice in enumerate(response.choices):
                content = choice.message.content
                if isinstance(content, str):
                    guarded = check.text(content)
                    if guarded != content:
                        changed[i] = guarded
        finally:
            self._output_record(call)
        if not changed:
            return response
        copy = response.model_copy(deep=True)
        for i, guarded in changed.items():
            copy.choices[i].message.content = guarded
        return copy

    def _output_record(self, call: Call) -> None:
        """What the output checks found, on the trace: ``check:kind`` and action counts."""
        check = call.output
        if check is None or not check.hits:
            return
        root = call.trace.root
        assert root is not None
        root.set("trellis.guard.output.hits", sorted(check.hits))
        for action, count in check.actions.items():
            root.set(f"trellis.guard.output.{action}", count)
        call.trace.summary["guard_output"] = dict(check.actions)

    @staticmethod
    def _restore(call: Call, response: ChatResponse) -> ChatResponse:
        """The answer the caller gets: this request's placeholders back to the values."""
        placeholders = call.placeholders
        if not placeholders:
            return response
        copy = response.model_copy(deep=True)
        for choice in copy.choices:
            message = choice.message
            if isinstance(message.content, str):
                message.content = placeholders.restore(message.content)
            for tool_call in message.tool_calls or ():
                tool_call.function.arguments = placeholders.restore(tool_call.function.arguments)
        return copy

    async def _admit(self, call: Call) -> None:
        """Admit the call under its key's and project's limits, or refuse it (429) before
        anything is spent. Tokens are estimated only when a tokens-per-minute limit applies."""
        limiter = self.limiter
        if limiter is None:
            return
        request = call.request
        caller = call.caller

        def estimate() -> int:
            output = request.output_limit or limiter.settings.output_tokens_estimate
            return self.counter.messages(request.messages) + output

        with call.trace.span("admit") as span:
            call.admission = await limiter.admit(caller.key_id, caller.project, estimate)
            if call.admission is not None:
                span.set("trellis.limits.subjects", [s.name for s in call.admission.subjects])
                span.set("trellis.limits.estimated_tokens", call.admission.tokens)
                caller.rate_limit_headers = call.admission.headers

    async def _settle(
        self, call: Call, response: ChatResponse | None = None, cost: float = 0.0
    ) -> None:
        """Reconcile the admission with what the call used: the provider's tokens and the
        cost of an answer; nothing for a cached answer or a failure. Releases its slot."""
        if call.admission is None or self.limiter is None:
            return
        usage = response.usage if response is not None else None
        tokens = (usage.prompt_tokens + usage.completion_tokens) if usage is not None else 0
        await self.limiter.settle(call.admission, tokens, cost)

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

    async def _cache_lookup(self, call: Call) -> ChatResponse | None:
        # Grounded answers are never cached: they must follow the collections as they change;
        # nor are session answers: they follow the stored conversation.
        if (
            self.cache is None
            or call.request.n not in (None, 1)
            or call.retrieval is not None
            or call.session is not None
            or call.uncacheable
        ):
            return None
        opted_in = bool(call.route.alias.cache) or bool(getattr(call.caller.key, "cache", False))
        if not ResponseCache.cacheable(call.request, opted_in=opted_in):
            return None
        call.cache_key = self.cache.key(
            call.route.alias.name, call.request, call.caller.key_id, call.caller.project_id
        )
        if call.caller.no_cache:
            return None
        with call.trace.span("cache_lookup") as span:
            cached = await self.cache.get(call.cache_key)
            span.set("trellis.cache.hit", cached is not None)
        return cached

    def _semantic_wanted(self, call: Call) -> bool:
        """Whether this request may use the semantic cache at all (before any embedding).

        Grounded requests are excluded, like in the exact cache: their answer follows the
        collections as they change, and a cached answer's citations may name chunks that
        have since been deleted. ``trellis.semantic_cache`` decides when given; otherwise
        the exact cache's rule applies (deterministic, or opted in by alias, key or
        ``trellis.cache``), because reusing a sampled answer changes what the caller asked for.
        """
        if (
            self.semantic_cache is None
            or call.retrieval is not None
            or call.session is not None
            or call.uncacheable
        ):
            return False
        if call.caller.no_cache and call.caller.no_store:
            return False
        options = call.request.trellis
        if options is not None and options.semantic_cache is not None:
            return options.semantic_cache
        opted_in = bool(call.route.alias.cache) or bool(getattr(call.caller.key, "cache", False))
        return ResponseCache.cacheable(call.request, opted_in=opted_in)

    async def _semantic_lookup(self, call: Call) -> SemanticMatch | None:
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
        scope = semantic.scope(
            call.route.alias.name,
            call.request,
            call.caller.key_id,
            system,
            call.caller.project_id,
        )
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

    # --- prompt-injection guard ---------------------------------------------------

    def guard_stage(self, alias: Any, where: str, project_id: str | None = None) -> GuardStage:
        """The guard stage for ``where`` (input, retrieved, tool_outputs): the alias's
        override when it sets one, else the project's, else the server's."""
        override = getattr(getattr(alias, "guard", None), where, None)
        if override is not None:
            return override
        if project_id is not None and self.project_guard is not None:
            override = getattr(self.project_guard(project_id), where, None)
            if override is not None:
                return override
        if where == "input":
            return self.guard.input
        stage: GuardStage = getattr(self.guard.untrusted, where)
        return stage

    def injection_detector(self) -> InjectionDetector:
        """The prompt-injection classifier (the shipped weights unless one was given)."""
        if self.detector is None:
            self.detector = default_detector()
        return self.detector

    async def score_injection(self, text: str, threshold: float) -> Verdict:
        """The injection classifier's verdict on ``text``: inline when short, in a worker
        thread when long (about a millisecond per 1,000 characters), so the event loop is
        not held up. The gateway's stage, ``POST /v1/guard/check`` and the UI all use it."""
        detector = self.injection_detector()
        if len(text) > _GUARD_INLINE_CHARS:
            return await asyncio.to_thread(detector.check, text, threshold)
        return detector.check(text, threshold)

    async def _guard_input(self, call: Call) -> None:
        """Screen what the caller sent: user messages (``guard.input``) and tool results
        (``guard.untrusted.tool_outputs``). Flagged: recorded on the trace (alertable as
        ``guard_flags``); blocked: 400 ``prompt_injection_detected`` before any model,
        cache or memory sees the text."""
        alias = call.route.alias
        stages = {
            "user": self.guard_stage(alias, "input", call.caller.project_id),
            "tool": self.guard_stage(alias, "tool_outputs", call.caller.project_id),
        }
        if all(stage.mode == "off" for stage in stages.values()):
            return
        worst: tuple[Verdict, GuardStage, str, int] | None = None
        with call.trace.span("guard") as span:
            for index, message in enumerate(call.received.messages):
                stage = stages.get(message.role)
                if stage is None or stage.mode == "off":
                    continue
                text = message_text(message)
                if not text.strip():
                    continue
                verdict = await self.score_injection(text, stage.threshold)
                if worst is None or verdict.score > worst[0].score:
                    worst = (verdict, stage, message.role, index)
            if worst is None:
                return
            verdict, stage, role, index = worst
            span.set("trellis.guard.score", verdict.score)
            span.set("trellis.guard.flagged", verdict.flagged)
            span.set("trellis.guard.mode", stage.mode)
            span.set("trellis.guard.threshold", stage.threshold)
            if not verdict.flagged:
                return
            span.set("trellis.guard.categories", verdict.categories)
            span.set("trellis.guard.message_index", index)
            source = "input" if role == "user" else "tool_outputs"
            self._record_flag(call, verdict, stage, source)
            if stage.mode == "block":
                self._withhold_from_trace(call, index)
                raise InvalidRequestError(
                    f"The request was refused: message {index} ({role}) looks like a prompt "
                    f"injection or jailbreak (score {verdict.score:.2f}, categories: "
                    f"{', '.join(verdict.categories)}).",
                    param=f"messages[{index}]",
                    code="prompt_injection_detected",
                )

    @staticmethod
    def _withhold_from_trace(call: Call, index: int) -> None:
        """A blocked message never reaches the trace: its copy there says it was withheld
        (the score, categories and message index stay on the ``guard`` span)."""

        def without_blocked(messages: list[Any]) -> list[Any]:
            return [
                m.model_copy(update={"content": BLOCKED_MESSAGE, "tool_calls": None})
                if i == index and isinstance(m, ChatMessage)
                else m
                for i, m in enumerate(messages)
            ]

        _set_trace_view(call, without_blocked)

    @staticmethod
    def _record_flag(call: Call, verdict: Verdict, stage: GuardStage, source: str) -> None:
        """Put a flag on the trace: the summary attribute alerts count, and an event."""
        summary = call.trace.summary
        summary["guard_flagged"] = True
        summary["guard_score"] = max(float(summary.get("guard_score", 0.0)), verdict.score)
        root = call.trace.root
        assert root is not None
        root.add_event(
            "guard_flagged",
            source=source,
            action=stage.mode,
            score=verdict.score,
            categories=verdict.categories,
        )

    def _screen_passages(
        self, call: Call, passages: list[grounding.Passage], span: Any
    ) -> list[grounding.Passage]:
        """Screen retrieved passages (``guard.untrusted.retrieved``): a flagged passage is
        recorded, and withheld from the prompt in ``block`` mode (the caller did nothing
        wrong, so the request goes on with the rest)."""
        stage = self.guard_stage(call.route.alias, "retrieved", call.caller.project_id)
        if stage.mode == "off" or not passages:
            return passages
        detector = self.injection_detector()
        kept: list[grounding.Passage] = []
        flagged: list[int] = []
        best = 0.0
        for passage in passages:
            verdict = detector.check(passage.text, stage.threshold)
            best = max(best, verdict.score)
            if verdict.flagged:
                flagged.append(passage.chunk_id)
                self._record_flag(call, verdict, stage, "retrieved")
                if stage.mode == "block":
                    continue
            kept.append(passage)
        span.set("trellis.guard.score", best)
        if flagged:
            span.set("trellis.guard.flagged_chunk_ids", flagged)
            if stage.mode == "block":
                span.set("trellis.guard.withheld", len(flagged))
        return kept

    async def _retrieve(self, call: Call) -> None:
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
        # Collection names are a project's own: the request's are the caller's project's
        # (the built-in admin spanning projects: the default project's), an alias's the
        # default project's; another project's collection of the same name is never
        # reached. (The built-in admin spanning projects is not pre-checked: the search
        # itself answers an unknown name.)
        project_id = plan.project_id or call.caller.project_id
        if self.has_collection is not None and not call.caller.all_projects:
            for name in plan.collections:
                if not await self.has_collection(project_id, name):
                    raise NotFoundError(
                        f"no collection named {name!r}", param="trellis.collections"
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
            if self.book.store_bodies:
                span.set("trellis.retrieval.query", query)
            failure: dict[str, Any] | None = None
            passages: list[grounding.Passage] = []
            if not query:
                failure = {"reason": "no_query"}
            else:
                try:
                    passages = await self.retriever.retrieve(
                        plan.collections, query, plan.top_k, project_id
                    )
                except RequestError:
                    raise
                except Exception as exc:  # any backend fault: record it, answer ungrounded
                    log.warning("retrieval failed for %s: %r", list(plan.collections), exc)
                    failure = {"reason": "error", "error.type": type(exc).__name__}
                    failure["error.message"] = str(exc)[:500]
            if failure is None and not passages:
                failure = {"reason": "no_hits"}
            hits = len(passages)
            passages = self._screen_passages(call, passages, span)
            if failure is None and not passages:
                failure = {"reason": "guard_withheld"}
            budget = max(1, call.route.alias.context_window // 2)
            message, used = grounding.context_message(
                passages,
                lambda text: self.counter.text(text) <= budget,
                spotlight=self.guard.untrusted.spotlight,
            )
            if failure is None and not used:
                failure = {"reason": "context_too_small"}
            span.set("trellis.retrieval.hits", hits)
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

    async def _memory(self, call: Call) -> None:
        """What Trellis remembers for this call: the stored conversation, then the user's
        long-term memories."""
        await self._session(call)
        self._memory_options(call)
        await self._recall(call)

    def _memory_options(self, call: Call) -> None:
        """Whose memories this call uses and whether it extracts new ones; a request that
        asks for extraction the server cannot do is refused before any model call."""
        options = call.request.trellis
        user = (options.user_id if options is not None else None) or call.request.user
        call.memory_user = user or None
        asked = options.extract_wanted if options is not None else None
        if asked:
            if self.extractor is None or self.extract == "off":
                why = "turned off (memory.extract)" if self.extractor else "not available"
                raise UnsupportedFeatureError(
                    f"memory extraction is {why} on this server",
                    param="trellis.memories.extract",
                )
            if not user:
                raise InvalidRequestError(
                    "memory extraction needs a user: set `user` or `trellis.user_id`",
                    param="trellis.memories.extract",
                )
        call.extract = bool(
            user
            and self.extractor is not None
            and (asked if asked is not None else self.extract == "always")
        )

    async def _recall(self, call: Call) -> None:
        """Put the user's memories most relevant to the last user message in a system
        message. A recall that fails is a ``memory_recall_failure`` event, not an error."""
        options = call.request.trellis
        user = call.memory_user
        wanted = options.recall_wanted if options is not None else None
        if self.memories is None or not user or wanted is False:
            return
        query = grounding.retrieval_query(call.request.messages)
        with call.trace.span("recall", attributes={"trellis.memory.user": user}) as span:
            try:
                found = await self.memories.recall(call.caller.key_id or "", user, query)
            except Exception as exc:  # the embedder or the database broke: answer without
                log.warning("memory recall failed: %r", exc)
                span.add_event("memory_recall_failure", **{"error.type": type(exc).__name__})
                return
            span.set("trellis.memory.ids", [m.id for m in found])
            span.set("trellis.memory.scores", [round(m.score, 4) for m in found])
            if found:
                messages = grounding.with_context(call.request.messages, memory_message(found))
                call.request = call.request.model_copy(update={"messages": messages})

    async def _session(self, call: Call) -> None:
        """Continue a stored conversation: put its earlier turns (and the running summary
        of compressed ones) before the request's new messages. Compression is a traced
        ``session_summary`` event, never a silent drop."""
        options = call.request.trellis
        if options is None or options.session_id is None:
            return
        if self.sessions is None:
            raise UnsupportedFeatureError(
                "sessions are not available in this gateway", param="trellis.session_id"
            )
        key = SessionKey(call.caller.key_id or "", options.session_id)
        alias = call.route.alias
        with call.trace.span("session", attributes={"trellis.session.id": key.session_id}) as span:
            history = await self.sessions.history(
                key,
                call.request.messages,
                model=alias.name,
                budget=alias.context_window - (call.request.output_limit or 0),
                count=self.counter.messages,
                caller=call.caller,
            )
            call.session = key
            span.set("trellis.session.stored_messages", history.stored_messages)
            span.set("trellis.session.summarized", history.summarized)
            if history.stored_messages or history.summarized:
                call.request = call.request.model_copy(update={"messages": history.messages})
            if history.compression is not None:
                event = {k: v for k, v in asdict(history.compression).items() if v is not None}
                span.add_event("session_summary", **event)
                call.trace.root.add_event("session_summary", **event)  # type: ignore[union-attr]

    async def _remember(self, call: Call, response: ChatResponse) -> None:
        """Store the exchange (the request's new messages and the answer) in its session,
        and queue the turn for memory extraction when the call asked for it."""
        if call.extract and response.choices:
            self._queue_extraction(call)
        if (
            call.session is None
            or self.sessions is None
            or not response.choices
            or not call.caller.session_record
        ):
            return
        new = [m for m in call.received.messages if m.role not in ("system", "developer")]
        answer = response.choices[0].message
        reply = ChatMessage(role="assistant", content=answer.content, tool_calls=answer.tool_calls)
        with call.trace.span("session_store"):
            await self.sessions.record(call.session, [*new, reply], trace_id=call.trace.trace_id)

    def _queue_extraction(self, call: Call) -> None:
        """Hand the user's turn to the background extractor: the answer does not wait for
        it. The request's trace names the extraction's trace, or says it was dropped."""
        extractor, user = self.extractor, call.memory_user
        assert extractor is not None and user is not None
        messages = call.received.messages
        last = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
        if last is None:
            return
        # The user's message, after the assistant message it answers (if any): "yes, I
        # did" is a fact only with its question.
        turn = [m for m in messages[max(0, last - 1) : last + 1] if m.role in ("user", "assistant")]
        job = ExtractionJob(
            owner=call.caller.key_id or "",
            user_id=user,
            messages=tuple(turn),
            model=call.route.alias.name,
            caller=Caller(key=call.caller.key),
            request_trace_id=call.trace.trace_id,
            trace_id=new_trace_id(),
        )
        queued = extractor.submit(job)
        root = call.trace.root
        assert root is not None
        root.add_event("memory_extraction", trace_id=job.trace_id, queued=queued)

    def _fit(self, call: Call) -> None:
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

    def _ensure_usage(self, call: Call, response: ChatResponse) -> None:
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

    async def _cache_store(self, call: Call, response: ChatResponse) -> None:
        if call.caller.no_store or call.uncacheable:
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
        trace.summary.update(
            model=request.model, key_id=caller.key_id, project_id=caller.project_id
        )
        outcome = Outcome()
        admission = None
        try:
            with trace.span("authorize"):
                route = self._authorize(caller, request.model, "embedding")
                try:
                    texts = request.texts()
                except ValueError as exc:
                    raise InvalidRequestError(str(exc), param="input") from None
            if self.limiter is not None:
                with trace.span("admit"):
                    admission = await self.limiter.admit(
                        caller.key_id,
                        caller.project,
                        lambda: sum(self.counter.text(t) for t in texts),
                    )
                if admission is not None:
                    caller.rate_limit_headers = admission.headers
            with trace.span("route") as span:
                result = await self.router.embed(
                    route, texts, request.dimensions, trace, span, outcome
                )
            prompt_tokens = result.prompt_tokens or sum(self.counter.text(t) for t in texts)
            data = [
                EmbeddingData(index=i, embedding=_encode(vector, request.encoding_format))
                for i, vector in enumerate(result.vectors)
            ]
            self.book.finish_embeddings(trace, outcome, result.model, prompt_tokens, len(texts))
            if admission is not None and self.limiter is not None and outcome.target is not None:
                cost = self.book.prices.cost(
                    outcome.target.deployment, Usage(prompt_tokens=prompt_tokens), result.model
                )
                await self.limiter.settle(admission, prompt_tokens, cost.total)
            return EmbeddingResponse(
                data=data,
                model=result.model,
                usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
            )
        except BaseException as exc:
            self.book.fail_embeddings(trace, outcome, exc)
            if self.limiter is not None:
                await self.limiter.settle(admission, 0, 0.0)
            raise

    async def aclose(self) -> None:
        await self.router.aclose()
        if self.limiter is not None:
            await self.limiter.aclose()
        if self.cache is not None:
            await self.cache.aclose()


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector

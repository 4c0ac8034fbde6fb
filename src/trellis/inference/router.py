"""Model aliases to deployments: ordering, retries, breakers, fallbacks and timeouts.

For one request the router builds a plan — the alias's deployments in routing
order, then each fallback alias's — and walks it. On a deployment it retries
retryable failures (429, 5xx, timeouts, connection errors) with exponential
backoff and full jitter, honouring ``Retry-After``; a non-retryable upstream
failure moves on at once; the caller's own mistake stops everything. Only
failures that say a deployment is unhealthy (``UpstreamError.deployment_fault``)
count toward its circuit breaker, so no request, however bad, can open it for
everyone. Every attempt is a span on the trace.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from trellis.errors import (
    NoDeploymentAvailableError,
    NotFoundError,
    ProviderHTTPError,
    RequestError,
    UpstreamError,
    UpstreamTimeoutError,
)
from trellis.inference.breaker import BreakerState, CircuitBreaker
from trellis.inference.providers import EmbeddingResult, Provider, build_provider
from trellis.observe.tracing import GenAI, Span, Trace
from trellis.schema import ChatChunk, ChatRequest, ChatResponse
from trellis.settings import BreakerSettings, Deployment, ModelAlias, RetrySettings

__all__ = ["Router", "Route", "Target", "Outcome"]

T = TypeVar("T")

#: Upstream statuses that mean the request itself is wrong: no other deployment will accept it.
_CALLERS_FAULT = {400, 413, 422}


@dataclass(slots=True)
class Target:
    """One deployment with its live state."""

    alias: ModelAlias
    deployment: Deployment
    provider: Provider
    breaker: CircuitBreaker
    ewma_ms: float | None = None
    #: ``deployment.label`` and the fixed attributes of its attempt spans, worked out
    #: once (they are on every request's path).
    label: str = field(init=False)
    span_attributes: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.label = self.deployment.label
        self.span_attributes = {
            GenAI.PROVIDER: self.provider.system,
            GenAI.REQUEST_MODEL: self.deployment.model,
            "trellis.deployment": self.label,
            "trellis.alias": self.alias.name,
        }

    def observe_latency(self, millis: float, alpha: float = 0.3) -> None:
        self.ewma_ms = (
            millis if self.ewma_ms is None else alpha * millis + (1 - alpha) * self.ewma_ms
        )


@dataclass(slots=True)
class Outcome:
    """What the router did for one request, for the trace summary and the caller."""

    target: Target | None = None
    attempts: int = 0
    retries: int = 0
    fallbacks: int = 0
    ttft_ms: float | None = None
    tried: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Route:
    """A resolved alias: its targets, in the order this request will try them."""

    alias: ModelAlias
    plan: list[Target]


class _DeadlinePassed(Exception):
    """Inside ``Router._walk``: the request's deadline, not the attempt's, cut the call."""


def _callers_fault(exc: BaseException) -> bool:
    if isinstance(exc, RequestError):
        return True
    return isinstance(exc, ProviderHTTPError) and exc.upstream_status in _CALLERS_FAULT


class Router:
    def __init__(
        self,
        aliases: list[ModelAlias],
        *,
        retry: RetrySettings | None = None,
        breaker: BreakerSettings | None = None,
        provider_factory: Callable[[Deployment], Provider] = build_provider,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retry = retry or RetrySettings()
        breaker_settings = breaker or BreakerSettings()
        self._rng = rng or random.Random()
        self._sleep = sleep
        self.aliases: dict[str, ModelAlias] = {alias.name: alias for alias in aliases}
        self.targets: dict[str, list[Target]] = {}
        providers: dict[str, Provider] = {}
        for alias in aliases:
            targets = []
            for deployment in alias.deployments:
                key = deployment.model_dump_json()
                if key not in providers:  # one connection pool per distinct deployment
                    providers[key] = provider_factory(deployment)
                targets.append(
                    Target(
                        alias=alias,
                        deployment=deployment,
                        provider=providers[key],
                        breaker=CircuitBreaker(
                            breaker_settings.failure_threshold, breaker_settings.reset_after, clock
                        ),
                    )
                )
            self.targets[alias.name] = targets
        self._providers = list(providers.values())
        #: Routes whose order never changes (every alias on them has one deployment or
        #: ordered routing), built once instead of on every request. Never mutated.
        self._static_routes: dict[str, Route] = {}
        for name in self.aliases:
            names = self._plan_aliases(name)
            if all(n in self.aliases and self._static(self.aliases[n]) for n in names):
                self._static_routes[name] = self._build_route(name, names)

    # --- planning -----------------------------------------------------------

    def alias(self, name: str) -> ModelAlias:
        try:
            return self.aliases[name]
        except KeyError:
            raise NotFoundError(
                f"The model `{name}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            ) from None

    def route(self, name: str) -> Route:
        static = self._static_routes.get(name)
        if static is not None:
            return static
        self.alias(name)  # 404 for an unknown alias
        return self._build_route(name, self._plan_aliases(name))

    def _plan_aliases(self, name: str) -> list[str]:
        """``name`` then its fallback aliases, each once (settings check they exist)."""
        return list(dict.fromkeys([name, *self.aliases[name].fallbacks]))

    def _static(self, alias: ModelAlias) -> bool:
        """Whether ``alias`` tries its deployments in the same order on every request."""
        return alias.routing == "ordered" or len(self.targets[alias.name]) == 1

    def _build_route(self, name: str, names: list[str]) -> Route:
        plan: list[Target] = []
        for alias_name in names:
            plan.extend(self._ordered(self.aliases[alias_name]))
        return Route(alias=self.aliases[name], plan=plan)

    def _ordered(self, alias: ModelAlias) -> list[Target]:
        targets = self.targets[alias.name]
        if self._static(alias):
            return list(targets)
        if alias.routing == "latency":
            # Unmeasured deployments first (so every one gets measured), then fastest EWMA.
            return sorted(targets, key=lambda t: (t.ewma_ms is not None, t.ewma_ms or 0.0))
        # Weighted random order without replacement (Efraimidis–Spirakis keys).
        keyed = [(self._rng.random() ** (1.0 / t.deployment.weight), t) for t in targets]
        keyed.sort(key=lambda pair: pair[0], reverse=True)
        return [t for _, t in keyed]

    # --- backoff ------------------------------------------------------------

    def backoff(self, attempt: int, error: UpstreamError) -> float | None:
        """Seconds to wait before retry ``attempt`` (1-based), or None to move on instead."""
        base = min(self.retry.backoff_max, self.retry.backoff_initial * 2 ** (attempt - 1))
        delay = self._rng.uniform(base / 2, base)
        if error.retry_after is not None:
            if error.retry_after > self.retry.max_retry_after:
                return None  # the upstream wants a long pause: try elsewhere now
            delay = max(delay, error.retry_after)
        return delay

    # --- the walk -----------------------------------------------------------

    async def _walk(
        self,
        route: Route,
        trace: Trace,
        parent: Span,
        operation: str,
        call: Callable[[Target, Span, float | None], Awaitable[T]],
        outcome: Outcome,
        keep_open: bool = False,
    ) -> T:
        """Try the plan's targets in order, with retries, until one answers. ``call``
        gets the attempt's deadline when it can keep it (``Provider.honours_deadline``;
        never for a stream, whose deadline covers only its first chunk), else None and
        the attempt runs in a timeout scope."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry.request_timeout
        last_error: UpstreamError | None = None
        previous: Target | None = None
        for target in route.plan:
            if not target.breaker.allow():
                parent.add_event(
                    "breaker_skip",
                    deployment=target.label,
                    state=target.breaker.state.value,
                )
                continue
            if previous is not None:
                outcome.fallbacks += 1
                parent.add_event("fallback", **{"from": previous.label, "to": target.label})
            previous = target
            outcome.tried.append(target.label)
            for attempt in range(1, self.retry.attempts + 1):
                outcome.attempts += 1
                span = trace.start_span(
                    f"{operation} {target.deployment.model}",
                    parent,
                    {
                        GenAI.OPERATION: operation,
                        **target.span_attributes,
                        "trellis.attempt": attempt,
                    },
                )
                started = time.perf_counter()
                try:
                    # One deadline bounds both the attempt and the whole request.
                    attempt_deadline = loop.time() + target.deployment.timeout
                    bound = min(deadline, attempt_deadline)
                    try:
                        if not keep_open and target.provider.honours_deadline:
                            result = await call(target, span, bound)
                        else:
                            async with asyncio.timeout_at(bound):
                                result = await call(target, span, None)
                    except TimeoutError:
                        if attempt_deadline < deadline:
                            raise UpstreamTimeoutError(
                                f"{target.label} did not answer within "
                                f"{target.deployment.timeout:g}s",
                                provider=target.provider.system,
                            ) from None
                        raise _DeadlinePassed from None
                except _DeadlinePassed:
                    error = self._request_timeout()
                    span.record_error(error)
                    span.end()
                    target.breaker.release()
                    raise error from None
                except UpstreamError as exc:
                    span.record_error(exc)
                    span.set("http.response.status_code", exc.upstream_status)
                    span.end()
                    if _callers_fault(exc):
                        target.breaker.release()
                        raise
                    last_error = exc
                    if not exc.deployment_fault:
                        # Failed on this request (or a redirect: its base_url is wrong),
                        # not unhealthy: another deployment may take it, but the breaker
                        # (shared by every caller) never hears of it.
                        target.breaker.release()
                    elif target.breaker.record_failure():
                        parent.add_event("breaker_open", deployment=target.label)
                    if not exc.retryable or attempt == self.retry.attempts:
                        break
                    if not target.breaker.allow():
                        break
                    delay = self.backoff(attempt, exc)
                    if delay is None:
                        break
                    if loop.time() + delay >= deadline:
                        raise self._request_timeout() from exc
                    outcome.retries += 1
                    parent.add_event(
                        "retry",
                        deployment=target.label,
                        attempt=attempt,
                        delay_s=round(delay, 3),
                        error=type(exc).__name__,
                    )
                    await self._sleep(delay)
                    continue
                except RequestError:
                    target.breaker.release()
                    span.status = "error"
                    span.end()
                    raise
                target.breaker.record_success()
                target.observe_latency((time.perf_counter() - started) * 1000)
                if not keep_open:  # a stream's attempt span ends with the stream
                    span.end()
                outcome.target = target
                return result
        if last_error is None:
            raise NoDeploymentAvailableError(
                f"no deployment of `{route.alias.name}` is available (circuit breakers open)",
                retryable=False,
            )
        if outcome.attempts > 1 and not isinstance(last_error, NoDeploymentAvailableError):
            last_error.message = f"{last_error.message} (after {outcome.attempts} attempts)"
            last_error.args = (last_error.message,)
        raise last_error

    def _request_timeout(self) -> UpstreamTimeoutError:
        """The request's own deadline passed: nothing more may be tried."""
        return UpstreamTimeoutError(
            f"request did not finish within {self.retry.request_timeout:g}s", retryable=False
        )

    # --- operations ---------------------------------------------------------

    async def chat(
        self,
        route: Route,
        request: ChatRequest,
        trace: Trace,
        parent: Span,
        outcome: Outcome,
        *,
        later: Callable[..., None] | None = None,
    ) -> ChatResponse:
        """The first answer the plan gets. ``later`` runs the bookkeeping that records the
        answer on the attempt's span (the gateway defers it past the answer); inline
        without it."""

        async def call(target: Target, span: Span, deadline: float | None) -> ChatResponse:
            response = await target.provider.chat(request, deadline=deadline)
            if later is None:
                _record_completion(span, response)
            else:
                later(_record_completion, span, response)
            return response

        return await self._walk(route, trace, parent, "chat", call, outcome)

    async def stream(
        self, route: Route, request: ChatRequest, trace: Trace, parent: Span, outcome: Outcome
    ) -> AsyncIterator[ChatChunk]:
        """Chunks of the first deployment that produced one: failures before the first
        chunk are retried or fall back; a failure after it propagates to the caller."""
        started = time.perf_counter()

        async def first_chunk(
            target: Target, span: Span, _deadline: float | None
        ) -> tuple[Span, ChatChunk, Any]:
            iterator = target.provider.stream(request).__aiter__()
            try:  # _walk bounds the wait for the first chunk by the attempt's timeout
                chunk = await anext(iterator)
            except StopAsyncIteration:
                raise UpstreamError(
                    f"{target.label} ended the stream without data",
                    provider=target.provider.system,
                ) from None
            except BaseException:
                await _close(iterator)
                raise
            return span, chunk, iterator

        span, chunk, iterator = await self._walk(
            route, trace, parent, "chat", first_chunk, outcome, keep_open=True
        )
        outcome.ttft_ms = (time.perf_counter() - started) * 1000
        span.set(GenAI.TTFT, outcome.ttft_ms / 1000)
        return _follow(span, chunk, iterator)

    async def embed(
        self,
        route: Route,
        texts: list[str],
        dimensions: int | None,
        trace: Trace,
        parent: Span,
        outcome: Outcome,
    ) -> EmbeddingResult:
        async def call(target: Target, span: Span, deadline: float | None) -> EmbeddingResult:
            result = await target.provider.embed(texts, dimensions=dimensions, deadline=deadline)
            span.set(GenAI.RESPONSE_MODEL, result.model)
            span.set(GenAI.INPUT_TOKENS, result.prompt_tokens)
            return result

        return await self._walk(route, trace, parent, "embeddings", call, outcome)

    async def aclose(self) -> None:
        for provider in self._providers:
            await provider.aclose()

    def breaker_states(self) -> Iterator[tuple[str, str, BreakerState]]:
        """(alias, deployment label, breaker state) of every deployment, for the metrics."""
        for alias, targets in self.targets.items():
            for target in targets:
                yield alias, target.label, target.breaker.state

    def providers(self) -> list[tuple[Deployment, Provider]]:
        seen: dict[int, tuple[Deployment, Provider]] = {}
        for targets in self.targets.values():
            for target in targets:
                seen.setdefault(id(target.provider), (target.deployment, target.provider))
        return list(seen.values())


def _record_completion(span: Span, response: ChatResponse) -> None:
    _record_response(span, response.model, response.id, response.usage)
    span.set(GenAI.FINISH_REASONS, [c.finish_reason for c in response.choices])


def _record_response(span: Span, model: str | None, response_id: str | None, usage: Any) -> None:
    span.update(
        {
            GenAI.RESPONSE_MODEL: model,
            GenAI.RESPONSE_ID: response_id,
            GenAI.INPUT_TOKENS: usage.prompt_tokens if usage is not None else None,
            GenAI.OUTPUT_TOKENS: usage.completion_tokens if usage is not None else None,
        }
    )


async def _close(iterator: Any) -> None:
    closer = getattr(iterator, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except (UpstreamError, RuntimeError):
            return  # closing a broken stream may raise its own error; the first one is reported


async def _follow(span: Span, first: ChatChunk, iterator: Any) -> AsyncIterator[ChatChunk]:
    """Yield the rest of a started stream, recording the response on the attempt span."""
    usage = first.usage
    model = first.model
    yield first
    try:
        async for chunk in iterator:
            if chunk.usage is not None:
                usage = chunk.usage
            model = chunk.model or model
            yield chunk
    except UpstreamError as exc:
        span.record_error(exc)
        span.add_event("stream_interrupted", error=str(exc)[:500])
        raise
    finally:
        await _close(iterator)
        _record_response(span, model, first.id, usage)
        span.end()

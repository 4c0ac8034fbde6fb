"""The router against real loopback upstreams that fail the way providers do."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from trellis.errors import (
    InvalidRequestError,
    NoDeploymentAvailableError,
    NotFoundError,
    ProviderHTTPError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from trellis.inference.providers.openai_compat import OpenAICompatibleProvider
from trellis.inference.router import Outcome, Router
from trellis.observe.tracing import Trace
from trellis.schema import ChatRequest, ChatResponse
from trellis.settings import BreakerSettings, Deployment, ModelAlias, RetrySettings
from trellis.testing.fake_upstream import FakeUpstream, Fault


@pytest.fixture
def upstreams() -> Iterator[list[FakeUpstream]]:
    servers = [FakeUpstream(vendor="openai").start() for _ in range(3)]
    for index, server in enumerate(servers):
        server.reply = f"answer from upstream {index}"
    yield servers
    for server in servers:
        server.stop()


def deployment(upstream: FakeUpstream, **kwargs: object) -> Deployment:
    return Deployment(
        provider="openai-compatible",
        model=kwargs.pop("model", "gpt-test"),  # type: ignore[arg-type]
        base_url=upstream.base_url,
        timeout=kwargs.pop("timeout", 5.0),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


class Sleeps:
    """Records backoff delays instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_router(aliases: list[ModelAlias], **kwargs: object) -> tuple[Router, Sleeps]:
    sleeps = Sleeps()
    router = Router(
        aliases,
        retry=kwargs.pop("retry", RetrySettings(attempts=3, backoff_initial=0.1)),  # type: ignore[arg-type]
        breaker=kwargs.pop("breaker", BreakerSettings(failure_threshold=50)),  # type: ignore[arg-type]
        rng=random.Random(7),
        sleep=sleeps,
        **kwargs,  # type: ignore[arg-type]
    )
    return router, sleeps


def request(model: str = "m", **kwargs: object) -> ChatRequest:
    return ChatRequest(model=model, messages=[{"role": "user", "content": "hello there"}], **kwargs)  # type: ignore[list-item]


async def run_chat(router: Router, model: str = "m") -> tuple[str, Outcome, Trace]:
    trace = Trace(kind="chat", name="test")
    outcome = Outcome()
    response = await router.chat(router.route(model), request(model), trace, trace.root, outcome)  # type: ignore[arg-type]
    return response.choices[0].message.content or "", outcome, trace


async def test_retries_a_500_then_succeeds(upstreams: list[FakeUpstream]) -> None:
    up = upstreams[0]
    up.faults.push(Fault.status(500))
    router, sleeps = make_router([ModelAlias(name="m", deployments=[deployment(up)])])
    text, outcome, trace = await run_chat(router)
    assert text == "answer from upstream 0"
    assert (outcome.attempts, outcome.retries, outcome.fallbacks) == (2, 1, 0)
    assert len(up.requests) == 2
    assert len(sleeps.delays) == 1 and 0.05 <= sleeps.delays[0] <= 0.1
    attempts = [s for s in trace.spans if s.name == "chat gpt-test"]
    assert [s.status for s in attempts] == ["error", "ok"]
    assert attempts[0].attributes["http.response.status_code"] == 500
    assert attempts[1].attributes["gen_ai.provider.name"] == "openai"
    await router.aclose()


async def test_honours_retry_after_on_429(upstreams: list[FakeUpstream]) -> None:
    up = upstreams[0]
    up.faults.push(Fault.status(429, retry_after=2.5))
    router, sleeps = make_router([ModelAlias(name="m", deployments=[deployment(up)])])
    _, outcome, _ = await run_chat(router)
    assert outcome.retries == 1
    assert sleeps.delays == [2.5]
    await router.aclose()


async def test_long_retry_after_moves_to_the_next_deployment(upstreams: list[FakeUpstream]) -> None:
    slow, good = upstreams[0], upstreams[1]
    slow.faults.push(Fault.status(429, retry_after=3600))
    alias = ModelAlias(
        name="m", routing="ordered", deployments=[deployment(slow), deployment(good)]
    )
    router, sleeps = make_router([alias])
    text, outcome, _ = await run_chat(router)
    assert text == "answer from upstream 1"
    assert sleeps.delays == [] and outcome.fallbacks == 1
    await router.aclose()


async def test_backoff_grows_exponentially_with_jitter() -> None:
    router, _ = make_router([], retry=RetrySettings(backoff_initial=1.0, backoff_max=5.0))
    error = UpstreamError("boom")
    for attempt, (low, high) in enumerate([(0.5, 1), (1, 2), (2, 4), (2.5, 5), (2.5, 5)], start=1):
        delays = [router.backoff(attempt, error) for _ in range(50)]
        assert all(low <= d <= high for d in delays)  # type: ignore[operator]
        assert len(set(delays)) > 1  # jittered


async def test_callers_error_is_not_retried_nor_falls_back(upstreams: list[FakeUpstream]) -> None:
    bad, good = upstreams[0], upstreams[1]
    bad.faults.push(Fault.status(400))
    alias = ModelAlias(name="m", routing="ordered", deployments=[deployment(bad), deployment(good)])
    router, _ = make_router([alias])
    with pytest.raises(ProviderHTTPError) as caught:
        await run_chat(router)
    assert caught.value.status_code == 400 and not caught.value.retryable
    assert len(bad.requests) == 1 and good.requests == []
    await router.aclose()


async def test_falls_back_to_next_deployment_then_fallback_alias(
    upstreams: list[FakeUpstream],
) -> None:
    a, b, c = upstreams
    a.faults.always(Fault.status(503))
    b.faults.always(Fault.reset())
    primary = ModelAlias(
        name="m",
        routing="ordered",
        fallbacks=["backup"],
        deployments=[deployment(a), deployment(b)],
    )
    backup = ModelAlias(name="backup", deployments=[deployment(c, model="other-model")])
    router, _ = make_router(
        [primary, backup], retry=RetrySettings(attempts=2, backoff_initial=0.01)
    )
    text, outcome, trace = await run_chat(router)
    assert text == "answer from upstream 2"
    assert outcome.attempts == 5 and outcome.fallbacks == 2
    assert c.requests[0].json["model"] == "other-model"
    events = [e["name"] for e in trace.root.events]  # type: ignore[union-attr]
    assert events.count("fallback") == 2 and events.count("retry") == 2
    await router.aclose()


async def test_all_failing_raises_the_last_upstream_error(upstreams: list[FakeUpstream]) -> None:
    up = upstreams[0]
    up.faults.always(Fault.status(502))
    router, _ = make_router([ModelAlias(name="m", deployments=[deployment(up)])])
    with pytest.raises(ProviderHTTPError) as caught:
        await run_chat(router)
    assert caught.value.status_code == 502
    assert "after 3 attempts" in caught.value.message
    await router.aclose()


async def test_attempt_timeout_then_retry(upstreams: list[FakeUpstream]) -> None:
    up = upstreams[0]
    up.faults.push(Fault.delay(2.0))
    router, _ = make_router([ModelAlias(name="m", deployments=[deployment(up, timeout=0.3)])])
    text, outcome, trace = await run_chat(router)
    assert text == "answer from upstream 0" and outcome.retries == 1
    first = next(s for s in trace.spans if s.name == "chat gpt-test")
    assert first.attributes["error.type"] == "UpstreamTimeoutError"
    await router.aclose()


class _Recorded(OpenAICompatibleProvider):
    """The OpenAI provider, noting the deadline of each call."""

    deadlines: list[float | None]

    async def chat(self, request: ChatRequest, *, deadline: float | None = None) -> ChatResponse:
        self.deadlines.append(deadline)
        return await super().chat(request, deadline=deadline)


class _Unbounded(_Recorded):
    """Keeps no deadline of its own: it waits out a slow upstream however long it takes."""

    honours_deadline = False

    async def chat(self, request: ChatRequest, *, deadline: float | None = None) -> ChatResponse:
        self.deadlines.append(deadline)
        return await OpenAICompatibleProvider.chat(self, request)


@pytest.mark.parametrize("kind", [_Recorded, _Unbounded])
async def test_every_attempt_is_bounded_by_its_deadline(
    upstreams: list[FakeUpstream], kind: type[_Recorded]
) -> None:
    """A provider that keeps deadlines gets the attempt's; any other runs in the
    router's timeout scope. Either way a stalled attempt stops at the deployment's
    timeout (the client's idle-read timeout is off here, so nothing else could)."""
    up = upstreams[0]
    up.faults.push(Fault.delay(2.0))
    made: list[_Recorded] = []

    def factory(dep: Deployment) -> _Recorded:
        provider = kind(dep)
        provider.deadlines = []
        provider.client.read_timeout = None  # so only the attempt's deadline can stop it
        made.append(provider)
        return provider

    router, _ = make_router(
        [ModelAlias(name="m", deployments=[deployment(up, timeout=0.3)])], provider_factory=factory
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    text, outcome, trace = await run_chat(router)
    assert text == "answer from upstream 0" and outcome.retries == 1
    assert loop.time() - started < 1.5
    (provider,) = made
    if kind is _Unbounded:
        assert provider.deadlines == [None, None]
    else:
        first, second = provider.deadlines
        assert first is not None and started < first <= started + 0.3 + 0.05
        assert second is not None and second > first
    timed_out = next(s for s in trace.spans if s.name == "chat gpt-test")
    assert timed_out.attributes["error.type"] == "UpstreamTimeoutError"
    assert "did not answer within 0.3s" in timed_out.attributes["error.message"]
    await router.aclose()


async def test_request_timeout_bounds_the_whole_walk(upstreams: list[FakeUpstream]) -> None:
    up = upstreams[0]
    up.faults.always(Fault.delay(1.0))
    router = Router(
        [ModelAlias(name="m", deployments=[deployment(up, timeout=5)])],
        retry=RetrySettings(request_timeout=0.3),
    )
    with pytest.raises(UpstreamTimeoutError, match="within 0.3s"):
        await run_chat(router)
    await router.aclose()


async def test_request_timeout_is_recorded_on_the_attempt_and_stops_the_walk(
    upstreams: list[FakeUpstream],
) -> None:
    slow, spare = upstreams[0], upstreams[1]
    slow.faults.always(Fault.delay(1.0))
    router = Router(
        [
            ModelAlias(
                name="m", routing="ordered", deployments=[deployment(slow), deployment(spare)]
            )
        ],
        retry=RetrySettings(request_timeout=0.3),
    )
    trace, outcome = Trace(kind="chat", name="t"), Outcome()
    with pytest.raises(UpstreamTimeoutError, match="request did not finish") as caught:
        await router.chat(router.route("m"), request(), trace, trace.root, outcome)  # type: ignore[arg-type]
    assert not caught.value.retryable
    assert outcome.attempts == 1 and not spare.requests  # no fallback after the deadline
    attempt = next(s for s in trace.spans if s.name == "chat gpt-test")
    assert attempt.status == "error" and attempt.end_ns is not None
    assert router.targets["m"][0].breaker.allow()  # the deadline is not the deployment's fault
    await router.aclose()


async def test_a_retry_due_after_the_deadline_fails_at_once(upstreams: list[FakeUpstream]) -> None:
    up = upstreams[0]
    up.faults.push(Fault.status(429, retry_after=5))
    router, sleeps = make_router(
        [ModelAlias(name="m", deployments=[deployment(up)])],
        retry=RetrySettings(attempts=3, request_timeout=2, max_retry_after=30),
    )
    with pytest.raises(UpstreamTimeoutError, match="within 2s"):
        await run_chat(router)
    assert sleeps.delays == [] and len(up.requests) == 1
    await router.aclose()


async def test_stream_first_chunk_timeout_then_retry(upstreams: list[FakeUpstream]) -> None:
    up = upstreams[0]
    up.faults.push(Fault.delay(2.0))
    router, _ = make_router([ModelAlias(name="m", deployments=[deployment(up, timeout=0.3)])])
    trace, outcome = Trace(kind="chat", name="t"), Outcome()
    chunks = await router.stream(
        router.route("m"), request(stream=True), trace, trace.root, outcome
    )  # type: ignore[arg-type]
    text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    assert text == "answer from upstream 0" and outcome.retries == 1
    first = next(s for s in trace.spans if s.name == "chat gpt-test")
    assert first.attributes["error.type"] == "UpstreamTimeoutError"
    assert "within 0.3s" in first.attributes["error.message"]
    await router.aclose()


async def test_connection_reset_and_malformed_json_are_retried(
    upstreams: list[FakeUpstream],
) -> None:
    up = upstreams[0]
    up.faults.push(Fault.reset())
    up.faults.push(Fault.malformed_json())
    router, _ = make_router([ModelAlias(name="m", deployments=[deployment(up)])])
    text, outcome, _ = await run_chat(router)
    assert text == "answer from upstream 0" and outcome.attempts == 3
    await router.aclose()


async def test_unreachable_deployment_is_a_connection_error() -> None:
    dead = Deployment(provider="openai-compatible", model="x", base_url="http://127.0.0.1:9/v1")
    router, _ = make_router(
        [ModelAlias(name="m", deployments=[dead])], retry=RetrySettings(attempts=1)
    )
    with pytest.raises(UpstreamConnectionError):
        await run_chat(router)
    await router.aclose()


async def test_breaker_opens_skips_and_recovers(upstreams: list[FakeUpstream]) -> None:
    flaky, steady = upstreams[0], upstreams[1]
    clock = Clock()
    alias = ModelAlias(
        name="m", routing="ordered", deployments=[deployment(flaky), deployment(steady)]
    )
    router, _ = make_router(
        [alias],
        retry=RetrySettings(attempts=1),
        breaker=BreakerSettings(failure_threshold=2, reset_after=30),
        clock=clock,
    )
    flaky.faults.always(Fault.status(500))
    for _ in range(2):
        text, _, _ = await run_chat(router)
        assert text == "answer from upstream 1"
    assert router.targets["m"][0].breaker.state.value == "open"
    # Open: the flaky deployment is not even called.
    _, _, trace = await run_chat(router)
    assert len(flaky.requests) == 2
    assert any(e["name"] == "breaker_skip" for e in trace.root.events)  # type: ignore[union-attr]
    # After reset_after, one probe goes through; success closes the breaker.
    flaky.faults.clear()
    clock.now += 31
    text, _, _ = await run_chat(router)
    assert text == "answer from upstream 0" and len(flaky.requests) == 3
    assert router.targets["m"][0].breaker.state.value == "closed"
    await router.aclose()


async def test_open_breakers_everywhere_means_no_deployment(upstreams: list[FakeUpstream]) -> None:
    up = upstreams[0]
    up.faults.always(Fault.status(500))
    router, _ = make_router(
        [ModelAlias(name="m", deployments=[deployment(up)])],
        retry=RetrySettings(attempts=1),
        breaker=BreakerSettings(failure_threshold=1, reset_after=60),
    )
    with pytest.raises(ProviderHTTPError):
        await run_chat(router)
    with pytest.raises(NoDeploymentAvailableError) as caught:
        await run_chat(router)
    assert caught.value.status_code == 503
    await router.aclose()


async def test_weighted_load_balancing(upstreams: list[FakeUpstream]) -> None:
    heavy, light = upstreams[0], upstreams[1]
    alias = ModelAlias(
        name="m", deployments=[deployment(heavy, weight=3), deployment(light, weight=1)]
    )
    router, _ = make_router([alias])
    for _ in range(200):
        await run_chat(router)
    share = len(heavy.requests) / 200
    assert 0.65 <= share <= 0.85, share
    await router.aclose()


async def test_latency_routing_prefers_the_faster_deployment(upstreams: list[FakeUpstream]) -> None:
    slow, fast = upstreams[0], upstreams[1]
    slow.delay = 0.05
    alias = ModelAlias(
        name="m", routing="latency", deployments=[deployment(slow), deployment(fast)]
    )
    router, _ = make_router([alias])
    for _ in range(20):
        await run_chat(router)
    # One exploratory call to the slow one, then everything goes to the fast one.
    assert len(slow.requests) == 1 and len(fast.requests) == 19
    assert router.targets["m"][0].ewma_ms > router.targets["m"][1].ewma_ms  # type: ignore[operator]
    await router.aclose()


async def test_stream_failure_before_first_chunk_is_retried(upstreams: list[FakeUpstream]) -> None:
    up = upstreams[0]
    up.faults.push(Fault.status(500))
    router, _ = make_router([ModelAlias(name="m", deployments=[deployment(up)])])
    trace, outcome = Trace(kind="chat", name="t"), Outcome()
    chunks = await router.stream(
        router.route("m"), request(stream=True), trace, trace.root, outcome
    )  # type: ignore[arg-type]
    text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    assert text == "answer from upstream 0"
    assert outcome.retries == 1 and outcome.ttft_ms is not None
    await router.aclose()


async def test_stream_cut_midway_raises_after_partial_output(upstreams: list[FakeUpstream]) -> None:
    up = upstreams[0]
    up.reply = "one two three four five six seven eight"
    up.faults.push(Fault.cut_stream(after_chunks=2))
    router, _ = make_router([ModelAlias(name="m", deployments=[deployment(up)])])
    trace, outcome = Trace(kind="chat", name="t"), Outcome()
    chunks = await router.stream(
        router.route("m"), request(stream=True), trace, trace.root, outcome
    )  # type: ignore[arg-type]
    received = []
    with pytest.raises(UpstreamError):
        async for chunk in chunks:
            received.append(chunk)
    assert 1 <= len(received) <= 3
    assert len(up.requests) == 1  # never silently restarted mid-stream
    attempt = next(s for s in trace.spans if s.name == "chat gpt-test")
    assert attempt.status == "error"
    await router.aclose()


def test_routes_that_never_change_are_built_once(upstreams: list[FakeUpstream]) -> None:
    one, two, three = (deployment(u) for u in upstreams)
    router = Router(
        [
            ModelAlias(name="single", deployments=[one], fallbacks=["ordered"]),
            ModelAlias(name="ordered", deployments=[two, three], routing="ordered"),
            ModelAlias(name="weighted", deployments=[two, three], fallbacks=["single"]),
        ]
    )
    single = router.route("single")
    assert router.route("single") is single  # reused, not rebuilt per request
    assert [t.deployment.base_url for t in single.plan] == [d.base_url for d in (one, two, three)]
    assert router.route("ordered") is router.route("ordered")
    # A weighted alias is shuffled per request, so its route is always new.
    weighted = {
        tuple(t.deployment.base_url for t in router.route("weighted").plan) for _ in range(40)
    }
    assert len(weighted) == 2
    assert all(order[-1] == one.base_url for order in weighted)
    with pytest.raises(NotFoundError):
        router.route("missing")


# --- breaker accounting: only deployment failures count ------------------------------


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422])
async def test_requests_refused_upstream_never_open_the_breaker(
    upstreams: list[FakeUpstream], status: int
) -> None:
    """A 4xx the upstream gives one request is that request's fault: any number of them
    in a row leaves the breaker closed, and the next good request is served."""
    up = upstreams[0]
    router, _ = make_router(
        [ModelAlias(name="m", deployments=[deployment(up)])],
        retry=RetrySettings(attempts=1),
        breaker=BreakerSettings(failure_threshold=2, reset_after=60),
    )
    up.faults.push(*[Fault.status(status)] * 6)
    for _ in range(6):
        with pytest.raises(ProviderHTTPError):
            await run_chat(router)
    assert router.targets["m"][0].breaker.state.value == "closed"
    text, _, _ = await run_chat(router)
    assert text == "answer from upstream 0"
    await router.aclose()


@pytest.mark.parametrize(
    ("fault", "counts"),
    [
        (Fault.status(500), True),
        (Fault.status(503), True),
        (Fault.status(429), True),
        (Fault.status(401), True),
        (Fault.reset(), True),
        (Fault.malformed_json(), True),
        (Fault.status(404), False),
        (Fault.status(422), False),
        (Fault.redirect("https://elsewhere.example/v1"), False),
    ],
)
async def test_which_upstream_failures_count_toward_the_breaker(
    upstreams: list[FakeUpstream], fault: Fault, counts: bool
) -> None:
    up = upstreams[0]
    router, _ = make_router(
        [ModelAlias(name="m", deployments=[deployment(up)])],
        retry=RetrySettings(attempts=1),
        breaker=BreakerSettings(failure_threshold=1, reset_after=60),
    )
    up.faults.push(fault)
    with pytest.raises(UpstreamError) as caught:
        await run_chat(router)
    assert caught.value.deployment_fault is counts
    expected = "open" if counts else "closed"
    assert router.targets["m"][0].breaker.state.value == expected
    await router.aclose()


@pytest.mark.model
async def test_a_request_the_local_model_fails_on_never_opens_its_breaker() -> None:
    """The reported case: a ``json_schema`` nested ~500 levels made the in-process model
    fail (RecursionError while building its grammar), a 502. Five of those used to open
    the breaker and refuse every caller for 30 s. It is now the caller's 400, which never
    counts toward the breaker."""
    local = ModelAlias(
        name="local", deployments=[Deployment(provider="local", model="smollm2-135m-instruct")]
    )
    router, _ = make_router(
        [local],
        retry=RetrySettings(attempts=1),
        breaker=BreakerSettings(failure_threshold=2, reset_after=60),
    )
    schema: dict[str, object] = {"type": "string"}
    for _ in range(500):
        schema = {"type": "object", "properties": {"a": schema}}
    deep = {"type": "json_schema", "json_schema": {"name": "deep", "schema": schema}}
    try:
        for _ in range(4):
            trace = Trace(kind="chat", name="test")
            with pytest.raises(InvalidRequestError, match="nested deeper"):
                await router.chat(
                    router.route("local"),
                    request("local", response_format=deep, max_tokens=2),
                    trace,
                    trace.root,
                    Outcome(),
                )
        assert router.targets["local"][0].breaker.state.value == "closed"
        trace = Trace(kind="chat", name="test")
        answer = await router.chat(
            router.route("local"), request("local", max_tokens=2), trace, trace.root, Outcome()
        )
        assert answer.choices[0].message.content is not None
    finally:
        await router.aclose()

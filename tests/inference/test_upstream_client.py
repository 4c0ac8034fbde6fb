"""The provider client's failures as the router sees them: every request the upstream
may have received is an attempt on the trace, and a redirect is refused without
counting against the deployment."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from trellis.errors import ProviderHTTPError
from trellis.inference.providers.openai_compat import OpenAICompatibleProvider
from trellis.inference.router import Outcome, Router
from trellis.observe.tracing import Trace
from trellis.schema import ChatRequest
from trellis.settings import BreakerSettings, Deployment, ModelAlias, RetrySettings
from trellis.testing.fake_upstream import FakeUpstream, Fault


@pytest.fixture
def upstreams() -> Iterator[list[FakeUpstream]]:
    servers = [FakeUpstream(vendor="openai").start() for _ in range(2)]
    for index, server in enumerate(servers):
        server.reply = f"answer from upstream {index}"
    yield servers
    for server in servers:
        server.stop()


def deployment(upstream: FakeUpstream) -> Deployment:
    return Deployment(
        provider="openai-compatible", model="gpt-test", base_url=upstream.base_url, timeout=5.0
    )


async def no_sleep(delay: float) -> None:
    return None


def make_router(deployments: list[Deployment], threshold: int = 50) -> Router:
    return Router(
        [ModelAlias(name="m", routing="ordered", deployments=deployments)],
        retry=RetrySettings(attempts=3, backoff_initial=0.01),
        breaker=BreakerSettings(failure_threshold=threshold),
        rng=random.Random(7),
        sleep=no_sleep,
    )


def request(**kwargs: object) -> ChatRequest:
    return ChatRequest(model="m", messages=[{"role": "user", "content": "hello"}], **kwargs)  # type: ignore[list-item]


async def run_chat(router: Router) -> tuple[str, Outcome, Trace]:
    trace = Trace(kind="chat", name="test")
    outcome = Outcome()
    response = await router.chat(router.route("m"), request(), trace, trace.root, outcome)
    return response.choices[0].message.content or "", outcome, trace


def attempt_spans(trace: Trace) -> list[str]:
    return [span.status for span in trace.spans if span.name == "chat gpt-test"]


async def test_a_request_reset_on_a_reused_connection_is_a_traced_retry(
    upstreams: list[FakeUpstream],
) -> None:
    """The upstream read the request, then reset the kept-alive connection: it may have
    made (and billed) a completion, so the second try is an attempt the trace shows,
    never a silent re-send inside the client."""
    up = upstreams[0]
    router = make_router([deployment(up)])
    await run_chat(router)  # leaves a kept-alive connection in the pool
    up.faults.push(Fault.reset())
    text, outcome, trace = await run_chat(router)
    assert text == "answer from upstream 0"
    assert len(up.requests) == 3  # the warm-up, the reset one, the retry
    assert (outcome.attempts, outcome.retries) == (2, 1)
    assert attempt_spans(trace) == ["error", "ok"]
    await router.aclose()


async def test_a_redirect_is_not_retried_nor_counted_and_names_its_location(
    upstreams: list[FakeUpstream],
) -> None:
    moved, steady = upstreams
    moved.faults.always(Fault.redirect("https://elsewhere.example/v1/chat/completions", 301))
    router = make_router([deployment(moved), deployment(steady)], threshold=1)
    text, outcome, trace = await run_chat(router)
    assert text == "answer from upstream 1"  # moved on to the next deployment at once
    assert len(moved.requests) == 1 and outcome.attempts == 2
    first = next(span for span in trace.spans if span.name == "chat gpt-test")
    assert first.attributes["http.response.status_code"] == 301
    assert "https://elsewhere.example/v1/chat/completions" in first.attributes["error.message"]
    # Not the deployment's health: with a threshold of one failure, a count would open it.
    assert router.route("m").plan[0].breaker.state.value == "closed"
    await router.aclose()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_provider_refuses_a_redirect(upstreams: list[FakeUpstream], stream: bool) -> None:
    up = upstreams[0]
    up.faults.push(Fault.redirect("http://127.0.0.1:1/v2", 308))
    provider = OpenAICompatibleProvider(deployment(up))
    with pytest.raises(ProviderHTTPError) as caught:
        if stream:
            async for _ in provider.stream(request()):
                pass
        else:
            await provider.chat(request())
    error = caught.value
    assert not error.retryable and error.upstream_status == 308 and error.status_code == 502
    assert "308" in error.message and "http://127.0.0.1:1/v2" in error.message
    assert error.code == "upstream_redirect"
    await provider.aclose()

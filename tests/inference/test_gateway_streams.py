"""How the gateway ends a relayed stream: a complete one is answered, recorded and cached;
one the upstream ended early (no finish_reason, no ``[DONE]``) is an error to the caller,
a failed trace and nothing cached, for every vendor's end-of-stream marker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trellis.errors import InvalidRequestError, UpstreamProtocolError
from trellis.inference.cache import MemoryBackend, ResponseCache
from trellis.inference.gateway import Gateway
from trellis.inference.router import Router
from trellis.observe.tracing import GenAI
from trellis.schema import ChatChunk, ChatRequest
from trellis.settings import Deployment, ModelAlias, RetrySettings
from trellis.testing.fake_upstream import FakeUpstream, Fault
from trellis.testing.sinks import ListSink

VENDORS = ["openai", "anthropic", "gemini", "cohere"]
KEY_ENV = "TRELLIS_TEST_STREAM_KEY"


@pytest.fixture(params=VENDORS)
def upstream(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeUpstream]:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    server = FakeUpstream(vendor=request.param).start()
    server.reply = "a b c d e f g h"
    yield server
    server.stop()


def gateway(upstream: FakeUpstream, sink: ListSink) -> Gateway:
    provider = "openai-compatible" if upstream.vendor == "openai" else upstream.vendor
    deployment = Deployment(
        provider=provider, model="m-up", base_url=upstream.base_url, api_key_env=KEY_ENV
    )
    router = Router(
        [ModelAlias(name="m", deployments=[deployment])], retry=RetrySettings(attempts=1)
    )
    cache = ResponseCache(MemoryBackend(), ttl_seconds=60)
    return Gateway(router, sink=sink, cache=cache)


REQUEST = ChatRequest.model_validate(
    {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,  # cacheable
        "stream": True,
    }
)


async def drain(gw: Gateway) -> tuple[bool, list[ChatChunk], BaseException | None]:
    """(cache hit, the chunks the caller got, the error that ended the stream)."""
    result = await gw.chat_stream(REQUEST)
    chunks: list[ChatChunk] = []
    try:
        async for chunk in result.chunks:
            chunks.append(chunk)
    except UpstreamProtocolError as exc:
        return result.cache_hit, chunks, exc
    return result.cache_hit, chunks, None


def text(chunks: list[ChatChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_a_stream_ended_early_fails_and_is_not_cached(upstream: FakeUpstream) -> None:
    sink = ListSink()
    gw = gateway(upstream, sink)
    upstream.faults.push(Fault.end_stream(after_chunks=2))

    hit, chunks, error = await drain(gw)
    assert not hit
    assert text(chunks) == "a b"
    assert isinstance(error, UpstreamProtocolError) and error.code == "stream_incomplete"
    (trace,) = sink.traces
    assert trace.status == "error"
    root = trace.root
    assert root is not None
    assert root.attributes[GenAI.ERROR_TYPE] == "UpstreamProtocolError"
    assert "ended" in root.attributes["error.message"]
    assert GenAI.FINISH_REASONS not in root.attributes
    route = next(span for span in trace.spans if span.name == "route")
    assert route.status == "error"

    # The partial answer was not cached: the same request goes upstream again, and whole.
    hit, chunks, error = await drain(gw)
    assert not hit and error is None
    assert text(chunks) == "a b c d e f g h"
    assert len(upstream.requests) == 2
    assert [t.status for t in sink.traces] == ["error", "ok"]
    assert sink.traces[1].root is not None
    assert sink.traces[1].root.attributes[GenAI.FINISH_REASONS] == ["stop"]

    hit, chunks, error = await drain(gw)  # now the complete answer is a hit
    assert hit and error is None and text(chunks) == "a b c d e f g h"
    assert len(upstream.requests) == 2


async def test_a_finish_reason_without_done_is_a_complete_stream(upstream: FakeUpstream) -> None:
    sink = ListSink()
    gw = gateway(upstream, sink)
    upstream.faults.push(Fault.without_done())

    hit, chunks, error = await drain(gw)
    assert not hit and error is None
    assert text(chunks) == "a b c d e f g h"
    assert [t.status for t in sink.traces] == ["ok"]
    hit, _, error = await drain(gw)
    assert hit and error is None
    assert len(upstream.requests) == 1


async def test_a_stream_that_ends_before_its_first_chunk_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing reached the caller yet, so another attempt is safe (as after a dropped
    # connection); Gemini's first event already carries content, so it can end before one.
    monkeypatch.setenv(KEY_ENV, "sk-test")
    with FakeUpstream(vendor="gemini") as upstream:
        upstream.reply = "a b c"
        upstream.faults.push(Fault.end_stream(after_chunks=0))
        deployment = Deployment(
            provider="gemini", model="m-up", base_url=upstream.base_url, api_key_env=KEY_ENV
        )
        router = Router(
            [ModelAlias(name="m", deployments=[deployment])],
            retry=RetrySettings(attempts=2, backoff_initial=0.001),
        )
        sink = ListSink()
        hit, chunks, error = await drain(Gateway(router, sink=sink))
        await router.aclose()
    assert error is None and text(chunks) == "a b c"
    assert len(upstream.requests) == 2
    assert sink.traces[0].summary["retries"] == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_library_request_too_deep_to_encode_is_the_callers_error(
    stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTTP edge refuses deep bodies; a library caller's reaches the provider's encoder,
    which must answer 400 without calling the upstream or charging the breaker."""
    monkeypatch.setenv(KEY_ENV, "sk-test")
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    request = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "extra": deep}
    )
    with FakeUpstream(vendor="openai") as upstream:
        gw = gateway(upstream, ListSink())
        gw.cache = None
        with pytest.raises(InvalidRequestError, match="cannot be encoded"):
            if stream:
                await gw.chat_stream(request.model_copy(update={"stream": True}))
            else:
                await gw.chat(request)
        assert upstream.requests == []

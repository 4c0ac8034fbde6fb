"""When the gateway describes and records a request's trace: inline for library callers,
or on later turns of the event loop (``defer_bookkeeping``, what the server uses), so the
answer does not wait for the bookkeeping."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trellis.errors import ProviderHTTPError
from trellis.inference.gateway import Caller, Gateway
from trellis.inference.router import Router
from trellis.observe.tracing import GenAI, Trace
from trellis.runtime import Trellis
from trellis.schema import ChatRequest
from trellis.settings import Deployment, ModelAlias, RetrySettings, Settings
from trellis.testing.fake_upstream import FakeUpstream, Fault
from trellis.testing.sinks import ListSink


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai").start()
    yield server
    server.stop()


def gateway(upstream: FakeUpstream, sink: ListSink, *, deferred: bool) -> Gateway:
    alias = ModelAlias(
        name="m",
        deployments=[
            Deployment(provider="openai-compatible", model="gpt-x", base_url=upstream.base_url)
        ],
    )
    router = Router([alias], retry=RetrySettings(attempts=1))
    return Gateway(router, sink=sink, defer_bookkeeping=deferred)


REQUEST = ChatRequest.model_validate(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}
)


def assert_described_and_recorded(trace: Trace) -> None:
    root = trace.root
    assert root is not None and root.end_ns is not None
    assert root.attributes[GenAI.REQUEST_MODEL] == "m"
    assert root.attributes[GenAI.TEMPERATURE] == 0.5
    assert [m.content for m in root.attributes[GenAI.INPUT_MESSAGES]] == ["hi"]
    assert root.attributes[GenAI.RESPONSE_MODEL] == "gpt-x"
    assert root.attributes[GenAI.OUTPUT_TOKENS] > 0
    assert trace.summary["model"] == "m"
    assert trace.summary["deployment"].endswith("gpt-x")


async def test_library_callers_get_the_trace_before_chat_returns(upstream: FakeUpstream) -> None:
    sink = ListSink()
    result = await gateway(upstream, sink, deferred=False).chat(REQUEST)
    assert [t.trace_id for t in sink.traces] == [result.trace_id]
    assert_described_and_recorded(sink.traces[0])


async def test_deferred_bookkeeping_records_after_the_answer(upstream: FakeUpstream) -> None:
    sink = ListSink()
    gw = gateway(upstream, sink, deferred=True)
    authenticated = time.time_ns()
    caller = Caller(auth_start_ns=authenticated - 50_000, auth_end_ns=authenticated)
    result = await gw.chat(REQUEST, caller)
    returned_ns = time.time_ns()
    assert sink.traces == []  # the answer did not wait for the recording
    await asyncio.sleep(0)
    assert [t.trace_id for t in sink.traces] == [result.trace_id]
    trace = sink.traces[0]
    assert_described_and_recorded(trace)
    names = [span.name for span in trace.spans]
    assert names[:3] == ["chat m", "authenticate", "authorize"]
    auth = trace.spans[1]
    assert (auth.start_ns, auth.end_ns) == (authenticated - 50_000, authenticated)
    assert trace.spans[2].attributes["trellis.plan"] == ["openai-compatible/gpt-x"]
    attempt = next(span for span in trace.spans if span.name == "chat gpt-x")
    assert attempt.attributes[GenAI.RESPONSE_MODEL] == "gpt-x"
    assert attempt.attributes[GenAI.FINISH_REASONS] == ["stop"]
    # The trace ends when the gateway finished, not when the bookkeeping ran.
    assert trace.root is not None and trace.root.end_ns is not None
    assert trace.root.end_ns <= returned_ns
    assert all(span.end_ns is not None and span.end_ns <= returned_ns for span in trace.spans)


async def test_the_request_is_described_while_the_upstream_works(upstream: FakeUpstream) -> None:
    sink = ListSink()
    gw = gateway(upstream, sink, deferred=True)
    described: list[object] = []
    original = gw.book.describe

    def spy(call: object) -> None:
        # Runs before the upstream has answered: the description overlaps the call.
        described.append(len(upstream.requests))
        original(call)  # type: ignore[arg-type]

    gw.book.describe = spy  # type: ignore[method-assign]
    upstream.faults.push(Fault.delay(0.2))
    task = asyncio.create_task(gw.chat(REQUEST))
    while not upstream.requests:
        await asyncio.sleep(0.005)
    assert described == [0] and not task.done()
    await task
    await asyncio.sleep(0)
    assert_described_and_recorded(sink.traces[0])


async def test_a_failure_is_described_and_recorded_at_once(upstream: FakeUpstream) -> None:
    sink = ListSink()
    upstream.faults.push(Fault.status(400))
    with pytest.raises(ProviderHTTPError):
        await gateway(upstream, sink, deferred=True).chat(REQUEST)
    (trace,) = sink.traces
    assert trace.status == "error"
    assert trace.root is not None and trace.root.attributes[GenAI.REQUEST_MODEL] == "m"
    await asyncio.sleep(0)  # the deferred description finds it already done
    assert len(sink.traces) == 1


async def test_a_bug_in_deferred_bookkeeping_is_logged_not_raised(
    upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    sink = ListSink()
    gw = gateway(upstream, sink, deferred=True)

    def broken(trace: Trace) -> None:
        raise RuntimeError("hook bug")

    gw.on_trace.append(broken)
    with caplog.at_level(logging.ERROR, logger="trellis.inference.bookkeeping"):
        result = await gw.chat(REQUEST)
        await asyncio.sleep(0)
    assert result.response.choices[0].message.content
    assert "trace bookkeeping failed" in caplog.text


async def test_a_runtime_closed_right_after_a_chat_still_stores_its_trace(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        include_local_models=False,
        models=[
            ModelAlias(
                name="m",
                deployments=[
                    Deployment(
                        provider="openai-compatible", model="gpt-x", base_url=upstream.base_url
                    )
                ],
            )
        ],
    )
    async with Trellis(settings) as runtime:
        assert runtime.gateway is not None and runtime.gateway.defer_bookkeeping
        result = await runtime.gateway.chat(REQUEST)
    # The deferred recording ran before the writer's last flush.
    async with Trellis(settings) as reopened:
        assert reopened.traces is not None
        stored = await reopened.traces.get(result.trace_id)
    assert stored is not None
    root = next(span for span in stored["spans"] if span["parent_id"] is None)
    assert root["attributes"][GenAI.REQUEST_MODEL] == "m"
    assert root["attributes"][GenAI.RESPONSE_MODEL] == "gpt-x"

"""Streamed answers: relaying an upstream's chunks to the caller, and replaying a
cached answer as chunks.

The relay is the last stage of a stream: it passes each chunk on as it comes and
collects the answer, which, once the upstream has ended its stream, gets its usage,
is cached, recorded and settled with the limiter like a non-streamed answer. A stream
that fails (the provider
raises, including when the upstream ended before its end marker) is recorded as a
failure and never cached; the caller's iteration raises, and the HTTP edge turns that
into a last error event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from trellis.guard.stream import GuardedStream
from trellis.inference.call import Call
from trellis.observe.tracing import Span
from trellis.schema import (
    ChatChoice,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ChunkChoice,
    ChunkDelta,
    Usage,
)

if TYPE_CHECKING:
    from trellis.inference.gateway import Gateway

__all__ = ["relay", "replay"]


async def relay(
    gateway: Gateway, call: Call, upstream: AsyncIterator[ChatChunk], route_span: Span
) -> AsyncIterator[ChatChunk]:
    """Pass chunks through, collecting the answer for usage, cache and trace."""
    request = call.request
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    saw_tools = False
    usage: Usage | None = None
    last: ChatChunk | None = None
    # The output checks and the placeholder restorer, when the call has either: the
    # caller gets their chunks, the cache and the trace what the checks let through.
    shaper = (
        GuardedStream(call.output, call.placeholders)
        if call.output is not None or call.placeholders
        else None
    )
    try:
        async for chunk in upstream:
            last = chunk
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content and shaper is None:
                    texts.setdefault(choice.index, []).append(choice.delta.content)
                if choice.delta.tool_calls:
                    saw_tools = True
                if choice.finish_reason:
                    finish[choice.index] = choice.finish_reason
            if not chunk.choices and chunk.usage is not None:
                continue  # the usage chunk is re-emitted at the end, if asked for
            if chunk.usage is not None:
                chunk = chunk.model_copy(update={"usage": None})
            if shaper is not None:
                chunk = shaper.chunk(chunk)
            yield chunk
        if shaper is not None:
            rest = shaper.finish(last)
            if rest is not None:
                yield rest
            texts = shaper.guarded
            gateway._output_record(call)
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
        gateway._ensure_usage(call, response)
        # The whole answer, before the last chunk; a session keeps the caller's values.
        await gateway._remember(call, gateway._restore(call, response))
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
            await gateway._cache_store(call, response)
        gateway.book.complete(call, response, cache_hit=False)
        # The stream's limits are settled at its end: its real tokens and cost, its slot.
        await gateway._settle(call, response, gateway.book.cost(call, response))
    except BaseException as exc:
        if shaper is not None:
            gateway._output_record(call)
        route_span.record_error(exc)
        route_span.end()
        gateway.book.fail(call, exc)
        await gateway._settle(call)  # an error or a dropped stream frees its slot too
        raise


async def replay(response: ChatResponse, request: ChatRequest) -> AsyncIterator[ChatChunk]:
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

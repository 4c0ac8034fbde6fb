"""The OpenAI-compatible endpoints: chat completions, embeddings, models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Receive, Scope

from trellis.access.keys import INFERENCE
from trellis.errors import NotFoundError, TrellisError
from trellis.inference.gateway import Caller, Gateway
from trellis.runtime import Trellis
from trellis.schema import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
)
from trellis.server.edge import (
    authenticate,
    authenticate_scope,
    parse_body,
    read_json_body,
    runtime,
)
from trellis.server.openapi import UPSTREAM_ERRORS, operation
from trellis.server.responses import EncodedJSON, JSONBytes, encode_json

router = APIRouter(prefix="/v1", tags=["inference"])

M = TypeVar("M", bound=BaseModel)

_DONE = b"data: [DONE]\n\n"


def _gateway(request: Request) -> Gateway:
    gateway = runtime(request).gateway
    assert gateway is not None
    return gateway


async def _accept(
    trellis: Trellis, scope: Scope, receive: Receive, model: type[M]
) -> tuple[Caller, M, Gateway]:
    """What both inference endpoints do first: the caller, the validated body, the gateway."""
    caller = await authenticate_scope(trellis, scope, INFERENCE)
    data = await read_json_body(trellis, scope, receive)
    body = parse_body(model, data)
    if isinstance(body, ChatRequest):
        body.keep_body(data)  # forwarded as it came to OpenAI-compatible upstreams
    gateway = trellis.gateway
    assert gateway is not None
    return caller, body, gateway


@router.post(
    "/chat/completions",
    **operation(
        scope=INFERENCE,
        body=ChatRequest,
        reply=ChatResponse,
        errors=(404, 422, *UPSTREAM_ERRORS),
        events=ChatChunk,
    ),
)
async def chat_completions(request: Request) -> Response:
    """OpenAI's chat completions; see docs/api.md for Trellis' options and headers."""
    return await chat_completions_direct(runtime(request), request.scope, request.receive)


async def chat_completions_direct(trellis: Trellis, scope: Scope, receive: Receive) -> Response:
    """``POST /v1/chat/completions`` on a raw ASGI request (``TrellisApp`` calls it directly)."""
    caller, body, gateway = await _accept(trellis, scope, receive, ChatRequest)
    if body.stream:
        result = await gateway.chat_stream(body, caller)
        return StreamingResponse(
            _sse(result.chunks),
            media_type="text/event-stream",
            headers={
                **_cache_headers(result.cache_hit, result.similarity),
                "x-trellis-trace-id": result.trace_id,
                "cache-control": "no-cache",
                **dict(caller.rate_limit_headers),
            },
        )
    chat = await gateway.chat(body, caller)
    return EncodedJSON(
        chat.response.wire or encode_json(chat.response.model_dump(exclude_none=True)),
        [
            *_raw_cache_headers(chat.cache_hit, chat.similarity),
            (b"x-trellis-trace-id", chat.trace_id.encode()),
            *[(name.encode(), value.encode()) for name, value in caller.rate_limit_headers],
        ],
    )


_CACHE_HIT = [(b"x-trellis-cache", b"hit")]
_CACHE_MISS = [(b"x-trellis-cache", b"miss")]


def _raw_cache_headers(cache_hit: bool, similarity: float | None) -> list[tuple[bytes, bytes]]:
    if similarity is None:
        return _CACHE_HIT if cache_hit else _CACHE_MISS
    return [
        (name.encode(), value.encode())
        for name, value in _cache_headers(cache_hit, similarity).items()
    ]


def _cache_headers(cache_hit: bool, similarity: float | None) -> dict[str, str]:
    """``x-trellis-cache: hit|semantic|miss``. A semantic hit gets its own value, not ``hit``,
    so a client that trusts ``hit`` to mean "the same prompt" is never misled; the
    similarity of the matched prompt comes in ``x-trellis-cache-similarity``."""
    if similarity is not None:
        return {"x-trellis-cache": "semantic", "x-trellis-cache-similarity": f"{similarity:.4f}"}
    return {"x-trellis-cache": "hit" if cache_hit else "miss"}


async def _sse(chunks: AsyncIterator[ChatChunk]) -> AsyncIterator[bytes]:
    """OpenAI's SSE framing; a failure mid-stream becomes a final error event, never silence."""
    try:
        async for chunk in chunks:
            yield b"data: " + orjson.dumps(chunk.wire()) + b"\n\n"
    except TrellisError as exc:
        yield b"data: " + orjson.dumps(exc.to_body()) + b"\n\n"
        return
    yield _DONE


@router.post(
    "/embeddings",
    **operation(
        scope=INFERENCE,
        body=EmbeddingRequest,
        reply=EmbeddingResponse,
        errors=(404, *UPSTREAM_ERRORS),
    ),
)
async def embeddings(request: Request) -> Response:
    return await embeddings_direct(runtime(request), request.scope, request.receive)


async def embeddings_direct(trellis: Trellis, scope: Scope, receive: Receive) -> Response:
    """``POST /v1/embeddings`` on a raw ASGI request (``TrellisApp`` calls it directly)."""
    caller, body, gateway = await _accept(trellis, scope, receive, EmbeddingRequest)
    response = await gateway.embed(body, caller)
    return JSONBytes(response.model_dump(), headers=dict(caller.rate_limit_headers) or None)


@router.get("/models", **operation(scope=INFERENCE, reply=ModelList))
async def list_models(request: Request) -> JSONBytes:
    caller = await authenticate(request, INFERENCE)
    return JSONBytes(_gateway(request).models(caller).model_dump())


@router.get("/models/{model_id:path}", **operation(scope=INFERENCE, reply=ModelCard, errors=[404]))
async def get_model(model_id: str, request: Request) -> JSONBytes:
    caller = await authenticate(request, INFERENCE)
    for card in _gateway(request).models(caller).data:
        if card.id == model_id:
            return JSONBytes(ModelCard.model_validate(card).model_dump())
    raise NotFoundError(
        f"The model `{model_id}` does not exist.", code="model_not_found", param="model"
    )

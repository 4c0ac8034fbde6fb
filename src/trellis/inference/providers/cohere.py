"""Cohere's Chat v2 (``POST /v2/chat``) and Embed v2 (``POST /v2/embed``) APIs.

Chat v2 is close to OpenAI's shape (roles, tool calls with JSON-string
arguments, ``tool`` messages). What differs: ``p`` instead of ``top_p``,
``stop_sequences``, an upper-case ``tool_choice`` that cannot name a tool
(so a named choice sends only that tool, with ``REQUIRED``), upper-case finish
reasons, usage split into billed and processed tokens, and typed stream events.
Responses do not say which model served them, so the deployment's is reported.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from trellis.errors import InvalidRequestError, UnsupportedFeatureError, UpstreamProtocolError
from trellis.inference.providers.base import (
    ChunkBuilder,
    EmbeddingResult,
    HttpProvider,
    content_text,
    function_tools,
)
from trellis.schema import (
    ChatChoice,
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    FunctionCall,
    ResponseMessage,
    ToolCall,
    Usage,
    new_completion_id,
)

__all__ = ["CohereProvider"]

_FINISH = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}
_FAILED = {"ERROR", "TIMEOUT"}
_EMBED_BATCH = 96  # Embed v2 accepts at most 96 texts per call


class CohereProvider(HttpProvider):
    system: ClassVar[str] = "cohere"
    default_base_url: ClassVar[str] = "https://api.cohere.com"
    #: Embed v3+ models need to know what the vectors are for; documents by default.
    embed_input_type: ClassVar[str] = "search_document"

    # --- request --------------------------------------------------------------

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The Chat v2 body for ``request``."""
        if request.n and request.n > 1:
            raise UnsupportedFeatureError("cohere returns one choice per request (n must be 1)")
        body: dict[str, Any] = {
            "model": self.deployment.model,
            "messages": [_message(message) for message in request.messages],
        }
        options = {
            "temperature": request.temperature,
            "p": request.top_p,
            "max_tokens": request.output_limit,
            "stop_sequences": request.stop_list() or None,
            "seed": request.seed,
            "frequency_penalty": request.frequency_penalty,
            "presence_penalty": request.presence_penalty,
        }
        body.update({key: value for key, value in options.items() if value is not None})
        functions = function_tools(request.tools)
        choice = request.tool_choice
        if isinstance(choice, dict):  # Cohere cannot name a tool: offer only that one
            wanted = choice.get("function", {}).get("name")
            functions = [function for function in functions if function.get("name") == wanted]
            if not functions:
                raise InvalidRequestError(f"tool_choice names {wanted!r}, which is not in tools")
        if functions:
            body["tools"] = [{"type": "function", "function": _function(f)} for f in functions]
            if choice == "none":
                body["tool_choice"] = "NONE"
            elif choice == "required" or isinstance(choice, dict):
                body["tool_choice"] = "REQUIRED"
        response_format = request.response_format or {}
        if response_format.get("type") in ("json_object", "json_schema"):
            body["response_format"] = {"type": "json_object"}
            schema = (response_format.get("json_schema") or {}).get("schema")
            if schema:
                body["response_format"]["json_schema"] = schema
        return body

    # --- response -------------------------------------------------------------

    async def chat(self, request: ChatRequest, *, deadline: float | None = None) -> ChatResponse:
        data = await self.post_json("/v2/chat", self.request_body(request), deadline=deadline)
        with self.expecting("response"):
            return self._response(data)

    def _response(self, data: dict[str, Any]) -> ChatResponse:
        reason = data.get("finish_reason") or "COMPLETE"
        if reason in _FAILED:
            raise UpstreamProtocolError(
                f"{self.deployment.label} generation failed ({reason})", provider=self.system
            )
        message = data["message"]
        content = message.get("content") or []
        text = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        calls = []
        for call in message.get("tool_calls") or []:
            function = call["function"]
            arguments = function.get("arguments") or "{}"
            named = FunctionCall(name=function["name"], arguments=arguments)
            calls.append(ToolCall(id=call["id"], function=named))
        answer = ResponseMessage(content=text or (None if calls else ""), tool_calls=calls or None)
        return ChatResponse(
            id=data.get("id") or new_completion_id(),
            model=self.deployment.model,
            choices=[ChatChoice(message=answer, finish_reason=_FINISH.get(reason, "stop"))],
            usage=_usage(data.get("usage") or {}),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:  # type: ignore[override]
        body = self.request_body(request)
        body["stream"] = True
        out = ChunkBuilder(self.deployment.model)
        calls = -1  # index of the tool call being streamed
        async for event in self.post_sse("/v2/chat", body):
            data = self.decode_event(event.data)
            kind = data.get("type") if isinstance(data, dict) else None
            message = ((data.get("delta") or {}).get("message") or {}) if kind else {}
            if kind == "message-start":
                out.id = data.get("id") or out.id
                yield out.delta(content="")
            elif kind == "content-delta":
                yield out.delta(content=(message.get("content") or {}).get("text", ""))
            elif kind == "tool-call-start":
                calls += 1
                call = message.get("tool_calls") or {}
                named = call.get("function") or {}
                function = {"name": named.get("name"), "arguments": named.get("arguments") or ""}
                start = {"index": calls, "id": call.get("id"), "type": "function"}
                yield out.delta(tool_calls=[{**start, "function": function}])
            elif kind == "tool-call-delta":
                function = (message.get("tool_calls") or {}).get("function") or {}
                piece = {"arguments": function.get("arguments", "")}
                yield out.delta(tool_calls=[{"index": max(calls, 0), "function": piece}])
            elif kind == "message-end":
                delta = data.get("delta") or {}
                reason = delta.get("finish_reason") or "COMPLETE"
                if reason in _FAILED:
                    detail = delta.get("error", "")
                    raise UpstreamProtocolError(
                        f"{self.deployment.label} stream failed ({reason}): {detail}",
                        provider=self.system,
                        retryable=False,
                    )
                yield out.delta(finish_reason=_FINISH.get(reason, "stop"))
                yield out.usage(_usage(delta.get("usage") or {}))
                return
        raise self.stream_incomplete("message-end")

    async def embed(
        self, texts: list[str], *, dimensions: int | None = None, deadline: float | None = None
    ) -> EmbeddingResult:
        vectors: list[list[float]] = []
        tokens = 0
        for start in range(0, len(texts), _EMBED_BATCH):
            body: dict[str, Any] = {
                "model": self.deployment.model,
                "texts": texts[start : start + _EMBED_BATCH],
                "input_type": self.embed_input_type,
                "embedding_types": ["float"],
            }
            if dimensions:
                body["output_dimension"] = dimensions
            data = await self.post_json("/v2/embed", body, deadline=deadline)
            with self.expecting("embeddings response"):
                vectors.extend([float(v) for v in vector] for vector in data["embeddings"]["float"])
            billed = (data.get("meta") or {}).get("billed_units") or {}
            tokens += int(billed.get("input_tokens") or 0)
        return EmbeddingResult(vectors=vectors, prompt_tokens=tokens, model=self.deployment.model)


def _message(message: ChatMessage) -> dict[str, Any]:
    """One OpenAI message as a Chat v2 message (the shapes are close)."""
    if message.role in ("system", "developer"):
        return {"role": "system", "content": content_text(message.content)}
    if message.role in ("tool", "function"):
        call_id = message.tool_call_id or message.name or ""
        return {"role": "tool", "tool_call_id": call_id, "content": content_text(message.content)}
    if message.role == "assistant":
        result: dict[str, Any] = {"role": "assistant"}
        text = content_text(message.content)
        if text:
            result["content"] = text
        if message.tool_calls:
            result["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
                for call in message.tool_calls
            ]
        return result
    if isinstance(message.content, list):  # text and image_url parts pass through
        parts = [part for part in message.content if part.get("type") in ("text", "image_url")]
        return {"role": "user", "content": parts}
    return {"role": "user", "content": message.content or ""}


def _function(function: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "description", "parameters")
    return {key: function[key] for key in keys if function.get(key) is not None}


def _usage(usage: dict[str, Any]) -> Usage:
    """Billed units are what Cohere charges for; processed tokens are the fallback."""
    counts = usage.get("billed_units") or usage.get("tokens") or {}
    prompt = int(counts.get("input_tokens") or 0)
    completion = int(counts.get("output_tokens") or 0)
    total = prompt + completion
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)

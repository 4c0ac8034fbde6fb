"""Anthropic's Messages API (``POST /v1/messages``), spoken from OpenAI-shaped requests.

Differences this module absorbs: system prompts live outside ``messages``;
tool results are ``tool_result`` blocks in a user turn; consecutive turns of
one role are merged; ``max_tokens`` is mandatory; temperature tops out at 1;
usage is split into fresh, cache-read and cache-write input tokens.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from trellis.errors import UnsupportedFeatureError, UpstreamProtocolError
from trellis.inference.providers.base import (
    ChunkBuilder,
    HttpProvider,
    content_text,
    data_url,
    function_tools,
    tool_arguments,
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

__all__ = ["AnthropicProvider"]

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicProvider(HttpProvider):
    system: ClassVar[str] = "anthropic"
    default_base_url: ClassVar[str] = "https://api.anthropic.com"
    api_version: ClassVar[str] = "2023-06-01"
    #: Anthropic requires a cap on output; used when the caller gave none.
    default_max_tokens: ClassVar[int] = 4096

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": self.api_version}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def error_message(self, body: Any, status: int) -> str:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return f"{error.get('type', 'error')}: {error['message']}"
        return super().error_message(body, status)

    # --- request --------------------------------------------------------------

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The Messages API body for ``request``."""
        if request.n and request.n > 1:
            raise UnsupportedFeatureError("anthropic returns one choice per request (n must be 1)")
        system: list[str] = []
        messages: list[dict[str, Any]] = []
        for message in request.messages:
            if message.role in ("system", "developer"):
                system.append(content_text(message.content))
                continue
            role = "assistant" if message.role == "assistant" else "user"
            blocks = _blocks(message)
            if not blocks:
                continue
            if messages and messages[-1]["role"] == role:
                messages[-1]["content"].extend(blocks)
            else:
                messages.append({"role": role, "content": blocks})
        body: dict[str, Any] = {
            "model": self.deployment.model,
            "max_tokens": request.output_limit or self.default_max_tokens,
            "messages": messages,
        }
        if system:
            body["system"] = "\n\n".join(part for part in system if part)
        if request.temperature is not None:
            body["temperature"] = min(request.temperature, 1.0)
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop_list():
            body["stop_sequences"] = request.stop_list()
        if request.user:
            body["metadata"] = {"user_id": request.user}
        if request.tools:
            body["tools"] = [_tool(function) for function in function_tools(request.tools)]
        choice = _tool_choice(request)
        if choice is not None:
            body["tool_choice"] = choice
        if (request.response_format or {}).get("type") == "json_schema":
            raise UnsupportedFeatureError("anthropic does not support response_format json_schema")
        return body

    # --- response -------------------------------------------------------------

    async def chat(self, request: ChatRequest, *, deadline: float | None = None) -> ChatResponse:
        data = await self.post_json("/v1/messages", self.request_body(request), deadline=deadline)
        with self.expecting("message"):
            return self._response(data)

    def _response(self, data: dict[str, Any]) -> ChatResponse:
        text = ""
        calls: list[ToolCall] = []
        for block in data["content"]:
            if block["type"] == "text":
                text += block["text"]
            elif block["type"] == "tool_use":
                arguments = json.dumps(block.get("input") or {})
                function = FunctionCall(name=block["name"], arguments=arguments)
                calls.append(ToolCall(id=block["id"], function=function))
        message = ResponseMessage(content=text or (None if calls else ""), tool_calls=calls or None)
        finish = _FINISH.get(data.get("stop_reason") or "end_turn", "stop")
        return ChatResponse(
            id=data.get("id") or new_completion_id(),
            model=data.get("model") or self.deployment.model,
            choices=[ChatChoice(message=message, finish_reason=finish)],
            usage=_usage(data.get("usage") or {}),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:  # type: ignore[override]
        body = self.request_body(request)
        body["stream"] = True
        out = ChunkBuilder(self.deployment.model)
        usage: dict[str, Any] = {}
        tools: dict[int, int] = {}  # content block index -> OpenAI tool_calls index
        async for event in self.post_sse("/v1/messages", body):
            data = self.decode_event(event.data)
            kind = data.get("type") if isinstance(data, dict) else None
            if kind == "message_start":
                message = data.get("message") or {}
                out.id = message.get("id") or out.id
                out.model = message.get("model") or out.model
                usage.update(message.get("usage") or {})
                yield out.delta(content="")
            elif kind == "content_block_start":
                block = data.get("content_block") or {}
                if block.get("type") == "tool_use":
                    tools[data["index"]] = len(tools)
                    function = {"name": block.get("name"), "arguments": ""}
                    call = {"index": tools[data["index"]], "id": block.get("id")}
                    yield out.delta(tool_calls=[{**call, "type": "function", "function": function}])
                elif block.get("type") == "text" and block.get("text"):
                    yield out.delta(content=block["text"])
            elif kind == "content_block_delta":
                delta = data.get("delta") or {}
                if delta.get("type") == "text_delta":
                    yield out.delta(content=delta.get("text", ""))
                elif delta.get("type") == "input_json_delta" and data.get("index") in tools:
                    piece = {"arguments": delta.get("partial_json", "")}
                    yield out.delta(tool_calls=[{"index": tools[data["index"]], "function": piece}])
            elif kind == "message_delta":
                usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
                reason = (data.get("delta") or {}).get("stop_reason") or "end_turn"
                yield out.delta(finish_reason=_FINISH.get(reason, "stop"))
            elif kind == "message_stop":
                yield out.usage(_usage(usage))
                return
            elif kind == "error":
                raise UpstreamProtocolError(
                    f"{self.deployment.label} stream error: {self.error_message(data, 200)}",
                    provider=self.system,
                    retryable=False,
                )
        raise self.stream_incomplete("message_stop")


def _blocks(message: ChatMessage) -> list[dict[str, Any]]:
    """One OpenAI message as Anthropic content blocks."""
    if message.role in ("tool", "function"):
        tool_use_id = message.tool_call_id or message.name or ""
        result = {"type": "tool_result", "tool_use_id": tool_use_id}
        return [{**result, "content": content_text(message.content)}]
    blocks: list[dict[str, Any]] = []
    parts = (
        message.content
        if isinstance(message.content, list)
        else [{"type": "text", "text": message.content or ""}]
    )
    for part in parts:
        if part.get("type") == "text":
            if part.get("text"):  # Anthropic refuses empty text blocks
                blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            blocks.append(_image(part))
        else:
            kind = part.get("type")
            raise UnsupportedFeatureError(f"anthropic adapter cannot send {kind!r} parts")
    for call in message.tool_calls or []:
        tool_use = {"type": "tool_use", "id": call.id, "name": call.function.name}
        blocks.append({**tool_use, "input": tool_arguments(call.function.arguments)})
    return blocks


def _image(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url", "") if isinstance(image, dict) else str(image or "")
    inline = data_url(url)
    if inline is None:
        return {"type": "image", "source": {"type": "url", "url": url}}
    media_type, data = inline
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _tool(function: dict[str, Any]) -> dict[str, Any]:
    tool = {"name": function["name"], "input_schema": function.get("parameters") or _EMPTY_SCHEMA}
    if function.get("description"):
        tool["description"] = function["description"]
    return tool


_EMPTY_SCHEMA = {"type": "object", "properties": {}}


def _tool_choice(request: ChatRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    if choice is None or not request.tools:
        return None
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        result: dict[str, Any] = {"type": "any"}
    elif isinstance(choice, dict):
        result = {"type": "tool", "name": choice.get("function", {}).get("name")}
    else:
        result = {"type": "auto"}
    if (request.model_extra or {}).get("parallel_tool_calls") is False:
        result["disable_parallel_tool_use"] = True
    return result


def _usage(usage: dict[str, Any]) -> Usage:
    """Anthropic counts cached input apart; OpenAI's prompt_tokens includes it."""
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + cache_read + cache_write
    completion = int(usage.get("output_tokens") or 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details={"cached_tokens": cache_read} if cache_read else None,
    )

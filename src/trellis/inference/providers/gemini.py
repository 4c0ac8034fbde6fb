"""Google's Gemini API (``generateContent``, ``streamGenerateContent?alt=sse``, embeddings).

Differences this module absorbs: the assistant role is ``model``; the system
prompt is ``systemInstruction``; tool results are ``functionResponse`` parts
that name the function (not the call id), so names are looked up from the
assistant turn that made the call; sampling options sit in
``generationConfig``; the key travels in ``x-goog-api-key``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from trellis.errors import UpstreamProtocolError
from trellis.inference.providers.base import (
    ChunkBuilder,
    EmbeddingResult,
    HttpProvider,
    content_text,
    data_url,
    function_tools,
    tool_arguments,
)
from trellis.schema import (
    ChatChoice,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    FunctionCall,
    ResponseMessage,
    ToolCall,
    Usage,
    new_completion_id,
)

__all__ = ["GeminiProvider"]

_FILTERED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
_EMBED_BATCH = 100  # batchEmbedContents accepts at most 100 requests


def _finish(reason: str | None, called_tools: bool) -> str:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if called_tools else "stop"


class GeminiProvider(HttpProvider):
    system: ClassVar[str] = "gcp.gemini"
    default_base_url: ClassVar[str] = "https://generativelanguage.googleapis.com/v1beta"

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"x-goog-api-key": api_key} if api_key else {}

    def error_message(self, body: Any, status: int) -> str:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return f"{error.get('status', 'ERROR')}: {error['message']}"
        return super().error_message(body, status)

    def _path(self, verb: str) -> str:
        model = self.deployment.model.removeprefix("models/")
        return f"/models/{model}:{verb}"

    # --- request --------------------------------------------------------------

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The generateContent body for ``request``."""
        system: list[str] = []
        contents: list[dict[str, Any]] = []
        names: dict[str, str] = {}  # tool call id -> function name, for functionResponse
        for message in request.messages:
            if message.role in ("system", "developer"):
                system.append(content_text(message.content))
                continue
            if message.role in ("tool", "function"):
                name = names.get(message.tool_call_id or "", message.name or "")
                response = _function_response(content_text(message.content))
                role, parts = "user", [{"functionResponse": {"name": name, "response": response}}]
            elif message.role == "assistant":
                role, parts = "model", _text_parts(message.content)
                for call in message.tool_calls or []:
                    names[call.id] = call.function.name
                    args = tool_arguments(call.function.arguments)
                    parts.append({"functionCall": {"name": call.function.name, "args": args}})
            else:
                role, parts = "user", _text_parts(message.content)
            if not parts:
                continue
            if contents and contents[-1]["role"] == role:
                contents[-1]["parts"].extend(parts)
            else:
                contents.append({"role": role, "parts": parts})
        body: dict[str, Any] = {"contents": contents}
        if any(system):
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(filter(None, system))}]}
        config = _generation_config(request)
        if config:
            body["generationConfig"] = config
        if request.tools:
            declarations = [_declaration(function) for function in function_tools(request.tools)]
            body["tools"] = [{"functionDeclarations": declarations}]
            mode = _tool_mode(request.tool_choice)
            if mode:
                body["toolConfig"] = {"functionCallingConfig": mode}
        return body

    # --- response -------------------------------------------------------------

    async def chat(self, request: ChatRequest, *, deadline: float | None = None) -> ChatResponse:
        data = await self.post_json(
            self._path("generateContent"), self.request_body(request), deadline=deadline
        )
        with self.expecting("response"):
            return self._response(data)

    def _response(self, data: dict[str, Any]) -> ChatResponse:
        choices = []
        for position, candidate in enumerate(data.get("candidates") or []):
            text, calls = _read_parts(candidate)
            content = text or (None if calls else "")
            message = ResponseMessage(content=content, tool_calls=calls or None)
            finish = _finish(candidate.get("finishReason"), bool(calls))
            index = candidate.get("index", position)
            choices.append(ChatChoice(index=index, message=message, finish_reason=finish))
        if not choices:  # the prompt itself was blocked
            blocked = (data.get("promptFeedback") or {}).get("blockReason")
            finish = "content_filter" if blocked else "stop"
            choices.append(ChatChoice(message=ResponseMessage(content=""), finish_reason=finish))
        return ChatResponse(
            id=data.get("responseId") or new_completion_id(),
            model=data.get("modelVersion") or self.deployment.model,
            choices=choices,
            usage=_usage(data.get("usageMetadata") or {}),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:  # type: ignore[override]
        body = self.request_body(request)
        out = ChunkBuilder(self.deployment.model)
        usage: dict[str, Any] = {}
        calls_made: dict[int, int] = {}  # candidate index -> tool calls so far
        finished: set[int] = set()
        path = self._path("streamGenerateContent")
        async for event in self.post_sse(path, body, params={"alt": "sse"}):
            data = self.decode_event(event.data)
            if not isinstance(data, dict) or "error" in data:
                raise UpstreamProtocolError(
                    f"{self.deployment.label} stream error: {self.error_message(data, 200)}",
                    provider=self.system,
                    retryable=False,
                )
            out.id = data.get("responseId") or out.id
            out.model = data.get("modelVersion") or out.model
            usage = data.get("usageMetadata") or usage
            for position, candidate in enumerate(data.get("candidates") or []):
                index = candidate.get("index", position)
                text, calls = _read_parts(candidate)
                if text or index not in calls_made:
                    yield out.delta(content=text, index=index)
                calls_made.setdefault(index, 0)
                for call in calls:
                    start = {"index": calls_made[index], "id": call.id, "type": "function"}
                    function = {"name": call.function.name, "arguments": call.function.arguments}
                    yield out.delta(tool_calls=[{**start, "function": function}], index=index)
                    calls_made[index] += 1
                if candidate.get("finishReason"):
                    finish = _finish(candidate["finishReason"], calls_made[index] > 0)
                    yield out.delta(finish_reason=finish, index=index)
                    finished.add(index)
            blocked = (data.get("promptFeedback") or {}).get("blockReason")
            if blocked and not finished:
                yield out.delta(finish_reason="content_filter")
                finished.add(0)
        if not finished or calls_made.keys() - finished:  # every candidate must finish
            raise self.stream_incomplete("a finishReason")
        yield out.usage(_usage(usage))

    async def embed(
        self, texts: list[str], *, dimensions: int | None = None, deadline: float | None = None
    ) -> EmbeddingResult:
        model = "models/" + self.deployment.model.removeprefix("models/")
        vectors: list[list[float]] = []
        tokens = 0
        for start in range(0, len(texts), _EMBED_BATCH):
            requests = []
            for text in texts[start : start + _EMBED_BATCH]:
                item: dict[str, Any] = {"model": model, "content": {"parts": [{"text": text}]}}
                if dimensions:
                    item["outputDimensionality"] = dimensions
                requests.append(item)
            data = await self.post_json(
                self._path("batchEmbedContents"), {"requests": requests}, deadline=deadline
            )
            with self.expecting("embeddings response"):
                vectors.extend([float(v) for v in item["values"]] for item in data["embeddings"])
            tokens += int((data.get("usageMetadata") or {}).get("promptTokenCount") or 0)
        return EmbeddingResult(vectors=vectors, prompt_tokens=tokens, model=self.deployment.model)


def _text_parts(content: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content:
        if part.get("type") == "text" and part.get("text"):
            parts.append({"text": part["text"]})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url", "") if isinstance(image, dict) else str(image or "")
            inline = data_url(url)
            if inline is None:
                parts.append({"fileData": {"fileUri": url}})
            else:
                parts.append({"inlineData": {"mimeType": inline[0], "data": inline[1]}})
    return parts


def _function_response(text: str) -> dict[str, Any]:
    """Gemini wants an object; a JSON object result is sent as is, anything else wrapped."""
    try:
        value = json.loads(text)
    except ValueError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def _declaration(function: dict[str, Any]) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        declaration["description"] = function["description"]
    if function.get("parameters"):
        # parametersJsonSchema takes full JSON Schema, as OpenAI tools carry it.
        declaration["parametersJsonSchema"] = function["parameters"]
    return declaration


def _tool_mode(choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if choice == "none":
        return {"mode": "NONE"}
    if choice == "required":
        return {"mode": "ANY"}
    if isinstance(choice, dict):
        return {"mode": "ANY", "allowedFunctionNames": [choice.get("function", {}).get("name")]}
    return {"mode": "AUTO"} if choice == "auto" else None


def _generation_config(request: ChatRequest) -> dict[str, Any]:
    config: dict[str, Any] = {
        "temperature": request.temperature,
        "topP": request.top_p,
        "maxOutputTokens": request.output_limit,
        "stopSequences": request.stop_list() or None,
        "seed": request.seed,
        "candidateCount": request.n,
        "presencePenalty": request.presence_penalty,
        "frequencyPenalty": request.frequency_penalty,
    }
    response_format = request.response_format or {}
    if response_format.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema:
            config["responseJsonSchema"] = schema
    return {key: value for key, value in config.items() if value is not None}


def _read_parts(candidate: dict[str, Any]) -> tuple[str, list[ToolCall]]:
    """The text (thoughts skipped) and function calls of one candidate."""
    text = ""
    calls: list[ToolCall] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if "text" in part and not part.get("thought"):
            text += part["text"]
        elif "functionCall" in part:
            call = part["functionCall"]
            arguments = json.dumps(call.get("args") or {})
            call_id = call.get("id") or "call_" + uuid.uuid4().hex[:24]
            function = FunctionCall(name=call["name"], arguments=arguments)
            calls.append(ToolCall(id=call_id, function=function))
    return text, calls


def _usage(metadata: dict[str, Any]) -> Usage:
    prompt = int(metadata.get("promptTokenCount") or 0)
    thoughts = int(metadata.get("thoughtsTokenCount") or 0)
    completion = int(metadata.get("candidatesTokenCount") or 0) + thoughts
    cached = int(metadata.get("cachedContentTokenCount") or 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(metadata.get("totalTokenCount") or prompt + completion),
        prompt_tokens_details={"cached_tokens": cached} if cached else None,
        completion_tokens_details={"reasoning_tokens": thoughts} if thoughts else None,
    )

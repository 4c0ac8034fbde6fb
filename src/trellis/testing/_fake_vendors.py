"""The wire shapes :mod:`trellis.testing.fake_upstream` answers in, one class per vendor.

Each vendor knows its routes, how to read the prompt and the output cap from a
request, and how to shape a reply, a stream, an embedding and an error body the
way that vendor documents them. The HTTP server and the faults live elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import time
from dataclasses import dataclass
from typing import Any, ClassVar

try:  # orjson is a dependency of trellis, but keep the fake usable without it
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - exercised only without orjson

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


__all__ = ["Answer", "Route", "Vendor", "VENDORS", "Frame", "dumps", "fake_vector", "count_words"]

_PIECE = re.compile(r"\s*\S+")


def count_words(text: str) -> int:
    """The fake's token count: whitespace-separated words (deterministic, vendor-neutral)."""
    return len(text.split())


def split_pieces(text: str) -> list[str]:
    """Streaming pieces: each word with the whitespace before it, so pieces join back to text."""
    return _PIECE.findall(text)


def fake_vector(text: str, dims: int) -> list[float]:
    """A deterministic unit vector derived from a hash of ``text``."""
    values: list[float] = []
    counter = 0
    while len(values) < dims:
        digest = hashlib.blake2b(f"{counter}:{text}".encode(), digest_size=64).digest()
        values.extend((byte - 127.5) / 127.5 for byte in digest)
        counter += 1
    vector = values[:dims]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


@dataclass(slots=True)
class Answer:
    """What the fake model "generated" for one request, before any vendor shaping."""

    id: str
    model: str
    text: str | None  # None when the answer is a tool call
    tool_name: str | None
    tool_args: dict[str, Any] | None
    pieces: list[str]  # content chunks of a stream (text words, or argument slices)
    prompt_tokens: int
    completion_tokens: int
    truncated: bool  # the output cap cut the reply short
    #: Every tool call of the answer as (name, arguments text), when it makes several or
    #: scripted ones (vendors without parallel calls show the first, from ``tool_name``).
    calls: list[tuple[str, str]] | None = None

    @property
    def arguments(self) -> str:
        return json.dumps(self.tool_args or {})

    def call_list(self) -> list[tuple[str, str]]:
        """The tool calls as (name, arguments text): the scripted ones, or the single one."""
        if self.calls is not None:
            return self.calls
        return [(self.tool_name, self.arguments)] if self.tool_name else []


@dataclass(slots=True)
class Route:
    op: str  # "chat" | "embed" | "batch_embed" | "models"
    model: str | None = None  # from the path (gemini)
    method: str | None = None  # gemini's ":verb"


#: One SSE frame and whether it carries generated content (counted by cut_stream).
Frame = tuple[bytes, bool]


class Vendor:
    """Shapes shared by the vendors; subclasses override what differs."""

    name: ClassVar[str]
    base_path: ClassVar[str]  # appended to http://host:port for Deployment.base_url
    id_prefix: ClassVar[str] = "fake-"
    default_auth: ClassVar[bool] = False

    # --- requests -----------------------------------------------------------

    def route(self, method: str, path: str) -> Route | None:
        raise NotImplementedError

    def auth_problem(self, headers: dict[str, str], query: dict[str, str]) -> str | None:
        """Why the request is unauthenticated, or None when a key is present."""
        value = headers.get("authorization", "")
        return None if value.startswith("Bearer ") and value[7:].strip() else "missing API key"

    def protocol_problem(self, headers: dict[str, str], body: Any, route: Route) -> str | None:
        """A malformed request this vendor refuses with 400 (missing required fields...)."""
        if route.op == "models":
            return None
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        return None

    def wants_stream(self, body: dict[str, Any], route: Route, query: dict[str, str]) -> bool:
        return bool(body.get("stream"))

    def request_model(self, body: dict[str, Any], route: Route) -> str:
        return str(route.model or body.get("model") or "fake-model")

    def output_limit(self, body: dict[str, Any]) -> int | None:
        value = body.get("max_tokens")
        return int(value) if isinstance(value, int) else None

    def prompt_text(self, body: dict[str, Any]) -> str:
        return " ".join(_strings(body.get("messages"), ("content", "text", "arguments")))

    # --- responses ----------------------------------------------------------

    def error_body(self, status: int, message: str) -> Any:
        raise NotImplementedError

    def chat_body(self, answer: Answer, body: dict[str, Any]) -> Any:
        raise NotImplementedError

    def chat_payload(self, answer: Answer, body: dict[str, Any], route: Route) -> Any:
        return self.chat_body(answer, body)

    def stream_frames(self, answer: Answer, body: dict[str, Any]) -> list[Frame]:
        raise NotImplementedError

    def stream_error_frame(self, message: str) -> bytes:
        raise NotImplementedError

    def malformed_frame(self) -> bytes:
        return self.frame('{"truncated": ', None)

    def stream_end(self) -> bytes:
        """Bytes after the last frame (OpenAI's ``[DONE]``); most vendors send none."""
        return b""

    def embed_body(self, body: dict[str, Any], route: Route, model: str) -> Any:
        raise NotImplementedError

    def models_body(self, model: str) -> Any:
        raise NotImplementedError

    def frame(self, data: str | bytes, event: str | None) -> bytes:
        payload = data.encode() if isinstance(data, str) else data
        head = f"event: {event}\n".encode() if event else b""
        return head + b"data: " + payload + b"\n\n"


def _strings(node: Any, keys: tuple[str, ...]) -> list[str]:
    """Every string found under one of ``keys`` anywhere inside ``node``."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                if key in keys:
                    found.append(value)
            else:
                found.extend(_strings(value, keys))
    elif isinstance(node, list):
        for item in node:
            found.extend(_strings(item, keys))
    return found


def _texts(body: dict[str, Any]) -> list[str]:
    value = body.get("input", body.get("texts", []))
    return [value] if isinstance(value, str) else [str(item) for item in value]


# --- OpenAI -------------------------------------------------------------------

_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    429: "requests",
}


class OpenAIVendor(Vendor):
    name = "openai"
    base_path = "/v1"
    id_prefix = "chatcmpl-fake"

    def route(self, method: str, path: str) -> Route | None:
        if method == "POST" and path == "/v1/chat/completions":
            return Route("chat")
        if method == "POST" and path == "/v1/embeddings":
            return Route("embed")
        if method == "GET" and path == "/v1/models":
            return Route("models")
        return None

    def output_limit(self, body: dict[str, Any]) -> int | None:
        value = body.get("max_completion_tokens") or body.get("max_tokens")
        return int(value) if isinstance(value, int) else None

    def error_body(self, status: int, message: str) -> Any:
        code = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
        return {
            "error": {
                "message": message,
                "type": _OPENAI_ERROR_TYPES.get(status, "server_error"),
                "param": None,
                "code": code.get(status),
            }
        }

    def _finish(self, answer: Answer) -> str:
        if answer.tool_name:
            return "tool_calls"
        return "length" if answer.truncated else "stop"

    def _usage(self, answer: Answer) -> dict[str, int]:
        return {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        }

    def chat_body(self, answer: Answer, body: dict[str, Any]) -> Any:
        message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
        if answer.tool_name:
            call_id = answer.id.replace("chatcmpl-", "call_")
            message["tool_calls"] = [
                {
                    "id": call_id if i == 0 else f"{call_id}_{i}",
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
                for i, (name, arguments) in enumerate(answer.call_list())
            ]
        return {
            "id": answer.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": answer.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self._finish(answer),
                }
            ],
            "usage": self._usage(answer),
            "system_fingerprint": "fp_fake",
        }

    def stream_frames(self, answer: Answer, body: dict[str, Any]) -> list[Frame]:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base: dict[str, Any] = {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": answer.model,
            "system_fingerprint": "fp_fake",
        }
        if include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return self.frame(dumps({**base, "choices": [choice]}), None)

        frames: list[Frame] = [(chunk({"role": "assistant", "content": ""}), False)]
        if answer.tool_name:
            call_id = answer.id.replace("chatcmpl-", "call_")
            for i, (name, arguments) in enumerate(answer.call_list()):
                start = {"index": i, "id": call_id if i == 0 else f"{call_id}_{i}"}
                start.update(type="function", function={"name": name, "arguments": ""})
                frames.append((chunk({"tool_calls": [start]}), True))
                pieces = answer.pieces if i == 0 else [arguments]
                for piece in pieces:
                    delta = {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}
                    frames.append((chunk(delta), True))
        else:
            frames.extend((chunk({"content": piece}), True) for piece in answer.pieces)
        frames.append((chunk({}, self._finish(answer)), False))
        if include_usage:
            usage = {**base, "choices": [], "usage": self._usage(answer)}
            frames.append((self.frame(dumps(usage), None), False))
        return frames

    def stream_end(self) -> bytes:
        return b"data: [DONE]\n\n"

    def stream_error_frame(self, message: str) -> bytes:
        return self.frame(dumps(self.error_body(500, message)), None)

    def embed_body(self, body: dict[str, Any], route: Route, model: str) -> Any:
        texts = _texts(body)
        dims = int(body.get("dimensions") or 8)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector: Any = fake_vector(text, dims)
            if as_base64:
                vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = sum(count_words(text) for text in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": model, "usage": usage}

    def models_body(self, model: str) -> Any:
        card = {"id": model, "object": "model", "created": 0, "owned_by": "trellis-fake"}
        return {"object": "list", "data": [card]}


# --- Anthropic ----------------------------------------------------------------

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class AnthropicVendor(Vendor):
    name = "anthropic"
    base_path = ""
    id_prefix = "msg_fake"
    default_auth = True

    def route(self, method: str, path: str) -> Route | None:
        return Route("chat") if method == "POST" and path == "/v1/messages" else None

    def auth_problem(self, headers: dict[str, str], query: dict[str, str]) -> str | None:
        return None if headers.get("x-api-key") else "x-api-key header is required"

    def protocol_problem(self, headers: dict[str, str], body: Any, route: Route) -> str | None:
        if not headers.get("anthropic-version"):
            return "anthropic-version: header is required"
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        if not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        if not body.get("messages"):
            return "messages: Field required"
        if any(m.get("role") not in ("user", "assistant") for m in body["messages"]):
            return "messages: roles must be 'user' or 'assistant'"
        return None

    def prompt_text(self, body: dict[str, Any]) -> str:
        system = body.get("system")
        parts = [system] if isinstance(system, str) else _strings(system, ("text",))
        parts += _strings(body.get("messages"), ("content", "text", "partial_json"))
        return " ".join(parts)

    def error_body(self, status: int, message: str) -> Any:
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def _stop(self, answer: Answer) -> str:
        if answer.tool_name:
            return "tool_use"
        return "max_tokens" if answer.truncated else "end_turn"

    def _block(self, answer: Answer) -> dict[str, Any]:
        if answer.tool_name:
            tool_id = answer.id.replace("msg_", "toolu_")
            return {"type": "tool_use", "id": tool_id, "name": answer.tool_name, "input": {}}
        return {"type": "text", "text": ""}

    def _message(self, answer: Answer, content: list[Any], stop: str | None, out: int) -> Any:
        return {
            "id": answer.id,
            "type": "message",
            "role": "assistant",
            "model": answer.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": answer.prompt_tokens,
                "output_tokens": out,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

    def chat_body(self, answer: Answer, body: dict[str, Any]) -> Any:
        block = self._block(answer)
        if answer.tool_name:
            block["input"] = answer.tool_args or {}
        else:
            block["text"] = answer.text or ""
        return self._message(answer, [block], self._stop(answer), answer.completion_tokens)

    def stream_frames(self, answer: Answer, body: dict[str, Any]) -> list[Frame]:
        def event(kind: str, data: dict[str, Any], content: bool = False) -> Frame:
            return self.frame(dumps({"type": kind, **data}), kind), content

        frames = [
            event("message_start", {"message": self._message(answer, [], None, 1)}),
            event("content_block_start", {"index": 0, "content_block": self._block(answer)}),
            event("ping", {}),
        ]
        for piece in answer.pieces:
            if answer.tool_name:
                delta = {"type": "input_json_delta", "partial_json": piece}
            else:
                delta = {"type": "text_delta", "text": piece}
            frames.append(event("content_block_delta", {"index": 0, "delta": delta}, True))
        frames.append(event("content_block_stop", {"index": 0}))
        end = {"stop_reason": self._stop(answer), "stop_sequence": None}
        usage = {"output_tokens": answer.completion_tokens}
        frames.append(event("message_delta", {"delta": end, "usage": usage}))
        frames.append(event("message_stop", {}))
        return frames

    def stream_error_frame(self, message: str) -> bytes:
        return self.frame(dumps(self.error_body(529, message)), "error")

    def malformed_frame(self) -> bytes:
        return self.frame('{"type": "content_block_delta", "index": ', "content_block_delta")


# --- Gemini -------------------------------------------------------------------

_GEMINI_PATH = re.compile(r"^/v1beta/models/([^/:]+):([A-Za-z]+)$")
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class GeminiVendor(Vendor):
    name = "gemini"
    base_path = "/v1beta"

    def route(self, method: str, path: str) -> Route | None:
        match = _GEMINI_PATH.match(path)
        if method != "POST" or not match:
            return None
        model, verb = match.groups()
        ops = {
            "generateContent": "chat",
            "streamGenerateContent": "chat",
            "embedContent": "embed",
            "batchEmbedContents": "batch_embed",
        }
        return Route(ops[verb], model=model, method=verb) if verb in ops else None

    def auth_problem(self, headers: dict[str, str], query: dict[str, str]) -> str | None:
        if headers.get("x-goog-api-key") or query.get("key"):
            return None
        return "Method doesn't allow unregistered callers. Please use an API Key."

    def protocol_problem(self, headers: dict[str, str], body: Any, route: Route) -> str | None:
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        if route.op == "chat" and not body.get("contents"):
            return "* GenerateContentRequest.contents: contents is not specified"
        return None

    def wants_stream(self, body: dict[str, Any], route: Route, query: dict[str, str]) -> bool:
        return route.method == "streamGenerateContent" and query.get("alt") == "sse"

    def chat_payload(self, answer: Answer, body: dict[str, Any], route: Route) -> Any:
        # streamGenerateContent without alt=sse answers one JSON array of responses.
        payload = self.chat_body(answer, body)
        return [payload] if route.method == "streamGenerateContent" else payload

    def output_limit(self, body: dict[str, Any]) -> int | None:
        value = (body.get("generationConfig") or {}).get("maxOutputTokens")
        return int(value) if isinstance(value, int) else None

    def prompt_text(self, body: dict[str, Any]) -> str:
        parts = _strings(body.get("systemInstruction"), ("text",))
        parts += _strings(body.get("contents"), ("text",))
        return " ".join(parts)

    def error_body(self, status: int, message: str) -> Any:
        return {
            "error": {
                "code": status,
                "message": message,
                "status": _GEMINI_STATUS.get(status, "UNKNOWN"),
            }
        }

    def _response(self, answer: Answer, parts: list[Any], finish: bool, out: int) -> Any:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            candidate["finishReason"] = "MAX_TOKENS" if answer.truncated else "STOP"
        return {
            "candidates": [candidate],
            "usageMetadata": {
                "promptTokenCount": answer.prompt_tokens,
                "candidatesTokenCount": out,
                "totalTokenCount": answer.prompt_tokens + out,
            },
            "modelVersion": answer.model,
            "responseId": answer.id,
        }

    def _call_part(self, answer: Answer) -> dict[str, Any]:
        return {"functionCall": {"name": answer.tool_name, "args": answer.tool_args or {}}}

    def chat_body(self, answer: Answer, body: dict[str, Any]) -> Any:
        part = self._call_part(answer) if answer.tool_name else {"text": answer.text or ""}
        return self._response(answer, [part], True, answer.completion_tokens)

    def stream_frames(self, answer: Answer, body: dict[str, Any]) -> list[Frame]:
        if answer.tool_name:
            data = self._response(answer, [self._call_part(answer)], True, answer.completion_tokens)
            return [(self.frame(dumps(data), None), True)]
        pieces = answer.pieces or [""]
        frames: list[Frame] = []
        for number, piece in enumerate(pieces, start=1):
            last = number == len(pieces)
            data = self._response(answer, [{"text": piece}], last, number if piece else 0)
            frames.append((self.frame(dumps(data), None), True))
        return frames

    def frame(self, data: str | bytes, event: str | None) -> bytes:
        payload = data.encode() if isinstance(data, str) else data
        return b"data: " + payload + b"\r\n\r\n"

    def stream_error_frame(self, message: str) -> bytes:
        return self.frame(dumps(self.error_body(500, message)), None)

    def embed_body(self, body: dict[str, Any], route: Route, model: str) -> Any:
        def one(request: dict[str, Any]) -> dict[str, Any]:
            text = " ".join(_strings(request.get("content"), ("text",)))
            dims = int(request.get("outputDimensionality") or 8)
            return {"values": fake_vector(text, dims)}

        if route.op == "batch_embed":
            return {"embeddings": [one(request) for request in body.get("requests", [])]}
        return {"embedding": one(body)}


# --- Cohere -------------------------------------------------------------------


class CohereVendor(Vendor):
    name = "cohere"
    base_path = ""

    def route(self, method: str, path: str) -> Route | None:
        if method == "POST" and path == "/v2/chat":
            return Route("chat")
        if method == "POST" and path == "/v2/embed":
            return Route("embed")
        return None

    def protocol_problem(self, headers: dict[str, str], body: Any, route: Route) -> str | None:
        if not isinstance(body, dict):
            return "invalid request: body must be a JSON object"
        if route.op == "embed" and not body.get("input_type"):
            return "invalid request: input_type is required for Embed v3 and later models"
        if route.op == "chat" and not body.get("messages"):
            return "invalid request: messages must not be empty"
        return None

    def error_body(self, status: int, message: str) -> Any:
        return {"id": "fake-error", "message": message}

    def _finish(self, answer: Answer) -> str:
        if answer.tool_name:
            return "TOOL_CALL"
        return "MAX_TOKENS" if answer.truncated else "COMPLETE"

    def _usage(self, answer: Answer) -> dict[str, Any]:
        counts = {"input_tokens": answer.prompt_tokens, "output_tokens": answer.completion_tokens}
        return {"billed_units": counts, "tokens": dict(counts)}

    def _plan(self, answer: Answer) -> str:
        return f"I will call {answer.tool_name}."

    def chat_body(self, answer: Answer, body: dict[str, Any]) -> Any:
        message: dict[str, Any] = {"role": "assistant"}
        if answer.tool_name:
            message["tool_plan"] = self._plan(answer)
            message["tool_calls"] = [
                {
                    "id": "fake_tool_" + answer.id,
                    "type": "function",
                    "function": {"name": answer.tool_name, "arguments": answer.arguments},
                }
            ]
        else:
            message["content"] = [{"type": "text", "text": answer.text or ""}]
        return {
            "id": answer.id,
            "finish_reason": self._finish(answer),
            "message": message,
            "usage": self._usage(answer),
        }

    def stream_frames(self, answer: Answer, body: dict[str, Any]) -> list[Frame]:
        def event(kind: str, data: dict[str, Any], content: bool = False) -> Frame:
            return self.frame(dumps({"type": kind, **data}), kind), content

        def message(delta: dict[str, Any]) -> dict[str, Any]:
            return {"delta": {"message": delta}}

        empty = {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": []}
        frames = [event("message-start", {"id": answer.id, **message(empty)})]
        if answer.tool_name:
            frames.append(event("tool-plan-delta", message({"tool_plan": self._plan(answer)})))
            function = {"name": answer.tool_name, "arguments": ""}
            call = {"id": "fake_tool_" + answer.id, "type": "function", "function": function}
            frames.append(event("tool-call-start", {"index": 0, **message({"tool_calls": call})}))
            for piece in answer.pieces:
                delta = message({"tool_calls": {"function": {"arguments": piece}}})
                frames.append(event("tool-call-delta", {"index": 0, **delta}, True))
            frames.append(event("tool-call-end", {"index": 0}))
        else:
            start = message({"content": {"type": "text", "text": ""}})
            frames.append(event("content-start", {"index": 0, **start}))
            for piece in answer.pieces:
                delta = message({"content": {"text": piece}})
                frames.append(event("content-delta", {"index": 0, **delta}, True))
            frames.append(event("content-end", {"index": 0}))
        end = {"finish_reason": self._finish(answer), "usage": self._usage(answer)}
        frames.append(event("message-end", {"delta": end}))
        return frames

    def stream_error_frame(self, message: str) -> bytes:
        data = {"type": "message-end", "delta": {"finish_reason": "ERROR", "error": message}}
        return self.frame(dumps(data), "message-end")

    def malformed_frame(self) -> bytes:
        return self.frame('{"type": "content-delta", "index": ', "content-delta")

    def embed_body(self, body: dict[str, Any], route: Route, model: str) -> Any:
        texts = _texts(body)
        dims = int(body.get("output_dimension") or 8)
        vectors = [fake_vector(text, dims) for text in texts]
        tokens = sum(count_words(text) for text in texts)
        return {
            "id": "fake-embed",
            "embeddings": {"float": vectors},
            "texts": texts,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
            "response_type": "embeddings_by_type",
        }


VENDORS: dict[str, type[Vendor]] = {
    "openai": OpenAIVendor,
    "anthropic": AnthropicVendor,
    "gemini": GeminiVendor,
    "cohere": CohereVendor,
}

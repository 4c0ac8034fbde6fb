"""OpenAI's Chat Completions and Embeddings API, and every server that imitates it.

Written once and reused for OpenAI, Groq, Together, vLLM, Ollama and llama.cpp
servers: they differ only in base URL and in the ``system`` name on spans.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from trellis.errors import UpstreamProtocolError
from trellis.inference.providers.base import EmbeddingResult, HttpProvider
from trellis.schema import ChatChunk, ChatRequest, ChatResponse

__all__ = ["OpenAICompatibleProvider", "VENDOR_DEFAULTS"]

#: provider name -> (gen_ai.provider.name, default base URL)
VENDOR_DEFAULTS: dict[str, tuple[str, str]] = {
    "openai": ("openai", "https://api.openai.com/v1"),
    "openai-compatible": ("openai", ""),
    "groq": ("groq", "https://api.groq.com/openai/v1"),
    "together": ("together", "https://api.together.xyz/v1"),
    "vllm": ("vllm", "http://127.0.0.1:8000/v1"),
    "ollama": ("ollama", "http://127.0.0.1:11434/v1"),
    "llamacpp": ("llama.cpp", "http://127.0.0.1:8080/v1"),
}


class OpenAICompatibleProvider(HttpProvider):
    system: ClassVar[str] = "openai"

    def __init__(self, deployment: Any, **kwargs: Any) -> None:
        system, default_url = VENDOR_DEFAULTS.get(deployment.provider, ("openai", ""))
        self.system = system  # type: ignore[misc]
        self.default_base_url = default_url  # type: ignore[misc]
        super().__init__(deployment, **kwargs)

    async def chat(self, request: ChatRequest, *, deadline: float | None = None) -> ChatResponse:
        body = request.upstream_body(self.deployment.model)
        content = await self.post_bytes("/chat/completions", body, deadline=deadline)
        response = self.parse_model(content, ChatResponse, "completion")
        response.keep_wire(content)  # already in OpenAI's shape: served as it came
        return response

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:  # type: ignore[override]
        body = request.upstream_body(self.deployment.model)
        body["stream"] = True
        # Ask for usage always: we need it for cost even when the caller did not.
        body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
        started: set[int] = set()
        finished: set[int] = set()
        async for event in self.post_sse("/chat/completions", body):
            if event.data.strip() == "[DONE]":
                return
            data = self.decode_event(event.data)
            if isinstance(data, dict) and "error" in data:
                raise UpstreamProtocolError(
                    f"{self.deployment.label} stream error: {self.error_message(data, 200)}",
                    provider=self.system,
                    retryable=False,
                )
            with self.expecting("chunk"):
                chunk = ChatChunk.model_validate(data)
            for choice in chunk.choices:
                started.add(choice.index)
                if choice.finish_reason:
                    finished.add(choice.index)
            yield chunk
        # No [DONE]: the stream is whole only if every choice said how it finished (some
        # llama.cpp servers end so); otherwise the upstream hung up mid-answer.
        if not started or started - finished:
            raise self.stream_incomplete("a finish_reason or [DONE]")

    async def embed(
        self, texts: list[str], *, dimensions: int | None = None, deadline: float | None = None
    ) -> EmbeddingResult:
        body: dict[str, Any] = {"model": self.deployment.model, "input": texts}
        if dimensions:
            body["dimensions"] = dimensions
        data = await self.post_json("/embeddings", body, deadline=deadline)
        with self.expecting("embeddings response"):
            items = sorted(data["data"], key=lambda item: item["index"])
            vectors = [list(map(float, item["embedding"])) for item in items]
            usage = data.get("usage") or {}
            return EmbeddingResult(
                vectors=vectors,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                model=str(data.get("model") or self.deployment.model),
            )

    async def probe(self) -> None:
        await self.get_json("/models")

"""Chat completions from a GGUF model on llama.cpp's server engine (:mod:`.engine`).

Requests are admitted up to ``local.slots`` running plus ``local.queue_size``
waiting; beyond that a request is refused at once with a 503 and ``Retry-After``
(:class:`LocalModelBusyError`) instead of waiting behind minutes of work. Running
requests are decoded together by llama.cpp (continuous batching).

The request mapping and its checks are the same as the llama-cpp-python engine's
(:mod:`.llama`): decoding defaults from ``local.*``, logit_bias, sampling extras and
json_schema refused with a 400 when they cannot be honoured, and a json_schema
answer validated against the whole schema.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from trellis.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    TrellisError,
    UnsupportedFeatureError,
    UpstreamError,
)
from trellis.inference.local.engine import EngineServer, EngineUnavailable, default_threads
from trellis.inference.local.llama import (
    GenerationStats,
    GGUFChatProvider,
    StructuredOutput,
    _logit_bias,
    compile_json_schema,
    complete_structured,
    local_request,
    usage_of,
)
from trellis.inference.tokens import GGUFTokenCounter
from trellis.schema import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ChunkChoice,
    ChunkDelta,
    new_completion_id,
)
from trellis.settings import Deployment, LocalModelSettings

__all__ = ["LocalEngineProvider", "LocalModelBusyError"]

log = logging.getLogger(__name__)

#: A JSON object, any shape: what ``response_format: json_object`` is held to.
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


class LocalModelBusyError(UpstreamError):
    """Every slot is busy and the wait queue is full: come back shortly.

    503 (the server, not the caller, is out of capacity), never retried on the same
    deployment and never counted by its circuit breaker; another deployment of the
    alias may take the request.
    """

    status_code = 503
    error_type = "server_error"
    code = "local_model_busy"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(
            message,
            provider=LocalEngineProvider.system,
            retryable=False,
            deployment_fault=False,
            retry_after=retry_after,
            headers={"Retry-After": str(max(1, round(retry_after)))},
        )


class LocalEngineProvider(GGUFChatProvider):
    """A GGUF chat model served in this process (the bundled SmolLM2 by default)."""

    def __init__(self, deployment: Deployment, settings: LocalModelSettings | None = None) -> None:
        super().__init__(deployment)
        self.settings = settings or LocalModelSettings()
        self.slots = self.settings.slots
        self.queue_size = self.settings.queue_size
        self.threads = self.settings.n_threads or default_threads()
        # One worker per slot; the executor's own queue holds the admitted waiters.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.slots, thread_name_prefix="trellis-local"
        )
        self._load_lock = threading.Lock()
        self._engine: EngineServer | None = None
        self._admitted = 0  # running + waiting
        self._admit_lock = threading.Lock()
        self._closed = False
        self._counter: GGUFTokenCounter | None = None
        #: Prompt and generated tokens of the latest finished generation (tests, metrics).
        self.last_generation: GenerationStats | None = None

    # --- public API -----------------------------------------------------------

    @property
    def load_seconds(self) -> float | None:
        """Seconds the model load took (None until loaded): for `trellis doctor`."""
        return None if self._engine is None else self._engine.load_seconds

    @property
    def active(self) -> int:
        """Requests running or waiting for a slot."""
        return self._admitted

    async def load(self) -> None:
        """Load the model now instead of on the first request (warm-up at start-up)."""
        await asyncio.to_thread(self._ensure_loaded)

    async def chat(self, request: ChatRequest, *, deadline: float | None = None) -> ChatResponse:
        body, structured = self._completion_kwargs(request)
        cancel = threading.Event()
        try:
            result = await self._submit(self._chat_job, body, structured, cancel)
        except asyncio.CancelledError:
            cancel.set()  # a timed-out request must not keep its slot
            raise
        return self._response(result)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        body, structured = self._completion_kwargs(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        future = self._admit(self._stream_job, body, structured, cancel, emit)
        completion_id = new_completion_id()
        created = int(time.time())
        model = self.deployment.model
        try:
            while True:
                kind, payload = await queue.get()
                if kind == "chunk":
                    choice = payload["choices"][0]
                    delta = {k: v for k, v in (choice.get("delta") or {}).items() if v is not None}
                    yield ChatChunk(
                        id=completion_id,
                        created=created,
                        model=model,
                        choices=[
                            ChunkChoice(
                                delta=ChunkDelta(**delta),
                                finish_reason=choice.get("finish_reason"),
                            )
                        ],
                    )
                elif kind == "usage":
                    yield ChatChunk(id=completion_id, created=created, model=model, usage=payload)
                elif kind == "error":
                    raise payload
                else:  # "done"
                    return
        finally:
            # Normal end, error, or the consumer went away: the engine stops this
            # request at its next token and the slot is free for the next one.
            cancel.set()
            if not future.done():
                future.cancel()  # still waiting for a slot: never starts

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.close)

    # --- admission ------------------------------------------------------------------

    def _admit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on a slot's worker, or refuse when slots and queue are all taken."""
        if self._closed:
            raise UpstreamError(f"{self.deployment.label} is closed", provider=self.system)
        with self._admit_lock:
            if self._admitted >= self.slots + self.queue_size:
                raise LocalModelBusyError(
                    f"{self.deployment.label} is busy: {self.slots} requests are generating "
                    f"and {self.queue_size} are waiting (local.slots, local.queue_size); "
                    "retry shortly",
                    retry_after=1.0,
                )
            self._admitted += 1
        future = self._executor.submit(fn, *args)
        future.add_done_callback(self._release)
        return future

    def _release(self, _future: concurrent.futures.Future[Any]) -> None:
        with self._admit_lock:
            self._admitted -= 1

    async def _submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self._admit(fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    # --- request mapping ----------------------------------------------------------

    def _completion_kwargs(
        self, request: ChatRequest
    ) -> tuple[dict[str, Any], StructuredOutput | None]:
        """The engine's request body for an OpenAI request; refuses what we cannot do."""
        body = local_request(request, self.deployment.label, self.settings)
        if request.logit_bias:
            body["logit_bias"] = {str(k): v for k, v in _logit_bias(request.logit_bias).items()}
        structured = self._response_format(request.response_format, body)
        return body, structured

    def _response_format(
        self, response_format: dict[str, Any] | None, body: dict[str, Any]
    ) -> StructuredOutput | None:
        """A schema (or any object for json_object) becomes our own grammar + validator."""
        kind = (response_format or {}).get("type")
        if kind in (None, "text"):
            return None
        if kind == "json_object":
            body["grammar"] = compile_json_schema(_ANY_OBJECT).grammar
            return None
        if kind == "json_schema":
            schema = ((response_format or {}).get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                raise InvalidRequestError(
                    "response_format json_schema needs json_schema.schema", param="response_format"
                )
            structured = compile_json_schema(schema)
            body["grammar"] = structured.grammar
            return structured
        raise UnsupportedFeatureError(
            f"{self.deployment.label} does not support response_format {kind!r}",
            param="response_format",
        )

    # --- worker-thread side -------------------------------------------------------

    def _ensure_loaded(self) -> EngineServer:
        engine = self._engine
        if engine is not None:
            return engine
        with self._load_lock:
            if self._engine is None:
                if self._closed:
                    raise UpstreamError(f"{self.deployment.label} is closed", provider=self.system)
                try:
                    self._engine = EngineServer(
                        self.model_path,
                        n_ctx=self.settings.n_ctx,
                        slots=self.slots,
                        threads=self.threads,
                    )
                except EngineUnavailable as exc:
                    raise UpstreamError(
                        f"{self.deployment.label}: {exc}", provider=self.system, retryable=False
                    ) from exc
            return self._engine

    def _prepare(self, engine: EngineServer, body: dict[str, Any]) -> None:
        """The checks that need the loaded model."""
        bias = body.get("logit_bias") or {}
        outside = [int(token) for token in bias if int(token) >= engine.n_vocab]
        if outside:
            raise InvalidRequestError(
                f"logit_bias token id {outside[0]} is outside the vocabulary of "
                f"{self.deployment.label} (0 to {engine.n_vocab - 1})",
                param="logit_bias",
            )

    def _complete(self, engine: EngineServer, body: dict[str, Any], cancel: threading.Event) -> Any:
        if cancel.is_set():  # the caller left while this waited for a slot
            raise UpstreamError("cancelled before it started", provider=self.system)
        result = engine.chat(body)
        if "error" in result or "choices" not in result:
            raise self._engine_error(result)
        self._record(result.get("usage") or {})
        return result

    def _complete_structured(
        self,
        engine: EngineServer,
        body: dict[str, Any],
        structured: StructuredOutput,
        cancel: threading.Event,
    ) -> Any:
        """Generate until the answer satisfies the whole schema (``complete_structured``)."""
        return complete_structured(
            self.deployment.label,
            body,
            structured,
            self.settings.schema_attempts,
            lambda attempt: self._complete(engine, attempt, cancel),
            cancel,
        )

    def _chat_job(
        self, body: dict[str, Any], structured: StructuredOutput | None, cancel: threading.Event
    ) -> Any:
        engine = self._ensure_loaded()
        self._prepare(engine, body)
        if structured is None:
            return self._complete(engine, body, cancel)
        return self._complete_structured(engine, body, structured, cancel)

    def _stream_job(
        self,
        body: dict[str, Any],
        structured: StructuredOutput | None,
        cancel: threading.Event,
        emit: Callable[[tuple[str, Any]], None],
    ) -> None:
        try:
            if cancel.is_set():
                return
            engine = self._ensure_loaded()
            self._prepare(engine, body)
            if structured is not None:
                # Validated before anything is sent, so the answer arrives in one piece.
                _emit_whole(emit, self._complete_structured(engine, body, structured, cancel))
                return
            failure: list[TrellisError] = []

            def on_chunk(chunk: dict[str, Any]) -> bool:
                if "error" in chunk or ("choices" not in chunk and "usage" not in chunk):
                    failure.append(self._engine_error(chunk))
                    return True
                if chunk.get("usage"):
                    self._record(chunk["usage"])
                    emit(("usage", usage_of(chunk["usage"])))
                if chunk.get("choices"):
                    emit(("chunk", chunk))
                return cancel.is_set()

            engine.stream(body, on_chunk)
            if failure:
                emit(("error", failure[0]))
        except TrellisError as exc:
            emit(("error", exc))
        except Exception as exc:  # handed to the consumer, which raises it
            emit(("error", self._engine_error({"error": {"message": repr(exc)}})))
        finally:
            emit(("done", None))

    def _record(self, usage: dict[str, Any]) -> None:
        self.last_generation = GenerationStats(
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            sampled=int(usage.get("completion_tokens", 0)),
        )

    def _engine_error(self, reply: dict[str, Any]) -> TrellisError:
        """The engine's error reply as our error: the request's fault is a 400."""
        nested = reply.get("error")
        error: dict[str, Any] = nested if isinstance(nested, dict) else reply
        message = str(error.get("message") or error)
        code = error.get("code")
        label = self.deployment.label
        if "context" in message and ("exceed" in message or "larger than" in message):
            return ContextLengthExceededError(
                f"{label}: the prompt does not fit the model's context window ({message}); "
                "shorten the conversation or raise local.n_ctx",
                param="messages",
            )
        if "grammar" in message:
            return InvalidRequestError(
                "response_format json_schema cannot be enforced: llama.cpp rejected the "
                f"grammar made from it ({message})",
                param="response_format",
                code="json_schema_unsupported",
            )
        if code == 400:
            return InvalidRequestError(f"{label}: {message}")
        return UpstreamError(f"{label} failed: {message}", provider=self.system, retryable=False)


def _emit_whole(emit: Callable[[tuple[str, Any]], None], result: dict[str, Any]) -> None:
    """Send a finished (non-streamed) completion as the chunks of a stream, with usage."""
    choice = result["choices"][0]
    content = choice["message"].get("content") or ""
    for delta, finish in (
        ({"role": "assistant"}, None),
        ({"content": content}, None),
        ({}, choice.get("finish_reason") or "stop"),
    ):
        emit(("chunk", {"choices": [{"delta": delta, "finish_reason": finish}]}))
    emit(("usage", usage_of(result.get("usage") or {})))

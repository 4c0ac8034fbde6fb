"""llama.cpp's own server engine in this process (the ``xllamacpp`` bindings, prebuilt wheels).

Why this engine (figures in docs/architecture.md): it installs without compiling,
runs generation at the speed of llama.cpp's server, and decodes concurrent requests
together (continuous batching over ``local.slots`` parallel slots), where
llama-cpp-python serves one request after another.

One :class:`EngineServer` per configured model: the weights, a KV cache of
``n_ctx`` tokens per slot, and llama.cpp's scheduler thread. A chat call blocks its
Python thread (the GIL is released while llama.cpp works), so each admitted request
runs on a worker of a pool with one thread per slot; streamed chunks arrive through a
callback whose ``True`` answer stops that request's generation at the next token.

llama.cpp's server also listens on a loopback port; it gets a random API key so
nothing but this process can use it. We use it for what the bindings do not expose
(tokenising, the vocabulary size).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["EngineServer", "EngineUnavailable", "default_threads", "engine_importable"]

log = logging.getLogger(__name__)

#: An engine's reply or stream chunk, already parsed from JSON.
Chunk = dict[str, Any]


class EngineUnavailable(RuntimeError):
    """The engine could not start (missing package, unreadable model file)."""


def engine_importable() -> bool:
    """Whether the ``xllamacpp`` bindings are installed (without importing them)."""
    import importlib.util

    try:
        return importlib.util.find_spec("xllamacpp") is not None
    except (ImportError, ValueError):
        return False


def default_threads() -> int:
    """Every core this process may run on.

    Measured (docs/architecture.md): on 2 cores, 2 threads generate ~1.7x faster than 1
    (99 vs 45-60 tok/s); llama.cpp's server decodes on its own thread while ours waits,
    so sparing a core for the event loop only costs speed. ``local.n_threads`` overrides.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


class EngineServer:
    """One GGUF model loaded in llama.cpp's server engine, with ``slots`` parallel slots."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int,
        slots: int,
        threads: int,
        cache_prompt: bool = True,
    ) -> None:
        try:
            import xllamacpp
        except ImportError as exc:
            raise EngineUnavailable("xllamacpp is not installed") from exc
        path = Path(model_path)
        if not path.is_file():
            raise EngineUnavailable(f"cannot load the local model {path}: the file does not exist")
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = slots
        params.n_ctx = n_ctx * slots  # split evenly: each slot holds n_ctx tokens
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.warmup = False
        params.cache_prompt = cache_prompt
        params.no_extra_bufts = True  # AMX repacking crashed on some VMs (see llama.py)
        params.ctx_shift = False  # a prompt past the context is refused, never truncated
        params.verbosity = -1
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        self._key = secrets.token_urlsafe(24)
        params.api_keys = [self._key]
        self.model_path = path
        self.slots = slots
        self.threads = threads
        started = time.perf_counter()
        try:
            self._server = xllamacpp.Server(params)
        except (RuntimeError, ValueError) as exc:
            raise EngineUnavailable(f"cannot load the local model {path}: {exc}") from exc
        self.load_seconds = time.perf_counter() - started
        self._address: str = self._server.listening_address
        self._meta: dict[str, Any] | None = None
        self._closed = False
        self._lock = threading.Lock()
        log.info(
            "loaded %s in %.2fs (%d slots, %d threads)",
            path.name,
            self.load_seconds,
            slots,
            threads,
        )

    # --- generation -----------------------------------------------------------

    def chat(self, body: dict[str, Any]) -> Chunk:
        """One non-streamed chat completion (an ``{"error": ...}`` dict on failure)."""
        result: Chunk = self._server.handle_chat_completions({**body, "stream": False})
        return result

    def stream(self, body: dict[str, Any], on_chunk: Callable[[Chunk], bool]) -> None:
        """Stream a chat completion; ``on_chunk`` returning True stops the generation."""
        self._server.handle_chat_completions(
            {**body, "stream": True, "stream_options": {"include_usage": True}}, on_chunk
        )

    # --- what only the loopback HTTP side answers --------------------------------

    def _http(self, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            self._address + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            return json.loads(response.read())

    @property
    def meta(self) -> dict[str, Any]:
        """The model's facts from llama.cpp (``n_vocab``, ``n_ctx_train``, ...)."""
        if self._meta is None:
            self._meta = dict(self._http("/v1/models")["data"][0].get("meta") or {})
        return self._meta

    @property
    def n_vocab(self) -> int:
        return int(self.meta["n_vocab"])

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as plain content (no special tokens, no BOS)."""
        reply = self._http(
            "/tokenize", {"content": text, "add_special": False, "parse_special": False}
        )
        return list(reply["tokens"])

    def close(self) -> None:
        """Free the model (llama.cpp stops its threads when the server object goes)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            server, self._server = self._server, None
        del server

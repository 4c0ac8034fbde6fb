"""Semantic response cache: reuse an answer to a differently worded, same-meaning prompt.

Only single-turn requests are eligible (one user message, optionally after one
system/developer message), with no tools and text-only content: in a longer
conversation the answer depends on every turn, and a tool-using answer on the
tools' results, so an embedding of one message cannot stand for the request.

Only the user message is embedded. Everything else that shapes the answer goes
into an exact *scope*: the model alias, every sampling parameter of the
exact-cache key (temperature, max_tokens, stop, response_format, ...), the system
message verbatim, and the API key. A lookup compares the prompt only with
entries of its own scope, so a near match can never cross a model, a parameter
set, a system prompt or a tenant.

Entries live in this process: one unit-vector matrix per scope, a global LRU
bound and a TTL. Embedding is CPU work, so it runs in a worker thread; the
store itself is only touched from the event loop and needs no lock.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import orjson

from trellis.schema import ChatRequest, ChatResponse, message_text
from trellis.settings import SemanticCacheSettings

__all__ = [
    "SemanticCache",
    "SemanticMatch",
    "TextEmbedder",
    "build_semantic_cache",
    "semantic_prompt",
]

#: Request fields that are neither the prompt nor the scope (they do not change the answer).
_SCOPE_EXCLUDE = {"stream", "stream_options", "user", "trellis", "model", "messages"}
#: Fields whose presence makes a request tool-using (current and legacy OpenAI names).
_TOOL_FIELDS = ("tools", "tool_choice", "functions", "function_call")


class TextEmbedder(Protocol):
    """What the cache needs from an embedding model (the bundled ``MiniLMEmbedder`` fits)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A ``(len(texts), dim)`` float32 array of L2-normalised vectors."""
        ...


@dataclass(slots=True, frozen=True)
class SemanticMatch:
    """A hit: the cached answer, how close its prompt was, and the trace that produced it."""

    response: ChatResponse
    similarity: float
    trace_id: str


@dataclass(slots=True)
class _Entry:
    vector: np.ndarray
    response: bytes
    trace_id: str
    expires: float


@dataclass(slots=True)
class _Scope:
    """The entries of one scope and a stacked matrix of their vectors, rebuilt on change."""

    entries: dict[int, _Entry] = field(default_factory=dict)
    _ids: list[int] = field(default_factory=list)
    _matrix: np.ndarray | None = None

    def add(self, entry_id: int, entry: _Entry) -> None:
        self.entries[entry_id] = entry
        self._matrix = None

    def remove(self, entry_id: int) -> None:
        if self.entries.pop(entry_id, None) is not None:
            self._matrix = None

    def matrix(self) -> tuple[list[int], np.ndarray]:
        if self._matrix is None:
            self._ids = list(self.entries)
            self._matrix = np.stack([self.entries[i].vector for i in self._ids])
        return self._ids, self._matrix


def semantic_prompt(request: ChatRequest) -> tuple[str, str | None] | None:
    """``(user text, system text or None)`` when the request is eligible, else None.

    Eligible means single-turn, text-only and tool-free; see the module docstring
    for why. Image or audio parts make a request ineligible because the embedding
    would see only its text and match prompts about different pictures.
    """
    if any(getattr(request, name, None) for name in _TOOL_FIELDS) or any(
        (request.model_extra or {}).get(name) for name in _TOOL_FIELDS
    ):
        return None
    if (request.n or 1) > 1:
        return None
    messages = request.messages
    if len(messages) == 2 and messages[0].role in ("system", "developer"):
        system: str | None = _text_only(messages[0].content)
        if system is None:
            return None
        user = messages[1]
    elif len(messages) == 1:
        system, user = None, messages[0]
    else:
        return None
    if user.role != "user" or user.tool_calls or _text_only(user.content) is None:
        return None
    text = message_text(user).strip()
    return (text, system) if text else None


def _text_only(content: object) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" for part in content
    ):
        return "".join(str(part.get("text", "")) for part in content)
    return None


class SemanticCache:
    """Nearest-prompt lookup per scope, bounded by ``max_entries`` (LRU) and a TTL."""

    def __init__(
        self,
        embedder: TextEmbedder,
        settings: SemanticCacheSettings,
        *,
        per_key: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.embedder = embedder
        self.threshold = settings.threshold
        self.max_entries = settings.max_entries
        self.ttl_seconds = settings.ttl_seconds
        self.per_key = per_key
        self._clock = clock
        self._scopes: dict[str, _Scope] = {}
        #: Every entry id → its scope, oldest use first: the global LRU order.
        self._lru: OrderedDict[int, str] = OrderedDict()
        self._next_id = 0
        #: How many times the embedder ran (tests assert it never runs when ineligible).
        self.embed_calls = 0

    def scope(
        self,
        alias: str,
        request: ChatRequest,
        key_id: str | None,
        system: str | None,
        project: str = "default",
    ) -> str:
        """The exact part of the match: alias, parameters, system prompt and (by default) key;
        never shared across projects."""
        params = request.model_dump(exclude_none=True, exclude=_SCOPE_EXCLUDE)
        owner = key_id if self.per_key else (None if project == "default" else "p:" + project)
        raw = orjson.dumps([alias, owner, system, params], option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(raw).hexdigest()

    async def embed(self, text: str) -> np.ndarray:
        """The prompt's unit vector, computed in a worker thread (never on the event loop)."""
        self.embed_calls += 1
        vectors = await asyncio.to_thread(self.embedder.embed, [text])
        return np.asarray(vectors[0], dtype=np.float32)

    def lookup(self, scope: str, vector: np.ndarray) -> tuple[SemanticMatch | None, float | None]:
        """The best live entry at or above the threshold, and the best similarity seen
        (recorded on misses too, so operators can see how close the near misses were)."""
        entries = self._scopes.get(scope)
        if entries is None:
            return None, None
        self._expire(scope, entries)
        if not entries.entries:
            return None, None
        ids, matrix = entries.matrix()
        scores = matrix @ vector
        best = int(np.argmax(scores))
        similarity = float(scores[best])
        if similarity < self.threshold:
            return None, similarity
        entry_id = ids[best]
        entry = entries.entries[entry_id]
        self._lru.move_to_end(entry_id)
        response = ChatResponse.model_validate_json(entry.response)
        return SemanticMatch(response, similarity, entry.trace_id), similarity

    def put(self, scope: str, vector: np.ndarray, response: ChatResponse, trace_id: str) -> None:
        entry = _Entry(
            vector=vector,
            response=orjson.dumps(response.model_dump(exclude_none=True)),
            trace_id=trace_id,
            expires=self._clock() + self.ttl_seconds,
        )
        entry_id = self._next_id
        self._next_id += 1
        self._scopes.setdefault(scope, _Scope()).add(entry_id, entry)
        self._lru[entry_id] = scope
        while len(self._lru) > self.max_entries:
            old_id, old_scope = self._lru.popitem(last=False)
            self._drop(old_scope, old_id)

    def clear(self) -> None:
        self._scopes.clear()
        self._lru.clear()

    def __len__(self) -> int:
        return len(self._lru)

    def _expire(self, scope: str, entries: _Scope) -> None:
        now = self._clock()
        for entry_id in [i for i, e in entries.entries.items() if e.expires <= now]:
            self._lru.pop(entry_id, None)
            self._drop(scope, entry_id)

    def _drop(self, scope: str, entry_id: int) -> None:
        entries = self._scopes.get(scope)
        if entries is None:
            return
        entries.remove(entry_id)
        if not entries.entries:
            del self._scopes[scope]


def build_semantic_cache(
    settings: SemanticCacheSettings, embedder: TextEmbedder, *, per_key: bool = True
) -> SemanticCache | None:
    """The cache when enabled, else None — so a disabled cache never loads or runs a model."""
    if not settings.enabled:
        return None
    return SemanticCache(embedder, settings, per_key=per_key)

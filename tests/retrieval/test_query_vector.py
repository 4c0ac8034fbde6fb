"""Queries longer than the embedder's window: cut into windows that fit, vectors averaged."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from trellis.errors import InvalidRequestError
from trellis.inference.local.embedder import MiniLMEmbedder
from trellis.retrieval.query_vector import MAX_QUERY_TOKENS, embed_query, query_windows

# About 380 MiniLM word pieces, like the long CISI information needs.
LONG = (
    "I am interested in the problems of indexing and retrieving documents in large "
    "scientific libraries, especially the ways in which automatic methods compare with "
    "manual subject indexing by trained librarians. "
) * 9 + "What evidence is there that citation indexes help researchers find relevant papers?"


class CountOnly:
    """An embedder that can only count word pieces (no ``token_spans``)."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner = inner
        self.max_tokens = inner.max_tokens

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed(texts)


def _words(text: str) -> list[str]:
    return text.split()


def test_a_query_that_fits_is_embedded_as_before(embedder: MiniLMEmbedder) -> None:
    query = "shock waves on swept wings"
    assert query_windows(embedder, query) == [(query, embedder.count_tokens(query))]
    np.testing.assert_array_equal(embed_query(embedder, query), embedder.embed([query])[0])


@pytest.mark.parametrize("spans", [True, False], ids=["token_spans", "count_tokens"])
def test_a_long_query_is_cut_between_words_into_balanced_windows(
    embedder: MiniLMEmbedder, spans: bool
) -> None:
    counter = embedder if spans else CountOnly(embedder)
    total = embedder.count_tokens(LONG)
    assert 300 < total < 2 * embedder.max_tokens
    windows = query_windows(counter, LONG)  # type: ignore[arg-type]
    assert len(windows) == 2
    for text, count in windows:
        assert count == embedder.count_tokens(text) <= embedder.max_tokens
    # Every word once, in order, none cut in two; sizes balanced rather than 254 + rest.
    assert [w for text, _ in windows for w in _words(text)] == _words(LONG)
    sizes = [count for _, count in windows]
    assert max(sizes) - min(sizes) < 40


def test_the_long_query_vector_is_the_weighted_mean_of_its_windows(
    embedder: MiniLMEmbedder,
) -> None:
    windows = query_windows(embedder, LONG)
    parts = embedder.embed([text for text, _ in windows])
    weights = np.array([count for _, count in windows], dtype=np.float32)
    expected = weights @ parts
    expected /= np.linalg.norm(expected)
    vector = embed_query(embedder, LONG)
    assert vector.shape == (embedder.dimension,) and vector.dtype == np.float32
    np.testing.assert_allclose(vector, expected, atol=1e-6)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_unspaced_text_longer_than_the_window_is_split_inside_the_word(
    embedder: MiniLMEmbedder,
) -> None:
    text = "海" * 600  # CJK: one word piece per character, no whitespace anywhere
    windows = query_windows(embedder, text)
    assert len(windows) >= 3 and "".join(w for w, _ in windows) == text
    assert all(count <= embedder.max_tokens for _, count in windows)
    assert embed_query(embedder, text).shape == (embedder.dimension,)


def test_a_query_past_the_bound_is_a_clear_400(embedder: MiniLMEmbedder) -> None:
    for text in ("word " * (MAX_QUERY_TOKENS + 10), "x" * (MAX_QUERY_TOKENS * 64 + 1)):
        with pytest.raises(InvalidRequestError) as raised:
            query_windows(embedder, text)
        assert raised.value.code == "query_too_long" and raised.value.param == "query"
        assert "mode=keyword" in raised.value.message

"""End to end with the real bundled models, on the default settings a fresh install gets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from trellis.server.app import create_app
from trellis.settings import Settings
from trellis.testing.server import ServerThread

pytestmark = pytest.mark.model

ADMIN = "tr-e2e-admin-key-000000000000"


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    data_dir: Path = tmp_path_factory.mktemp("e2e")
    settings = Settings(data_dir=data_dir, admin_key=ADMIN)
    with ServerThread(create_app(settings)) as server:
        yield openai.OpenAI(base_url=server.base_url, api_key=ADMIN, max_retries=0, timeout=120)


def test_default_models_are_listed(sdk: openai.OpenAI) -> None:
    assert {m.id for m in sdk.models.list()} >= {"local", "local-embedding"}


def test_local_chat_completion(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12,
        temperature=0,
        seed=1,
    )
    text = completion.choices[0].message.content
    assert text and text.strip()
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 12
    assert completion.usage.prompt_tokens > 5
    assert completion.choices[0].finish_reason in {"stop", "length"}


def test_local_streaming(sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_local_embeddings_are_semantic(sdk: openai.OpenAI) -> None:
    texts = [
        "A cat sits on the mat.",
        "A kitten is resting on a rug.",
        "Stock markets fell sharply.",
    ]
    result = sdk.embeddings.create(model="local-embedding", input=texts)
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.3
    assert result.usage.prompt_tokens > 0

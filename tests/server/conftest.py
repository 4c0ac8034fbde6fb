"""A real Trellis server on loopback, in front of real loopback fake providers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from trellis.server.app import create_app
from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.server import ServerThread

ADMIN_KEY = "tr-test-admin-key-0123456789"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(vendor="openai") as server:
        server.reply = "Hello from the fake upstream"
        yield server


@pytest.fixture
def backup_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(vendor="openai") as server:
        server.reply = "Hello from the backup"
        yield server


def gateway_settings(tmp_path: Path, upstream: FakeUpstream, **overrides: Any) -> Settings:
    base_url = upstream.base_url
    models = [
        {
            "name": "gpt-test",
            "context_window": 4096,
            "deployments": [
                {
                    "provider": "openai-compatible",
                    "model": "gpt-4o-mini",
                    "base_url": base_url,
                    "timeout": 2,
                }
            ],
        },
        {
            "name": "tiny-context",
            "context_window": 64,
            "deployments": [
                {"provider": "openai-compatible", "model": "gpt-4o-mini", "base_url": base_url}
            ],
        },
        {
            "name": "embed-test",
            "kind": "embedding",
            "deployments": [
                {
                    "provider": "openai-compatible",
                    "model": "text-embedding-3-small",
                    "base_url": base_url,
                }
            ],
        },
    ]
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "admin_key": ADMIN_KEY,
        "include_local_models": False,
        "models": models,
        "retry": {"attempts": 2, "backoff_initial": 0.01},
        "breaker": {"failure_threshold": 1000},
        "tracing": {"flush_interval": 0.05},
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[[Settings], ServerThread]]:
    started: list[ServerThread] = []

    def start(settings: Settings) -> ServerThread:
        server = ServerThread(create_app(settings)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, upstream: FakeUpstream
) -> ServerThread:
    return make_server(gateway_settings(tmp_path, upstream))


@pytest.fixture
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as http:
        yield http


@pytest.fixture
def sdk(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=ADMIN_KEY, max_retries=0, timeout=30)


@pytest.fixture
def admin_key() -> str:
    return ADMIN_KEY


@pytest.fixture
def make_settings(tmp_path: Path, upstream: FakeUpstream) -> Callable[..., Settings]:
    """Settings for a gateway in front of ``upstream``, with overrides."""
    return lambda **overrides: gateway_settings(tmp_path, upstream, **overrides)

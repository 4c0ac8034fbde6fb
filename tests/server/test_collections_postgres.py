"""The collections API, grounded chat and the CLI on Postgres (pgvector + full-text search).

The SQLite suites' scenarios are run again, unchanged, against a server whose
``database_url`` names a fresh Postgres database; plus what only Postgres can
do wrong: a database without pgvector answers retrieval with a clear 503.
"""

from __future__ import annotations

import importlib.util
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.server import ServerThread

from ..conftest import _admin, run_sync
from .conftest import ADMIN_KEY

pytestmark = pytest.mark.postgres

TESTS = Path(__file__).resolve().parents[1]


def _load(relative: str) -> ModuleType:
    """Another test module, to rerun its scenarios here (not collected twice: not test_*)."""
    path = TESTS / relative
    spec = importlib.util.spec_from_file_location(f"_pg_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


collections_suite = _load("server/test_collections.py")
grounded_suite = _load("server/test_grounded_chat.py")


@pytest.fixture
def pg_client(
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
    new_postgres_database: Any,
) -> Iterator[httpx.Client]:
    server = make_server(make_settings(database_url=new_postgres_database()))
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60
    ) as http:
        yield http


@pytest.mark.pgvector
def test_collection_lifecycle_on_postgres(pg_client: httpx.Client) -> None:
    collections_suite.test_collection_lifecycle(pg_client)


@pytest.mark.pgvector
def test_validation_on_postgres(pg_client: httpx.Client) -> None:
    collections_suite.test_validation_and_not_found(pg_client)


@pytest.mark.pgvector
def test_grounded_chat_on_postgres(pg_client: httpx.Client, upstream: FakeUpstream) -> None:
    grounded_suite.test_grounded_answer_carries_citations_and_trace(pg_client, upstream)


@pytest.fixture
def no_pgvector_url(new_postgres_database: Any) -> Iterator[str]:
    """A database whose owner may not create extensions, so pgvector never appears in it."""
    url = make_url(new_postgres_database())
    role = f"trellis_norole_{secrets.token_hex(4)}"
    server = url.set(database="postgres").render_as_string(hide_password=False)
    run_sync(
        _admin(
            server,
            f'CREATE ROLE "{role}" LOGIN',
            f'ALTER DATABASE "{url.database}" OWNER TO "{role}"',
        )
    )
    yield url.set(username=role).render_as_string(hide_password=False)
    run_sync(
        _admin(
            server, f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)', f'DROP ROLE "{role}"'
        )
    )


@pytest.mark.pgvector  # installable on the server, but this database's owner may not
def test_without_pgvector_the_gateway_runs_and_retrieval_says_why(
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
    no_pgvector_url: str,
) -> None:
    server = make_server(make_settings(database_url=no_pgvector_url))
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as http:
        chat = http.post(
            "/v1/chat/completions",
            json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 200, chat.text
        for response in (
            http.get("/v1/collections"),
            http.post("/v1/collections", json={"name": "docs"}),
        ):
            assert response.status_code == 503, response.text
            failure = response.json()["error"]
            assert failure["code"] == "pgvector_missing"
            assert "pgvector" in failure["message"] and "CREATE EXTENSION" in failure["message"]


@pytest.mark.pgvector
def test_cli_retrieval_on_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_postgres_database: Any
) -> None:
    cli_suite = _load("test_cli_retrieval.py")
    config = tmp_path / "trellis.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "include_local_models": False,
                "database_url": new_postgres_database(),
            }
        )
    )
    monkeypatch.delenv("TRELLIS_CONFIG", raising=False)
    corpus = cli_suite.corpus.__wrapped__(tmp_path)
    cli_suite.test_ingest_search_and_collections(config, corpus)

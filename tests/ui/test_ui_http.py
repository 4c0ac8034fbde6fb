"""The UI's edges over plain HTTP (no browser): headers, CSRF, sessions, redirects, layout."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from trellis.server.app import create_app
from trellis.settings import Settings
from trellis.store import Database
from trellis.store.tables import ui_sessions
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.server import ServerThread
from trellis.ui.sessions import UiSessions

ADMIN = "tr-ui-http-admin-key-0123456789"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with FakeUpstream(vendor="openai") as upstream:
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("ui-http") / "data",
            admin_key=ADMIN,
            include_local_models=False,
            models=[
                {
                    "name": "gpt-test",
                    "deployments": [
                        {
                            "provider": "openai-compatible",
                            "model": "gpt-4o-mini",
                            "base_url": upstream.base_url,
                        }
                    ],
                }
            ],
        )
        with ServerThread(create_app(settings)) as server:
            yield server.url


def signed_in(base: str, key: str = ADMIN, target: str = "/ui/") -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=base, timeout=30)
    form = client.get("/ui/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token
    done = client.post("/ui/sign-in", data={"csrf": token.group(1), "api_key": key, "next": target})
    assert done.status_code == 303, done.text
    page = client.get("/ui/")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert csrf
    return client, csrf.group(1)


def test_pages_carry_a_strict_content_security_policy(base: str) -> None:
    client, _ = signed_in(base)
    page = client.get("/ui/traces")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text  # every script is a file under /ui/static
    static = client.get("/ui/static/vendor/htmx/htmx.min.js")
    assert static.status_code == 200 and "htmx" in static.text[:2000]
    assert client.get("/ui/static/vendor/htmx/LICENSE").status_code == 200
    assert client.get("/ui/static/vendor/uplot/LICENSE").status_code == 200


def test_sign_in_needs_its_form_token_and_redirects_only_inside_the_ui(base: str) -> None:
    client = httpx.Client(base_url=base, timeout=30)
    forged = client.post("/ui/sign-in", data={"csrf": "x", "api_key": ADMIN})
    assert forged.status_code == 403 and "expired" in forged.text
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/sign-in").text)
    assert token
    away = client.post(
        "/ui/sign-in",
        data={"csrf": token.group(1), "api_key": ADMIN, "next": "//evil.example/"},
    )
    assert away.status_code == 303 and away.headers["location"] == "/ui/"


def test_htmx_requests_need_the_csrf_header_and_posts_the_token(base: str) -> None:
    client, csrf = signed_in(base)
    assert client.get("/ui/traces", headers={"hx-request": "true"}).status_code == 403
    ok = client.get("/ui/traces", headers={"hx-request": "true", "x-csrf-token": csrf})
    assert ok.status_code == 200 and "<html" not in ok.text  # a fragment
    refused = client.post("/ui/keys", data={"name": "x"})
    assert refused.status_code == 403
    scopeless = client.post("/ui/keys", data={"name": "x", "csrf": csrf})
    assert scopeless.status_code == 400 and "at least one scope" in scopeless.text
    made = client.post("/ui/keys", data={"name": "x", "csrf": csrf, "scopes": "observer"})
    assert made.status_code == 201


def test_an_htmx_request_without_a_session_is_sent_to_sign_in(base: str) -> None:
    client = httpx.Client(base_url=base, timeout=30)
    answer = client.get("/ui/traces", headers={"hx-request": "true"})
    assert answer.headers["hx-redirect"] == "/ui/sign-in?next=/ui/traces"
    assert client.get("/ui/traces").headers["location"] == "/ui/sign-in?next=/ui/traces"


def test_revoking_a_key_ends_its_browser_sessions(base: str) -> None:
    admin, csrf = signed_in(base)
    made = httpx.post(
        f"{base}/v1/keys",
        json={"name": "short-lived", "scopes": ["observer"]},
        headers={"Authorization": f"Bearer {ADMIN}"},
    ).json()
    viewer, _ = signed_in(base, made["key"])
    assert viewer.get("/ui/traces").status_code == 200
    assert admin.post(f"/ui/keys/{made['id']}/revoke", data={"csrf": csrf}).status_code == 200
    assert viewer.get("/ui/traces").status_code == 303


def test_bad_input_is_a_4xx_page_with_the_reason(base: str) -> None:
    client, csrf = signed_in(base)
    missing = client.get("/ui/traces/0123456789abcdef0123456789abcdef")
    assert missing.status_code == 404 and "No trace" in missing.text
    window = client.get("/ui/dashboard?window=forever")
    assert window.status_code == 400 and "window" in window.text
    grouped = client.get("/ui/dashboard?group_by=colour")
    assert grouped.status_code == 400
    no_collection = client.post(
        "/ui/collections/nothing-here/search", data={"csrf": csrf, "query": "x"}
    )
    assert no_collection.status_code == 404
    unknown_model = client.post(
        "/ui/chat/stream",
        json={"model": "no-such-model", "message": "hi"},
        headers={"x-csrf-token": csrf},
    )
    assert unknown_model.status_code == 404 and "no-such-model" in unknown_model.text


def test_model_output_is_escaped(base: str) -> None:
    client, csrf = signed_in(base)
    hostile = "<script>alert(1)</script>"
    assert client.post("/ui/collections", data={"csrf": csrf, "name": "esc"}).status_code == 201
    uploaded = client.post(
        "/ui/collections/esc/upload",
        data={"csrf": csrf},
        files={"files": ("x.md", f"# Title\n\n{hostile} otters".encode())},
    )
    assert uploaded.status_code == 200, uploaded.text
    hits = client.post(
        "/ui/collections/esc/search", data={"csrf": csrf, "query": "otters", "mode": "keyword"}
    )
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hits.text and hostile not in hits.text


async def test_sessions_expire_after_being_idle(tmp_path: Path) -> None:
    now = [1000.0]
    async with Database(f"sqlite+aiosqlite:///{tmp_path / 'ui.db'}") as db:
        sessions = UiSessions(db, idle_seconds=600, clock=lambda: now[0])
        session = await sessions.create("key_1")
        now[0] += 599
        found = await sessions.get(session.id)
        assert found is not None and (found.key_id, found.csrf) == ("key_1", session.csrf)
        now[0] += 599  # seen 599 s ago: the last request restarted the idle time
        assert await sessions.get(session.id) is not None
        now[0] += 601
        assert await sessions.get(session.id) is None
        assert await sessions.get("not-a-session") is None
        # The table knows only the id's hash: a copy of it signs nobody in.
        async with db.engine.connect() as conn:
            stored = (await conn.execute(sa.select(ui_sessions.c.id_hash))).scalars().all()
        assert session.id not in stored and len(stored) == 1
        await sessions.create("key_2")  # a sign-in clears the expired rows
        async with db.engine.connect() as conn:
            keys = (await conn.execute(sa.select(ui_sessions.c.key_id))).scalars().all()
        assert keys == ["key_2"]


async def test_sessions_are_shared_by_processes_and_outlive_them(tmp_path: Path) -> None:
    """Two servers on one database (workers, replicas, or a restart) see the same
    sessions; ending one, or every one of a key, ends it for both."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ui.db'}"
    async with Database(url) as first_db, Database(url) as second_db:
        first, second = UiSessions(first_db), UiSessions(second_db)
        kept = await first.create("key_a")
        other = await first.create("key_a")
        found = await second.get(kept.id)
        assert found is not None and found.csrf == kept.csrf
        await second.end(kept.id)
        assert await first.get(kept.id) is None
        assert await second.end_for_key("key_a") == 1
        assert await first.get(other.id) is None


def test_a_session_survives_a_server_restart(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", admin_key=ADMIN, include_local_models=False, models=[]
    )
    with ServerThread(create_app(settings)) as server:
        client, csrf = signed_in(server.url)
    with ServerThread(create_app(settings)) as server:
        client.base_url = httpx.URL(server.url)
        page = client.get("/ui/")
        assert page.status_code == 200 and f'content="{csrf}"' in page.text


def test_static_files_ship_with_their_licences() -> None:
    static = Path(__file__).resolve().parents[2] / "src" / "trellis" / "ui" / "static" / "vendor"
    for library in ("htmx", "uplot"):
        assert (static / library / "LICENSE").read_text().strip()

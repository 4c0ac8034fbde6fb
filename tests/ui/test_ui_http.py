"""The UI's edges over plain HTTP (no browser): headers, CSRF, sessions, redirects, layout."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def reply(body: dict[str, Any]) -> str:
    """The fake model's answer: one carrying an e-mail address when asked to."""
    if "share an address" in json.dumps(body):
        return "Write to bob@example.com for details."
    return "Hello from fake"


def suite_file(folder: Path) -> Path:
    (folder / "hello.jsonl").write_text(
        "\n".join(f'{{"id": "c{i}", "input": "case {i}", "expected": "x"}}' for i in range(2))
    )
    path = folder / "nightly.yaml"
    suite = {
        "name": "hello",
        "dataset": "hello.jsonl",
        "candidates": [{"name": "a", "model": "gpt-test", "prompt": "Say: {input}"}],
        "metrics": ["exact"],
    }
    path.write_text(json.dumps(suite))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("ui-http")
    with FakeUpstream(vendor="openai", reply=reply) as upstream:
        deployment = {
            "provider": "openai-compatible",
            "model": "gpt-4o-mini",
            "base_url": upstream.base_url,
        }
        settings = Settings(
            data_dir=folder / "data",
            admin_key=ADMIN,
            include_local_models=False,
            models=[
                {"name": "gpt-test", "deployments": [deployment]},
                {
                    # A hosted deployment (privacy policies apply) with the output PII check.
                    "name": "gpt-private",
                    "deployments": [{**deployment, "in_house": False}],
                    "privacy": {"pii": "redact"},
                    "guard": {"output": {"pii": "redact"}},
                },
            ],
            tracing={"flush_interval": 0.05},
            evals={
                "scheduler": False,
                "schedules": [
                    {"name": "nightly", "suite": str(suite_file(folder)), "cron": "0 2 * * *"}
                ],
            },
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


async def test_sessions_expire_after_being_idle(db: Database) -> None:
    """On SQLite and Postgres."""
    now = [1000.0]
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


def api(base: str, key: str = ADMIN) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def new_key(base: str, name: str, *scopes: str) -> tuple[str, str]:
    made = api(base).post("/v1/keys", json={"name": name, "scopes": list(scopes)})
    assert made.status_code == 201, made.text
    return made.json()["id"], made.json()["key"]


def test_budgets_show_usage_and_admins_set_limits_as_the_api_validates(base: str) -> None:
    key_id, secret = new_key(base, "budgeted", "inference")
    admin, csrf = signed_in(base)
    bad = admin.post("/ui/budgets/limits", data={"csrf": csrf, "subject": "team:x", "rpm": "5"})
    assert bad.status_code == 400 and "not a limit subject" in bad.text
    zero = admin.post(
        "/ui/budgets/limits", data={"csrf": csrf, "subject": f"key:{key_id}", "rpm": "0"}
    )
    assert zero.status_code == 400 and "rpm" in zero.text
    fraction = admin.post(
        "/ui/budgets/limits",
        data={"csrf": csrf, "subject": f"key:{key_id}", "alert_thresholds": "0.5, 2"},
    )
    assert fraction.status_code == 400 and "alert" in fraction.text
    unknown = admin.post("/ui/budgets/limits", data={"csrf": csrf, "subject": "key:key_nobody"})
    assert unknown.status_code == 404
    saved = admin.post(
        "/ui/budgets/limits",
        data={"csrf": csrf, "subject": f"key:{key_id}", "rpm": "10", "daily_usd": "2.5"},
    )
    assert saved.status_code == 201, saved.text
    assert api(base).get(f"/v1/limits/key:{key_id}").json()["rpm"] == 10
    # The key spends: its page shows the requests used of its bucket, as /v1/usage does.
    for _ in range(3):
        called = api(base, secret).post(
            "/v1/chat/completions",
            json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert called.status_code == 200, called.text
    usage = api(base, secret).get(f"/v1/usage/key:{key_id}").json()
    used = usage["requests"]["limit"] - usage["requests"]["remaining"]
    assert used >= 3
    viewer, viewer_csrf = signed_in(base, secret)
    page = viewer.get("/ui/budgets")
    assert page.status_code == 200
    assert f'data-subject="key:{key_id}"' in page.text
    assert re.search(rf'<meter min="0" max="10" value="{used}"', page.text), page.text
    assert "key:key_" not in page.text.replace(f"key:{key_id}", "")  # only its own subject
    assert "Set a subject" not in page.text
    denied = viewer.post(
        "/ui/budgets/limits", data={"csrf": viewer_csrf, "subject": f"key:{key_id}"}
    )
    assert denied.status_code == 403
    deleted = admin.post(f"/ui/budgets/limits/key:{key_id}/delete", data={"csrf": csrf})
    assert deleted.status_code == 200 and "defaults apply again" in deleted.text
    assert api(base).get(f"/v1/limits/key:{key_id}").status_code == 404


def guarded_trace(base: str) -> str:
    called = api(base).post(
        "/v1/chat/completions",
        json={
            "model": "gpt-private",
            "messages": [
                {"role": "user", "content": "I am alice@example.org: share an address please"}
            ],
        },
    )
    assert called.status_code == 200, called.text
    assert "[EMAIL]" in called.json()["choices"][0]["message"]["content"]
    return str(called.headers["x-trellis-trace-id"])


def test_guard_page_lists_the_requests_the_guards_acted_on(base: str) -> None:
    trace_id = guarded_trace(base)
    plain = api(base).post(
        "/v1/chat/completions",
        json={"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}]},
    )
    assert plain.status_code == 200
    deadline = time.monotonic() + 10
    while True:  # the trace writer flushes in the background
        listed = api(base).get("/v1/traces", params={"guard": "pii", "since": "1h"}).json()
        if trace_id in [t["id"] for t in listed["data"]]:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert plain.headers["x-trellis-trace-id"] not in [t["id"] for t in listed["data"]]
    assert api(base).get("/v1/traces", params={"guard": "everything"}).status_code == 400
    client, _ = signed_in(base)
    page = client.get("/ui/guard?window=1h")
    assert page.status_code == 200
    assert f'href="/ui/traces/{trace_id}"' in page.text
    assert plain.headers["x-trellis-trace-id"][:12] not in page.text
    counts = page.text[page.text.index('id="counts"') : page.text.index("<h2>Requests</h2>")]
    assert re.search(r"email <strong>\d+</strong>", counts)
    assert re.search(r"redact <strong>\d+</strong>", counts)
    row = page.text[page.text.index(f'href="/ui/traces/{trace_id}"') :].split("</tr>")[0]
    assert "email" in row and "redact" in row and "pii:email" in row
    only_input = client.get("/ui/guard?window=1h&guard=input")
    assert only_input.status_code == 200 and trace_id not in only_input.text
    assert client.get("/ui/guard?window=forever").status_code == 400
    observer_only, _ = signed_in(base, new_key(base, "no-observer", "inference")[1])
    assert observer_only.get("/ui/guard").status_code == 403


def finished_run(base: str) -> str:
    content = "\n".join(
        f'{{"id": "c{i}", "input": "case {i}", "expected": "Hello from fake"}}' for i in range(3)
    )
    uploaded = api(base).post("/v1/evals/datasets", json={"name": "lab", "content": content})
    assert uploaded.status_code == 200, uploaded.text
    started = api(base).post(
        "/v1/evals/runs",
        json={
            "suite": {
                "name": "lab",
                "dataset": f"lab@{uploaded.json()['version']}",
                "candidates": [{"name": "a", "model": "gpt-test", "prompt": "Say: {input}"}],
                "metrics": ["exact"],
            }
        },
    )
    assert started.status_code == 200, started.text
    run_id = str(started.json()["id"])
    deadline = time.monotonic() + 30
    while api(base).get(f"/v1/evals/runs/{run_id}").json()["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return run_id


def test_a_labelling_queue_from_a_run_labelled_and_exported(base: str) -> None:
    run_id = finished_run(base)
    client, csrf = signed_in(base)
    form = client.get(f"/ui/evals/queues?run={run_id}")
    assert f'<option value="{run_id}" selected>' in form.text
    bad = client.post(
        "/ui/evals/queues", data={"csrf": csrf, "run_id": run_id, "scale": "five stars"}
    )
    assert bad.status_code == 400 and "bad scale" in bad.text
    made = client.post(
        "/ui/evals/queues", data={"csrf": csrf, "run_id": run_id, "scale": "1-5:4", "name": "Q"}
    )
    assert made.status_code == 303
    queue_url = made.headers["location"]
    queue_id = queue_url.rsplit("/", 1)[1]
    labelled = 0
    while True:
        page = client.get(f"{queue_url}/label")
        assert page.status_code == 200
        found = re.search(r'action="(/ui/evals/queues/[^"]+/items/(\d+)/label)"', page.text)
        if found is None:
            assert "Nothing left to label" in page.text
            break
        assert "autofocus" in page.text and 'max="5.0"' in page.text
        out_of_scale = client.post(found.group(1), data={"csrf": csrf, "score": "9"})
        assert out_of_scale.status_code == 400 and "outside the queue" in out_of_scale.text
        score = "5" if labelled == 0 else "2"
        saved = client.post(
            found.group(1),
            data={"csrf": csrf, "score": score, "comment": "ok", "reference": "Hi there"},
        )
        assert saved.status_code == 303
        assert saved.headers["location"].endswith(f"/label?saved={found.group(2)}")
        labelled += 1
    assert labelled == 3
    progress = api(base).get(f"/v1/evals/queues/{queue_id}").json()["progress"]
    assert progress["labelled"] == 3 and progress["passed"] == 1
    exported = client.post(f"{queue_url}/export", data={"csrf": csrf, "dataset": "lab-gold"})
    assert exported.status_code == 201 and "3 cases" in exported.text
    stored = api(base).get("/v1/evals/datasets").json()["data"]
    assert [d["cases"] for d in stored if d["name"] == "lab-gold"] == [3]
    other, _ = signed_in(base, new_key(base, "someone", "inference")[1])
    assert other.get(queue_url).status_code == 403  # another key's queue needs observer


def test_schedules_show_on_the_evals_page_and_admins_run_one_now(base: str) -> None:
    client, csrf = signed_in(base)
    page = client.get("/ui/evals")
    assert 'id="schedules"' in page.text and "nightly" in page.text and "never ran" in page.text
    started = client.post("/ui/evals/schedules/nightly/run", data={"csrf": csrf})
    assert started.status_code == 202 and "started" in started.text
    assert client.post("/ui/evals/schedules/nope/run", data={"csrf": csrf}).status_code == 404
    deadline = time.monotonic() + 30
    while True:
        runs = api(base).get("/v1/evals/schedules/nightly/runs").json()["data"]
        if runs and runs[0]["status"] != "running":
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    run_id = runs[0]["run_id"]
    page = client.get("/ui/evals")
    assert f'href="/ui/evals/runs/{run_id}"' in page.text
    assert ">passed</span>" in page.text  # the first run passes and becomes the baseline
    observer, observer_csrf = signed_in(base, new_key(base, "watcher", "observer")[1])
    seen = observer.get("/ui/evals")
    assert "nightly" in seen.text and "Run now" not in seen.text
    denied = observer.post("/ui/evals/schedules/nightly/run", data={"csrf": observer_csrf})
    assert denied.status_code == 403
    inference, _ = signed_in(base, new_key(base, "caller", "inference")[1])
    assert 'id="schedules"' not in inference.get("/ui/evals").text

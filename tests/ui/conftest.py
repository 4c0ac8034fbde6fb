"""The web UI in a real browser: Debian's chromium driven by Playwright, against a real
server (SQLite, the fake OpenAI upstream on loopback).

One browser and one server serve the module of tests (closed after it, so the sync
Playwright loop never outlives it into other tests); each test opens its own
browser context (cookies) and signs in. Screenshots of every page, at a laptop and a
phone width, go to ``tests-output/ui/``. Without chromium the tests skip and say how to
install it, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from trellis.server.app import create_app
from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.server import ServerThread

ADMIN_KEY = "tr-ui-test-admin-key-0123456789"
SHOTS = Path(__file__).resolve().parents[2] / "tests-output" / "ui"
CHROMIUM = os.environ.get("TRELLIS_CHROMIUM", "/usr/bin/chromium")
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _chromium() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if path is None:
        message = (
            f"no chromium at {CHROMIUM}: `make chromium` (as root on Debian: apt-get install "
            "chromium) installs it"
        )
        if _in_ci():
            pytest.fail(f"{message} (CI=true: the browser tests must run)", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if _in_ci():
            pytest.fail("the playwright package is missing (pip install -e '.[dev]')")
        pytest.skip("the playwright package is missing (pip install -e '.[dev]')")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


ANSWER = "Sea otters crack shellfish with stones [1]. Kelp shelters them [2]."


def reply(body: dict[str, Any]) -> str:
    """The fake model: a rubric judge's verdict, an answer with an e-mail address when
    asked to share one (for the output guard), else the otters answer."""
    prompt = json.dumps(body)
    if "Rubric:" in prompt:
        return json.dumps({"score": 4, "reason": "mostly right"})
    if "share an address" in prompt:
        return "Write to bob@example.com for details."
    return ANSWER


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(vendor="openai", reply=reply) as server:
        yield server


def suite_file(folder: Path) -> Path:
    """A scheduled suite (its dataset beside it) for the Evals page's schedules."""
    (folder / "nightly.jsonl").write_text(
        "\n".join(f'{{"id": "n{i}", "input": "case {i}", "expected": "x"}}' for i in range(2))
    )
    path = folder / "nightly.yaml"
    suite = {
        "name": "nightly",
        "dataset": "nightly.jsonl",
        "candidates": [{"name": "a", "model": "gpt-test", "prompt": "Say: {input}"}],
        "metrics": ["exact"],
    }
    path.write_text(json.dumps(suite))  # JSON is YAML
    return path


#: The test workflows (``api_flows:review`` has a human step).
FLOWS = Path(__file__).resolve().parent.parent / "flows"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[str]:
    data = tmp_path_factory.mktemp("ui-server")
    sys.path.insert(0, str(FLOWS))
    settings = Settings(
        data_dir=data / "data",
        admin_key=ADMIN_KEY,
        include_local_models=False,
        models=[
            {
                "name": "gpt-test",
                "context_window": 8192,
                "deployments": [
                    {
                        "provider": "openai-compatible",
                        "model": "gpt-4o-mini",
                        "base_url": upstream.base_url,
                        "timeout": 5,
                    }
                ],
            },
            {
                # A hosted deployment (privacy policies apply) with the output PII check.
                "name": "gpt-private",
                "deployments": [
                    {
                        "provider": "openai-compatible",
                        "model": "gpt-4o-mini",
                        "base_url": upstream.base_url,
                        "in_house": False,
                    }
                ],
                "privacy": {"pii": "redact"},
                "guard": {"output": {"pii": "redact"}},
            },
        ],
        tracing={"flush_interval": 0.05},
        workflows=["api_flows:review"],
        evals={
            "scheduler": False,
            "schedules": [{"name": "nightly", "suite": str(suite_file(data)), "cron": "0 2 * * *"}],
        },
    )
    try:
        with ServerThread(create_app(settings)) as running:
            yield running.url
    finally:
        sys.path.remove(str(FLOWS))


@pytest.fixture(scope="module")
def api(server: str) -> Iterator[httpx.Client]:
    """The HTTP API as the admin: to prepare data the way an application would."""
    with httpx.Client(
        base_url=server, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture(scope="module")
def make_key(api: httpx.Client) -> Callable[..., str]:
    def make(name: str, *scopes: str) -> str:
        made = api.post("/v1/keys", json={"name": name, "scopes": list(scopes)})
        assert made.status_code == 201, made.text
        return str(made.json()["key"])

    return make


class UiPage:
    """A browser tab of one signed-in context, with the checks every page gets."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.csp_violations: list[str] = []
        page.on("console", self._console)
        page.on("dialog", lambda dialog: dialog.accept())

    def _console(self, message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.csp_violations.append(message.text)

    def goto(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def sign_in(self, key: str) -> None:
        self.goto("/ui/sign-in")
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(re.compile(r".*/ui/$"))

    def shoot(self, name: str) -> None:
        """Screenshots at a laptop and a phone width; at the phone width the page must not
        scroll sideways (wide tables scroll inside their own box)."""
        self.page.set_viewport_size(DESKTOP)
        self.page.wait_for_timeout(300)
        self.page.screenshot(path=str(SHOTS / f"{name}-desktop.png"), full_page=True)
        self.page.set_viewport_size(PHONE)
        self.page.wait_for_timeout(300)  # charts redraw at the new width
        overflow = self.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        self.page.screenshot(path=str(SHOTS / f"{name}-phone.png"), full_page=True)
        self.page.set_viewport_size(DESKTOP)
        assert overflow <= 1, f"{name} scrolls sideways by {overflow}px at a phone width"
        assert not self.csp_violations, self.csp_violations


@pytest.fixture
def ui(browser: Any, server: str) -> Iterator[Callable[[str | None], UiPage]]:
    contexts: list[Any] = []

    def open_as(key: str | None) -> UiPage:
        """A new browser context signed in with ``key`` (None: not signed in)."""
        context = browser.new_context(viewport=DESKTOP)
        contexts.append(context)
        tab = UiPage(context.new_page(), server)
        if key is not None:
            tab.sign_in(key)
        return tab

    yield open_as
    for context in contexts:
        context.close()


@pytest.fixture
def admin_key() -> str:
    return ADMIN_KEY

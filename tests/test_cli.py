"""The ``trellis`` command, run as users run it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from trellis.access.keys import KeyStore
from trellis.cli import app
from trellis.cli._common import with_db
from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream, Fault

runner = CliRunner()


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(vendor="openai") as server:
        server.reply = "hello from the cli test"
        yield server


@pytest.fixture
def config(tmp_path: Path, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "trellis.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "include_local_models": False,
                "default_model": "fake",
                "retry": {"attempts": 1},
                "models": [
                    {
                        "name": "fake",
                        "deployments": [
                            {
                                "provider": "openai-compatible",
                                "model": "gpt-4o-mini",
                                "base_url": upstream.base_url,
                            }
                        ],
                    }
                ],
            }
        )
    )
    monkeypatch.delenv("TRELLIS_CONFIG", raising=False)
    return path


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_keys_create_list_revoke(config: Path) -> None:
    code, out = invoke(
        "keys",
        "create",
        "ci-bot",
        "--scope",
        "inference",
        "-m",
        "fake",
        "-c",
        str(config),
        "--json",
    )
    assert code == 0, out
    created = json.loads(out)
    assert created["key"].startswith("tr-") and created["allowed_models"] == ["fake"]
    code, out = invoke("keys", "list", "-c", str(config), "--json")
    listed = json.loads(out)
    assert any(k["id"] == created["id"] for k in listed)
    assert "tr-" not in out.replace(created["prefix"], "")  # no secret is listed
    code, out = invoke("keys", "revoke", created["id"], "-c", str(config))
    assert code == 0 and "Revoked" in out
    code, out = invoke("keys", "revoke", "key_missing", "-c", str(config))
    assert code == 1
    code, out = invoke("keys", "create", "bad", "--scope", "root", "-c", str(config))
    assert code == 1 and "scope" in out


def test_the_configured_admin_key_cannot_be_revoked_from_the_cli(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRELLIS_ADMIN_KEY", "tr-configured-admin-0123456789")
    settings = Settings.load(str(config))

    async def install() -> None:
        await with_db(settings, lambda db: KeyStore(db).ensure_admin(settings.admin_key))

    asyncio.run(install())
    code, out = invoke("keys", "list", "-c", str(config), "--json")
    (admin,) = [k for k in json.loads(out) if "admin" in k["scopes"]]
    code, out = invoke("keys", "revoke", admin["id"], "-c", str(config))
    assert code == 1 and "admin key set in the configuration" in out, out
    code, out = invoke("keys", "list", "-c", str(config), "--json")
    assert [k["revoked_at"] for k in json.loads(out) if k["id"] == admin["id"]] == [None]


def test_models_table_and_json(config: Path) -> None:
    code, out = invoke("models", "-c", str(config))
    assert code == 0 and "fake" in out and "openai-compatible/gpt-4o-mini" in out
    code, out = invoke("models", "-c", str(config), "--json")
    assert [m["name"] for m in json.loads(out)] == ["fake"]


def test_chat_in_process_streams_the_answer(config: Path) -> None:
    code, out = invoke("chat", "Say hello", "-c", str(config))
    assert code == 0, out
    assert "hello from the cli test" in out


def test_doctor_reports_each_deployment(config: Path, upstream: FakeUpstream) -> None:
    code, out = invoke("doctor", "-c", str(config), "--json")
    assert code == 0, out
    checks = {c["check"]: c["ok"] for c in json.loads(out)}
    assert checks["database"] and checks["deployment openai-compatible/gpt-4o-mini"]
    upstream.faults.always(Fault.status(503))
    code, out = invoke("doctor", "-c", str(config), "--json")
    assert code == 1
    failed = [c for c in json.loads(out) if not c["ok"]]
    assert failed and "503" in failed[0]["detail"]


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    code, out = invoke("models", "-c", str(tmp_path / "nope.yaml"))
    assert code == 2 and "not found" in out


def test_invalid_config_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: x\n    deployments: []\n")
    code, out = invoke("models", "-c", str(bad))
    assert code == 2 and "invalid settings" in out


def test_a_short_admin_key_is_invalid_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRELLIS_ADMIN_KEY", "hunter2")
    code, out = invoke("models")
    assert code == 2 and "invalid settings" in out and "admin key must be 20" in out
    assert "hunter2" not in out  # a rejected secret is never printed


def test_a_header_with_a_line_break_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "models:\n  - name: x\n    deployments:\n"
        '      - {provider: openai, model: m, headers: {x-team: "a\\r\\nx-evil: 1"}}\n'
    )
    code, out = invoke("models", "-c", str(bad))
    assert code == 2 and "invalid settings" in out and "line break" in out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_with_a_missing_ca_file_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "trellis.yaml"
    # serve exports the config path for its workers: restore the environment afterwards.
    monkeypatch.setenv("TRELLIS_CONFIG", str(config))
    missing = tmp_path / "no-such-ca.pem"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "include_local_models": False,
                "models": [
                    {
                        "name": "corp",
                        "deployments": [
                            {
                                "provider": "openai",
                                "model": "gpt-4o-mini",
                                "base_url": "https://llm.corp.test/v1",
                                "ca_file": str(missing),
                            }
                        ],
                    }
                ],
            }
        )
    )
    code, out = invoke("serve", "-c", str(config))
    assert code == 1, out
    assert "cannot load its TLS files" in out and "Traceback" not in out


def test_serve_prints_the_admin_key_once_and_serves(config: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    command = [sys.executable, "-m", "trellis.cli", "serve", "--port", str(port), "-c", str(config)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("server did not start")
        sign_in = httpx.get(f"http://127.0.0.1:{port}/ui/sign-in")  # the web UI is served
        assert sign_in.status_code == 200 and "API key" in sign_in.text
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    keys = re.findall(r"tr-[A-Za-z0-9_-]{20,}", stderr)
    assert len(keys) == 1, stderr
    assert f"http://127.0.0.1:{port}/ui/" in " ".join(stdout.split()), stdout
    # The printed key works, and a second start does not print another.
    code, out = invoke("keys", "list", "-c", str(config), "--json")
    assert [k["name"] for k in json.loads(out)] == ["admin"]

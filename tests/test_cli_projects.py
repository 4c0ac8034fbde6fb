"""``trellis projects``, ``trellis keys`` with projects, roles, expiry and rotation, and
``trellis audit``, on a real SQLite database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from trellis.cli import app

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("TRELLIS_CONFIG", "TRELLIS_ADMIN_KEY", "TRELLIS_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "trellis.yaml"
    path.write_text(
        yaml.safe_dump({"data_dir": str(tmp_path / "data"), "include_local_models": False})
    )
    return path


def invoke(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "-c", str(config)], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_projects_keys_and_audit_from_the_cli(config: Path) -> None:
    assert invoke(config, "projects", "create", "team-a", "--name", "Team A")[0] == 0
    code, out = invoke(config, "projects", "list", "--json")
    assert code == 0 and [p["id"] for p in json.loads(out)] == ["default", "team-a"]
    code, out = invoke(
        config, "keys", "create", "loader", "--project", "team-a", "--role", "ingest",
        "--role", "observer", "--expires", "30d", "--json",
    )  # fmt: skip
    assert code == 0, out
    key = json.loads(out)
    assert key["project"] == "team-a" and key["scopes"] == ["ingest", "observer"]
    assert key["expires_at"] is not None
    code, out = invoke(config, "keys", "create", "x", "--project", "nowhere")
    assert code != 0
    code, out = invoke(config, "keys", "create", "x", "--expires", "soon")
    assert code != 0 and "duration" in out
    code, out = invoke(config, "keys", "update", key["id"], "--role", "eval", "--never-expires")
    assert code == 0, out
    code, out = invoke(config, "keys", "rotate", key["id"], "--grace", "24h", "--json")
    assert code == 0, out
    rotated = json.loads(out)
    assert rotated["key"] != key["key"] and rotated["previous_expires_at"] is not None
    code, out = invoke(config, "keys", "list", "--project", "team-a", "--json")
    listed = json.loads(out)
    assert [(k["id"], k["scopes"], k["expires_at"]) for k in listed] == [
        (key["id"], ["eval"], None)
    ]
    code, out = invoke(config, "projects", "delete", "team-a")
    assert code != 0, "a project that owns a key is not deleted"
    assert invoke(config, "keys", "revoke", key["id"])[0] == 0
    code, out = invoke(config, "audit", "--project", "team-a", "--json")
    assert code == 0, out
    entries = json.loads(out)
    assert [e["action"] for e in reversed(entries)] == [
        "project.create",
        "key.create",
        "key.update",
        "key.rotate",
        "key.revoke",
    ]
    assert all(e["actor_name"] == "cli" and e["actor_id"] is None for e in entries)
    assert key["key"] not in out and rotated["key"] not in out
    code, out = invoke(config, "audit", "--action", "key.", "--since", "1h")
    assert code == 0 and "key.rotate" in out and "project.create" not in out


def test_projects_guard_from_the_cli(config: Path) -> None:
    assert invoke(config, "projects", "create", "team-a")[0] == 0
    code, out = invoke(
        config, "projects", "guard", "team-a", "--input", "block", "--tool-outputs", "flag",
        "--threshold", "0.7", "--json",
    )  # fmt: skip
    assert code == 0, out
    assert json.loads(out)["guard"] == {
        "input": {"mode": "block", "threshold": 0.7},
        "tool_outputs": {"mode": "flag", "threshold": 0.7},
    }
    code, out = invoke(config, "projects", "list")
    assert code == 0 and "input=block@0.7 tool_outputs=flag@0.7" in out, out
    code, out = invoke(config, "projects", "guard", "team-a", "--input", "loud")
    assert code != 0 and "guard.input.mode" in out, out
    assert invoke(config, "projects", "guard", "team-a")[0] != 0  # nothing given
    assert invoke(config, "projects", "guard", "nope", "--clear")[0] != 0
    code, out = invoke(config, "projects", "guard", "team-a", "--clear", "--json")
    assert code == 0 and json.loads(out)["guard"] is None, out
    code, out = invoke(config, "audit", "--project", "team-a", "--json")
    assert [e["action"] for e in json.loads(out)].count("project.update") == 2, out

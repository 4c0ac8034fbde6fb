"""``trellis limits set|show|delete|usage`` and ``trellis keys create --rpm ...``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from trellis.cli import app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "trellis.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "include_local_models": False,
                "limits": {"default_project": {"monthly_usd": 100}},
            }
        )
    )
    return path


def test_limits_set_show_usage_delete(config: Path) -> None:
    c = str(config)
    code, out = invoke(
        "limits",
        "set",
        "project:team-a",
        "--rpm",
        "30",
        "--daily-usd",
        "2.5",
        "--alert-at",
        "0.5",
        "-c",
        c,
    )
    assert code == 0, out
    code, out = invoke("limits", "show", "project:team-a", "--json", "-c", c)
    shown = json.loads(out)
    assert shown == [
        {
            "subject": "project:team-a",
            "rpm": 30,
            "tpm": None,
            "max_concurrent": None,
            "daily_usd": 2.5,
            "monthly_usd": None,
            "alert_thresholds": [0.5],
        }
    ]
    code, out = invoke("limits", "show", "-c", c)
    assert code == 0 and "project:team-a" in out and "default for every project" in out
    code, out = invoke("limits", "usage", "project:team-a", "-c", c)
    usage = json.loads(out)
    assert usage["requests"]["limit"] == 30 and usage["daily"]["limit_usd"] == 2.5
    assert usage["source"] == "stored"
    code, out = invoke("limits", "usage", "project:other", "-c", c)
    assert json.loads(out)["monthly"]["limit_usd"] == 100  # the settings' default
    assert invoke("limits", "delete", "project:team-a", "-c", c)[0] == 0
    code, out = invoke("limits", "delete", "project:team-a", "-c", c)
    assert code == 1 and "no stored limits" in out
    # Both changes are in the audit log, in the subject's project (a failed delete is not).
    code, out = invoke("audit", "--action", "limit.", "--json", "-c", c)
    entries = json.loads(out)
    assert [(e["action"], e["target"], e["project_id"]) for e in reversed(entries)] == [
        ("limit.set", "project:team-a", "team-a"),
        ("limit.delete", "project:team-a", "team-a"),
    ]
    assert entries[-1]["detail"]["rpm"] == 30 and entries[-1]["actor_name"] == "cli"
    code, out = invoke("limits", "set", "team-a", "--rpm", "1", "-c", c)
    assert code == 1 and "key:<key id> or project:<project id>" in out
    code, out = invoke("limits", "set", "project:x", "--alert-at", "2", "-c", c)
    assert code == 1 and "invalid limits" in out


def test_keys_create_with_limits(config: Path) -> None:
    c = str(config)
    code, out = invoke(
        "keys",
        "create",
        "bot",
        "--rpm",
        "10",
        "--tpm",
        "5000",
        "--daily-usd",
        "1",
        "--json",
        "-c",
        c,
    )
    assert code == 0, out
    created = json.loads(out)
    assert created["limits"]["rpm"] == 10
    code, out = invoke("limits", "show", f"key:{created['id']}", "--json", "-c", c)
    assert json.loads(out)[0]["tpm"] == 5000 and json.loads(out)[0]["daily_usd"] == 1
    # Without limit options, no row is stored.
    code, out = invoke("keys", "create", "plain", "--json", "-c", c)
    plain = json.loads(out)
    assert "limits" not in plain
    code, out = invoke("limits", "show", "--json", "-c", c)
    assert [row["subject"] for row in json.loads(out)] == [f"key:{created['id']}"]

"""``trellis workflows``, ``trellis run`` and ``trellis runs``: in process, against the database
trellis.yaml configures, with workflows registered there by import path (tests/flows)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from trellis.cli import app
from trellis.cli._common import with_db
from trellis.orchestration import RunStatus, Workflows
from trellis.settings import Settings

FLOWS = Path(__file__).resolve().parent / "flows"
ADMIN_KEY = "tr-test-admin-key-0123456789"

runner = CliRunner()


def write_config(tmp_path: Path, workflows: list[str]) -> Path:
    path = tmp_path / "trellis.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "include_local_models": False,
                "admin_key": ADMIN_KEY,
                "workflows": workflows,
            }
        )
    )
    return path


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(FLOWS))
    monkeypatch.delenv("TRELLIS_CONFIG", raising=False)
    return write_config(tmp_path, ["api_flows:review", "api_flows:slow"])


def invoke(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--config", str(config)], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def invoke_json(config: Path, *args: str) -> Any:
    code, out = invoke(config, *args, "--json")
    assert code == 0, out
    return json.loads(out)


def test_workflows_list_and_graph(config: Path) -> None:
    code, out = invoke(config, "workflows", "list")
    assert code == 0, out
    assert "review" in out and "count (function) → approve (human) → finish (function)" in out
    listed = invoke_json(config, "workflows", "list")
    assert [w["name"] for w in listed] == ["review", "slow"]
    assert listed[0]["input_schema"]["required"] == ["text"]
    code, out = invoke(config, "workflows", "graph", "slow")
    assert code == 0 and out.startswith("flowchart TD\n") and "s2 --> end_" in out
    code, out = invoke(config, "workflows", "graph", "nope")
    assert code == 1 and "no workflow named 'nope'" in out


def test_run_resume_show_and_list(config: Path) -> None:
    done = invoke_json(config, "run", "review", "--input", '{"text": "two words"}')
    assert done["status"] == "succeeded" and done["output"] == {"words": 2, "verdict": "published"}
    code, out = invoke(config, "run", "review", "--input", '{"text": "a long enough draft"}')
    assert code == 0, out
    assert "waiting at approve: Publish it?" in out
    run_id = out.split()[1]
    code, out = invoke(config, "runs", "resume", run_id, "--input", '"maybe"')
    assert code == 1 and "invalid input for step 'approve'" in out
    resumed = invoke_json(config, "runs", "resume", run_id, "--input", "true")
    assert resumed["status"] == "succeeded" and resumed["output"]["verdict"] == "published"
    code, out = invoke(config, "runs", "resume", run_id, "--input", "true")
    assert code == 1 and "not waiting" in out
    shown = invoke_json(config, "runs", "show", run_id)
    assert [(s["step"], s["status"]) for s in shown["steps"]] == [
        ("count", "ok"),
        ("approve", "waiting"),
        ("approve", "ok"),
        ("finish", "ok"),
    ]
    code, out = invoke(config, "runs", "show", run_id)
    assert code == 0 and "approve" in out and '"approved": true' in out
    listed = invoke_json(config, "runs", "list", "--workflow", "review")
    assert [r["id"] for r in listed] == [run_id, done["id"]]
    assert invoke_json(config, "runs", "list", "--status", "waiting") == []
    code, out = invoke(config, "runs", "list", "--status", "sleeping")
    assert code == 2 and "not a run status" in out
    code, out = invoke(config, "runs", "show", "0123abcd")
    assert code == 1 and "no run 0123abcd" in out


def test_run_refuses_bad_input(config: Path) -> None:
    code, out = invoke(config, "run", "review", "--input", "{not json")
    assert code == 2 and "not JSON" in out
    code, out = invoke(config, "run", "review", "--input", "[1]")
    assert code == 2 and "JSON object" in out
    code, out = invoke(config, "run", "review", "--input", '{"words": 1}')
    assert code == 1 and "invalid input for workflow 'review'" in out
    code, out = invoke(config, "run", "nope")
    assert code == 1 and "no workflow named 'nope'" in out


def test_cancel_a_waiting_run(config: Path) -> None:
    code, out = invoke(config, "run", "review", "--input", '{"text": "one two three four"}')
    run_id = out.split()[1]
    cancelled = invoke_json(config, "runs", "cancel", run_id)
    assert cancelled["status"] == RunStatus.CANCELLED
    code, out = invoke(config, "runs", "resume", run_id, "--input", "true")
    assert code == 1 and "cancelled" in out

    async def stored() -> Any:
        settings = Settings.load(str(config))
        return await with_db(settings, lambda db: Workflows(db).get(run_id))

    assert asyncio.run(stored()).status == RunStatus.CANCELLED


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("api_flows:missing", "has no 'missing'"),
        ("api_flows:not_a_workflow", "not a trellis Workflow"),
        ("no_such_module_xyz:flow", "cannot import"),
    ],
)
def test_a_bad_workflow_path_is_invalid_settings(
    config: Path, tmp_path: Path, path: str, message: str
) -> None:
    bad = write_config(tmp_path, [path])
    for args in (("workflows", "list"), ("run", "review"), ("runs", "list")):
        code, out = invoke(bad, *args)
        if args == ("runs", "list"):  # reading runs imports no workflow
            assert code == 0, out
            continue
        assert code == 2, (args, out)
        assert "invalid settings" in out and message in out
        assert "Traceback" not in out
    bad.write_text(yaml.safe_dump({"workflows": ["api_flows.review"]}))
    code, out = invoke(bad, "workflows", "list")
    assert code == 2 and "invalid settings" in out and "not an import path" in out


def test_serve_refuses_a_bad_workflow_path(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = write_config(tmp_path, ["api_flows:missing"])
    monkeypatch.setenv("TRELLIS_CONFIG", str(bad))  # serve sets it; restored after the test
    code, out = invoke(bad, "serve")
    assert code == 2 and "invalid settings" in out and "has no 'missing'" in out


def test_run_in_a_session(config: Path) -> None:
    code, out = invoke(config, "run", "review", "--input", '{"text": "a b"}', "--session", "x y")
    assert code == 1 and "session_id" in out
    row = invoke_json(config, "run", "review", "--input", '{"text": "a b"}', "--session", "cli-1")
    assert row["status"] == "succeeded" and row["session_id"] == "cli-1"

"""``trellis traces list|show`` and ``trellis stats`` against the local database."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from trellis.cli import app
from trellis.observe.tracing import GenAI, Trace
from trellis.observe.writer import TraceWriter
from trellis.settings import Settings
from trellis.store import Database

runner = CliRunner()


def seed(tmp_path: Path) -> tuple[Path, list[str]]:
    config = tmp_path / "trellis.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    settings = Settings.load(config)

    async def write() -> list[str]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        await db.connect()
        writer = TraceWriter(db)
        await writer.start()
        ids = []
        for i, model in enumerate(["gpt-a", "gpt-b", "gpt-a"]):
            trace = Trace(kind="chat", name=f"chat {model}")
            trace.root.set(GenAI.INPUT_MESSAGES, [{"role": "user", "content": f"q{i}"}])  # type: ignore[union-attr]
            trace.summary.update(model=model, input_tokens=3, output_tokens=2, cost=0.01)
            with trace.span("route"), trace.span("attempt"):
                time.sleep(0.001)
            trace.finish()
            writer.submit(trace)
            ids.append(trace.trace_id)
        await writer.close()
        await db.close()
        return ids

    return config, asyncio.run(write())


def test_traces_list_show_and_stats(tmp_path: Path) -> None:
    config, ids = seed(tmp_path)
    listed = runner.invoke(app, ["traces", "list", "-c", str(config), "--model", "gpt-a", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)["data"]
    assert {r["id"] for r in rows} == {ids[0], ids[2]}
    table = runner.invoke(app, ["traces", "list", "-c", str(config), "--limit", "2"])
    assert table.exit_code == 0 and ids[2] in table.output and ids[0] not in table.output

    shown = runner.invoke(app, ["traces", "show", ids[1], "-c", str(config)])
    assert shown.exit_code == 0, shown.output
    assert "route" in shown.output and "attempt" in shown.output and "q1" in shown.output
    as_json = runner.invoke(app, ["traces", "show", ids[1], "-c", str(config), "--json"])
    assert len(json.loads(as_json.output)["spans"]) == 3
    missing = runner.invoke(app, ["traces", "show", "nope", "-c", str(config)])
    assert missing.exit_code == 1

    stats = runner.invoke(app, ["stats", "-c", str(config), "--json"])
    assert stats.exit_code == 0, stats.output
    counts = {g["group"]: g["totals"]["count"] for g in json.loads(stats.output)["data"]}
    assert counts == {"gpt-a": 2, "gpt-b": 1}
    table = runner.invoke(app, ["stats", "-c", str(config), "--group-by", "kind"])
    assert table.exit_code == 0 and "chat" in table.output
    bad = runner.invoke(app, ["stats", "-c", str(config), "--window", "forever"])
    assert bad.exit_code == 1 and "window" in bad.output


def test_out_of_range_times_and_windows_are_clear_errors(tmp_path: Path) -> None:
    config, _ = seed(tmp_path)
    for args in (
        ["traces", "list", "--since", "99999999999999999999"],
        ["traces", "list", "--since", "9999-12-31T23:59:59Z"],
        ["stats", "--window", "99999999999d"],
        ["stats", "--window", "1h", "--bucket", "99999999999d"],
    ):
        result = runner.invoke(app, [*args, "-c", str(config)])
        assert result.exit_code == 1, (args, result.output)
        assert "error:" in result.output and "Traceback" not in result.output
        assert "2262" in result.output or "at most" in result.output

"""``trellis memories`` and ``trellis sessions``: in process, against the database
trellis.yaml configures (real SQLite, the bundled embedder for adding and recalling)."""

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
from trellis.inference.conversation import SessionKey
from trellis.memory.sessions import SessionMemory
from trellis.schema import ChatMessage
from trellis.settings import Settings

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("TRELLIS_CONFIG", raising=False)
    path = tmp_path / "trellis.yaml"
    path.write_text(
        yaml.safe_dump({"data_dir": str(tmp_path / "data"), "include_local_models": False})
    )
    return path


def invoke(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--config", str(config)], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def invoke_json(config: Path, *args: str) -> Any:
    code, out = invoke(config, *args, "--json")
    assert code == 0, out
    return json.loads(out)


def test_memories_add_list_recall_delete_and_forget(config: Path) -> None:
    first = invoke_json(config, "memories", "add", "--user", "ada", "I prefer answers in French.")
    assert first["user"] == "ada" and first["updated"] is False
    again = invoke_json(config, "memories", "add", "--user", "ada", "I prefer answers in French!")
    assert again["id"] == first["id"] and again["updated"] is True
    invoke_json(config, "memories", "add", "--user", "ada", "I am allergic to peanuts.")
    invoke_json(config, "memories", "add", "--user", "bob", "I have a cat.")
    other = invoke_json(config, "memories", "add", "-u", "ada", "-k", "key-1", "I like tea.")

    listed = invoke_json(config, "memories", "list", "--user", "ada")
    assert [m["text"] for m in listed] == [
        "I prefer answers in French!",
        "I am allergic to peanuts.",
    ]
    assert len(invoke_json(config, "memories", "list")) == 3  # the keyless namespace
    assert [m["id"] for m in invoke_json(config, "memories", "list", "--key", "key-1")] == [
        other["id"]
    ]
    code, out = invoke(config, "memories", "list", "--user", "ada")
    assert code == 0 and "I am allergic to peanuts." in out

    found = invoke_json(config, "memories", "recall", "--user", "ada", "Can I eat peanut butter?")
    assert found[0]["text"] == "I am allergic to peanuts."

    assert invoke_json(config, "memories", "delete", first["id"]) == {
        "id": first["id"],
        "deleted": True,
    }
    code, out = invoke(config, "memories", "delete", first["id"])
    assert code == 1 and "No memory" in out
    code, out = invoke(config, "memories", "delete", other["id"])  # another key's: not found
    assert code == 1
    assert invoke_json(config, "memories", "forget", "--user", "ada") == {
        "user": "ada",
        "deleted": 1,
    }
    assert [m["user"] for m in invoke_json(config, "memories", "list")] == ["bob"]


def test_sessions_show_and_delete(config: Path) -> None:
    settings = Settings.load(str(config))

    async def record(db: Any) -> None:
        sessions = SessionMemory(db, None)
        turn = [
            ChatMessage(role="user", content="My name is Ada."),
            ChatMessage(role="assistant", content="Hello Ada."),
        ]
        await sessions.record(SessionKey("", "chat-1"), turn, trace_id=None)
        await sessions.record(SessionKey("key-1", "chat-1"), turn[:1], trace_id=None)

    asyncio.run(with_db(settings, record))
    shown = invoke_json(config, "sessions", "show", "chat-1")
    assert shown["summary"] is None
    assert [m["content"] for m in shown["messages"]] == ["My name is Ada.", "Hello Ada."]
    code, out = invoke(config, "sessions", "show", "chat-1")
    assert code == 0 and "user: My name is Ada." in out
    assert len(invoke_json(config, "sessions", "show", "chat-1", "--key", "key-1")["messages"]) == 1

    assert invoke_json(config, "sessions", "delete", "chat-1")["deleted"] is True
    code, out = invoke(config, "sessions", "show", "chat-1")
    assert code == 1 and "no session 'chat-1'" in out
    code, out = invoke(config, "sessions", "delete", "chat-1")
    assert code == 1
    assert invoke_json(config, "sessions", "show", "chat-1", "-k", "key-1")["id"] == "chat-1"

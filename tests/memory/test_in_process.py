"""Sessions and memories in Python: a started ``Trellis`` runtime, no HTTP server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from trellis.runtime import Trellis
from trellis.schema import ChatMessage, ChatRequest, TrellisOptions
from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(vendor="openai", reply="Noted.") as server:
        yield server


def settings(tmp_path: Path, upstream: FakeUpstream) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        include_local_models=False,
        models=[
            {
                "name": "m",
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


def ask(text: str, **options: object) -> ChatRequest:
    return ChatRequest(
        model="m",
        messages=[ChatMessage(role="user", content=text)],
        trellis=TrellisOptions(**options),  # type: ignore[arg-type]
    )


async def test_a_session_and_a_memory_in_process(tmp_path: Path, upstream: FakeUpstream) -> None:
    async with Trellis(settings(tmp_path, upstream)) as trellis:
        assert trellis.gateway is not None and trellis.memories is not None
        await trellis.gateway.chat(ask("My name is Ada.", session_id="py"))
        await trellis.gateway.chat(ask("What is my name?", session_id="py"))
        sent = upstream.requests[-1].json["messages"]
        assert [m["content"] for m in sent] == ["My name is Ada.", "Noted.", "What is my name?"]

        await trellis.memories.add("", "ada", "I prefer answers in French.")
        await trellis.gateway.chat(ask("Which language should you answer in?", user_id="ada"))
        sent = upstream.requests[-1].json["messages"]
        assert sent[0]["role"] == "system" and "I prefer answers in French." in sent[0]["content"]

    # The conversation is in the database file: a new runtime continues it.
    async with Trellis(settings(tmp_path, upstream)) as trellis:
        assert trellis.gateway is not None
        await trellis.gateway.chat(ask("And again?", session_id="py"))
        assert len(upstream.requests[-1].json["messages"]) == 5

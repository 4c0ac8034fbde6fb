"""Memory extraction through a started runtime and a loopback fake upstream that answers
the extraction calls with scripted JSON operations (real HTTP on 127.0.0.1, real SQLite,
the bundled embedder): add, update on change, delete, bad output, isolation, and the
chat answer never waiting for or failing with the extraction."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from trellis.errors import InvalidRequestError, UnsupportedFeatureError
from trellis.inference.conversation import ExtractionJob
from trellis.memory.extraction import INSTRUCTIONS
from trellis.runtime import Trellis
from trellis.schema import ChatMessage, ChatRequest, MemoryOptions, TrellisOptions
from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream, Fault

ANSWER = "Noted."


class Script:
    """Answers extraction calls with the next scripted operations; chat calls with ANSWER.
    Keeps the known facts each extraction call was shown."""

    def __init__(self) -> None:
        self.replies: list[str | Callable[[str], str]] = []
        self.shown: list[str] = []

    def __call__(self, body: dict[str, Any]) -> str:
        system = body["messages"][0]["content"] if body["messages"] else ""
        if not system.startswith(INSTRUCTIONS[:40]):
            return ANSWER
        self.shown.append(system.split("\n\n")[-1])
        reply = self.replies.pop(0) if self.replies else '{"operations": []}'
        return reply(system) if callable(reply) else reply


def ops(*items: tuple[str, int, str]) -> str:
    return json.dumps({"operations": [{"op": o, "id": i, "text": t} for o, i, t in items]})


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def upstream(script: Script) -> Iterator[FakeUpstream]:
    with FakeUpstream(vendor="openai", reply=script) as server:
        yield server


def alias(name: str, server: FakeUpstream) -> dict[str, Any]:
    return {
        "name": name,
        "deployments": [
            {"provider": "openai-compatible", "model": "gpt-4o-mini", "base_url": server.base_url}
        ],
    }


def settings(tmp_path: Path, *aliases: dict[str, Any], **memory: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        include_local_models=False,
        models=list(aliases),
        retry={"attempts": 1},
        memory=memory,
    )


def say(text: str, user: str | None = "ada", extract: bool | None = True) -> ChatRequest:
    return ChatRequest(
        model="m",
        messages=[ChatMessage(role="user", content=text)],
        trellis=TrellisOptions(user_id=user, memories=MemoryOptions(extract=extract)),
    )


async def texts(trellis: Trellis, user: str = "ada", owner: str = "") -> list[str]:
    assert trellis.memories is not None
    return [m.text for m in await trellis.memories.list_memories(owner, user)]


async def test_a_stated_fact_is_added(
    tmp_path: Path, upstream: FakeUpstream, script: Script
) -> None:
    script.replies.append(ops(("add", 0, "I live in Berlin."), ("none", 0, "")))
    async with Trellis(settings(tmp_path, alias("m", upstream))) as trellis:
        assert trellis.gateway is not None and trellis.extractor is not None
        result = await trellis.gateway.chat(say("Hi! I live in Berlin, by the way."))
        assert result.response.choices[0].message.content == ANSWER
        await trellis.extractor.drain()
        assert await texts(trellis) == ["I live in Berlin."]
        assert script.shown == ["Known facts: none."]
        extraction = upstream.requests[-1].json
        assert extraction["response_format"]["type"] == "json_schema"
        assert extraction["temperature"] == 0.0
        assert "I live in Berlin, by the way." in extraction["messages"][1]["content"]
        # Both traces are stored: the request's names the extraction's, which links back.
        assert trellis.writer is not None and trellis.traces is not None
        await asyncio.sleep(0)
        await trellis.writer.flush()
        request_trace = await trellis.traces.get(result.trace_id)
        assert request_trace is not None
        root = next(s for s in request_trace["spans"] if s["parent_id"] is None)
        (event,) = [e for e in root["events"] if e["name"] == "memory_extraction"]
        assert event["attributes"]["queued"] is True
        stored = await trellis.traces.get(event["attributes"]["trace_id"])
        assert stored is not None and stored["kind"] == "memory_extraction"
        root = next(s for s in stored["spans"] if s["parent_id"] is None)
        assert root["attributes"]["trellis.memory.request_trace_id"] == result.trace_id
        assert root["attributes"]["trellis.memory.added"] == 1
        assert {s["name"] for s in stored["spans"]} >= {"recall", "extract", "apply"}


async def test_a_changed_fact_updates_the_memory_it_supersedes(
    tmp_path: Path, upstream: FakeUpstream, script: Script
) -> None:
    def move(system: str) -> str:
        known = system.split("Known facts:\n")[1].splitlines()
        number = next(i for i, line in enumerate(known, 1) if "Berlin" in line)
        return ops(("update", number, "I live in Paris."))

    script.replies.append(move)
    async with Trellis(settings(tmp_path, alias("m", upstream))) as trellis:
        assert trellis.gateway and trellis.memories and trellis.extractor
        berlin, _ = await trellis.memories.add("", "ada", "I live in Berlin.")
        await trellis.memories.add("", "ada", "I have a cat called Miso.")
        await trellis.gateway.chat(say("Big news: I moved to Paris last month."))
        await trellis.extractor.drain()
        assert "I live in Berlin." in script.shown[0]
        memories = await trellis.memories.list_memories("", "ada")
        assert {m.text for m in memories} == {"I live in Paris.", "I have a cat called Miso."}
        assert next(m for m in memories if "Paris" in m.text).id == berlin.id


async def test_a_fact_no_longer_true_is_deleted(
    tmp_path: Path, upstream: FakeUpstream, script: Script
) -> None:
    script.replies.append(ops(("delete", 1, "")))
    async with Trellis(settings(tmp_path, alias("m", upstream), extract_candidates=1)) as trellis:
        assert trellis.gateway and trellis.memories and trellis.extractor
        await trellis.memories.add("", "ada", "I have a dog named Rex.")
        await trellis.memories.add("", "ada", "I work as a nurse.")
        await trellis.gateway.chat(say("Sadly I don't have a dog any more."))
        await trellis.extractor.drain()
        assert await texts(trellis) == ["I work as a nurse."]


@pytest.mark.parametrize(
    "reply",
    [
        "I think the user lives in Berlin.",  # not JSON
        '{"operations": [{"op": "forget", "id": 1, "text": ""}]}',  # not an operation
        ops(("update", 7, "I live in Rome."), ("delete", 0, "")),  # numbers no memory has
    ],
)
async def test_bad_output_changes_nothing(
    tmp_path: Path, upstream: FakeUpstream, script: Script, reply: str
) -> None:
    script.replies.append(reply)
    async with Trellis(settings(tmp_path, alias("m", upstream))) as trellis:
        assert trellis.gateway and trellis.memories and trellis.extractor
        await trellis.memories.add("", "ada", "I live in Berlin.")
        # No background extraction of this turn: it would race the one below for the reply.
        result = await trellis.gateway.chat(say("I moved to Rome.", extract=False))
        assert result.response.choices[0].message.content == ANSWER
        report = await trellis.extractor.extract(
            ExtractionJob("", "ada", (ChatMessage(role="user", content="I moved to Rome."),), "m")
        )
        await trellis.extractor.drain()
        assert await texts(trellis) == ["I live in Berlin."]
        assert report.applied == []
        assert report.error is not None or report.ignored == 2


async def test_extraction_sees_and_changes_only_its_key_and_user(
    tmp_path: Path, upstream: FakeUpstream, script: Script
) -> None:
    async with Trellis(settings(tmp_path, alias("m", upstream))) as trellis:
        assert trellis.memories and trellis.extractor
        await trellis.memories.add("key-b", "ada", "I live in Berlin.")
        await trellis.memories.add("key-a", "bob", "I live in Berlin.")
        script.replies.append(
            ops(("update", 1, "I live in Paris."), ("add", 0, "I live in Paris."))
        )
        turn = (ChatMessage(role="user", content="I moved to Paris."),)
        report = await trellis.extractor.extract(ExtractionJob("key-a", "ada", turn, "m"))
        assert script.shown == ["Known facts: none."]  # nobody else's memories are shown
        assert report.ignored == 1 and [a["op"] for a in report.applied] == ["added"]
        assert await texts(trellis, "ada", "key-a") == ["I live in Paris."]
        assert await texts(trellis, "ada", "key-b") == ["I live in Berlin."]
        assert await texts(trellis, "bob", "key-a") == ["I live in Berlin."]


async def test_the_answer_neither_waits_for_nor_fails_with_the_extraction(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    with FakeUpstream(vendor="openai", reply=ops(("add", 0, "I live in Oslo."))) as slow:
        slow.delay = 1.5
        config = settings(tmp_path, alias("m", upstream), alias("x", slow), extract_model="x")
        async with Trellis(config) as trellis:
            assert trellis.gateway and trellis.extractor
            started = time.perf_counter()
            result = await trellis.gateway.chat(say("I live in Oslo."))
            assert time.perf_counter() - started < 1.0
            assert result.response.choices[0].message.content == ANSWER
            await trellis.extractor.drain()
            assert await texts(trellis) == ["I live in Oslo."]

            slow.delay = 0.0
            slow.faults.always(Fault.status(500))
            result = await trellis.gateway.chat(say("Actually I live in Bergen."))
            assert result.response.choices[0].message.content == ANSWER
            failed = trellis.extractor.failed
            await trellis.extractor.drain()
            assert trellis.extractor.failed == failed + 1
            assert await texts(trellis) == ["I live in Oslo."]


async def test_a_full_queue_drops_the_turn_not_the_answer(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    with FakeUpstream(vendor="openai", reply=ops(("none", 0, ""))) as slow:
        slow.delay = 0.5
        config = settings(
            tmp_path,
            alias("m", upstream),
            alias("x", slow),
            extract_model="x",
            extract_queue_size=1,
        )
        async with Trellis(config) as trellis:
            assert trellis.gateway and trellis.extractor
            for n in range(4):
                result = await trellis.gateway.chat(say(f"Fact number {n}."))
                assert result.response.choices[0].message.content == ANSWER
            assert trellis.extractor.dropped >= 2
            await trellis.extractor.drain()


async def test_who_asks_for_extraction_and_when_it_runs(
    tmp_path: Path, upstream: FakeUpstream, script: Script
) -> None:
    async with Trellis(settings(tmp_path, alias("m", upstream), extract="off")) as trellis:
        assert trellis.gateway is not None
        with pytest.raises(UnsupportedFeatureError):
            await trellis.gateway.chat(say("I live in Berlin."))
        await trellis.gateway.chat(say("I live in Berlin.", extract=None))  # not asked: fine
    async with Trellis(settings(tmp_path, alias("m", upstream))) as trellis:
        assert trellis.gateway and trellis.extractor
        with pytest.raises(InvalidRequestError, match="needs a user"):
            await trellis.gateway.chat(say("I live in Berlin.", user=None))
        await trellis.gateway.chat(say("I live in Berlin.", extract=None))  # default: not asked
        await trellis.extractor.drain()
        assert script.shown == []
    async with Trellis(settings(tmp_path, alias("m", upstream), extract="always")) as trellis:
        assert trellis.gateway and trellis.extractor
        await trellis.gateway.chat(say("I live in Berlin.", extract=None))
        await trellis.gateway.chat(say("I live in Rome.", extract=False))  # refused
        stream = await trellis.gateway.chat_stream(say("I live in Oslo.", extract=None))
        async for _ in stream.chunks:
            pass
        await trellis.extractor.drain()
        assert len(script.shown) == 2


async def test_a_fact_the_turn_does_not_mention_is_not_stored(
    tmp_path: Path, upstream: FakeUpstream, script: Script
) -> None:
    # Small models asked for JSON about a question tend to invent a fact.
    script.replies.append(ops(("add", 0, "I work as a pilot."), ("add", 0, "I like jokes.")))
    async with Trellis(settings(tmp_path, alias("m", upstream))) as trellis:
        assert trellis.extractor is not None
        turn = (ChatMessage(role="user", content="Tell me a short joke."),)
        report = await trellis.extractor.extract(ExtractionJob("", "ada", turn, "m"))
        assert [a["text"] for a in report.applied] == ["I like jokes."]
        assert report.ignored == 1

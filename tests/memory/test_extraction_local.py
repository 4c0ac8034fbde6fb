"""Extraction once on the real bundled chat model: the chat answer, the background call
with the grammar-enforced operations schema, the apply and the trace all work (the
quality of what a 135M model extracts is measured by benchmarks/memory_recall.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trellis.runtime import Trellis
from trellis.schema import ChatMessage, ChatRequest, MemoryOptions, TrellisOptions
from trellis.settings import Settings

pytestmark = pytest.mark.model


async def test_a_turn_is_extracted_by_the_bundled_model(tmp_path: Path) -> None:
    request = ChatRequest(
        model="local",
        messages=[ChatMessage(role="user", content="I live in Berlin and I work as a nurse.")],
        max_tokens=16,
        user="ada",
        trellis=TrellisOptions(memories=MemoryOptions(extract=True)),
    )
    async with Trellis(Settings(data_dir=tmp_path, memory={"extract_max_tokens": 128})) as trellis:
        assert trellis.gateway and trellis.extractor and trellis.memories
        assert trellis.writer is not None and trellis.traces is not None
        result = await trellis.gateway.chat(request)
        assert result.response.choices[0].message.content
        await trellis.extractor.drain()
        assert trellis.extractor.done == 1 and trellis.extractor.failed == 0
        await trellis.writer.flush()
        stored = await trellis.traces.get(result.trace_id)
        assert stored is not None
        root = next(s for s in stored["spans"] if s["parent_id"] is None)
        (event,) = [e for e in root["events"] if e["name"] == "memory_extraction"]
        extraction = await trellis.traces.get(event["attributes"]["trace_id"])
        assert extraction is not None and extraction["kind"] == "memory_extraction"
        assert extraction["status"] == "ok"
        memories = await trellis.memories.list_memories("", "ada")
        root = next(s for s in extraction["spans"] if s["parent_id"] is None)
        changes = sum(root["attributes"][f"trellis.memory.{op}"] for op in ("added", "merged"))
        assert len(memories) == changes

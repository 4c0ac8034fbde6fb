"""The previous local engine (``local.engine: llama-cpp-python``) stays selectable; it needs
llama-cpp-python, which ``make`` does not install (it compiles), so this test runs only where
it is (``bash benchmarks/setup_llamacpp_python.sh`` makes such an environment)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trellis.runtime import Trellis
from trellis.schema import ChatRequest
from trellis.settings import Settings

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional engine)")


async def test_a_json_schema_answer_on_the_llama_cpp_python_engine(tmp_path: Path) -> None:
    """Its grammar is llama-cpp-python's GBNF: it cannot read the server engine's."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    settings = Settings(data_dir=tmp_path / "data", local={"engine": "llama-cpp-python"})
    async with Trellis(settings) as trellis:
        assert trellis.gateway is not None
        result = await trellis.gateway.chat(
            ChatRequest(
                model="local",
                messages=[{"role": "user", "content": "Name a city in France as JSON."}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "c", "schema": schema},
                },
                max_tokens=40,
                temperature=0,
            )
        )
    answer = json.loads(result.response.choices[0].message.content or "")
    assert set(answer) == {"city"} and isinstance(answer["city"], str)

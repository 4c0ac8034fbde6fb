"""A workflow whose answering step continues the run's session (``session_flows:chat``),
for the HTTP tests of runs with a ``session_id``.

Importable once ``tests/flows`` is on ``sys.path`` (``monkeypatch.syspath_prepend``).
"""

from __future__ import annotations

from pydantic import BaseModel

from trellis.orchestration import Workflow, llm


class Chat(BaseModel):
    question: str
    answer: str | None = None


chat = Workflow("chat", state=Chat, output=lambda s: {"answer": s.answer})
chat.add(
    llm(
        "answer",
        model="gpt-test",
        messages=lambda s: s.question,
        into="answer",
        session=True,
    )
)

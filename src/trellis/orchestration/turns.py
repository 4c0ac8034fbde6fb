"""A workflow run as one turn of a conversation: its question and its answer.

A run started with a ``session_id`` belongs to that session (in the namespace of the key
that started it, like ``trellis.session_id`` on chat completions). Its ``llm`` steps built
with ``session=True`` see the session's earlier turns and running summary (the gateway's
session stage supplies them); its other model calls (gates, judges, extraction) do not.
When the run succeeds, its question and final answer are appended to the session as one
turn, so the next run, or a chat completion in the same session, continues from it.

The question is ``Workflow(question=...)`` of the input, else the first text field among
``question``, ``prompt``, ``query``, ``message``, ``text`` and ``input``; the answer is
``Workflow(answer=...)`` of the output, else the output when it is text, or its ``answer``
(or ``text``) field. A run with neither records nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from trellis.inference.conversation import SessionKey, SessionStore
from trellis.orchestration.records import RunRecord, RunStatus
from trellis.orchestration.workflow import Workflow
from trellis.schema import ChatMessage

__all__ = ["QUESTION_FIELDS", "run_turn", "record_turn"]

log = logging.getLogger("trellis.orchestration")

#: Input fields taken as the run's question, in order, when the workflow names none.
QUESTION_FIELDS = ("question", "prompt", "query", "message", "text", "input")


def _question(flow: Workflow[Any], run: RunRecord) -> str | None:
    if flow.question is not None:
        return flow.question(run.input)
    for name in QUESTION_FIELDS:
        value = run.input.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _answer(flow: Workflow[Any], run: RunRecord) -> str | None:
    output = run.output
    if flow.answer is not None:
        return flow.answer(output)
    for _ in range(2):  # {"answer": {"text": ...}} is common enough to look one level down
        if isinstance(output, str):
            return output
        if not isinstance(output, dict):
            return None
        output = output.get("answer", output.get("text"))
    if output is None:
        return None
    return output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)


def run_turn(flow: Workflow[Any], run: RunRecord) -> list[ChatMessage] | None:
    """The messages a finished run adds to its session (None: nothing to add)."""
    if run.session_id is None or run.status != RunStatus.SUCCEEDED:
        return None
    question, answer = _question(flow, run), _answer(flow, run)
    if not question or answer is None:
        return None
    return [
        ChatMessage(role="user", content=question),
        ChatMessage(role="assistant", content=answer),
    ]


async def record_turn(sessions: SessionStore | None, flow: Workflow[Any], run: RunRecord) -> bool:
    """Append the run's turn to its session; False when there is none to add. A failure
    is logged: the run has succeeded, and its result stands."""
    messages = run_turn(flow, run)
    if messages is None or sessions is None or run.session_id is None:
        return False
    key = SessionKey(run.key_id or "", run.session_id)
    try:
        await sessions.record(key, messages, trace_id=run.trace_id)
    except Exception:
        log.exception("could not record workflow run %s in session %s", run.id, run.session_id)
        return False
    return True

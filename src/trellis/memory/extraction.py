"""Memory extraction: a model reads a user's turn and says which facts to add, change or drop.

After a chat answer (when the request or the server asks for it) the gateway hands the
user's turn to :class:`Extractor.submit`, which queues it for background workers: the
answer never waits for extraction, and a full queue drops the job (logged, counted and
an event on the request's trace) instead of growing without bound.

One extraction: recall the user's memories most relevant to the turn (the candidates,
numbered 1..n so a small model need not copy ids), ask the model for typed JSON
operations (``add`` a fact, ``update`` memory n to a new text, ``delete`` memory n, or
nothing) with ``response_format: json_schema``, then apply them with
``LongTermMemory.apply`` in one transaction with the usual dedupe. Numbers outside the
candidates are ignored, so the model cannot touch another user's memories. A failed
call or output that does not parse applies nothing. Each extraction is its own trace
(kind ``memory_extraction``) naming the request's trace and the model call's trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trellis.inference.conversation import ExtractionJob, ExtractionReport, Recalled
from trellis.memory.longterm import LongTermMemory, MemoryOp
from trellis.observe.tracing import GenAI, Trace, new_trace_id
from trellis.schema import ChatMessage, ChatRequest, MemoryOptions, TrellisOptions, message_text

if TYPE_CHECKING:
    from trellis.inference.gateway import Gateway

__all__ = [
    "Extractor",
    "Operation",
    "Operations",
    "OPERATIONS_SCHEMA",
    "extraction_messages",
    "to_ops",
]

log = logging.getLogger(__name__)

#: Longest text of one fact the extractor may write.
MAX_FACT_CHARS = 160
#: Most operations one extraction may propose (the grammar of a local model enforces it).
MAX_OPERATIONS = 4
#: Longest user turn given to the extractor (characters; the rest is cut).
MAX_TURN_CHARS = 4000
_WORD = re.compile(r"[^\W\d_]{3,}|\d+")
#: Words too common to show that a fact came from the turn (``_grounded``).
_COMMON = frozenset(
    (
        "the",
        "and",
        "for",
        "are",
        "was",
        "were",
        "been",
        "being",
        "have",
        "has",
        "had",
        "not",
        "but",
        "you",
        "your",
        "yours",
        "our",
        "ours",
        "they",
        "them",
        "their",
        "this",
        "that",
        "these",
        "those",
        "with",
        "from",
        "into",
        "about",
        "over",
        "just",
        "very",
        "really",
        "like",
        "live",
        "lives",
        "living",
        "work",
        "works",
        "working",
        "am",
        "is",
        "i",
        "me",
        "my",
        "mine",
        "myself",
        "now",
        "then",
        "than",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "why",
        "how",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "also",
        "still",
        "some",
        "any",
        "all",
        "one",
        "two",
        "new",
        "old",
        "got",
        "get",
        "gets",
        "getting",
        "make",
        "made",
        "do",
        "does",
        "did",
        "done",
        "say",
        "says",
        "said",
        "see",
        "know",
        "think",
        "want",
        "wants",
        "user",
        "assistant",
    )
)
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


class Operation(BaseModel):
    """One proposed change: ``id`` is a candidate's number (0 for ``add`` and ``none``)."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["add", "update", "delete", "none"]
    id: int = 0
    text: str = Field(default="", max_length=MAX_FACT_CHARS)


class Operations(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operations: list[Operation] = Field(max_length=MAX_OPERATIONS)


#: The ``json_schema`` sent to the model: every key required and flat, so a grammar (the
#: bundled model's) can enforce it and a hosted model has nothing to guess.
OPERATIONS_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "operations": {
            "type": "array",
            "maxItems": MAX_OPERATIONS,
            "items": {
                "type": "object",
                "properties": {
                    "op": {"type": "string", "enum": ["add", "update", "delete", "none"]},
                    "id": {"type": "integer"},
                    "text": {"type": "string", "maxLength": MAX_FACT_CHARS},
                },
                "required": ["op", "id", "text"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["operations"],
    "additionalProperties": False,
}

INSTRUCTIONS = """You maintain a list of lasting facts about a user: where they live, \
their work, family, pets, health, likes and preferences.
Read the user's message and answer with JSON operations on the list:
- {"op": "add", "id": 0, "text": "..."} for a new fact the user states about themselves, \
as one short first-person sentence ("I live in Paris.").
- {"op": "update", "id": N, "text": "..."} when the message changes known fact N \
(they moved, changed job, a new name): text is the new fact.
- {"op": "delete", "id": N, "text": ""} when the user says known fact N is no longer \
true and gives nothing in its place.
Questions, small talk and facts about other people or topics are not facts about the \
user: for those answer {"operations": []}. Never repeat a known fact unchanged."""


def _known(candidates: Sequence[Recalled]) -> str:
    if not candidates:
        return "Known facts: none."
    lines = "\n".join(f"{n}. {' '.join(m.text.split())}" for n, m in enumerate(candidates, 1))
    return f"Known facts:\n{lines}"


def extraction_messages(
    turn: Sequence[ChatMessage], candidates: Sequence[Recalled]
) -> list[ChatMessage]:
    """The extraction call's messages: instructions and known facts, then the turn."""
    said = "\n".join(
        f"{'User' if m.role == 'user' else 'Assistant'}: {message_text(m).strip()}"
        for m in turn
        if message_text(m).strip()
    )
    return [
        ChatMessage(role="system", content=f"{INSTRUCTIONS}\n\n{_known(candidates)}"),
        ChatMessage(role="user", content=said[-MAX_TURN_CHARS:]),
    ]


def parse_operations(text: str) -> Operations:
    """The model's answer as operations; ``ValueError`` saying why it is not."""
    match = _FENCE.match(text)
    try:
        return Operations.model_validate_json(match.group(1) if match else text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
            for e in exc.errors(include_url=False)[:4]
        )
        raise ValueError(problems[:500]) from None


def _words(text: str) -> set[str]:
    """Distinctive words, crudely stemmed (a plural ``s`` off, the first five letters),
    so "jokes" meets "joke" and "allergic" meets "allergy"."""
    found = (w for w in _WORD.findall(text.lower()) if w not in _COMMON)
    return {(w[:-1] if len(w) > 3 and w.endswith("s") else w)[:5] for w in found}


def grounded(fact: str, turn: str) -> bool:
    """Whether ``fact`` repeats a distinctive word of ``turn`` (a name, a place, a noun).

    A cheap guard against facts a model made up: small models asked for JSON about a
    question ("How many moons does Jupiter have?") tend to invent a fact rather than
    answer ``[]``. A fact the user stated shares at least its key word with the turn.
    """
    return bool(_words(fact) & _words(turn))


def to_ops(
    proposed: Operations, candidates: Sequence[Recalled], turn: str | None = None
) -> tuple[list[MemoryOp], int]:
    """Operations on memory ids; how many proposals were dropped (a number that is no
    candidate's, an empty text, a second change of the same memory, and, given the
    ``turn`` text, a new text that is not ``grounded`` in it)."""
    ops: list[MemoryOp] = []
    dropped = 0
    touched: set[str] = set()
    for item in proposed.operations:
        if item.op == "none":
            continue
        text = " ".join(item.text.split())
        if text and turn is not None and not grounded(text, turn):
            dropped += 1
            continue
        if item.op == "add":
            if text:
                ops.append(MemoryOp("add", text))
            else:
                dropped += 1
            continue
        if not 1 <= item.id <= len(candidates) or (item.op == "update" and not text):
            dropped += 1
            continue
        memory_id = candidates[item.id - 1].id
        if memory_id in touched:
            dropped += 1
            continue
        touched.add(memory_id)
        ops.append(MemoryOp(item.op, text, memory_id))
    return ops, dropped


class Extractor:
    """Extracts memories from turns through the gateway; implements ``MemoryExtractor``.

    ``submit`` queues (bounded) for ``workers`` background tasks, started on the first
    job; ``extract`` runs one now. ``aclose`` lets queued jobs finish for a while, then
    cancels the rest.
    """

    def __init__(
        self,
        memories: LongTermMemory,
        gateway: Callable[[], Gateway],
        *,
        model: str | None = None,
        queue_size: int = 256,
        workers: int = 1,
        candidates: int = 8,
        max_tokens: int = 256,
    ) -> None:
        self.memories = memories
        self._gateway = gateway
        #: The alias that extracts; None: the request's own model.
        self.model = model
        self.candidates = candidates
        self.max_tokens = max_tokens
        self.workers = workers
        self._queue: asyncio.Queue[ExtractionJob] = asyncio.Queue(maxsize=queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        #: Jobs dropped because the queue was full, and extractions that failed.
        self.dropped = 0
        self.failed = 0
        self.done = 0

    # --- the background queue ------------------------------------------------------

    def submit(self, job: ExtractionJob) -> bool:
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning(
                "memory extraction queue is full: a turn of user %r was dropped", job.user_id
            )
            return False
        if not self._tasks:
            self._tasks = [
                asyncio.get_running_loop().create_task(self._work(), name="memory-extraction")
                for _ in range(self.workers)
            ]
        return True

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self.extract(job)
            except Exception:  # extract reports its errors; this is a bug in it
                self.failed += 1
                log.exception("memory extraction crashed")
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until every queued extraction is done (tests, benchmarks, shutdown)."""
        await self._queue.join()

    async def aclose(self, timeout: float = 10.0) -> None:
        """Finish queued extractions (up to ``timeout`` seconds), then stop the workers."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # --- one extraction ---------------------------------------------------------------

    async def extract(self, job: ExtractionJob) -> ExtractionReport:
        gateway = self._gateway()
        model = self.model or job.model
        trace = Trace(
            kind="memory_extraction",
            name=f"memory_extraction {model}",
            trace_id=job.trace_id or new_trace_id(),
        )
        root = trace.root
        assert root is not None
        root.update(
            {
                GenAI.OPERATION: "memory_extraction",
                GenAI.REQUEST_MODEL: model,
                "trellis.memory.user": job.user_id,
                "trellis.memory.request_trace_id": job.request_trace_id,
            }
        )
        key_id = job.caller.key_id if job.caller is not None else None
        trace.summary.update(model=model, key_id=key_id)
        applied: list[dict[str, str]] = []
        ignored = 0
        error: str | None = None
        try:
            turn = [m for m in job.messages if message_text(m).strip()]
            query = next((message_text(m) for m in reversed(turn) if m.role == "user"), "").strip()
            with trace.span("recall") as span:
                candidates = (
                    await self.memories.recall(job.owner, job.user_id, query, top_k=self.candidates)
                    if query and self.candidates
                    else []
                )
                span.set("trellis.memory.ids", [m.id for m in candidates])
            if query:
                with trace.span("extract", attributes={GenAI.REQUEST_MODEL: model}) as span:
                    request = ChatRequest(
                        model=model,
                        messages=extraction_messages(turn, candidates),
                        temperature=0.0,
                        max_tokens=self.max_tokens,
                        response_format={
                            "type": "json_schema",
                            "json_schema": {
                                "name": "memory_operations",
                                "schema": OPERATIONS_SCHEMA,
                            },
                        },
                        trellis=TrellisOptions(
                            cache=False, memories=MemoryOptions(recall=False, extract=False)
                        ),
                    )
                    result = await gateway.chat(request, job.caller)
                    span.set("trellis.memory.extract_trace_id", result.trace_id)
                    choices = result.response.choices
                    text = (choices[0].message.content or "") if choices else ""
                    try:
                        proposed = parse_operations(text)
                    except ValueError as exc:
                        span.add_event("invalid_output", error=str(exc), output=text[:500])
                        raise
                    span.set("trellis.memory.proposed", len(proposed.operations))
                said = " ".join(message_text(m) for m in turn if m.role == "user")
                ops, ignored = to_ops(proposed, candidates, said)
                with trace.span("apply") as span:
                    if ops:
                        done, skipped = await self.memories.apply(job.owner, job.user_id, ops)
                        ignored += skipped
                        applied = [a.to_dict() for a in done]
                    span.update(
                        {
                            "trellis.memory.applied": json.dumps(applied),
                            "trellis.memory.ignored": ignored,
                        }
                    )
        except Exception as exc:  # the model, its output or the database failed: nothing applied
            self.failed += 1
            error = f"{type(exc).__name__}: {exc}"[:300]
            root.record_error(exc)
            root.add_event("memory_extraction_failure", **{"error.type": type(exc).__name__})
            trace.summary["error"] = type(exc).__name__
            log.warning("memory extraction for user %r failed: %s", job.user_id, error)
        else:
            self.done += 1
        for op in ("added", "merged", "updated", "deleted"):
            root.set(f"trellis.memory.{op}", sum(1 for a in applied if a["op"] == op))
        gateway.book.record(trace, status="error" if error else None)
        return ExtractionReport(trace.trace_id, applied, ignored, error)

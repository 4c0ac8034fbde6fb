"""Wire types shared by every layer: the OpenAI chat, embeddings and models shapes.

The OpenAI shape is Trellis' lingua franca: providers convert to and from it,
and the server speaks it unchanged. Request models accept unknown fields so
vendor-specific parameters pass through to providers that understand them
(except in the ``trellis`` options object, which is Trellis' own).
"""

from __future__ import annotations

import operator
import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    field_validator,
    model_validator,
)

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "ChatChoice",
    "ChatChunk",
    "ChunkChoice",
    "Usage",
    "ToolCall",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EmbeddingData",
    "ModelCard",
    "ModelList",
    "TrellisOptions",
    "MemoryOptions",
    "new_completion_id",
    "message_text",
]


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


#: How many attribute assignments any wire model has seen (one shared count, read by
#: ``_PassThrough``): the cheapest record that *something* was edited since a model kept
#: its JSON. A one-item list, so bumping it needs no ``global`` statement.
_EDITS = [0]


class _Open(BaseModel):
    """Accept and keep fields we do not model: they belong to the caller."""

    model_config = ConfigDict(extra="allow")

    def __setattr__(self, name: str, value: Any) -> None:
        _EDITS[0] += 1
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        _EDITS[0] += 1
        super().__delattr__(name)


class _PassThrough(_Open):
    """A model that may keep the JSON it was validated from, to pass it on as it came
    instead of dumping the model again. The JSON lives in a slot, not a pydantic
    private attribute: those cost every validation a Python-level hook, and a slot is
    neither validated, dumped nor carried over by ``model_copy``.

    The kept JSON is only handed out while the model provably still says the same:
    - no attribute of any wire model, at any depth, was assigned since it was kept
      (``_EDITS``: a field set on a nested message or on the answer's usage counts;
      an edit of another request's model counts too, which only costs an encode);
    - the top-level lists (``_WATCHED``: the request's messages, the answer's
      choices) still hold the same items: appending, removing or replacing one counts.
    In-place changes inside untyped JSON values (a ``dict``/``list`` field such as
    usage details, content parts or a vendor's extra field) are not tracked: assign a
    new value instead. Checking every object by identity covered those too, but
    walking the model twice per request cost more than encoding it (README,
    Performance), which defeats the purpose."""

    __slots__ = ("_source", "_source_mark")
    #: Top-level list fields whose items are part of the record.
    _WATCHED: ClassVar[tuple[str, ...]] = ()

    def _keep_source(self, source: Any) -> None:
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_source_mark", None if source is None else self._mark())

    def _kept_source(self) -> Any:
        source = getattr(self, "_source", None)
        if source is None:
            return None
        edits, items = self._source_mark  # type: ignore[attr-defined]
        now = self._mark()[1]
        if edits == _EDITS[0] and len(now) == len(items) and all(map(operator.is_, now, items)):
            return source
        self._keep_source(None)  # edited since: the model is the truth from now on
        return None

    def _mark(self) -> tuple[int, list[Any]]:
        items: list[Any] = []
        for name in self._WATCHED:
            value = self.__dict__[name]
            items.append(value)
            if value is not None:
                items.extend(value)
        return _EDITS[0], items


class FunctionCall(_Open):
    name: str
    arguments: str = ""


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Open):
    # The published schema states the rule ``_content_where_required`` enforces.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"role": {"const": "assistant"}}},
                {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
            ]
        }
    )

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # A string, or a list of content parts ({"type": "text", "text": ...}, images...).
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_where_required(self) -> ChatMessage:
        # Only an assistant message that calls tools (or a refusal) may come without content.
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs 'content'")
        return self


def message_text(message: ChatMessage) -> str:
    """The plain text of a message, joining text parts; images and audio add nothing."""
    content = message.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        text = "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
    if message.tool_calls:
        text += "".join(call.function.name + call.function.arguments for call in message.tool_calls)
    return text


class StreamOptions(_Open):
    include_usage: StrictBool = False


class MemoryOptions(BaseModel):
    """``"trellis": {"memories": {...}}``: recall and extraction of long-term memories."""

    model_config = ConfigDict(extra="forbid")

    recall: bool | None = None  # recall memories into the prompt (default: when a user is named)
    # Extract facts from this turn into the user's memories, after the answer (in the
    # background). Default: the server's ``memory.extract`` ("always" extracts unasked).
    extract: bool | None = None


class TrellisOptions(BaseModel):
    """Trellis-specific request options, sent as ``"trellis": {...}`` in the body.

    Strict about its keys, unlike the OpenAI body around it: these options are ours,
    nothing upstream reads them, so a misspelt one (``colections``) would otherwise be
    silently ignored. An unknown option is a 400 naming it."""

    model_config = ConfigDict(extra="forbid")

    cache: bool | None = None  # force (True) or forbid (False) the response cache
    # Use (True) or skip (False) the semantic cache, when the server enables it.
    semantic_cache: bool | None = None
    trim: bool | None = None  # allow dropping oldest turns to fit the context window
    # Ground the answer in these retrieval collections ([] turns off the alias's retrieval).
    collections: list[str] | None = Field(default=None, max_length=16)
    top_k: int | None = Field(default=None, ge=1, le=50)  # passages to retrieve
    # Keep this conversation in Trellis: earlier turns are stored and supplied by the server.
    session_id: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@-]+$"
    )
    # Recall this user's long-term memories into the prompt (else the body's ``user``).
    user_id: str | None = Field(default=None, min_length=1, max_length=200)
    # True/False: recall memories or not (default: when a user is named); an object
    # also says whether to extract new facts from this turn (``MemoryOptions``).
    memories: bool | MemoryOptions | None = None

    @property
    def recall_wanted(self) -> bool | None:
        """Recall asked for (True), refused (False) or left to the default (None)."""
        memories = self.memories
        return memories.recall if isinstance(memories, MemoryOptions) else memories

    @property
    def extract_wanted(self) -> bool | None:
        """Extraction asked for (True), refused (False: also ``"memories": false``) or None."""
        memories = self.memories
        if isinstance(memories, MemoryOptions):
            return memories.extract
        return False if memories is False else None


class ChatRequest(_PassThrough):
    """A chat completion request. Numbers and flags are strict, as OpenAI's own API
    is: ``"0.5"`` is not a temperature nor ``16.0`` a token count. So what was
    validated is what the caller sent, and the caller's body can be forwarded as it
    came (``keep_body``, ``upstream_body``)."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2, strict=True)
    top_p: float | None = Field(default=None, ge=0, le=1, strict=True)
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    n: int | None = Field(default=None, ge=1, le=128, strict=True)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, strict=True)
    user: str | None = None
    stream: StrictBool = False  # "yes" is a mistake, not a truthy value
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, strict=True)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, strict=True)
    logit_bias: dict[str, StrictFloat] | None = None
    trellis: TrellisOptions | None = None

    _WATCHED = ("messages",)

    def keep_body(self, body: dict[str, Any]) -> None:
        """Remember ``body`` (the parsed JSON this request was validated from, owned by
        the request from now on) so ``upstream_body`` can forward it instead of dumping
        the model, which showed in each request's latency (README, Performance)."""
        self._keep_source(body)

    @field_validator("stop")
    @classmethod
    def _stop_at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @model_validator(mode="after")
    def _tool_choice_needs_tools(self) -> ChatRequest:
        if isinstance(self.tool_choice, dict) and not self.tools:
            raise ValueError("tool_choice names a tool but no tools were given")
        return self

    @property
    def output_limit(self) -> int | None:
        """The caller's cap on generated tokens, whichever field carried it."""
        return self.max_completion_tokens or self.max_tokens

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        """The body to send to an OpenAI-compatible upstream: our options and nulls
        removed. The kept caller's body when the model would dump to the same JSON;
        otherwise (no kept body, messages with nulls or with ``tool_calls``, whose
        defaults the model fills in) the model's dump."""
        kept: dict[str, Any] | None = self._kept_source()
        if kept is not None and _dumps_as_sent(kept["messages"]):
            body = {k: v for k, v in kept.items() if v is not None and k != "trellis"}
        else:
            body = self.model_dump(exclude_none=True, exclude={"trellis"})
        body["model"] = upstream_model
        if not self.stream:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return body


def _dumps_as_sent(messages: list[dict[str, Any]]) -> bool:
    """Whether validated messages dump to exactly these dicts: no null to drop and no
    tool call whose ``type`` or ``arguments`` the model may have filled in."""
    return all(None not in message.values() and "tool_calls" not in message for message in messages)


class Usage(_Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None

    @property
    def cached_tokens(self) -> int:
        details = self.prompt_tokens_details or {}
        return int(details.get("cached_tokens") or 0)


class ResponseMessage(_Open):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None


class ChatChoice(_Open):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None = "stop"
    logprobs: Any = None


#: The fields an answer must carry to be served as its upstream sent it.
_WIRE_FIELDS = frozenset({"id", "object", "created", "model", "choices", "usage"})


class ChatResponse(_PassThrough):
    id: str = Field(default_factory=new_completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None

    _WATCHED = ("choices",)

    def keep_wire(self, content: bytes) -> None:
        """Serve ``content`` (the JSON this answer was validated from) as the answer, if
        it has OpenAI's full shape: re-encoding the model would cost the answer's latency
        a second pass through pydantic, and pass-through keeps the upstream's fields as
        it wrote them (its ``null``s included)."""
        if self.__pydantic_fields_set__ >= _WIRE_FIELDS:  # model_fields_set, sans property
            self._keep_source(content)

    @property
    def wire(self) -> bytes | None:
        """The kept JSON while the answer is unmodified, else None: then the answer is
        encoded from the model. Which edits count: ``_PassThrough``."""
        return self._kept_source()  # type: ignore[no-any-return]


class ChunkDelta(_Open):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    refusal: str | None = None


class ChunkChoice(_Open):
    index: int = 0
    delta: ChunkDelta = Field(default_factory=ChunkDelta)
    finish_reason: str | None = None
    logprobs: Any = None


class ChatChunk(_Open):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None
    system_fingerprint: str | None = None

    def wire(self) -> dict[str, Any]:
        """The chunk as OpenAI sends it: ``usage`` is present (null) on every chunk
        when usage was requested, otherwise absent."""
        data = self.model_dump(exclude_none=True)
        for choice in data.get("choices", []):
            choice.setdefault("finish_reason", None)
            choice.setdefault("logprobs", None)
        return data


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be empty")
        if isinstance(value, list) and len(value) > 2048:
            raise ValueError("input may hold at most 2048 items")
        return value

    def texts(self) -> list[str]:
        """The inputs as strings; token-id inputs are refused (we cannot decode them)."""
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(item, str) for item in self.input):
            return list(self.input)  # type: ignore[arg-type]
        raise ValueError("token-id input is not supported; send strings")


class EmbeddingData(_Open):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(_Open):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResponse(_Open):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage = Field(default_factory=EmbeddingUsage)


class ModelCard(_Open):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "trellis"
    kind: str | None = None  # chat | embedding (a Trellis addition)


class ModelList(_Open):
    object: Literal["list"] = "list"
    data: list[ModelCard]

"""Kept wire JSON (ChatResponse.wire, ChatRequest.upstream_body) is only used while it
still describes the model: any edit, however deep, is what gets served or forwarded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from trellis.schema import ChatChoice, ChatRequest, ChatResponse, ResponseMessage, ToolCall

WIRE = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paris", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 1,
            "total_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
        "vendor": {"region": "eu", "tags": ["a"]},
    }
)


def kept() -> ChatResponse:
    response = ChatResponse.model_validate_json(WIRE)
    response.keep_wire(WIRE)
    return response


def served(response: ChatResponse) -> dict[str, Any]:
    """What the server answers (routes/inference.py) and the cache stores (cache.py)."""
    return orjson.loads(response.wire or orjson.dumps(response.model_dump(exclude_none=True)))


def test_an_unmodified_answer_is_served_as_it_came() -> None:
    response = kept()
    assert response.wire is WIRE


def _set_content(r: ChatResponse) -> None:
    r.choices[0].message.content = "Lyon"


def _set_usage_field(r: ChatResponse) -> None:
    assert r.usage is not None
    r.usage.completion_tokens = 9


def _append_choice(r: ChatResponse) -> None:
    r.choices.append(ChatChoice(index=1, message=ResponseMessage(content="Lyon")))


def _replace_choice(r: ChatResponse) -> None:
    r.choices[0] = ChatChoice(message=ResponseMessage(content="Lyon"))


def _add_tool_call(r: ChatResponse) -> None:
    call = {"id": "c1", "function": {"name": "f", "arguments": "{}"}}
    r.choices[0].message.tool_calls = [ToolCall.model_validate(call)]


def _edit_dict(r: ChatResponse) -> None:
    # Untyped JSON values are replaced, not changed in place (``_PassThrough``).
    assert r.usage is not None and r.usage.prompt_tokens_details is not None
    r.usage.prompt_tokens_details = {**r.usage.prompt_tokens_details, "cached_tokens": 2}


def _edit_extra(r: ChatResponse) -> None:
    vendor = r.model_extra["vendor"]  # type: ignore[index]
    r.vendor = {**vendor, "tags": [*vendor["tags"], "b"]}  # type: ignore[attr-defined]


def _new_extra_field(r: ChatResponse) -> None:
    r.citations = [{"n": 1}]  # type: ignore[attr-defined]


def _set_top_level(r: ChatResponse) -> None:
    r.model = "other"


EDITS: dict[str, tuple[Callable[[ChatResponse], None], Callable[[dict[str, Any]], Any], Any]] = {
    "nested field": (_set_content, lambda d: d["choices"][0]["message"]["content"], "Lyon"),
    "usage field": (_set_usage_field, lambda d: d["usage"]["completion_tokens"], 9),
    "list append": (_append_choice, lambda d: len(d["choices"]), 2),
    "list item": (_replace_choice, lambda d: d["choices"][0]["message"]["content"], "Lyon"),
    "tool calls": (
        _add_tool_call,
        lambda d: d["choices"][0]["message"]["tool_calls"][0]["id"],
        "c1",
    ),
    "dict value": (_edit_dict, lambda d: d["usage"]["prompt_tokens_details"]["cached_tokens"], 2),
    "unknown field's value": (_edit_extra, lambda d: d["vendor"]["tags"], ["a", "b"]),
    "new unknown field": (_new_extra_field, lambda d: d["citations"], [{"n": 1}]),
    "top-level field": (_set_top_level, lambda d: d["model"], "other"),
}


@pytest.mark.parametrize("name", EDITS)
def test_an_edit_at_any_depth_is_served(name: str) -> None:
    edit, read, expected = EDITS[name]
    response = kept()
    edit(response)
    assert read(served(response)) == expected
    assert response.wire is None


def test_the_wire_is_kept_until_an_edit_and_any_edit_only_costs_an_encode() -> None:
    response = kept()
    assert response.wire is WIRE  # reading it changes nothing
    assert response.wire is WIRE
    other = kept()
    other.model = "another answer"  # an edit elsewhere: this answer is encoded, still right
    assert response.wire is None
    assert (
        served(response)["choices"][0]["message"]["content"]
        == orjson.loads(WIRE)["choices"][0]["message"]["content"]
    )


def test_a_nested_edit_of_a_request_is_forwarded() -> None:
    body = {
        "model": "alias",
        "messages": [{"role": "user", "content": "secret 4111 1111 1111 1111"}],
        "temperature": 0,
        "vendor_option": {"x": 1},
    }
    request = ChatRequest.model_validate(body)
    request.keep_body(orjson.loads(orjson.dumps(body)))
    assert request.upstream_body("up")["vendor_option"] == {"x": 1}
    request.messages[0].content = "secret [redacted]"
    assert request.upstream_body("up")["messages"][0]["content"] == "secret [redacted]"
    request.messages.append(request.messages[0].model_copy(update={"content": "more"}))
    assert len(request.upstream_body("up")["messages"]) == 2

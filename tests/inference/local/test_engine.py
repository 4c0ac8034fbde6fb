"""The local engine's serving: concurrent requests decoded together, a bounded wait queue,
cancellation freeing the slot, thread defaults, and local models as separate aliases.

Real bundled model, small outputs (a few dozen tokens per request).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from trellis.inference.local.engine import default_threads
from trellis.inference.local.provider import LocalEngineProvider, LocalModelBusyError
from trellis.inference.providers import build_provider
from trellis.inference.tokens import bundled_chat_model_path
from trellis.schema import ChatChunk, ChatRequest
from trellis.server.app import create_app
from trellis.settings import Deployment, LocalModelSettings, ModelAlias, Settings
from trellis.testing.server import ServerThread

DEPLOYMENT = Deployment(provider="local", model="smollm2-135m-instruct")
#: SmolLM2's end-of-generation tokens, banned so a request runs to max_tokens.
NO_EOS = {"0": -100.0, "2": -100.0, "4": -100.0}
ADMIN = "tr-engine-admin-key-0000000000"


def request(max_tokens: int = 30, **options: Any) -> ChatRequest:
    return ChatRequest(
        model="local",
        messages=[{"role": "user", "content": "Tell me a long story."}],
        max_tokens=max_tokens,
        logit_bias=NO_EOS,
        **options,
    )


def content(chunk: ChatChunk) -> str:
    return (chunk.choices[0].delta.content or "") if chunk.choices else ""


# --- no model needed ------------------------------------------------------------------


def test_threads_default_to_every_core_the_process_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2}, raising=False)
    assert default_threads() == 3
    assert LocalEngineProvider(DEPLOYMENT).threads == 3
    assert LocalEngineProvider(DEPLOYMENT, LocalModelSettings(n_threads=1)).threads == 1


def test_threads_fall_back_to_the_cpu_count_without_affinity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_affinity(_pid: int) -> set[int]:
        raise OSError("not supported")

    monkeypatch.setattr(os, "sched_getaffinity", no_affinity, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert default_threads() == 6


def test_a_local_deployment_carries_its_own_model_path_and_settings(tmp_path: Path) -> None:
    bundled = bundled_chat_model_path()
    assert bundled is not None
    deployment = Deployment(
        provider="local",
        model="smollm2-greedy",
        model_path=str(bundled),
        local={"temperature": 0, "slots": 1, "system_prompt": None},
    )
    provider = build_provider(deployment, LocalModelSettings(queue_size=3))
    assert isinstance(provider, LocalEngineProvider)
    assert provider.model_path == bundled
    assert provider.settings.temperature == 0 and provider.settings.system_prompt is None
    assert provider.slots == 1 and provider.queue_size == 3  # the rest from local.*


@pytest.mark.parametrize(
    "fields",
    [
        {"provider": "openai", "model": "x", "model_path": "/m.gguf"},
        {"provider": "local", "model": "x", "local": {"no_such_setting": 1}},
        {"provider": "local", "model": "x", "local": {"slots": 0}},
    ],
)
def test_bad_local_deployment_settings_fail_at_start_up(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Deployment(**fields)


# --- with the model ---------------------------------------------------------------------


@pytest.mark.model
async def test_concurrent_streams_are_decoded_together() -> None:
    provider = LocalEngineProvider(DEPLOYMENT, LocalModelSettings(slots=2, n_ctx=512))
    try:
        await provider.load()
        events: list[tuple[int, str]] = []

        async def consume(index: int) -> None:
            async for chunk in provider.stream(request(40, seed=index)):
                if content(chunk):
                    events.append((index, "token"))
            events.append((index, "done"))

        await asyncio.gather(consume(1), consume(2))
        first_done = next(i for i, (_, kind) in enumerate(events) if kind == "done")
        # Served one after another, the second stream would start after the first ended.
        assert {index for index, kind in events[:first_done] if kind == "token"} == {1, 2}
    finally:
        await provider.aclose()


@pytest.mark.model
async def test_a_full_queue_is_refused_with_503_and_retry_after() -> None:
    provider = LocalEngineProvider(DEPLOYMENT, LocalModelSettings(slots=1, queue_size=1, n_ctx=512))
    try:
        await provider.load()
        running = provider.stream(request(400))
        await anext(running)  # generating: the slot is taken
        waiting = asyncio.create_task(provider.chat(request(2)))
        await asyncio.sleep(0.05)
        assert provider.active == 2
        with pytest.raises(LocalModelBusyError) as caught:
            await provider.chat(request(2))
        error = caught.value
        assert error.status_code == 503
        assert error.headers["Retry-After"] == "1"
        assert error.to_body()["error"]["code"] == "local_model_busy"
        assert "local.slots" in error.message and not error.deployment_fault
        with pytest.raises(LocalModelBusyError):
            [chunk async for chunk in provider.stream(request(2))]
        await running.aclose()
        assert (await asyncio.wait_for(waiting, 30)).choices[0].message.content
    finally:
        await provider.aclose()


@pytest.mark.model
async def test_cancelling_a_stream_frees_its_slot() -> None:
    provider = LocalEngineProvider(DEPLOYMENT, LocalModelSettings(slots=1, queue_size=0, n_ctx=512))
    try:
        await provider.load()
        stream = provider.stream(request(400))
        seen = 0
        async for chunk in stream:
            seen += bool(content(chunk))
            if seen == 2:
                break
        await stream.aclose()
        started = time.perf_counter()
        while provider.active and time.perf_counter() - started < 10:
            await asyncio.sleep(0.01)
        assert provider.active == 0  # stopped at its next token, not after 400
        answer = await provider.chat(request(3))  # not a 503: the slot is free
        assert answer.usage is not None and answer.usage.completion_tokens == 3
        assert time.perf_counter() - started < 10
    finally:
        await provider.aclose()


@pytest.mark.model
def test_queue_full_over_http_is_an_openai_style_503(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        admin_key=ADMIN,
        local=LocalModelSettings(slots=1, queue_size=0, n_ctx=512),
    )
    body = {
        "model": "local",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 300,
        "logit_bias": NO_EOS,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with ServerThread(create_app(settings)) as server, httpx.Client(timeout=60) as client:
        url = f"{server.base_url}/chat/completions"
        with client.stream("POST", url, json=body, headers=headers) as first:
            assert first.status_code == 200
            next(first.iter_lines())  # the first stream holds the only slot
            refused = client.post(url, json={**body, "stream": False}, headers=headers)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["code"] == "local_model_busy" and "busy" in error["message"]


@pytest.mark.model
def test_a_second_local_alias_serves_its_own_model_and_settings(tmp_path: Path) -> None:
    bundled = bundled_chat_model_path()
    assert bundled is not None
    greedy = ModelAlias(
        name="smol-greedy",
        context_window=512,
        deployments=[
            Deployment(
                provider="local",
                model="smollm2-greedy",
                model_path=str(bundled),
                local={"temperature": 0, "slots": 1, "n_ctx": 512},
            )
        ],
    )
    settings = Settings(data_dir=tmp_path, admin_key=ADMIN, models=[greedy])
    headers = {"Authorization": f"Bearer {ADMIN}"}
    body = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8}
    with ServerThread(create_app(settings)) as server, httpx.Client(timeout=60) as client:
        url = f"{server.base_url}/chat/completions"
        listed = {
            m["id"] for m in client.get(f"{server.base_url}/models", headers=headers).json()["data"]
        }
        assert {"local", "smol-greedy"} <= listed
        replies = [
            client.post(url, json={**body, "model": "smol-greedy", "seed": seed}, headers=headers)
            for seed in (1, 2, 3)
        ]
        assert {reply.json()["model"] for reply in replies} == {"smollm2-greedy"}
        answers = {reply.json()["choices"][0]["message"]["content"] for reply in replies}
        assert len(answers) == 1  # temperature 0 from the deployment: one answer for any seed
        default = client.post(url, json={**body, "model": "local"}, headers=headers)
        assert default.status_code == 200
        assert default.json()["model"] == "smollm2-135m-instruct"


@pytest.mark.model
def test_token_counting_uses_the_engine_without_llama_cpp_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The `local` extra no longer brings llama-cpp-python: counts still come from the
    # model's own vocabulary (through the engine), not the len/4 heuristic.
    import sys

    from trellis.inference.tokens import GGUFTokenCounter

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    counter = GGUFTokenCounter(bundled_chat_model_path())
    assert counter.method == "gguf"
    assert counter.count("Hello world, how are you?") == 7
    assert counter.count("lone \ud800 surrogate") > 0

"""``trellis chat``: ask a model in process, or a running server with ``--url``."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from trellis.cli._common import ConfigOption, err_console, load_settings, run
from trellis.settings import Settings


def chat(
    prompt: Annotated[str, typer.Argument(help="What to ask")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model alias")] = None,
    system: Annotated[str | None, typer.Option(help="System message")] = None,
    temperature: Annotated[float | None, typer.Option(min=0, max=2)] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    url: Annotated[
        str | None, typer.Option(help="Talk to a running server (e.g. http://127.0.0.1:8080/v1)")
    ] = None,
    key: Annotated[
        str | None, typer.Option(envvar="TRELLIS_API_KEY", help="API key for --url")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Ask a model and stream the answer to the terminal."""
    settings = load_settings(config)
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    body: dict[str, Any] = {
        "model": model or settings.default_model,
        "messages": messages,
        "stream": True,
    }
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if url:
        run(lambda: _chat_remote(url, key, body))
    else:
        run(lambda: _chat_local(settings, body))
    sys.stdout.write("\n")


async def _chat_local(settings: Settings, body: dict[str, Any]) -> None:
    from trellis.runtime import Trellis
    from trellis.schema import ChatRequest

    async with Trellis(settings) as trellis:
        assert trellis.gateway is not None
        result = await trellis.gateway.chat_stream(ChatRequest.model_validate(body))
        async for chunk in result.chunks:
            for choice in chunk.choices:
                if choice.delta.content:
                    sys.stdout.write(choice.delta.content)
                    sys.stdout.flush()


async def _chat_remote(url: str, key: str | None, body: dict[str, Any]) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(300, connect=5)) as client,
        client.stream(
            "POST", url.rstrip("/") + "/chat/completions", json=body, headers=headers
        ) as response,
    ):
        if response.status_code >= 400:
            await response.aread()
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            err_console.print(f"[red]error {response.status_code}:[/red] {escape(str(message))}")
            raise typer.Exit(1)
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                message = escape(str(data["error"].get("message")))
                err_console.print(f"\n[red]error:[/red] {message}")
                raise typer.Exit(1)
            for choice in data.get("choices", []):
                content = (choice.get("delta") or {}).get("content")
                if content:
                    sys.stdout.write(content)
                    sys.stdout.flush()

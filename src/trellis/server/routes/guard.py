"""The prompt-injection guard over HTTP: score a text the way the gateway would.

``POST /v1/guard/check`` lets users measure the guard on their own data before they
turn ``guard.input`` to ``flag`` or ``block`` (``inference`` scope, like the chat
endpoint whose inputs it judges). ``direction: "output"`` scores a model's answer with
the same detector: text that carries an injection onward (to another model, a tool,
an agent step) is caught there too.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from trellis.access.keys import INFERENCE
from trellis.server.edge import authenticate, parse_body, read_json, runtime
from trellis.server.openapi import operation
from trellis.server.responses import JSONBytes

router = APIRouter(prefix="/v1/guard", tags=["guard"])

#: Longer texts are refused: split them (the detector reads a long text's head and tail).
MAX_CHARS = 200_000


class GuardCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=MAX_CHARS)
    direction: Literal["input", "output"] = "input"
    threshold: float | None = Field(
        default=None, gt=0, lt=1, description="Default: the server's guard.input threshold"
    )


class GuardVerdict(BaseModel):
    object: Literal["guard.check"] = "guard.check"
    flagged: bool
    score: float = Field(ge=0, le=1)
    categories: list[str]
    direction: Literal["input", "output"]
    threshold: float


@router.post(
    "/check", **operation(scope=INFERENCE, body=GuardCheck, reply=GuardVerdict, errors=[400])
)
async def check(request: Request) -> JSONBytes:
    """Score one text: ``flagged`` at or above the threshold, with the categories why."""
    await authenticate(request, INFERENCE)
    body = parse_body(GuardCheck, await read_json(request))
    gateway = runtime(request).gateway
    assert gateway is not None, "the runtime is started before requests are served"
    threshold = body.threshold if body.threshold is not None else gateway.guard.input.threshold
    verdict = await gateway.score_injection(body.text, threshold)
    return JSONBytes(
        {
            "object": "guard.check",
            **verdict.as_dict(),
            "direction": body.direction,
            "threshold": threshold,
        }
    )

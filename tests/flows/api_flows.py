"""Workflows the HTTP and CLI tests register by import path (``api_flows:review`` ...).

Importable once ``tests/flows`` is on ``sys.path`` (``monkeypatch.syspath_prepend``).
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel

from trellis.orchestration import Workflow, human


class Review(BaseModel):
    text: str
    words: int = 0
    approved: bool | None = None
    verdict: str = ""


class Verdict(BaseModel):
    words: int
    verdict: str


def _output(state: Review) -> Verdict:
    return Verdict(words=state.words, verdict=state.verdict)


#: count → (approve, a human step, when the text is long) → finish.
review = Workflow("review", state=Review, output=_output)


@review.step
async def count(s: Review) -> dict[str, int]:
    return {"words": len(s.text.split())}


@review.route("count")
def _after_count(s: Review) -> Literal["approve", "finish"]:
    return "approve" if s.words > 3 else "finish"


review.add(human("approve", into="approved", input=bool, prompt="Publish it?"))


@review.step
async def finish(s: Review) -> dict[str, str]:
    if s.approved is False:
        return {"verdict": "rejected"}
    return {"verdict": "published"}


class Nap(BaseModel):
    seconds: float = 0.0
    naps: int = 0


#: Three steps that each sleep ``seconds``: long enough to cancel, or to see steps stream.
slow = Workflow("slow", state=Nap)


@slow.step
async def first(s: Nap) -> dict[str, int]:
    await asyncio.sleep(s.seconds)
    return {"naps": s.naps + 1}


@slow.step
async def second(s: Nap) -> dict[str, int]:
    await asyncio.sleep(s.seconds)
    return {"naps": s.naps + 1}


@slow.step
async def third(s: Nap) -> dict[str, int]:
    await asyncio.sleep(s.seconds)
    return {"naps": s.naps + 1}


#: Not a Workflow: registering it must be refused.
not_a_workflow = {"name": "nope"}

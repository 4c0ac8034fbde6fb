"""The ``retrieve`` step kind: search collections for the state's query, passages into a field.

It goes through ``inference.grounding.Retriever`` (the context service ``"retriever"``),
the protocol the gateway's grounded requests use too: orchestration sits on the same layer
as ``trellis.retrieval`` and may not import it, so the runtime wires the adapter in.
Passages are stored as plain dicts (``Passage`` fields), so the state stays JSON and a
field typed ``list[dict]`` or ``list[Passage]`` accepts them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from trellis.errors import ConfigurationError
from trellis.inference.grounding import Retriever
from trellis.orchestration.context import Context
from trellis.orchestration.policy import Policy
from trellis.orchestration.steps import Next, Outcome, Step

__all__ = ["RetrieveStep", "retrieve"]

#: Most passages one step may ask for (the HTTP API's ``trellis.top_k`` bound).
MAX_TOP_K = 50


class RetrieveStep(Step):
    kind = "retrieve"

    def __init__(
        self,
        name: str,
        *,
        collections: Sequence[str] | Callable[[Any], Sequence[str]],
        query: Callable[[Any], str],
        into: str,
        top_k: int | Callable[[Any], int] = 5,
        min_score: float | None = None,
        next: Next | None = None,
        policy: Policy | None = None,
    ) -> None:
        super().__init__(name, next=next, policy=policy)
        if not into:
            raise ConfigurationError(f"step {name!r}: a retrieve step needs into=<state field>")
        if isinstance(collections, str):
            raise ConfigurationError(f"step {name!r}: collections is a list of names")
        if not callable(collections) and not collections:
            raise ConfigurationError(f"step {name!r}: no collections to search")
        self.collections = collections
        self.query = query
        self.into = into
        self.top_k = top_k
        self.min_score = min_score

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        retriever: Retriever | None = ctx.services.get("retriever")
        if retriever is None:
            raise ConfigurationError(
                f"step {self.name!r} needs a retriever: run the workflow through Trellis "
                "(or put one in Context.services['retriever'])"
            )
        names = list(self.collections(state) if callable(self.collections) else self.collections)
        top_k = self.top_k(state) if callable(self.top_k) else self.top_k
        if not 1 <= top_k <= MAX_TOP_K:
            raise ConfigurationError(f"step {self.name!r}: top_k {top_k} is not in 1..{MAX_TOP_K}")
        query = (self.query(state) or "").strip()
        span = ctx.span
        if span is not None:
            span.update({"trellis.retrieval.collections": names, "trellis.retrieval.top_k": top_k})
        # The run's project's collections (its key's project; in process: the default one).
        caller = ctx.services.get("caller")
        project_id = getattr(caller, "project_id", None) or "default"
        passages = (
            await retriever.retrieve(names, query, top_k, project_id) if query and names else []
        )
        found = len(passages)
        if self.min_score is not None:
            passages = [p for p in passages if p.score >= self.min_score]
        if span is not None:
            span.update(
                {
                    "trellis.retrieval.hits": len(passages),
                    "trellis.retrieval.chunk_ids": [p.chunk_id for p in passages],
                    "trellis.retrieval.scores": [p.score for p in passages],
                }
            )
            if not query:
                span.add_event("retrieval_failure", reason="no_query")
            elif not passages:
                span.add_event("retrieval_failure", reason="no_hits", below_min_score=found)
        return Outcome(
            update={self.into: [dataclasses.asdict(p) for p in passages]},
            output={"hits": [{"chunk_id": p.chunk_id, "score": p.score} for p in passages]},
        )


def retrieve(
    name: str,
    *,
    collections: Sequence[str] | Callable[[Any], Sequence[str]],
    query: Callable[[Any], str],
    into: str,
    top_k: int | Callable[[Any], int] = 5,
    min_score: float | None = None,
    next: Next | None = None,
    policy: Policy | None = None,
) -> RetrieveStep:
    """A retrieve step: ``query(state)`` searched in ``collections`` (names, or a function
    of the state), the best ``top_k`` passages (an int or a function of the state, so a
    retry can widen it) as dicts into the field ``into``; ``min_score`` drops weak hits.
    An empty query retrieves nothing (a ``retrieval_failure`` event), it is not an error."""
    return RetrieveStep(
        name,
        collections=collections,
        query=query,
        into=into,
        top_k=top_k,
        min_score=min_score,
        next=next,
        policy=policy,
    )

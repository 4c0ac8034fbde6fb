"""Who is calling, and the state one chat call carries through the gateway's stages.

Its own module because three read it: the stage sequence (``gateway``), the stream
relay (``streaming``) and the trace bookkeeping (``bookkeeping``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trellis.inference import grounding
from trellis.inference.conversation import SessionKey
from trellis.inference.router import Outcome, Route
from trellis.observe.tracing import Span, Trace
from trellis.schema import ChatRequest

__all__ = ["Caller", "Call"]


@dataclass(slots=True)
class Caller:
    """Who is calling: the verified API key (None for in-process library use) and
    the time authentication took, so it shows as the trace's first stage."""

    key: Any = None  # trellis.access.keys.ApiKeyRecord
    auth_start_ns: int | None = None
    auth_end_ns: int | None = None
    no_cache: bool = False  # Cache-Control: no-cache — skip the lookup
    no_store: bool = False  # Cache-Control: no-store — do not store the answer
    #: Append the exchange to its ``trellis.session_id`` session. Workflow runs turn it
    #: off: their steps read the session, and the run records one turn when it finishes.
    session_record: bool = True
    #: The project the call acts in: the key's own, or the one the built-in admin chose.
    project_id: str = "default"
    #: The built-in admin without a chosen project: reads span every project.
    all_projects: bool = False

    @property
    def key_id(self) -> str | None:
        return getattr(self.key, "id", None)


@dataclass(slots=True)
class Call:
    """State shared by the stages of one chat call."""

    request: ChatRequest
    caller: Caller
    trace: Trace
    route: Route
    #: The request as it arrived (``request`` may be grounded or trimmed later).
    received: ChatRequest
    outcome: Outcome = field(default_factory=Outcome)
    cache_key: str | None = None
    started: float = field(default_factory=time.perf_counter)
    retrieval: grounding.RetrievalPlan | None = None
    #: The ``citations`` field of a grounded answer (None when nothing was retrieved).
    citations: list[dict[str, Any]] | None = None
    #: Semantic-cache scope and prompt vector, kept from the lookup to store the answer.
    semantic_scope: str | None = None
    semantic_vector: np.ndarray | None = None
    #: The request's attributes are on the trace (``Bookkeeper.describe``).
    described: bool = False
    authorize_span: Span | None = None
    #: The stored conversation this call continues (``trellis.session_id``), if any.
    session: SessionKey | None = None
    #: The user whose memories this call recalls and may extract into (None: nobody).
    memory_user: str | None = None
    #: Extract memories from this turn after the answer (``trellis.memories.extract``).
    extract: bool = False

"""Who is calling, and the state one chat call carries through the gateway's stages.

Its own module because three read it: the stage sequence (``gateway``), the stream
relay (``streaming``) and the trace bookkeeping (``bookkeeping``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trellis.guard.output import OutputCheck
from trellis.guard.placeholders import Placeholders
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
    #: The project the call acts in: the key's own, or the one the built-in admin chose;
    #: its limits and budgets apply with the key's.
    project_id: str = "default"
    #: The built-in admin without a chosen project: reads span every project.
    all_projects: bool = False
    #: OpenAI's ``x-ratelimit-*`` headers of the last call admitted under a limit (the
    #: HTTP edge adds them to the answer); empty when no limit applies.
    rate_limit_headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def key_id(self) -> str | None:
        return getattr(self.key, "id", None)

    @property
    def project(self) -> str:
        """The project whose limits apply: the key's own, else the one given."""
        return getattr(self.key, "project_id", None) or self.project_id


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
    # --- privacy and output guard (``Gateway._privacy``, ``Gateway._guard_setup``) ---
    #: The request's reversible placeholders (privacy ``redact``); None: none were put in.
    placeholders: Placeholders | None = None
    #: Rewrites messages before the trace gets them (set when the request held PII its
    #: policy acts on): the trace records placeholders, never the values.
    trace_view: Callable[[list[Any]], list[Any]] | None = None
    #: Neither look up nor store this call in the caches (PII routed in-house).
    uncacheable: bool = False
    #: The canary token put in this request's system prompt (``guard.canary``).
    canary: str | None = None
    #: The output checks of this call (``guard.output``); None: none.
    output: OutputCheck | None = None
    #: What the limiter admitted (``access.limits.Admission``), settled once at the end.
    admission: Any = None

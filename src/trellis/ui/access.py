"""What a signed-in key may see: every page and form asks ``allowed`` and nothing else.

Each area of the UI takes its roles from ``trellis.access.policy``, the table the
matching ``/v1`` routes authenticate with, so the UI shows exactly what the key could
read or change over HTTP. Which project's resources it sees is the viewer's caller's
(``Viewer.caller``), as for the API.
"""

from __future__ import annotations

from trellis.access import policy
from trellis.access.keys import OBSERVER, ApiKeyRecord
from trellis.inference.callers import has_role

__all__ = ["AREAS", "NAV", "allowed", "needed_scope"]

#: Area of the UI -> the roles (any of them) that open it; admin opens everything.
AREAS: dict[str, tuple[str, ...]] = {
    "chat": policy.CHAT,
    "traces": policy.TRACES_READ,
    "traces.score": policy.TRACES_READ,  # the traces page's form: what it shows needs observer
    "dashboard": policy.TRACES_READ,
    "collections": policy.COLLECTIONS_READ,
    "collections.documents": policy.DOCUMENTS_WRITE,
    "collections.write": policy.COLLECTIONS_WRITE,
    "alerts": policy.ALERTS_READ,
    "alerts.write": policy.ALERTS_WRITE,
    "keys": policy.KEYS,
    "budgets": policy.USAGE_READ,
    "budgets.write": policy.LIMITS_WRITE,
    "guard": policy.TRACES_READ,
    "guard.check": policy.CHAT,  # as POST /v1/guard/check
    "evals": policy.EVALS_READ,
    "evals.queues": policy.EVALS_READ,
    # Schedules are the deployment's (settings); the page lists them to the project's readers.
    "evals.schedules": (OBSERVER,),
    "evals.schedules.run": policy.SCHEDULES_RUN,
    "workflows": policy.RUNS_READ,
    "workflows.resume": policy.RUNS_START,
}

#: The navigation, in order: (area, path, label).
NAV: tuple[tuple[str, str, str], ...] = (
    ("chat", "/ui/chat", "Chat"),
    ("traces", "/ui/traces", "Traces"),
    ("dashboard", "/ui/dashboard", "Dashboard"),
    ("collections", "/ui/collections", "Collections"),
    ("alerts", "/ui/alerts", "Alerts"),
    ("evals", "/ui/evals", "Evals"),
    ("workflows", "/ui/workflows", "Workflows"),
    ("budgets", "/ui/budgets", "Budgets"),
    ("guard", "/ui/guard", "Guard"),
    ("keys", "/ui/keys", "Keys"),
)


def allowed(key: ApiKeyRecord, area: str) -> bool:
    """Whether ``key`` may open (or post to) ``area``."""
    return has_role(key, AREAS[area])


def needed_scope(area: str) -> str:
    return " or ".join(AREAS[area])

"""What a signed-in key may see: every page and form asks ``allowed`` and nothing else.

Pages map to the scope their ``/v1`` routes need, so the UI shows exactly what the key
could read or change over HTTP. When keys get roles, this table is the one place that
maps them.
"""

from __future__ import annotations

from trellis.access.keys import ADMIN, INFERENCE, OBSERVER, ApiKeyRecord

__all__ = ["AREAS", "NAV", "allowed", "needed_scope"]

#: Area of the UI -> the scopes (any of them) that open it; admin opens everything.
AREAS: dict[str, tuple[str, ...]] = {
    "chat": (INFERENCE,),
    "traces": (OBSERVER,),
    "traces.score": (OBSERVER,),
    "dashboard": (OBSERVER,),
    "collections": (INFERENCE,),
    "collections.write": (ADMIN,),
    "alerts": (OBSERVER,),
    "alerts.write": (ADMIN,),
    "keys": (ADMIN,),
    "budgets": (INFERENCE,),
    "budgets.write": (ADMIN,),
    "guard": (OBSERVER,),
    "evals": (INFERENCE, OBSERVER),
    "evals.queues": (INFERENCE, OBSERVER),
    "evals.schedules": (OBSERVER,),
    "evals.schedules.run": (ADMIN,),
    "workflows": (INFERENCE, OBSERVER),
    "workflows.resume": (INFERENCE,),
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
    return any(key.has_scope(scope) for scope in AREAS[area])


def needed_scope(area: str) -> str:
    return " or ".join(AREAS[area])

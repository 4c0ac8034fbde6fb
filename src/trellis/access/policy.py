"""Which roles open what: the one table the ``/v1`` routes and the web UI both read.

A route or page names the entry of the resource it touches; a key needs any role of that
entry (``admin`` covers them all). Resource ownership (own runs, the project) is checked
where the resource is read, not here.
"""

from __future__ import annotations

from trellis.access.keys import ADMIN, EVAL, INFERENCE, INGEST, OBSERVER

__all__ = [
    "ALERTS_READ",
    "ALERTS_WRITE",
    "CHAT",
    "COLLECTIONS_READ",
    "COLLECTIONS_WRITE",
    "DOCUMENTS_WRITE",
    "EVALS_READ",
    "EVALS_RUN",
    "KEYS",
    "LIMITS_WRITE",
    "Roles",
    "RUNS_READ",
    "RUNS_START",
    "SCHEDULES_RUN",
    "TRACES_READ",
    "TRACES_SCORE",
    "USAGE_READ",
]

Roles = tuple[str, ...]

#: Chat, completions, embeddings, models.
CHAT: Roles = (INFERENCE,)
#: Collections and their documents: list, read, search.
COLLECTIONS_READ: Roles = (INFERENCE, INGEST)
#: Documents of a collection: add, delete.
DOCUMENTS_WRITE: Roles = (INGEST,)
#: Collections themselves: create, delete, re-index.
COLLECTIONS_WRITE: Roles = (ADMIN,)
#: Traces, statistics, guard rows.
TRACES_READ: Roles = (OBSERVER,)
#: Scores on traces (``inference``: traces of its own requests).
TRACES_SCORE: Roles = (OBSERVER, INFERENCE)
ALERTS_READ: Roles = (OBSERVER,)
ALERTS_WRITE: Roles = (ADMIN,)
#: API keys and the audit log (a project's admin: its project's).
KEYS: Roles = (ADMIN,)
#: Eval datasets and runs: upload, start, resume.
EVALS_RUN: Roles = (EVAL, INFERENCE)
#: Eval runs, reports, comparisons, labelling queues (observers read every run of the
#: project, as eval keys do; inference its own).
EVALS_READ: Roles = (EVAL, INFERENCE, OBSERVER)
#: Running a scheduled eval suite now.
SCHEDULES_RUN: Roles = (ADMIN,)
#: Workflows and runs: read (``inference``: its own runs).
RUNS_READ: Roles = (INFERENCE, OBSERVER)
#: Start, resume, cancel a run (its own; ``admin``: the project's).
RUNS_START: Roles = (INFERENCE,)
#: Usage against limits (``inference``: its own key and project; ``admin``: every subject).
USAGE_READ: Roles = (INFERENCE,)
#: Setting and deleting rate limits and budgets.
LIMITS_WRITE: Roles = (ADMIN,)

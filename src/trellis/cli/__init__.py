"""The ``trellis`` command: serve, chat, models, keys, projects, audit, doctor, traces,
stats, retrieval, workflows and runs, memories and sessions, eval, and guard.

One module per command group; this package only assembles them into ``app``, the
console-script entry point (``trellis.cli:app``).
"""

from __future__ import annotations

import typer

from trellis.cli import (
    chat,
    doctor,
    evals,
    guard,
    keys,
    limits,
    memory,
    models,
    observe,
    projects,
    retrieval,
    serve,
    workflows,
)

__all__ = ["app"]

app = typer.Typer(
    help="Trellis: an LLM gateway with retrieval, workflows and observability.",
    no_args_is_help=True,
)
app.add_typer(keys.app, name="keys")
app.add_typer(limits.app, name="limits")
app.add_typer(projects.projects_app, name="projects")
app.command("audit")(projects.audit)
app.command()(serve.serve)
app.command()(chat.chat)
app.command()(models.models)
app.command()(doctor.doctor)
app.add_typer(observe.traces_app, name="traces")
app.command("stats")(observe.stats)
app.add_typer(retrieval.collections_app, name="collections")
app.command()(retrieval.ingest)
app.command()(retrieval.search)
app.add_typer(workflows.workflows_app, name="workflows")
app.command("run")(workflows.run_workflow)
app.add_typer(workflows.runs_app, name="runs")
app.add_typer(evals.eval_app, name="eval")
app.add_typer(memory.memories_app, name="memories")
app.add_typer(memory.sessions_app, name="sessions")
app.add_typer(guard.guard_app, name="guard")

"""Workflows named in settings by import path (``"pkg.flows:support"``), loaded at start.

A wrong path or an object that is not a :class:`Workflow` is a :class:`ConfigurationError`
naming the entry, so the server and the CLI refuse to start with one clear line instead of a
traceback from deep inside an import.
"""

from __future__ import annotations

import importlib
from typing import Any

from trellis.errors import ConfigurationError
from trellis.orchestration.workflow import Workflow

__all__ = ["load_workflow", "load_workflows"]


def load_workflow(path: str) -> Workflow[Any]:
    """The :class:`Workflow` at ``module:attribute`` (the attribute may be dotted)."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(
            f"workflows: {path!r} is not an import path like 'package.module:name'"
        )
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"workflows: cannot import {module_name!r} ({exc})") from None
    except Exception as exc:  # the module itself failed while importing
        raise ConfigurationError(
            f"workflows: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(f"workflows: {module_name!r} has no {attribute!r}") from None
    if not isinstance(found, Workflow):
        raise ConfigurationError(
            f"workflows: {path!r} is a {type(found).__name__}, not a trellis Workflow"
        )
    found.check()
    return found


def load_workflows(paths: list[str]) -> list[Workflow[Any]]:
    """Every workflow in ``paths``, in order; two with the same name are an error."""
    flows: dict[str, Workflow[Any]] = {}
    for path in paths:
        flow = load_workflow(path)
        if flow.name in flows and flows[flow.name] is not flow:
            raise ConfigurationError(f"workflows: two workflows are named {flow.name!r}")
        flows[flow.name] = flow
    return list(flows.values())

"""``trellis models``: the model aliases and their deployments."""

from __future__ import annotations

import json

from rich.table import Table

from trellis.cli._common import ConfigOption, JsonOption, console, load_settings


def models(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List the model aliases and their deployments."""
    settings = load_settings(config)
    aliases = settings.all_models()
    if as_json:
        console.print_json(json.dumps([alias.model_dump(mode="json") for alias in aliases]))
        return
    table = Table("alias", "kind", "deployments", "context", "fallbacks", "routing")
    for alias in aliases:
        table.add_row(
            alias.name,
            alias.kind,
            "\n".join(d.label for d in alias.deployments),
            str(alias.context_window),
            ", ".join(alias.fallbacks) or "-",
            alias.routing,
        )
    console.print(table)

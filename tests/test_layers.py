"""Dependencies point downward: a layer never imports a layer above it.

The layers (docs/architecture.md): server → ui → (runtime, evals) → (orchestration, retrieval,
memory) → inference → observe/access → store/guard → schema/settings → shared rules
(http_headers, http_proxies, durations, nesting, cron, thresholds) → errors.
Units of one layer do not import each other either. Every import
counts, also those inside functions and under ``TYPE_CHECKING``: a lazy or
type-only import is still a dependency someone has to keep working.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "trellis"

#: Top-level unit of ``trellis`` -> layer; a unit may import its own unit and lower layers.
LAYERS: dict[str, int] = {
    "errors": 0,
    # Small shared rules below every layer: header checks, proxies, durations, nesting,
    # cron expressions and --fail-on thresholds.
    "http_headers": 1,
    "http_proxies": 1,
    "durations": 1,
    "nesting": 1,
    "cron": 1,
    "thresholds": 1,
    "settings": 2,
    "schema": 2,
    "store": 3,
    "guard": 3,
    "observe": 4,
    "access": 4,
    "inference": 5,
    "retrieval": 6,
    "orchestration": 6,
    "memory": 6,
    "evals": 7,
    "runtime": 7,
    # The web UI's pages: above the runtime, below the server that mounts them.
    "ui": 8,
    "web": 8,
    "server": 9,
    "testing": 10,
    "cli": 10,
    "__init__": 11,  # the package's public surface re-exports from every layer
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every ``trellis`` import in ``path``."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return [
        (line, name) for line, name in found if name == "trellis" or name.startswith("trellis.")
    ]


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_unit_has_a_layer() -> None:
    units = {_unit(_module_name(path)) for path in _modules()}
    assert units <= LAYERS.keys(), f"give these a layer in LAYERS: {units - LAYERS.keys()}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC.parent)))
def test_no_upward_import(path: Path) -> None:
    own = _unit(_module_name(path))
    upward = [
        f"line {line}: {name} ({_unit(name)}, layer {LAYERS.get(_unit(name))})"
        for line, name in _imports(path)
        if _unit(name) != own and LAYERS.get(_unit(name), 99) >= LAYERS[own]
    ]
    assert not upward, f"{own} (layer {LAYERS[own]}) imports upward or sideways: {upward}"


def test_local_models_need_no_hosted_provider_code() -> None:
    """Retrieval embeds with inference.local: that must not drag in the HTTP adapters."""
    for path in sorted((SRC / "inference" / "local").glob("*.py")):
        hosted = [
            name for _, name in _imports(path) if name.startswith("trellis.inference.providers")
        ]
        assert not hosted, f"{path.name} imports {hosted}"

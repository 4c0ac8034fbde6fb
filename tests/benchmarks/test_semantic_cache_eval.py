"""Runs ``benchmarks/semantic_cache_eval.py`` with the real MiniLM, so the false-hit figures
in docs/configuration.md stay true: the default threshold must keep false hits rare."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from trellis.settings import SemanticCacheSettings

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "semantic_cache_eval.py"


def test_default_threshold_keeps_false_hits_rare(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("semantic_cache_eval", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        assert len(module.PARAPHRASES) + len(module.CONTRASTS) >= 60
        out = tmp_path / "semantic.json"
        assert module.main(["--json", str(out)]) == 0
    finally:
        sys.modules.pop(spec.name, None)
    rows = {row["threshold"]: row for row in json.loads(out.read_text())["rows"]}
    default = rows[SemanticCacheSettings().threshold]
    assert default["false_hit_rate"] <= 0.06
    assert default["precision"] >= 0.9 and default["recall"] >= 0.5

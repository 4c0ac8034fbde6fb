"""A tiny run of ``benchmarks/retrieval_latency.py`` on both backends, so it cannot rot.

A few hundred chunks and two queries: it checks the plumbing (SQLite row, the Postgres
row's bulk load, HNSW build and live writes), not the speed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "retrieval_latency.py"
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ir" / "cranfield"


@pytest.mark.postgres
@pytest.mark.pgvector
@pytest.mark.skipif(not DATA.is_dir(), reason="the shared IR test data is not present")
def test_both_backends_get_a_row(postgres_server: str, tmp_path: Path, capsys: Any) -> None:
    spec = importlib.util.spec_from_file_location("retrieval_latency", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    try:
        spec.loader.exec_module(bench)
        bench.INCREMENTAL_CHUNKS = 40
        out = tmp_path / "latency.json"
        argv = ["--chunks", "200", "--queries", "2", "--postgres-url", postgres_server]
        assert bench.main([*argv, "--json", str(out)]) == 0
    finally:
        sys.modules.pop(spec.name, None)
    result = json.loads(out.read_text())
    rows = {row["backend"]: row for row in result["backends"]}
    assert set(rows) == {"sqlite", "postgres"}
    assert rows["postgres"]["hnsw_build_seconds"] >= 0
    assert rows["postgres"]["incremental_chunks_per_second"] > 0
    for row in rows.values():
        assert set(row["latency"]) >= {"keyword", "vector", "hybrid", "vector, filtered 1/10"}
    assert "| postgres | vector" in capsys.readouterr().out

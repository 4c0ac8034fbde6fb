"""``trellis eval retrieval``: a BEIR-layout corpus ingested, judged queries searched under
several settings side by side, scored like trec_eval; the scorers on hand-made rankings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from trellis.cli import app
from trellis.errors import InvalidRequestError
from trellis.evals.retrieval import ndcg_at, parse_setting, read_qrels, recall_at

runner = CliRunner()

DOCS = {
    "otters": "Sea otters crack shellfish open with stones they keep in a pouch.",
    "kelp": "Kelp forests grow fast in cold coastal water and shelter fish.",
    "volcano": "Basalt volcanoes erupt runny lava that cools into dark rock.",
    "desert": "Cacti store water in thick stems to survive the desert heat.",
    "glacier": "Glaciers carve valleys as compacted snow slowly flows downhill.",
}
QUERIES = {
    "q1": "How do otters open shellfish?",
    "q2": "Where does kelp grow?",
    "q3": "What rock does lava make?",
    "q9": "A query nobody judged",
}
QRELS = "query-id\tcorpus-id\tscore\nq1\totters\t1\nq2\tkelp\t2\nq3\tvolcano\t1\n"


def test_the_scorers_match_trec_eval_on_hand_made_rankings() -> None:
    qrels = {"a": 2, "b": 1, "c": 0}
    assert ndcg_at(["a", "b"], qrels) == pytest.approx(1.0)
    swapped = (1 / 1 + 2 / math.log2(3)) / (2 / 1 + 1 / math.log2(3))
    assert ndcg_at(["b", "a"], qrels) == pytest.approx(swapped)
    assert ndcg_at(["x"] * 10 + ["a"], qrels) == 0.0  # beyond the cut
    assert recall_at(["a", "x"], qrels) == 0.5 and recall_at([], {"a": 0}) == 0.0


def test_settings_parse_and_bad_ones_are_named() -> None:
    assert parse_setting("keyword").fusion is None
    rrf = parse_setting("hybrid:rrf:20").fusion
    assert rrf is not None and (rrf.method, rrf.k) == ("rrf", 20.0)
    weighted = parse_setting("hybrid:weighted:0.3,0.7").fusion
    assert weighted is not None and weighted.weights == (0.3, 0.7)
    for bad in ("fuzzy", "keyword:rrf", "hybrid:magic", "hybrid:weighted:1", "hybrid:rrf:x"):
        with pytest.raises(InvalidRequestError, match="setting"):
            parse_setting(bad)


def test_bad_qrels_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "qrels.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1 otters\n")
    with pytest.raises(InvalidRequestError, match=r"qrels.tsv:2"):
        read_qrels(path)


def test_a_collection_is_scored_under_each_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRELLIS_CONFIG", raising=False)
    config = tmp_path / "trellis.yaml"
    config.write_text(
        yaml.safe_dump({"data_dir": str(tmp_path / "data"), "include_local_models": False})
    )
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in DOCS.items()))
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in QUERIES.items())
    )
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(QRELS)

    ingested = runner.invoke(
        app, ["ingest", "nature", str(corpus), "--create", "--config", str(config)]
    )
    assert ingested.exit_code == 0, ingested.output
    out = tmp_path / "result.json"
    result = runner.invoke(
        app,
        [
            "eval", "retrieval", "nature", "--queries", str(queries), "--qrels", str(qrels),
            "-s", "keyword", "-s", "vector", "-s", "hybrid:rrf", "--json", str(out),
            "--config", str(config),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["queries"] == 3 and report["unjudged_queries"] == 1
    assert list(report["settings"]) == ["keyword", "vector", "hybrid:rrf"]
    for row in report["settings"].values():
        # Each judged query's one relevant document is among 5: recall@100 is complete,
        # and these plain queries put it first.
        assert row["recall@100"] == 1.0
        assert row["ndcg@10"] == pytest.approx(1.0)
        assert row["latency_p50_ms"] > 0
    assert "hybrid:rrf" in result.output

    missing = runner.invoke(
        app,
        ["eval", "retrieval", "nope", "--queries", str(queries), "--qrels", str(qrels),
         "--config", str(config)],
    )  # fmt: skip
    assert missing.exit_code == 1 and "nope" in missing.output


def test_chunkings_are_compared_on_scratch_databases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRELLIS_CONFIG", raising=False)
    config = tmp_path / "trellis.yaml"
    config.write_text(
        yaml.safe_dump({"data_dir": str(tmp_path / "data"), "include_local_models": False})
    )
    long_docs = {key: " ".join([text] * 12) for key, text in DOCS.items()}  # several chunks
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in long_docs.items())
    )
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in QUERIES.items())
    )
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(QRELS)
    out = tmp_path / "result.json"
    result = runner.invoke(
        app,
        [
            "eval", "retrieval", "--corpus", str(corpus), "--queries", str(queries),
            "--qrels", str(qrels), "--chunking", "64/8", "--chunking", "256/32",
            "-s", "keyword", "-s", "hybrid", "--json", str(out), "--config", str(config),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert list(report["chunkings"]) == ["64/8", "256/32"]
    for section in report["chunkings"].values():
        assert section["queries"] == 3 and section["ingest_seconds"] >= 0
        assert list(section["settings"]) == ["keyword", "hybrid"]
        assert all(row["recall@100"] == 1.0 for row in section["settings"].values())
    # Nothing went into the configured database: no collection there.
    listed = runner.invoke(app, ["collections", "list", "--json", "--config", str(config)])
    assert listed.exit_code == 0 and json.loads(listed.output) in ([], {"data": []})
    for bad in (["--chunking", "8/4"], ["--chunking", "abc"]):
        refused = runner.invoke(
            app,
            ["eval", "retrieval", "--corpus", str(corpus), "--queries", str(queries),
             "--qrels", str(qrels), *bad, "--config", str(config)],
        )  # fmt: skip
        assert refused.exit_code == 2 and "chunking" in refused.output
    neither = runner.invoke(
        app, ["eval", "retrieval", "--queries", str(queries), "--qrels", str(qrels)]
    )
    assert neither.exit_code == 2 and "COLLECTION or a --corpus" in neither.output

"""``trellis ingest``, ``trellis search`` and ``trellis collections`` on small real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from trellis.cli import app

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "trellis.yaml"
    path.write_text(
        yaml.safe_dump({"data_dir": str(tmp_path / "data"), "include_local_models": False})
    )
    monkeypatch.delenv("TRELLIS_CONFIG", raising=False)
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "otters.txt").write_text("Sea otters crack shellfish open with stones.\n")
    (folder / "kelp.md").write_text(
        "# Kelp\n\nKelp forests grow fast in cold coastal water.\n\n## Uses\n\nAlginate.\n"
    )
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    return folder


def invoke(config: Path, *args: str, code: int = 0) -> str:
    result = runner.invoke(app, [*args, "--config", str(config)])
    assert result.exit_code == code, result.output
    return result.output


def test_ingest_search_and_collections(config: Path, corpus: Path) -> None:
    missing = invoke(config, "ingest", "notes", str(corpus), code=1)
    assert "--create" in missing

    out = invoke(config, "ingest", "notes", str(corpus), "--create")
    assert "broken.pdf" in out and "skipped" in out
    report = json.loads(invoke(config, "ingest", "notes", str(corpus), "--json"))
    assert len(report["unchanged"]) == 2 and report["added"] == []
    assert list(report["failed"]) == [str(corpus / "broken.pdf")]
    assert report["failed"][str(corpus / "broken.pdf")]

    (corpus / "otters.txt").write_text("Sea otters float on their backs while they eat.\n")
    again = json.loads(invoke(config, "ingest", "notes", str(corpus / "otters.txt"), "--json"))
    assert again["replaced"] == [str(corpus / "otters.txt")]

    for mode in ("keyword", "vector", "hybrid"):
        hits = json.loads(
            invoke(config, "search", "notes", "kelp forests", "--mode", mode, "--json")
        )
        assert hits[0]["document_id"] == str(corpus / "kelp.md"), mode
        assert hits[0]["chunk_id"] and "kelp" in hits[0]["text"].lower()
    # Longer than the embedder's 256 word pieces: searched whole (it was an error).
    long_query = "I want to read about the sea and what lives in it. " * 30 + "Kelp forests?"
    hits = json.loads(invoke(config, "search", "notes", long_query, "--json"))
    assert hits and {"keyword", "vector"} <= set(hits[0]["scores"])
    top = json.loads(invoke(config, "search", "notes", "otters", "--top-k", "1", "--json"))
    assert len(top) == 1 and top[0]["document_id"].endswith("otters.txt")
    table = invoke(config, "search", "notes", "otters")
    shown = json.loads(invoke(config, "search", "notes", "otters", "--json"))
    assert "hybrid search: otters" in table and "score" in table
    assert f"{shown[0]['score']:.4f}" in table and f"{shown[-1]['score']:.4f}" in table
    assert "mode must be" in invoke(config, "search", "notes", "x", "--mode", "fuzzy", code=1)
    assert "no collection" in invoke(config, "search", "nope", "x", code=1)

    listed = json.loads(invoke(config, "collections", "list", "--json"))
    assert [(c["name"], c["documents"]) for c in listed] == [("notes", 2)]
    assert "notes" in invoke(config, "collections", "list")
    shown = json.loads(invoke(config, "collections", "show", "notes", "--json"))
    assert shown["chunks"] >= 2 and len(shown["documents_page"]) == 2
    shown_table = invoke(config, "collections", "show", "notes")
    assert "first 2 documents" in shown_table and "…" not in shown_table

    redone = json.loads(invoke(config, "collections", "reindex", "notes", "--json"))
    assert redone["documents"] == 2 and len(redone["reindexed"]["replaced"]) == 2
    assert "Re-indexed notes: 2 documents" in invoke(config, "collections", "reindex", "notes")
    assert "no collection" in invoke(config, "collections", "reindex", "nope", code=1)

    assert "Deleted" in invoke(config, "collections", "delete", "notes", "--yes")
    assert json.loads(invoke(config, "collections", "list", "--json")) == []
    assert "no collection" in invoke(config, "collections", "delete", "notes", "--yes", code=1)


def test_ingest_of_only_unreadable_files_fails(config: Path, corpus: Path) -> None:
    out = invoke(config, "ingest", "notes", str(corpus / "broken.pdf"), "--create", code=1)
    assert "broken.pdf" in out


def test_collections_of_a_project(config: Path, tmp_path: Path) -> None:
    """--project: the same collection name in two projects, each ingested, searched,
    shown and deleted on its own."""
    c = str(config)
    assert runner.invoke(app, ["projects", "create", "team", "-c", c]).exit_code == 0
    for project, body in (("default", "Otters hold hands."), ("team", "Herons stand still.")):
        doc = tmp_path / f"{project}.md"
        doc.write_text(body)
        args = ["ingest", "zoo", str(doc), "--create", "-p", project, "-c", c]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    found = runner.invoke(app, ["search", "zoo", "herons", "-p", "team", "--json", "-c", c])
    assert [hit["text"] for hit in json.loads(found.output)] == ["Herons stand still."]
    listed = runner.invoke(app, ["collections", "list", "--json", "-c", c])
    assert sorted(i["project"] for i in json.loads(listed.output)) == ["default", "team"]
    listed = runner.invoke(app, ["collections", "list", "-p", "team", "--json", "-c", c])
    assert [i["project"] for i in json.loads(listed.output)] == ["team"]
    deleted = runner.invoke(app, ["collections", "delete", "zoo", "-y", "-p", "team", "-c", c])
    assert deleted.exit_code == 0, deleted.output
    shown = runner.invoke(app, ["collections", "show", "zoo", "--json", "-c", c])
    assert json.loads(shown.output)["project"] == "default"
    gone = runner.invoke(app, ["collections", "show", "zoo", "-p", "team", "-c", c])
    assert gone.exit_code != 0

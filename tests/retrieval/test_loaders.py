"""Loaders keep headings, ids and metadata; unreadable files raise LoaderError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trellis.retrieval.loaders import LoaderError, iter_files, load_path


def test_text_and_markdown(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("plain words", encoding="utf-8")
    (tmp_path / "b.md").write_text("# Title\n\nBody.\n\n## Part\n\nMore.", encoding="utf-8")
    (doc,) = load_path(tmp_path / "a.txt")
    assert doc.text == "plain words" and doc.id == str(tmp_path / "a.txt")
    (md,) = load_path(tmp_path / "b.md")
    assert "## Part" in md.text and md.metadata["title"] == "Title"


def test_html_keeps_headings_and_drops_scripts(tmp_path: Path) -> None:
    page = tmp_path / "p.html"
    page.write_text(
        "<html><head><title>Page</title><style>p{}</style></head><body>"
        "<h1>Main</h1><p>First &amp; <b>bold</b> para.</p><script>alert(1)</script>"
        "<h2>Sub</h2><ul><li>one</li><li>two</li></ul></body></html>",
        encoding="utf-8",
    )
    (doc,) = load_path(page)
    assert doc.metadata["title"] == "Page"
    assert "# Main" in doc.text and "## Sub" in doc.text
    assert "First & bold para." in doc.text and "- one" in doc.text
    assert "alert" not in doc.text and "p{}" not in doc.text


def test_beir_jsonl_and_json(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    lines = [{"_id": "d1", "title": "Wings", "text": "lift", "metadata": {"year": 1960}}]
    lines.append({"_id": "d2", "title": "", "text": "drag"})
    corpus.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    first, second = load_path(corpus)
    assert (first.id, first.text, first.metadata) == (
        "d1",
        "Wings\n\nlift",
        {"year": 1960, "title": "Wings"},
    )
    assert (second.id, second.text) == ("d2", "drag")
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"id": "x", "content": "hello"}), encoding="utf-8")
    assert [d.id for d in load_path(single)] == ["x"]


def test_docx_headings_become_markdown(tmp_path: Path) -> None:
    docx = pytest.importorskip("docx")
    document = docx.Document()
    document.add_heading("Report", level=1)
    document.add_paragraph("Findings here.")
    document.add_heading("Details", level=2)
    path = tmp_path / "r.docx"
    document.save(str(path))
    (doc,) = load_path(path)
    assert doc.text == "# Report\n\nFindings here.\n\n## Details"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.pdf", b"%PDF-1.4 this is not really a pdf"),
        ("bad.docx", b"PK\x03\x04 broken zip"),
        ("bad.json", b"{not json"),
        ("bad.jsonl", b'{"_id": "1", "text": "ok"}\n{broken\n'),
        ("bad.txt", b"\xff\xfe\x00\x81 binary"),
        ("notext.json", b'{"_id": "1", "title": "no text field"}'),
        ("image.png", b"\x89PNG"),
    ],
)
def test_unreadable_files_raise_loader_error(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LoaderError) as info:
        load_path(path)
    assert info.value.source == str(path)


def test_folders_yield_supported_visible_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("a.md", "sub/b.txt", "c.png", ".hidden/d.md"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    assert [p.name for p in iter_files([tmp_path])] == ["a.md", "b.txt"]

"""Turn files into :class:`Document` objects, keeping the structure retrieval needs.

One small function per format, registered by file extension in :data:`LOADERS`.
Headings survive as Markdown ``#`` lines in every format (the chunker splits on
them), PDFs record where each page starts. A file that cannot be read raises
:class:`LoaderError`, which ingestion reports and skips.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from trellis.errors import InvalidRequestError
from trellis.retrieval.models import Document

__all__ = [
    "LoaderError",
    "LOADERS",
    "load_path",
    "iter_files",
    "documents_from_records",
    "record_to_document",
]


class LoaderError(InvalidRequestError):
    """A file is corrupt, unreadable or not what its extension says."""

    code = "unreadable_document"

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot load {source}: {reason}")
        self.source = source
        self.reason = reason


Loader = Callable[[Path], list[Document]]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoaderError(str(path), f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise LoaderError(str(path), exc.strerror or str(exc)) from exc


def _first_heading(text: str) -> str | None:
    match = re.search(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", text, flags=re.MULTILINE)
    return match.group(1).strip() if match else None


def _doc(path: Path, text: str, fmt: str, pages: tuple[int, ...] = ()) -> Document:
    metadata: dict[str, Any] = {"format": fmt, "filename": path.name}
    title = _first_heading(text)
    if title:
        metadata["title"] = title
    return Document(id=str(path), text=text, source=str(path), metadata=metadata, pages=pages)


def load_text(path: Path) -> list[Document]:
    return [_doc(path, _read_text(path), "text")]


def load_markdown(path: Path) -> list[Document]:
    return [_doc(path, _read_text(path), "markdown")]


# --- HTML ----------------------------------------------------------------------------

_BLOCK_TAG_NAMES = (
    "p div section article header footer main aside nav blockquote pre table tr ul ol dl "
    "dt dd figure figcaption form br hr li td th"
)
_BLOCK_TAGS = frozenset(_BLOCK_TAG_NAMES.split())
_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "svg", "head"})
_HEADINGS = {f"h{level}": level for level in range(1, 7)}


class _HTMLText(HTMLParser):
    """Collects visible text; headings become ``#`` lines, blocks become paragraphs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        if tag == "title":
            self._in_title = True
        elif tag in _HEADINGS:
            self.parts.append("\n\n" + "#" * _HEADINGS[tag] + " ")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag not in ("br", "td", "th") else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and self._skip:
            self._skip -= 1
        if tag == "title":
            self._in_title = False
        elif tag in _HEADINGS or tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag in _HEADINGS or tag == "p" else "\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        joined = "".join(self.parts)
        lines = [line.strip() for line in joined.split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(html: str) -> tuple[str, str]:
    """``(text, title)`` of an HTML page, headings kept as Markdown ``#`` lines."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return parser.text(), " ".join(parser.title.split())


def load_html(path: Path) -> list[Document]:
    text, title = html_to_text(_read_text(path))
    doc = _doc(path, text, "html")
    if title:
        doc.metadata["title"] = title
    return [doc]


# --- PDF and DOCX (optional dependencies) ----------------------------------------


def load_pdf(path: Path) -> list[Document]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError as exc:
        raise LoaderError(str(path), "PDF support needs the 'pypdf' package") from exc
    pieces: list[str] = []
    starts: list[int] = []
    offset = 0
    try:
        reader = PdfReader(path)
        for page in reader.pages:
            page_text = (page.extract_text() or "").strip()
            starts.append(offset)
            pieces.append(page_text)
            offset += len(page_text) + 2  # the "\n\n" that joins pages
    except (PyPdfError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LoaderError(str(path), f"unreadable PDF ({exc})") from exc
    doc = _doc(path, "\n\n".join(pieces), "pdf", pages=tuple(starts))
    doc.metadata["pages"] = len(starts)
    return [doc]


def load_docx(path: Path) -> list[Document]:
    try:
        import docx
        from docx.opc.exceptions import OpcError
    except ImportError as exc:
        raise LoaderError(str(path), "DOCX support needs the 'python-docx' package") from exc
    import zipfile

    try:
        document = docx.Document(str(path))
        lines: list[str] = []
        for paragraph in document.paragraphs:
            text = paragraph.text.strip()
            if not text:
                continue
            style = (paragraph.style.name or "") if paragraph.style is not None else ""
            level = re.fullmatch(r"Heading (\d)", style)
            if level:
                lines.append("#" * min(int(level.group(1)), 6) + " " + text)
            elif style == "Title":
                lines.append("# " + text)
            else:
                lines.append(text)
    except (OpcError, zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise LoaderError(str(path), f"unreadable DOCX ({exc})") from exc
    return [_doc(path, "\n\n".join(lines), "docx")]


# --- JSON and JSON Lines (BEIR corpus files included) -----------------------------

_TEXT_KEYS = ("text", "content", "body")
_ID_KEYS = ("_id", "id")


def record_to_document(record: Any, fallback_id: str, source: str | None = None) -> Document:
    """One JSON object (BEIR ``_id``/``title``/``text``, or ``id``/``content``) as a Document.

    Raises InvalidRequestError when the object has no text.
    """
    if not isinstance(record, dict):
        raise InvalidRequestError(f"{fallback_id}: a document must be a JSON object")
    text = next((record[k] for k in _TEXT_KEYS if isinstance(record.get(k), str)), None)
    if text is None:
        raise InvalidRequestError(f"{fallback_id}: a document needs a 'text' string")
    raw_id = next((record[k] for k in _ID_KEYS if record.get(k) not in (None, "")), fallback_id)
    metadata: dict[str, Any] = {}
    given = record.get("metadata")
    if isinstance(given, dict):
        metadata.update(given)
    elif given is not None:
        raise InvalidRequestError(f"{fallback_id}: 'metadata' must be an object")
    title = record.get("title")
    if isinstance(title, str) and title.strip():
        metadata.setdefault("title", title.strip())
        # The title is part of what a chunk is about: index it with the text.
        text = f"{title.strip()}\n\n{text}"
    return Document(id=str(raw_id), text=text, source=source, metadata=metadata)


def documents_from_records(
    records: Iterable[Any], source: str | None = None, prefix: str = "doc"
) -> list[Document]:
    return [record_to_document(record, f"{prefix}#{n}", source) for n, record in enumerate(records)]


def load_json(path: Path) -> list[Document]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise LoaderError(str(path), f"invalid JSON ({exc})") from exc
    records = data if isinstance(data, list) else [data]
    try:
        return documents_from_records(records, str(path), str(path))
    except InvalidRequestError as exc:
        raise LoaderError(str(path), exc.message) from exc


def load_jsonl(path: Path) -> list[Document]:
    records: list[Any] = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise LoaderError(str(path), f"invalid JSON on line {number} ({exc})") from exc
    try:
        return documents_from_records(records, str(path), str(path))
    except InvalidRequestError as exc:
        raise LoaderError(str(path), exc.message) from exc


LOADERS: dict[str, Loader] = {
    ".txt": load_text,
    ".text": load_text,
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
    ".docx": load_docx,
    ".json": load_json,
    ".jsonl": load_jsonl,
}


def iter_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files named, plus supported files found under named folders (hidden ones skipped)."""
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                relative = found.relative_to(path).parts
                if (
                    found.is_file()
                    and found.suffix.lower() in LOADERS
                    and not any(part.startswith(".") for part in relative)
                ):
                    yield found.resolve()
        else:
            yield path.resolve()


def load_path(path: Path) -> list[Document]:
    """Every document in one file; LoaderError when it is unsupported or unreadable."""
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise LoaderError(str(path), f"unsupported file type {path.suffix or '(none)'!r}")
    if not path.is_file():
        raise LoaderError(str(path), "no such file")
    return loader(path)

"""The HTML report, rendered from real reports of the runner against a loopback fake:
sections, a row per case, an accessible SVG per metric, no external resource, and case
text (model output) escaped, never markup."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from trellis.evals import EvalRunner, EvalStore, compare_reports, parse_threshold
from trellis.evals.html import render_compare, render_run, word_diff
from trellis.evals.svg import bars, box_plot, histogram
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import answer, dataset_of, make_gateway, suite_of  # noqa: E402

ATTACK = "<script>alert(1)</script>"


def reply(body: dict[str, Any]) -> str:
    """The fixtures' fake model, except that ``bad`` answers case c0 with markup."""
    if body["model"] == "bad-model" and str(body["messages"][-1]["content"]).endswith(" 0+1?"):
        return ATTACK
    return answer(body)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai", reply=reply).start()
    yield server
    server.stop()


class Outline(HTMLParser):
    """What the page is made of: tags in order, the rows of each table by id, the text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: dict[str, int] = {}
        self.table: str | None = None
        self.in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "table":
            self.table = attributes.get("id") or ""
            self.rows[self.table] = 0
        elif tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body and self.table is not None:
            self.rows[self.table] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self.in_body = False
        elif tag == "table":
            self.table = None


def outline(page: str) -> Outline:
    parser = Outline()
    parser.feed(page)
    return parser


def check_self_contained_and_safe(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", page), "the report must not reference the network"
    parsed = outline(page)
    for tag, attrs in parsed.tags:
        assert tag not in ("script", "link", "img", "iframe", "object"), tag
        assert "src" not in attrs and not any(k.startswith("on") for k in attrs)
    # The output shows as text (a diff may split it between <ins> marks).
    assert "<script" not in page.lower() and "&lt;script&gt;alert(" in page
    assert "&lt;/script&gt;" in page
    # Every chart is well-formed SVG with a title and an aria-label.
    charts = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert charts
    for chart in charts:
        element = ET.fromstring(chart)
        assert element.get("role") == "img" and element.get("aria-label")
        assert element.find("title") is not None and element.find("title").text  # type: ignore[union-attr]


async def run_report(upstream: FakeUpstream, db: Database) -> dict[str, Any]:
    return await EvalRunner(make_gateway(upstream.base_url), EvalStore(db)).run(
        suite_of(), dataset_of(5)
    )


async def test_run_report_has_summary_charts_and_a_row_per_case(
    upstream: FakeUpstream, sqlite_db: Database
) -> None:
    report = await run_report(upstream, sqlite_db)
    dataset = dataset_of(5)
    page = render_run(report, dataset.cases)
    check_self_contained_and_safe(page)
    for section in ("summary", "metrics", "latency", "cost", "cases"):
        assert f'<section id="{section}">' in page
    parsed = outline(page)
    assert parsed.rows["case-table"] == 5  # one row per case, candidates side by side
    assert parsed.rows[""] == 2  # the summary: one row per candidate
    for metric in report["metrics"]:
        assert f'aria-label="Distribution of {metric} per case, per candidate"' in page
    assert 'aria-label="Latency per case, per candidate"' in page
    assert 'aria-label="Total cost per candidate"' in page
    assert 'aria-label="Total tokens per candidate"' in page
    # Headers are semantic: column headers and a row header per case.
    assert '<th scope="col">good</th>' in page and '<th scope="row">c3</th>' in page
    assert "<pre>3+4</pre>" in page and "<pre>7</pre>" in page  # input and expected
    # The summary numbers are the report's.
    good = report["candidates"]["good"]
    assert f"{good['latency_ms']['p95']:.5g}" in page and f"{good['cost']:.6g}" in page


async def test_compare_report_diffs_outputs_and_flags_regressions(
    upstream: FakeUpstream, sqlite_db: Database
) -> None:
    report = await run_report(upstream, sqlite_db)
    comparison = compare_reports(
        report,
        report,
        baseline_candidate="good",
        candidate_candidate="bad",
        thresholds=[parse_threshold("exact:-0.1")],
        resamples=200,
    )
    page = render_compare(report, report, comparison, dataset_of(5).cases)
    check_self_contained_and_safe(page)
    assert "REGRESSION" in page and "FAIL exact:-0.1" in page
    parsed = outline(page)
    assert parsed.rows["delta-table"] == len(comparison.deltas)
    assert parsed.rows["case-table"] == 5
    # c1: good said 3, bad said 4 — a word diff; every case lost exact: flagged.
    assert "<del>3</del><ins>4</ins>" in page
    assert page.count('<span class="fail">(worse)</span>') == 5
    exact = next(d for d in comparison.deltas if d.name == "exact")
    assert f"[{exact.low:+.4g}, {exact.high:+.4g}]" in page
    assert ">baseline good</text>" in page and ">candidate bad</text>" in page  # legends
    passing = compare_reports(report, report, baseline_candidate="good", candidate_candidate="good")
    assert "no regression" in render_compare(report, report, passing)


def test_word_diff_marks_changed_words_and_escapes() -> None:
    assert word_diff("the cat sat", "the dog sat") == "the <del>cat</del><ins>dog</ins> sat"
    assert word_diff("a <b>", "a <i>") == "a &lt;<del>b</del><ins>i</ins>&gt;"
    assert word_diff("same", "same") == "same"


def test_charts_escape_names_and_handle_empty_and_constant_series() -> None:
    for chart in (
        histogram([("<x>", [1.0, 1.0])], title="t & <u>"),
        box_plot([("<x>", [5.0]), ("empty", [])], title="t", unit="ms"),
        bars([("<x>", 0.0)], title="t"),
    ):
        element = ET.fromstring(chart)
        assert "<x>" not in chart and "&lt;x&gt;" in chart
        assert element.find("title") is not None
    assert "no values" in histogram([("a", [])], title="t")
    assert ET.fromstring(histogram([("a", [])], title="t")).get("aria-label") == "t"
    # Shared bins: the two series' bars stay within the plot and have per-bar titles.
    chart = histogram([("a", [0.0, 0.5, 1.0]), ("b", [1.0, 1.0])], title="h", bins=4)
    assert len(re.findall(r"<rect[^>]*fill=\"#", chart)) == 3 + 1 + 2  # a: 3 bins, b: 1, legend: 2

"""The self-contained HTML report of a run, or of a baseline-vs-candidate comparison: one
file with inline CSS and inline SVG charts (``trellis.evals.svg``), no script and no
external resource, so it opens offline and can be attached to a CI job as it is.

A run's report shows a summary table per candidate, each metric's distribution per
candidate, the latency distribution, cost and tokens, and the cases side by side. A
comparison adds the deltas with their bootstrap intervals (breached thresholds flagged)
and, per case, the candidate's output as a word-level diff of the baseline's.

Everything taken from the report (outputs, ids, names, errors) is escaped with
``html.escape``: a case output is model text and must never become markup.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from trellis.evals import svg
from trellis.evals.compare import Comparison
from trellis.evals.datasets import Case
from trellis.evals.pairwise import pair_stats

__all__ = ["render_compare", "render_run", "word_diff"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:1200px;padding:0 1rem;
color:#111;line-height:1.4}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;vertical-align:top;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:1rem}figure{margin:0}
figcaption{font-weight:600;font-size:.9rem}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.85rem;max-width:40ch}
del{background:#fdd;text-decoration:line-through}ins{background:#dfd;text-decoration:none}
.fail{color:#a00;font-weight:700}.ok{color:#060}.err{color:#a00}
.verdict{font-size:1.1rem}
"""

#: Metric values in tables: enough digits to see a change, not more.
_DIGITS = 4


def _num(value: Any, digits: int = _DIGITS, signed: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return escape(str(value))
    return f"{number:+.{digits}g}" if signed else f"{number:.{digits}g}"


def _page(title: str, body: Iterable[str]) -> str:
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width,initial-scale=1">',
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
            *body,
            "</body></html>\n",
        ]
    )


def _table(caption: str, head: Sequence[str], rows: Iterable[Sequence[str]], **attrs: str) -> str:
    """A table with a caption and column headers; the first cell of each row is its header.
    ``head`` and the cells are markup already (callers escape)."""
    extra = "".join(f' {k}="{escape(v)}"' for k, v in attrs.items())
    parts = [f"<table{extra}><caption>{escape(caption)}</caption><thead><tr>"]
    parts += [f'<th scope="col">{h}</th>' for h in head]
    parts.append("</tr></thead><tbody>")
    for row in rows:
        first, *rest = row
        parts.append(f'<tr><th scope="row">{first}</th>{"".join(rest)}</tr>')
    parts.append("</tbody></table>")
    return "".join(parts)


def _td(markup: str, numeric: bool = False) -> str:
    return f'<td class="num">{markup}</td>' if numeric else f"<td>{markup}</td>"


def _figure(caption: str, chart: str) -> str:
    return f"<figure>{chart}<figcaption>{escape(caption)}</figcaption></figure>"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # a messages list
        return "\n".join(
            f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
            for m in value
        )
    return str(value)


def _rows(report: dict[str, Any], candidate: str) -> list[dict[str, Any]]:
    return [r for r in report.get("cases", []) if r.get("candidate") == candidate]


def _scored(report: dict[str, Any], candidate: str, field: str) -> list[float]:
    """A per-case quantity over the candidate's rows that did not fail."""
    values: list[float] = []
    for row in _rows(report, candidate):
        if row.get("error"):
            continue
        if field == "tokens":
            values.append(float((row.get("input_tokens") or 0) + (row.get("output_tokens") or 0)))
        elif field in ("latency_ms", "cost"):
            if row.get(field) is not None:
                values.append(float(row[field]))
        else:
            value = (row.get("metrics") or {}).get(field)
            if value is not None:
                values.append(float(value))
    return values


def _series(
    sides: Sequence[tuple[str, dict[str, Any], str]], field: str
) -> list[tuple[str, list[float]]]:
    return [(label, _scored(report, name, field)) for label, report, name in sides]


def _charts(sides: Sequence[tuple[str, dict[str, Any], str]], metrics: Sequence[str]) -> list[str]:
    """Metric histograms, the latency box plot, cost and tokens bars, for the given sides
    (label, report, candidate name)."""
    parts = ['<section id="metrics"><h2>Metric distributions</h2><div class="charts">']
    for metric in metrics:
        chart = svg.histogram(
            _series(sides, metric), title=f"Distribution of {metric} per case, per candidate"
        )
        parts.append(_figure(metric, chart))
    parts.append("</div></section>")
    parts.append('<section id="latency"><h2>Latency</h2>')
    parts.append(
        _figure(
            "Latency per case (box: P25–P75, line: median, dashed tick: P95)",
            svg.box_plot(
                _series(sides, "latency_ms"), title="Latency per case, per candidate", unit="ms"
            ),
        )
    )
    parts.append('</section><section id="cost"><h2>Cost and tokens</h2><div class="charts">')
    costs = [(label, sum(values)) for label, values in _series(sides, "cost")]
    tokens = [(label, sum(values)) for label, values in _series(sides, "tokens")]
    parts.append(_figure("Total cost", svg.bars(costs, title="Total cost per candidate", unit="$")))
    parts.append(_figure("Total tokens", svg.bars(tokens, title="Total tokens per candidate")))
    parts.append("</div></section>")
    return parts


def _summary(report: dict[str, Any], names: Sequence[tuple[str, str]]) -> str:
    """The per-candidate summary table; ``names`` are (label, candidate name in report)."""
    metrics = list(report.get("metrics", []))
    head = [
        "candidate",
        *(escape(m) for m in metrics),
        "P50 ms",
        "P95 ms",
        "P99 ms",
        "input tokens",
        "output tokens",
        "cost $",
        "corpus BLEU",
        "corpus chrF",
        "cases",
        "errors",
    ]
    rows = []
    for label, name in names:
        summary = report.get("candidates", {}).get(name, {})
        latency = summary.get("latency_ms") or {}
        tokens = summary.get("tokens") or {}
        rows.append(
            [
                escape(label),
                *(_td(_num((summary.get("metrics") or {}).get(m)), True) for m in metrics),
                *(_td(_num(latency.get(k), 5), True) for k in ("p50", "p95", "p99")),
                _td(_num(tokens.get("input")), True),
                _td(_num(tokens.get("output")), True),
                _td(_num(summary.get("cost"), 6), True),
                _td(_num((summary.get("corpus") or {}).get("bleu")), True),
                _td(_num((summary.get("corpus") or {}).get("chrf")), True),
                _td(_num(summary.get("cases")), True),
                _td(_num(summary.get("errors")), True),
            ]
        )
    return _table(
        "Per-candidate summary (metric means; latency percentiles; sacrebleu corpus scores)",
        head,
        rows,
    )


def _pairwise(pairs: Sequence[dict[str, Any]]) -> list[str]:
    """The pairwise preference table: ``pairwise.pair_stats`` entries (with ``report``
    when they come from a comparison)."""
    if not pairs:
        return []
    with_report = any("report" in p for p in pairs)
    head = [
        *(["report"] if with_report else []),
        "a",
        "b",
        "judge",
        "judged",
        "wins",
        "ties",
        "losses",
        "win rate",
        "95% CI",
        "position disagreement",
    ]
    rows = []
    for p in pairs:
        low, high = p.get("win_ci95") or [None, None]
        rows.append(
            [
                *([escape(str(p.get("report", "")))] if with_report else []),
                escape(str(p.get("a"))),
                escape(str(p.get("b"))),
                escape(str(p.get("judge"))),
                _td(_num(p.get("judged")), True),
                _td(_num(p.get("wins")), True),
                _td(_num(p.get("ties")), True),
                _td(_num(p.get("losses")), True),
                _td(_num(p.get("win_rate")), True),
                _td(f"[{_num(low)}, {_num(high)}]", True),
                _td(_num(p.get("position_disagreement")), True),
            ]
        )
    return [
        '<section id="pairwise"><h2>Pairwise preference</h2>',
        _table(
            "a against b, both orders judged (win: a preferred; a case whose orders disagree "
            "counts as judged, not won); 95% CI of the win rate by case bootstrap",
            head,
            rows,
            id="pairwise-table",
        ),
        "</section>",
    ]


def _cell(row: dict[str, Any] | None, metrics: Sequence[str], output: str | None = None) -> str:
    """One candidate's answer to a case: its output (or error), metric values, latency."""
    if row is None:
        return _td("<em>not run</em>")
    if row.get("error"):
        return _td(f'<span class="err">error: {escape(str(row["error"]))}</span>')
    values = row.get("metrics") or {}
    scores = " · ".join(f"{escape(m)} {_num(values.get(m))}" for m in metrics if m in values)
    body = output if output is not None else escape(_text(row.get("output")))
    return _td(
        f"<pre>{body}</pre><small>{scores}{' · ' if scores else ''}"
        f"{_num(row.get('latency_ms'), 5)} ms</small>"
    )


def _case_head(case: Case | None) -> list[str]:
    if case is None:
        return [_td(""), _td("")]
    return [
        _td(f"<pre>{escape(_text(case.input))}</pre>"),
        _td(f"<pre>{escape(case.expected or '')}</pre>"),
    ]


def render_run(report: dict[str, Any], cases: Sequence[Case] | None = None) -> str:
    """The HTML report of one run (``build_report``'s output). With the dataset's ``cases``
    the per-case table also shows each case's input and expected answer."""
    names = list(report.get("candidates", {}))
    metrics = list(report.get("metrics", []))
    by_case = {c.id: c for c in cases or ()}
    title = f"Eval {report.get('suite', '?')} — run {report.get('run_id', '?')}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f"<p>Dataset <code>{escape(str(report.get('dataset', '?')))}</code>, status "
        f"{escape(str(report.get('status', '?')))}, {_num(report.get('repeats'))} repeat(s), "
        f"{len(names)} candidate(s).</p>",
        '<section id="summary"><h2>Summary</h2>',
        _summary(report, [(n, n) for n in names]),
        "</section>",
        *_charts([(n, report, n) for n in names], metrics),
        *_pairwise([pair_stats(p) for p in report.get("pairwise") or []]),
    ]
    grid: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for row in report.get("cases", []):
        grid.setdefault((str(row.get("id")), int(row.get("repeat") or 0)), {})[
            str(row.get("candidate"))
        ] = row
    head = ["case", *(["input", "expected"] if by_case else []), *(escape(n) for n in names)]
    rows = []
    for (cid, repeat), answers in grid.items():
        label = escape(cid) + (f" <small>(repeat {repeat})</small>" if repeat else "")
        rows.append(
            [
                label,
                *(_case_head(by_case.get(cid)) if by_case else []),
                *(_cell(answers.get(n), metrics) for n in names),
            ]
        )
    body += [
        '<section id="cases"><h2>Cases</h2>',
        _table("Outputs per case, candidates side by side", head, rows, id="case-table"),
        "</section>",
    ]
    return _page(title, body)


_TOKEN = re.compile(r"\s+|\w+|[^\w\s]")


def word_diff(before: str, after: str) -> str:
    """``after`` as HTML, its words not in ``before`` in ``<ins>`` and ``before``'s words it
    lost in ``<del>`` (difflib over words, whitespace and punctuation kept as tokens)."""
    a, b = _TOKEN.findall(before), _TOKEN.findall(after)
    parts: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            parts.append(escape("".join(b[j1:j2])))
            continue
        if i2 > i1:
            parts.append(f"<del>{escape(''.join(a[i1:i2]))}</del>")
        if j2 > j1:
            parts.append(f"<ins>{escape(''.join(b[j1:j2]))}</ins>")
    return "".join(parts)


def _mean_by_case(report: dict[str, Any], candidate: str) -> dict[str, dict[str, Any]]:
    """case id -> the first scored repeat's row (outputs) with metrics averaged over repeats."""
    first: dict[str, dict[str, Any]] = {}
    sums: dict[str, dict[str, list[float]]] = {}
    for row in _rows(report, candidate):
        cid = str(row.get("id"))
        if row.get("error"):
            first.setdefault(cid, row)
            continue
        if cid not in first or first[cid].get("error"):
            first[cid] = row
        for name, value in (row.get("metrics") or {}).items():
            if value is not None:
                sums.setdefault(cid, {}).setdefault(name, []).append(float(value))
    return {
        cid: {
            **row,
            "metrics": {k: sum(v) / len(v) for k, v in sums.get(cid, {}).items()},
        }
        for cid, row in first.items()
    }


def render_compare(
    baseline: dict[str, Any],
    candidate: dict[str, Any],
    comparison: Comparison,
    cases: Sequence[Case] | None = None,
) -> str:
    """The HTML report of ``compare_reports(baseline, candidate)``: verdict, deltas with
    95% intervals (breaches flagged), both sides' distributions, and per case the
    candidate's output as a word diff of the baseline's, with per-case metric deltas."""
    base_name = comparison.baseline.split(":", 1)[-1]
    cand_name = comparison.candidate.split(":", 1)[-1]
    base_label, cand_label = f"baseline {base_name}", f"candidate {cand_name}"
    metrics = [m for m in baseline.get("metrics", []) if m in set(candidate.get("metrics", []))]
    title = f"Eval comparison — {comparison.candidate} vs {comparison.baseline}"
    verdict = (
        '<span class="fail">REGRESSION</span>'
        if comparison.failed
        else '<span class="ok">no regression</span>'
    )
    delta_rows = []
    for d in comparison.deltas:
        check = (
            '<span class="fail">FAIL ' + escape(", ".join(d.failed)) + "</span>" if d.failed else ""
        )
        delta_rows.append(
            [
                escape(d.name),
                _td(_num(d.baseline), True),
                _td(_num(d.candidate), True),
                _td(_num(d.delta, signed=True), True),
                _td(f"[{_num(d.low, signed=True)}, {_num(d.high, signed=True)}]", True),
                _td(check),
            ]
        )
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="verdict">Verdict: {verdict}. {comparison.paired} paired case(s); 95% '
        f"intervals from a paired bootstrap ({comparison.resamples} resamples, seed "
        f"{comparison.seed}).</p>",
    ]
    if comparison.only_baseline or comparison.only_candidate:
        body.append(
            f"<p>Unpaired: {comparison.only_baseline} case(s) only in the baseline, "
            f"{comparison.only_candidate} only in the candidate.</p>"
        )
    body += [
        '<section id="deltas"><h2>Deltas</h2>',
        _table(
            "Candidate minus baseline over the paired cases",
            ["quantity", "baseline", "candidate", "delta", "95% CI", "check"],
            delta_rows,
            id="delta-table",
        ),
        "</section>",
        '<section id="summary"><h2>Summary</h2>',
        _summary(baseline, [(base_label, base_name)]),
        _summary(candidate, [(cand_label, cand_name)]),
        "</section>",
        *_charts([(base_label, baseline, base_name), (cand_label, candidate, cand_name)], metrics),
        *_pairwise(comparison.pairwise),
    ]
    base_rows = _mean_by_case(baseline, base_name)
    cand_rows = _mean_by_case(candidate, cand_name)
    by_case = {c.id: c for c in cases or ()}
    ids = [cid for cid in base_rows if cid in cand_rows]
    ids += [cid for cid in cand_rows if cid not in base_rows]
    head = [
        "case",
        *(["input", "expected"] if by_case else []),
        escape(base_label),
        escape(cand_label) + " (diff: <del>removed</del> <ins>added</ins>)",
        "metric deltas",
    ]
    rows = []
    for cid in ids:
        before, after = base_rows.get(cid), cand_rows.get(cid)
        diff = None
        if before is not None and after is not None and not before.get("error"):
            diff = word_diff(_text(before.get("output")), _text(after.get("output")))
        changes = []
        worse = False
        if before is not None and after is not None:
            for m in metrics:
                b, c = before["metrics"].get(m), after["metrics"].get(m)
                if b is None or c is None:
                    continue
                lower = c < b - 1e-9  # not float noise of equal means
                worse = worse or lower
                mark = ' class="fail"' if lower else ""
                changes.append(f"<span{mark}>{escape(m)} {_num(c - b, signed=True)}</span>")
        label = escape(cid) + (' <span class="fail">(worse)</span>' if worse else "")
        rows.append(
            [
                label,
                *(_case_head(by_case.get(cid)) if by_case else []),
                _cell(before, metrics),
                _cell(after, metrics, diff),
                _td("<br>".join(changes)),
            ]
        )
    body += [
        '<section id="cases"><h2>Cases</h2>',
        _table(
            "Baseline and candidate outputs per case (a metric lower in the candidate is marked)",
            head,
            rows,
            id="case-table",
        ),
        "</section>",
    ]
    return _page(title, body)

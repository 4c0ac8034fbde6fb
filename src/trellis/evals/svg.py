"""Small inline-SVG charts for the HTML eval report: grouped histograms, box plots and
horizontal bars, drawn in Python so the report needs no script and no external resource.

Every text that reaches the markup goes through ``html.escape``; every chart has a
``<title>`` and an ``aria-label`` (``role="img"``) for screen readers. Series colours come
from a fixed palette, in series order, so a candidate keeps its colour across charts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

__all__ = ["PALETTE", "bars", "box_plot", "histogram"]

#: Colour-blind-safe (Okabe-Ito) colours, in series order.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000")

_FONT = 'font-family="system-ui,sans-serif" font-size="11"'


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _fmt(value: float) -> str:
    """A short number for axis labels."""
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.4g}"


def _open(title: str, width: int, height: int) -> list[str]:
    label = escape(title)
    return [
        f'<svg role="img" aria-label="{label}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" {_FONT}>',
        f"<title>{label}</title>",
    ]


def _legend(names: Sequence[str], x: float, y: float) -> list[str]:
    parts: list[str] = []
    for i, name in enumerate(names):
        top = y + i * 15
        parts.append(
            f'<rect x="{x:.1f}" y="{top - 9:.1f}" width="10" height="10" fill="{colour(i)}"/>'
            f'<text x="{x + 14:.1f}" y="{top:.1f}">{escape(name)}</text>'
        )
    return parts


def _empty(title: str, width: int, height: int) -> str:
    return "".join(
        [
            *_open(title, width, height),
            f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle">no values</text>',
            "</svg>",
        ]
    )


def histogram(
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str,
    bins: int = 10,
    width: int = 460,
    height: int = 200,
) -> str:
    """One histogram per series on shared bins, bars side by side within a bin (counts on
    the y axis), so candidates' distributions of one metric compare at a glance."""
    values = [float(v) for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    if not values:
        return _empty(title, width, height)
    low, high = min(values), max(values)
    if low == high:  # one value everywhere: a single bin around it
        low, high, bins = low - 0.5, high + 0.5, 1
    edges = np.linspace(low, high, bins + 1)
    counts = [
        np.histogram([float(v) for v in vs if v is not None and math.isfinite(v)], edges)[0]
        for _, vs in series
    ]
    top = max(1, max(int(c.max()) for c in counts))
    legend_w = 110
    left, right, upper, lower = 36, width - legend_w, 10, height - 34
    plot_w, plot_h = right - left, lower - upper
    bin_w = plot_w / bins
    bar_w = max(1.0, (bin_w - 2) / len(series))
    parts = _open(title, width, height)
    parts.append(
        f'<line x1="{left}" y1="{lower}" x2="{right}" y2="{lower}" stroke="#444"/>'
        f'<line x1="{left}" y1="{upper}" x2="{left}" y2="{lower}" stroke="#444"/>'
        f'<text x="{left - 4}" y="{upper + 8}" text-anchor="end">{top}</text>'
        f'<text x="{left - 4}" y="{lower}" text-anchor="end">0</text>'
        f'<text x="{left}" y="{lower + 14}" text-anchor="middle">{escape(_fmt(low))}</text>'
        f'<text x="{right}" y="{lower + 14}" text-anchor="middle">{escape(_fmt(high))}</text>'
        f'<text x="{(left + right) / 2:.0f}" y="{height - 4}" text-anchor="middle">'
        "value (bars: number of cases)</text>"
    )
    for s, ((name, _), count) in enumerate(zip(series, counts, strict=True)):
        for b, n in enumerate(count):
            if not n:
                continue
            h = plot_h * int(n) / top
            x = left + b * bin_w + 1 + s * bar_w
            parts.append(
                f'<rect x="{x:.1f}" y="{lower - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{colour(s)}"><title>{escape(name)}: {int(n)} in '
                f"[{escape(_fmt(float(edges[b])))}, {escape(_fmt(float(edges[b + 1])))}]"
                "</title></rect>"
            )
    parts += _legend([name for name, _ in series], right + 12, upper + 10)
    parts.append("</svg>")
    return "".join(parts)


def box_plot(
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str,
    unit: str = "",
    width: int = 460,
) -> str:
    """A horizontal box per series: whiskers at min and max, box from P25 to P75, a line at
    the median and a tick at P95 (the tail latency cares about)."""
    present = [(name, [float(v) for v in vs if v is not None]) for name, vs in series]
    values = [v for _, vs in present for v in vs]
    row_h, label_w, upper = 28, 120, 10
    height = upper + row_h * max(1, len(present)) + 30
    if not values:
        return _empty(title, width, height)
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    left, right = label_w, width - 20

    def x(value: float) -> float:
        return left + (right - left) * (value - low) / span

    parts = _open(title, width, height)
    bottom = upper + row_h * len(present)
    parts.append(
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444"/>'
        f'<text x="{left}" y="{bottom + 14}" text-anchor="middle">{escape(_fmt(low))}</text>'
        f'<text x="{right}" y="{bottom + 14}" text-anchor="middle">{escape(_fmt(high))}</text>'
        f'<text x="{(left + right) / 2:.0f}" y="{bottom + 26}" text-anchor="middle">'
        f"{escape(unit)}</text>"
    )
    for i, (name, vs) in enumerate(present):
        mid = upper + row_h * i + row_h / 2
        parts.append(
            f'<text x="{label_w - 6}" y="{mid + 4:.1f}" text-anchor="end">{escape(name)}</text>'
        )
        if not vs:
            continue
        q = np.percentile(vs, [0, 25, 50, 75, 95, 100])
        summary = ", ".join(
            f"{k} {_fmt(float(v))}"
            for k, v in zip(("min", "p25", "p50", "p75", "p95", "max"), q, strict=True)
        )
        c = colour(i)
        parts.append(
            f"<g><title>{escape(name)}: {escape(summary)} {escape(unit)}</title>"
            f'<line x1="{x(q[0]):.1f}" y1="{mid}" x2="{x(q[5]):.1f}" y2="{mid}" stroke="{c}"/>'
            f'<rect x="{x(q[1]):.1f}" y="{mid - 8}" width="{max(1.0, x(q[3]) - x(q[1])):.1f}" '
            f'height="16" fill="{c}" fill-opacity="0.35" stroke="{c}"/>'
            f'<line x1="{x(q[2]):.1f}" y1="{mid - 8}" x2="{x(q[2]):.1f}" y2="{mid + 8}" '
            f'stroke="{c}" stroke-width="2"/>'
            f'<line x1="{x(q[4]):.1f}" y1="{mid - 5}" x2="{x(q[4]):.1f}" y2="{mid + 5}" '
            f'stroke="#222" stroke-dasharray="2,1"/></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def bars(
    items: Sequence[tuple[str, float]],
    *,
    title: str,
    unit: str = "",
    width: int = 460,
) -> str:
    """A horizontal bar per item, its value written at the end."""
    row_h, label_w, upper = 24, 120, 6
    height = upper + row_h * max(1, len(items)) + 6
    if not items:
        return _empty(title, width, height)
    top = max((abs(v) for _, v in items), default=0.0) or 1.0
    left, right = label_w, width - 90
    parts = _open(title, width, height)
    for i, (name, value) in enumerate(items):
        y = upper + row_h * i
        w = (right - left) * abs(value) / top
        text = f"{_fmt(value)} {unit}".strip()
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(name)}</text>'
            f'<rect x="{left}" y="{y + 4}" width="{w:.1f}" height="16" fill="{colour(i)}">'
            f"<title>{escape(name)}: {escape(text)}</title></rect>"
            f'<text x="{left + w + 4:.1f}" y="{y + 15}">{escape(text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)

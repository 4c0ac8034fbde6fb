"""A workflow's step graph laid out for an SVG drawing: steps top to bottom in their
order, edges to the next step straight down, every other edge an arc on the right."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trellis.orchestration.steps import END
from trellis.orchestration.workflow import START, Workflow

__all__ = ["GraphLayout", "layout"]

NODE_W, NODE_H, GAP, MARGIN = 190, 36, 24, 16


@dataclass(slots=True)
class GraphLayout:
    width: int
    height: int
    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]


def layout(flow: Workflow[Any]) -> GraphLayout:
    names = [START, *flow.steps, END]
    row = {name: n for n, name in enumerate(names)}
    nodes = [
        {
            "name": name,
            "label": {START: "start", END: "end"}.get(name, name),
            "kind": "" if name in (START, END) else flow.steps[name].kind,
            "x": MARGIN,
            "y": MARGIN + n * (NODE_H + GAP),
            "w": NODE_W,
            "h": NODE_H,
            "terminal": name in (START, END),
        }
        for n, name in enumerate(names)
    ]
    edges: list[dict[str, Any]] = []
    widest = 0
    for source, target, kind in flow.edges():
        top = MARGIN + row[source] * (NODE_H + GAP)
        x_mid = MARGIN + NODE_W / 2
        if kind == "code":
            y = top + NODE_H / 2
            edges.append(
                {
                    "d": f"M{MARGIN + NODE_W},{y} h40",
                    "kind": kind,
                    "label": "routed in code",
                    "lx": MARGIN + NODE_W + 46,
                    "ly": y + 4,
                }
            )
            widest = max(widest, 160)
            continue
        end_top = MARGIN + row[target] * (NODE_H + GAP)
        if row[target] == row[source] + 1 and kind in ("next", "route"):
            d = f"M{x_mid},{top + NODE_H} V{end_top}"
            label, lx, ly = "", 0.0, 0.0
        else:
            span = abs(row[target] - row[source])
            bulge = 30 + 18 * span
            widest = max(widest, bulge + 90)
            x_out = MARGIN + NODE_W
            y1, y2 = top + NODE_H / 2, end_top + NODE_H / 2
            d = f"M{x_out},{y1} C{x_out + bulge},{y1} {x_out + bulge},{y2} {x_out},{y2}"
            label = {"fallback": "fallback", "goto": "on error"}.get(kind, "")
            lx, ly = x_out + bulge * 0.75 + 4, (y1 + y2) / 2
        edges.append({"d": d, "kind": kind, "label": label, "lx": lx, "ly": ly})
    height = MARGIN * 2 + len(names) * (NODE_H + GAP) - GAP
    return GraphLayout(MARGIN * 2 + NODE_W + widest, height, nodes, edges)

"""Drawings of an architecture: the whole network's cell stack, and every live cell's graph.

GOLD-NAS gives every cell its own structure, so a genotype is drawn whole: a strip of the
cell stack (reduction cells marked, cells that no longer feed the classifier greyed), then
one panel per live cell: its two inputs, its intermediate nodes, its output (the
concatenation of the intermediate nodes), and each edge labelled with its operators.

:func:`layout` decides what is drawn (titles, the stack's boxes, the panels, every node and
edge label) as plain data; :func:`plot_genotype` only paints it with matplotlib.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from goldnas_ray.core.genotype import Genotype
from goldnas_ray.files.store import Location, location

SHORT = {"skip_connect": "skip", "sep_conv_3x3": "sep3", "sep_conv_5x5": "sep5", "sep_conv_7x7": "sep7",
         "dil_conv_3x3": "dil3", "dil_conv_5x5": "dil5", "max_pool_3x3": "max", "avg_pool_3x3": "avg"}
COLOURS = {"skip_connect": "#4c72b0", "sep_conv_3x3": "#dd8452", "sep_conv_5x5": "#c44e52",
           "sep_conv_7x7": "#8172b3", "dil_conv_3x3": "#55a868", "dil_conv_5x5": "#64b5cd",
           "max_pool_3x3": "#937860", "avg_pool_3x3": "#da8bc3"}
OUTPUT = -1  # the cell's output node in a panel


@dataclass
class StackBox:
    """One cell in the strip of the cell stack."""

    cell: int
    label: str       # "3\nR\n12 ops", or "3\n(unused)" for a cell no live cell reads
    live: bool
    reduction: bool


@dataclass
class Node:
    node: int        # 0, 1 (the inputs), 2.. (intermediate), OUTPUT
    label: str       # "c[k-2]", "c[k-1]", "0", "1", ..., "c[k]"
    used: bool       # an input no edge reads is drawn greyed


@dataclass
class EdgeLabel:
    src: int
    dst: int
    label: str       # the edge's operators, short names joined by "+"
    colour: str      # the operator's colour, black for several


@dataclass
class Panel:
    """One live cell's graph."""

    cell: int
    title: str
    reduction: bool
    nodes: list[Node]
    edges: list[EdgeLabel]


@dataclass
class Layout:
    title: str
    stack: list[StackBox]
    panels: list[Panel]
    columns: int

    @property
    def rows(self) -> int:
        return math.ceil(len(self.panels) / self.columns)


def layout(geno: Genotype, columns: int = 4) -> Layout:
    """What a drawing of ``geno`` shows."""
    live = geno.live_cells()
    stack = []
    for k, cell in enumerate(geno.cells):
        ops = sum(len(o) for o in cell.edges.values())
        label = f"{k}\n{'R' if cell.reduction else 'N'}\n{ops} ops" if live[k] else f"{k}\n(unused)"
        stack.append(StackBox(k, label, live[k], cell.reduction))
    panels = []
    for k in (k for k, alive in enumerate(live) if alive):
        cell = geno.cells[k]
        nodes = ([Node(0, "c[k-2]", cell.uses_input(0)), Node(1, "c[k-1]", cell.uses_input(1))]
                 + [Node(2 + j, str(j), True) for j in range(geno.num_nodes)] + [Node(OUTPUT, "c[k]", True)])
        edges = [EdgeLabel(e.src, e.dst, "+".join(SHORT.get(o, o) for o in ops),
                           COLOURS.get(ops[0], "black") if len(ops) == 1 else "black")
                 for e, ops in sorted(cell.edges.items())]
        panels.append(Panel(k, f"cell {k}" + (" (reduction)" if cell.reduction else ""), cell.reduction,
                            nodes, edges))
    meta = geno.metadata or {}
    what = f"{meta['id']}: " if "id" in meta else ""
    flops = f", {meta['flops'] / 1e6:.3f} MFLOPs" if "flops" in meta else ""
    title = (f"{what}{geno.num_cells} cells, stem {geno.stem}, input {geno.in_channels}x{geno.input_size}x"
             f"{geno.input_size}{flops} (N normal, R reduction)")
    return Layout(title, stack, panels, max(1, min(columns, len(panels))))


def _node_positions(num_nodes: int) -> dict[int, tuple[float, float]]:
    """Inputs 0 and 1 on the left, intermediate nodes in a zig-zag column, the output right."""
    pos = {0: (0.0, 0.75), 1: (0.0, 0.25)}
    for j in range(num_nodes):
        pos[2 + j] = (0.3 + 0.45 * j / max(num_nodes - 1, 1), 0.85 - 0.7 * j / max(num_nodes - 1, 1))
    pos[OUTPUT] = (1.0, 0.5)
    return pos


def _paint_panel(ax, panel: Panel, num_nodes: int) -> None:
    pos = _node_positions(num_nodes)
    for edge in panel.edges:
        (x0, y0), (x1, y1) = pos[edge.src], pos[edge.dst]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color=edge.colour, lw=1.0, shrinkA=9, shrinkB=9))
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, edge.label, fontsize=6, ha="center", va="center",
                color=edge.colour, bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    for j in range(num_nodes):  # every intermediate node feeds the output
        (x0, y0), (x1, y1) = pos[2 + j], pos[OUTPUT]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color="#bbbbbb", lw=0.6, ls=":", shrinkA=9, shrinkB=9))
    for node in panel.nodes:
        x, y = pos[node.node]
        ax.text(x, y, node.label, fontsize=7, ha="center", va="center",
                bbox=dict(boxstyle="round", fc="#f4f4f4" if node.used else "white",
                          ec="black" if node.used else "#cccccc"), color="black" if node.used else "#aaaaaa")
    ax.set_title(panel.title, fontsize=8, color="#b03030" if panel.reduction else "black")
    ax.set(xlim=(-0.12, 1.12), ylim=(0.05, 0.95))
    ax.axis("off")


def _paint_stack(ax, drawing: Layout) -> None:
    from matplotlib.patches import FancyBboxPatch

    n = len(drawing.stack)
    for box in drawing.stack:
        k = box.cell
        face = "#f6d5d5" if box.reduction else "#dde6f2"
        ax.add_patch(FancyBboxPatch(
            (k / n + 0.005, 0.15), 1 / n - 0.01, 0.7, boxstyle="round,pad=0.005",
            fc=face if box.live else "#eeeeee", ec="black" if box.live else "#bbbbbb"))
        ax.text(k / n + 0.5 / n, 0.5, box.label, ha="center", va="center", fontsize=6,
                color="black" if box.live else "#999999")
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.axis("off")
    ax.set_title(drawing.title, fontsize=9)


def plot_genotype(geno: Genotype, path: "str | Path | Location", columns: int = 4) -> Location:
    """Draw ``geno`` (its cell stack, then every live cell) into the PNG at ``path``."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

    drawing = layout(geno, columns)
    fig = Figure(figsize=(3.2 * drawing.columns, 0.9 + 2.6 * drawing.rows))
    grid = fig.add_gridspec(drawing.rows + 1, drawing.columns, height_ratios=[0.35] + [1] * drawing.rows)
    _paint_stack(fig.add_subplot(grid[0, :]), drawing)
    for i, panel in enumerate(drawing.panels):
        _paint_panel(fig.add_subplot(grid[1 + i // drawing.columns, i % drawing.columns]), panel, geno.num_nodes)
    fig.tight_layout()
    return location(path).write(lambda tmp: fig.savefig(tmp, dpi=90))

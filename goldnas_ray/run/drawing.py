"""Drawings of an architecture: the whole network's cell stack, and every live cell's graph.

GOLD-NAS gives every cell its own structure, so a genotype is drawn whole: a strip of the
cell stack (reduction cells marked, cells that no longer feed the classifier greyed), then
one panel per live cell: its two inputs, its intermediate nodes, its output (the
concatenation of the intermediate nodes), and each edge labelled with its operators.
"""
from __future__ import annotations

import math
from pathlib import Path

from goldnas_ray.core.genotype import Genotype
from goldnas_ray.files.store import Location, location

SHORT = {"skip_connect": "skip", "sep_conv_3x3": "sep3", "sep_conv_5x5": "sep5", "sep_conv_7x7": "sep7",
         "dil_conv_3x3": "dil3", "dil_conv_5x5": "dil5", "max_pool_3x3": "max", "avg_pool_3x3": "avg"}
COLOURS = {"skip_connect": "#4c72b0", "sep_conv_3x3": "#dd8452", "sep_conv_5x5": "#c44e52",
           "sep_conv_7x7": "#8172b3", "dil_conv_3x3": "#55a868", "dil_conv_5x5": "#64b5cd",
           "max_pool_3x3": "#937860", "avg_pool_3x3": "#da8bc3"}


def _node_positions(num_nodes: int) -> dict[int, tuple[float, float]]:
    """Inputs 0 and 1 on the left, intermediate nodes in a zig-zag column, the output right."""
    pos = {0: (0.0, 0.75), 1: (0.0, 0.25)}
    for j in range(num_nodes):
        pos[2 + j] = (0.3 + 0.45 * j / max(num_nodes - 1, 1), 0.85 - 0.7 * j / max(num_nodes - 1, 1))
    pos[-1] = (1.0, 0.5)
    return pos


def _draw_cell(ax, geno: Genotype, k: int) -> None:
    cell = geno.cells[k]
    pos = _node_positions(geno.num_nodes)
    names = {0: "c[k-2]", 1: "c[k-1]", -1: "c[k]"} | {2 + j: str(j) for j in range(geno.num_nodes)}
    for (edge, ops) in sorted(cell.edges.items()):
        (x0, y0), (x1, y1) = pos[edge.src], pos[edge.dst]
        colour = COLOURS.get(ops[0], "black") if len(ops) == 1 else "black"
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color=colour, lw=1.0, shrinkA=9, shrinkB=9))
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, "+".join(SHORT.get(o, o) for o in ops), fontsize=6,
                ha="center", va="center", color=colour,
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    for j in range(geno.num_nodes):  # every intermediate node feeds the output
        (x0, y0), (x1, y1) = pos[2 + j], pos[-1]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color="#bbbbbb", lw=0.6, ls=":", shrinkA=9, shrinkB=9))
    for node, (x, y) in pos.items():
        used = node in (-1,) or node >= 2 or cell.uses_input(node)
        ax.text(x, y, names[node], fontsize=7, ha="center", va="center",
                bbox=dict(boxstyle="round", fc="#f4f4f4" if used else "white",
                          ec="black" if used else "#cccccc"), color="black" if used else "#aaaaaa")
    ax.set_title(f"cell {k}" + (" (reduction)" if cell.reduction else ""), fontsize=8,
                 color="#b03030" if cell.reduction else "black")
    ax.set_xlim(-0.12, 1.12)
    ax.set_ylim(0.05, 0.95)
    ax.axis("off")


def _draw_stack(ax, geno: Genotype) -> None:
    from matplotlib.patches import FancyBboxPatch

    live = geno.live_cells()
    n = geno.num_cells
    for k, cell in enumerate(geno.cells):
        ops = sum(len(o) for o in cell.edges.values())
        face = "#f6d5d5" if cell.reduction else "#dde6f2"
        ax.add_patch(FancyBboxPatch(
            (k / n + 0.005, 0.15), 1 / n - 0.01, 0.7, boxstyle="round,pad=0.005",
            fc=face if live[k] else "#eeeeee", ec="black" if live[k] else "#bbbbbb"))
        label = f"{k}\n{'R' if cell.reduction else 'N'}\n{ops} ops" if live[k] else f"{k}\n(unused)"
        ax.text(k / n + 0.5 / n, 0.5, label, ha="center", va="center", fontsize=6,
                color="black" if live[k] else "#999999")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    meta = geno.metadata or {}
    what = f"{meta['id']}: " if "id" in meta else ""
    flops = f", {meta['flops'] / 1e6:.3f} MFLOPs" if "flops" in meta else ""
    ax.set_title(f"{what}{geno.num_cells} cells, stem {geno.stem}, input {geno.in_channels}x"
                 f"{geno.input_size}x{geno.input_size}{flops} (N normal, R reduction)", fontsize=9)


def plot_genotype(geno: Genotype, path: "str | Path | Location", columns: int = 4) -> Location:
    """Draw ``geno`` (its cell stack, then every live cell) into the PNG at ``path``."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

    live = [k for k, alive in enumerate(geno.live_cells()) if alive]
    columns = max(1, min(columns, len(live)))
    rows = math.ceil(len(live) / columns)
    fig = Figure(figsize=(3.2 * columns, 0.9 + 2.6 * rows))
    grid = fig.add_gridspec(rows + 1, columns, height_ratios=[0.35] + [1] * rows)
    _draw_stack(fig.add_subplot(grid[0, :]), geno)
    for i, k in enumerate(live):
        _draw_cell(fig.add_subplot(grid[1 + i // columns, i % columns]), geno, k)
    fig.tight_layout()
    return location(path).write(lambda tmp: fig.savefig(tmp, dpi=90))

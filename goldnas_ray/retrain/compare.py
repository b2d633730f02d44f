"""Several runs' fronts on one accuracy/FLOPs (or accuracy/latency) chart (pipelines/compare.py).

A source is a retrain (its frontier.parquet: accuracy, FLOPs and measured latency of every
architecture) or a search (its records.json: the recorded FLOPs, or the predicted latency of a
cost=latency search, drawn as ticks under the chart, since a search measures no
architecture's accuracy), read from a folder or a storage URI (an MLflow run's files come
through ``tracking.retrain.fetch_front_run``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from goldnas_ray.files.search_files import OutputDirError, read_records
from goldnas_ray.files.store import Location, location
from goldnas_ray.retrain.plan import RetrainError
from goldnas_ray.retrain.report import AXES, save_chart, staircase


@dataclass
class Front:
    label: str
    kind: str                  # "retrain" | "search"
    table: pd.DataFrame        # arch_id, kind, flops, accuracy_mean (retrain) / flops (search)


def read_front(where: "str | Path | Location", label: str | None = None) -> Front:
    """The front stored in a retrain or search output folder (or URI)."""
    loc = location(where)
    label = label or loc.name
    if (loc / "frontier.parquet").is_file():
        table = pd.read_parquet((loc / "frontier.parquet").open_buffer())
        return Front(label, "retrain", table)
    if (loc / "records.json").is_file() or (loc / "frontier.json").is_file():
        archs = read_records(loc)["architectures"]
        return Front(label, "search", pd.DataFrame([{"arch_id": a["id"], "kind": "searched", "flops": a["flops"],
                                                     "latency_ms": a.get("latency_ms")} for a in archs]))
    raise OutputDirError(f"{loc} holds neither a retrain's frontier.parquet nor a search's records.json")


def front_table(fronts: list[Front]) -> pd.DataFrame:
    rows = []
    for f in fronts:
        t = f.table.assign(source=f.label, stage=f.kind)
        rows.append(t[[c for c in ("source", "stage", "arch_id", "kind", "flops", "latency_ms", "accuracy_mean",
                                   "on_front") if c in t]])
    return pd.concat(rows, ignore_index=True)


def plot_fronts(fronts: list[Front], path: "str | Path | Location", title: str = "",
                axis: str = "flops") -> Location:
    """Each retrain's points and Pareto staircase (searched and random separately), each
    search's recorded FLOPs (or predicted latency) as ticks under the axis, one colour per
    source. ``axis``: flops, or latency (the retrains' measured batch-1 latency; a source
    without it is refused)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

    column, scale, xlabel = AXES[axis]
    for f in fronts:
        if column not in f.table or f.table[column].isna().any():
            raise RetrainError(f"{f.label} has no {column}: "
                               + ("its retrain measured no latency (retrain.latency_repeats=0, or made before it "
                                  "was measured)" if f.kind == "retrain" else "a search records latency only "
                                  "with search.cost=latency"))
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    searches = [f for f in fronts if f.kind == "search"]
    for i, f in enumerate(fronts):
        color = f"C{i % 10}"
        if f.kind == "retrain":
            for kind, marker, style in (("searched", "o", "-"), ("random", "x", ":")):
                part = f.table[f.table["kind"] == kind]
                if part.empty:
                    continue
                mf, acc = part[column].astype(float) * scale, part["accuracy_mean"] * 100
                ax.scatter(mf, acc, color=color, marker=marker, label=f"{f.label} ({kind})", zorder=3)
                xs, ys = staircase(mf.tolist(), acc.tolist())
                ax.step(xs, ys, where="post", color=color, ls=style, lw=1.2)
        else:
            ax.plot(f.table[column].astype(float) * scale, [0.02 + 0.03 * searches.index(f)] * len(f.table), "|",
                    color=color, ms=12, mew=2, transform=ax.get_xaxis_transform(),
                    label=f"{f.label} (search: recorded {'FLOPs' if axis == 'flops' else 'predicted latency'})")
    return save_chart(fig, ax, path, title, xlabel, "test accuracy (%)")


def looks_like_run_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text) and not Path(text).exists()


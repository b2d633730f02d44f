"""The accuracy/FLOPs frontier of a retrain: one row per architecture, Pareto flags, a plot.

    frontier.parquet / frontier.csv   arch_id, kind (searched | random), flops, params,
                                      latency_ms, latency_ms_batch, latency_device,
                                      accuracy_mean, accuracy_std, seeds, epochs, on_front, ...
    frontier.png                      accuracy against FLOPs, Pareto staircases drawn
    frontier_latency.png              accuracy against measured latency (batch 1), when measured

An architecture is on the front when no other one has FLOPs <= its FLOPs and accuracy >= its
accuracy with at least one of the two strictly better. Accuracy is the test accuracy after
the last epoch (no choice of the best epoch on the test set), averaged over seeds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from goldnas_ray.core.genotype import Genotype
from goldnas_ray.files.store import Location, location

COLUMNS = ["arch_id", "kind", "flops", "params", "latency_ms", "latency_ms_batch", "latency_device",
           "accuracy_mean", "accuracy_std", "seeds", "epochs", "on_front", "on_front_latency", "search_epoch",
           "search_lambda", "genotype"]
# what an accuracy chart can put on its x axis: column, scale, label
AXES = {"flops": ("flops", 1e-6, "MFLOPs per image (multiply-add = 2)"),
        "latency": ("latency_ms", 1.0, "latency (ms, batch 1, measured)")}


def has_latency(table: pd.DataFrame) -> bool:
    """Every architecture of ``table`` has a measured latency."""
    return "latency_ms" in table and len(table) > 0 and bool(table["latency_ms"].notna().all())


def measured_latency(genotypes: dict[str, Genotype], batch: int, repeats: int, device: str = "cpu",
                     channels_last: bool = True) -> pd.DataFrame:
    """arch_id, latency_ms (batch 1), latency_ms_batch (``batch``), latency_device: every
    network built afresh (latency does not depend on the weights' values) and timed end to
    end in eval mode, float32, the minimum of ``repeats`` passes taken in interleaved rounds
    (``core.latency.measure_networks``), with this process's torch threads."""
    import torch

    from goldnas_ray.core.latency import device_description, measure_networks

    ids = sorted(genotypes)
    genos = [genotypes[a] for a in ids]
    one = measure_networks(genos, 1, device, channels_last=channels_last, warmup=2, repeats=repeats)
    many = measure_networks(genos, batch, device, channels_last=channels_last, warmup=2, repeats=repeats)
    d = device_description(torch.device(device), "float32", channels_last)
    where = f"{d['name']} ({d['type']}, {d['threads']} threads, batch {batch})"
    return pd.DataFrame({"arch_id": ids, "latency_ms": [m for m, _ in one],
                         "latency_ms_batch": [m for m, _ in many], "latency_device": where})


def non_dominated(flops: Sequence[float], accuracy: Sequence[float]) -> list[bool]:
    """Which points no other point dominates (fewer or equal FLOPs and higher or equal
    accuracy, strictly better in one). Identical points do not dominate each other."""
    f = np.asarray(flops, dtype=float)
    a = np.asarray(accuracy, dtype=float)
    if f.shape != a.shape:
        raise ValueError(f"{len(f)} FLOPs values but {len(a)} accuracies")
    keep = []
    for i in range(len(f)):
        dominated = (f <= f[i]) & (a >= a[i]) & ((f < f[i]) | (a > a[i]))
        keep.append(not bool(dominated.any()))
    return keep


def last_epochs(trials: pd.DataFrame) -> pd.DataFrame:
    """Each trial's row of its last epoch (trials: arch_id, seed, epoch, ...)."""
    return trials.sort_values("epoch").groupby(["arch_id", "seed"], as_index=False).tail(1)


def summarise(trials: pd.DataFrame, architectures: pd.DataFrame) -> pd.DataFrame:
    """One row per architecture from the final epoch of each of its trials.

    ``trials``: one row per (trial, epoch) with arch_id, seed, epoch, test_acc.
    ``architectures``: arch_id, kind, flops, params (and optional search_epoch, search_lambda,
    genotype), one row each.
    """
    last = last_epochs(trials)
    acc = last.groupby("arch_id").agg(accuracy_mean=("test_acc", "mean"),
                                      accuracy_std=("test_acc", "std"),
                                      seeds=("seed", "nunique"), epochs=("epoch", "min"),
                                      **({"start_test_acc": ("start_test_acc", "mean")}
                                         if "start_test_acc" in last else {}))
    table = architectures.merge(acc, left_on="arch_id", right_index=True, how="inner")
    table["on_front"] = non_dominated(table["flops"], table["accuracy_mean"])
    if has_latency(table):  # the front in the (latency, accuracy) plane
        table["on_front_latency"] = non_dominated(table["latency_ms"], table["accuracy_mean"])
    for col in COLUMNS:
        if col not in table:
            table[col] = None
    # a sweep's: the searches that recorded it; inherited networks': their accuracy before any step
    kept = COLUMNS + [c for c in ("sources", "start_test_acc") if c in table]
    return table[kept].sort_values(["flops", "arch_id"]).reset_index(drop=True)


def staircase(flops: Sequence[float], accuracy: Sequence[float]) -> tuple[list[float], list[float]]:
    """The Pareto points sorted by FLOPs (accuracy rises along them), for a step plot."""
    mask = non_dominated(flops, accuracy)
    pts = sorted((f, a) for f, a, m in zip(flops, accuracy, mask) if m)
    return [p[0] for p in pts], [p[1] for p in pts]


def plot(table: pd.DataFrame, path: Path, title: str = "", axis: str = "flops") -> Path:
    """Accuracy against ``axis`` (flops | latency): each kind's points and staircase, the
    joint front in that plane circled."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

    column, scale, xlabel = AXES[axis]
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    styles = {"searched": ("C0", "o", "-"), "random": ("C1", "s", "--")}
    for kind, group in table.groupby("kind", sort=True):
        color, marker, line = styles.get(kind, ("C2", "^", ":"))
        x = group[column].to_numpy(float) * scale
        y = 100 * group["accuracy_mean"].to_numpy()
        err = 100 * group["accuracy_std"].fillna(0).to_numpy()
        ax.errorbar(x, y, yerr=err, fmt=marker, color=color, capsize=3, label=f"{kind} ({len(group)})")
        sx, sy = staircase(x, y)
        if sx:  # the kind's own front: a step up at each Pareto point, flat to the right
            ax.step(sx + [x.max()], sy + [sy[-1]], where="post", color=color, ls=line, lw=1.2, alpha=0.8)
    front = table[table["on_front" if axis == "flops" else "on_front_latency"].astype(bool)]
    ax.scatter(front[column].astype(float) * scale, 100 * front["accuracy_mean"], s=140, facecolors="none",
               edgecolors="black", label="on the joint front", zorder=4)
    for _, row in table.iterrows():
        ax.annotate(row["arch_id"], (float(row[column]) * scale, 100 * row["accuracy_mean"]), fontsize=7,
                    xytext=(4, -9), textcoords="offset points")
    return save_chart(fig, ax, path, title, xlabel, "test accuracy (%), mean over seeds")


def save_chart(fig, ax, path: "Path | Location", title: str, xlabel: str, ylabel: str) -> Location:
    """Label, grid and legend an accuracy/FLOPs chart and write it to ``path``."""
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return location(path).write(lambda tmp: fig.savefig(tmp, dpi=110))


def write_report(out: "Path | Location", table: pd.DataFrame, title: str = "") -> list[Location]:
    """frontier.parquet, frontier.csv, frontier.png (and frontier_latency.png when the
    latencies were measured) under ``out`` (each replaced whole)."""
    out = location(out)
    paths = []
    paths.append((out / "frontier.parquet").write(lambda tmp: table.to_parquet(tmp, index=False)))
    paths.append((out / "frontier.csv").write(lambda tmp: table.to_csv(tmp, index=False)))
    paths.append(plot(table, out / "frontier.png", title))
    if has_latency(table):
        paths.append(plot(table, out / "frontier_latency.png", title, axis="latency"))
    return paths


def format_table(table: pd.DataFrame) -> str:
    """The report as aligned text, one architecture a line, the front marked ``*``."""
    latency = has_latency(table)
    lines = [f"{'architecture':<13} {'kind':<9} {'MFLOPs':>8} {'params':>8} " + ("  ms (b1)" if latency else "")
             + f"{'accuracy':>16} front" + (" (FLOPs, ms)" if latency else "")]
    for _, row in table.iterrows():
        std = "" if pd.isna(row["accuracy_std"]) else f" +- {100 * row['accuracy_std']:.2f}"
        ms = f"{row['latency_ms']:>9.3f}" if latency else ""
        marks = ("*" if row["on_front"] else " ") + (("  *" if row["on_front_latency"] else "") if latency else "")
        start = (f"  start {100 * row['start_test_acc']:.2f}%" if pd.notna(row.get("start_test_acc", float("nan")))
                 else "")
        lines.append(f"{row['arch_id']:<13} {row['kind']:<9} {row['flops'] / 1e6:>8.3f} {row['params']:>8} {ms}"
                     f"{100 * row['accuracy_mean']:>7.2f}%{std:<9} {marks.rstrip()}{start}")
    return "\n".join(lines)


def front_summary(table: pd.DataFrame) -> dict[str, float]:
    """Size of the joint front and the best accuracy, for the tracker."""
    if table.empty:
        return {}
    return {"front_size": int(table["on_front"].sum()), "best_accuracy": float(table["accuracy_mean"].max())}

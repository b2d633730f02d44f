"""Searched against random, with statistics: hypervolumes of the two fronts and FLOPs-matched
accuracy differences, each with a bootstrap interval over the seeds.

Hypervolume is measured in (test error, log10 FLOPs), both minimised, against the reference
point (error 1, log10 of 1.1 x the largest FLOPs of any architecture in the report): the area
of that plane the front dominates. The same in (test error, log10 measured latency) when the
report measured latencies (``column="latency_ms"``). The bootstrap resamples, for every architecture, its seeds'
final test accuracies with replacement (B times, a fixed generator), recomputes the mean
accuracies and the statistic, and reports the 2.5 and 97.5 percentiles. With one seed per
architecture there is nothing to resample: the interval is the point.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def hypervolume(errors, log_flops, reference: tuple[float, float]) -> float:
    """Area dominated by the points (error, log FLOPs), both minimised, up to ``reference``."""
    ref_e, ref_f = reference
    pts = sorted((f, e) for e, f in zip(errors, log_flops) if e < ref_e and f < ref_f)
    area, best = 0.0, ref_e
    for i, (f, e) in enumerate(pts):
        best = min(best, e)
        right = pts[i + 1][0] if i + 1 < len(pts) else ref_f
        area += (right - f) * (ref_e - best)
    return area


def interval95(samples: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))


def compare_fronts(last: pd.DataFrame, architectures: pd.DataFrame, resamples: int = 1000,
                   seed: int = 0, column: str = "flops") -> dict[str, Any]:
    """``last``: one row per finished trial (arch_id, seed, test_acc of its last epoch);
    ``architectures``: arch_id, kind (searched | random) and ``column`` (flops, or the
    measured latency_ms): the resource axis, in log10."""
    archs = architectures.set_index("arch_id")
    accs = {a: g["test_acc"].to_numpy(float) for a, g in last.groupby("arch_id") if a in archs.index}
    ids = sorted(accs)
    kinds = {a: archs.loc[a, "kind"] for a in ids}
    logf = {a: math.log10(float(archs.loc[a, column])) for a in ids}
    reference = (1.0, math.log10(1.1 * float(archs.loc[ids, column].max()))) if ids else (1.0, 0.0)
    rng = np.random.default_rng(seed)
    seeds = max((len(v) for v in accs.values()), default=0)
    draws = {a: accs[a][rng.integers(0, len(accs[a]), (resamples, len(accs[a])))].mean(1) for a in ids}
    means = {a: float(accs[a].mean()) for a in ids}

    def hv(kind: str, acc_of) -> float:
        members = [a for a in ids if kinds[a] == kind]
        return hypervolume([1 - acc_of(a) for a in members], [logf[a] for a in members], reference)

    out: dict[str, Any] = {"axis": column, "reference": {"error": reference[0], f"log10_{column}": reference[1]},
                           "resamples": resamples, "max_seeds": seeds, "hypervolume": {}}
    boot = {}
    for kind in ("searched", "random"):
        if not any(kinds[a] == kind for a in ids):
            continue
        boot[kind] = np.array([hv(kind, lambda a, b=b: draws[a][b]) for b in range(resamples)])
        low, high = interval95(boot[kind])
        out["hypervolume"][kind] = {"value": hv(kind, means.get), "low": low, "high": high}
    if len(boot) == 2:
        diff = boot["searched"] - boot["random"]
        low, high = interval95(diff)
        value = out["hypervolume"]["searched"]["value"] - out["hypervolume"]["random"]["value"]
        out["hypervolume"]["difference"] = {"value": value, "low": low, "high": high}
    randoms = [a for a in ids if kinds[a] == "random"]
    matched = []
    for a in (a for a in ids if kinds[a] == "searched"):
        if not randoms:
            break
        r = min(randoms, key=lambda x: (abs(logf[x] - logf[a]), x))
        diff = draws[a] - draws[r]
        low, high = interval95(diff)
        matched.append({"arch_id": a, "random_id": r, column: float(archs.loc[a, column]),
                        f"random_{column}": float(archs.loc[r, column]), "difference": means[a] - means[r],
                        "low": low, "high": high})
    out["matched"] = matched
    return out


def describe(stats: dict[str, Any]) -> list[str]:
    """Console lines for a comparison."""
    lines = []
    ref, column = stats["reference"], stats.get("axis", "flops")
    name_of, scale, unit = {"flops": ("FLOPs", 1e-6, "MFLOPs"), "latency_ms": ("latency", 1.0, "ms")}[column]
    for name, hv in stats["hypervolume"].items():
        lines.append(f"hypervolume {name:<10} {hv['value']:.4f}  95% [{hv['low']:.4f}, {hv['high']:.4f}]"
                     f"  (error x log10 {name_of}, reference ({ref['error']:g}, {ref[f'log10_{column}']:.3f}))")
    for m in stats["matched"]:
        lines.append(f"{m['arch_id']} vs {m['random_id']} ({m[column] * scale:.3f} vs "
                     f"{m[f'random_{column}'] * scale:.3f} {unit}): accuracy {100 * m['difference']:+.2f} points, "
                     f"95% [{100 * m['low']:+.2f}, {100 * m['high']:+.2f}]")
    return lines

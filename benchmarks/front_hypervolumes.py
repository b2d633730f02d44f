"""The fronts of several retrains side by side: hypervolume of each in (test error, log10
FLOPs) and in (test error, log10 measured latency), against one reference point for all.

    python benchmarks/front_hypervolumes.py runs/rt-flops runs/rt-latency

Each argument is a retrain's output folder (its frontier.parquet; latency needs a retrain that
measured it). The searched architectures of each retrain form its front; the reference point
is (error 1, log10 of 1.1 x the largest value over all of them), so the numbers compare. With
one seed per architecture there is no interval: the numbers are one run's.
"""
from __future__ import annotations

import argparse
import math
import sys

import pandas as pd

from goldnas_ray.files.store import location
from goldnas_ray.retrain.stats import hypervolume


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("retrains", nargs="+")
    a = p.parse_args()
    tables = {r: pd.read_parquet((location(r) / "frontier.parquet").open_buffer()) for r in a.retrains}
    tables = {r: t[t["kind"] == "searched"] for r, t in tables.items()}
    axes = [("flops", "MFLOPs", 1e-6), ("latency_ms", "ms", 1.0)]
    print(f"{'retrain':<28} {'archs':>5} {'best acc':>9} " + " ".join(
        f"{'range ' + unit:>18} {'HV ' + col:>14}" for col, unit, _ in axes))
    refs = {col: math.log10(1.1 * max(float(t[col].max()) for t in tables.values())) for col, _, _ in axes
            if all(col in t and t[col].notna().all() for t in tables.values())}
    for r, t in tables.items():
        cells = []
        for col, unit, scale in axes:
            if col not in refs:
                cells.append(f"{'-':>18} {'-':>14}")
                continue
            hv = hypervolume(1 - t["accuracy_mean"], [math.log10(v) for v in t[col]], (1.0, refs[col]))
            lo, hi = t[col].min() * scale, t[col].max() * scale
            cells.append(f"{f'{lo:.3g} - {hi:.3g}':>18} {hv:>14.4f}")
        print(f"{r:<28} {len(t):>5} {100 * t['accuracy_mean'].max():>8.2f}% " + " ".join(cells))
    print("reference: error 1, log10 of 1.1 x the largest " + ", ".join(f"{c} ({v:.3f})" for c, v in refs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Searched against random, with statistics: hypervolumes of the two fronts and FLOPs-matched
accuracy differences, each with an interval that says its method and n.

Hypervolume is measured in (test error, log10 FLOPs), both minimised, against the reference
point (error 1, log10 of 1.1 x the largest FLOPs of any architecture in the report): the area
of that plane the front dominates. The same in (test error, log10 measured latency) when the
report measured latencies (``column="latency_ms"``).

Every interval is an object ``{value, low, high, n, method}`` at 95%:
- an architecture's accuracy, a matched pair's accuracy difference (searched - random, paired
  by seed), a grid point's hypervolume over its search seeds: Student-t over the n seeds
  (``t_interval``); with n = 1 there is no interval (low and high None, the method says so);
- the overall "searched better than random at matched cost": each searched network matched to
  the random one nearest in cost, its difference the mean over the seeds both finished (a pair
  with none is left out); the differences of searched networks matched to the same random one
  averaged (they are not independent), then Student-t over the n random networks matched;
  with how many pairs' own intervals are above 0 or below it;
- a front's hypervolume and the difference of the two: for each seed that every architecture
  finished, the front of each kind at that seed's accuracies; Student-t over those seeds
  (paired by seed for the difference). It says how much the fronts move with the training
  seed, for these architectures: it does not resample the architectures (resampling a front's
  members only ever drops points, so such intervals sit below their own estimate).
An interval that contains 0, or a missing one, is "not resolved" (``verdict``), never a win.
The percentile bootstrap over seeds these replaced covered the mean about half the time with
2 seeds (its interval is the two values' range): tests/test_coverage.py measures both.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

LEVEL = 0.95
T_METHOD = "student-t over {n} {what}"


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


def t_interval(values, what: str = "seeds") -> dict[str, Any]:
    """The mean of ``values`` with its 95% Student-t interval over them (n - 1 degrees of
    freedom); with one value, no interval."""
    x = np.asarray(values, float)
    n = len(x)
    if n < 2:
        return {"value": float(x.mean()) if n else None, "low": None, "high": None, "n": n,
                "method": f"none: {n} {what}, no interval"}
    half = float(scipy_stats.t.ppf(0.5 + LEVEL / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    mean = float(x.mean())
    return {"value": mean, "low": mean - half, "high": mean + half, "n": n,
            "method": T_METHOD.format(n=n, what=what)}


def verdict(interval: dict[str, Any]) -> str:
    """"better" or "worse" when the interval lies above or below 0, else "not resolved"."""
    if interval["low"] is None:
        return "not resolved"
    return "better" if interval["low"] > 0 else "worse" if interval["high"] < 0 else "not resolved"


def show(interval: dict[str, Any], scale: float = 1.0, fmt: str = ".4f") -> str:
    """``value  95% [low, high] (method)``, or the value and why it has no interval."""
    value = f"{scale * interval['value']:{fmt}}"
    if interval["low"] is None:
        return f"{value}  ({interval['method']})"
    return (f"{value}  95% [{scale * interval['low']:{fmt}}, {scale * interval['high']:{fmt}}] "
            f"({interval['method']})")


def compare_fronts(last: pd.DataFrame, architectures: pd.DataFrame, column: str = "flops") -> dict[str, Any]:
    """``last``: one row per finished trial (arch_id, seed, test_acc of its last epoch);
    ``architectures``: arch_id, kind (searched | random) and ``column`` (flops, or the
    measured latency_ms): the resource axis, in log10."""
    archs = architectures.set_index("arch_id")
    by_seed = {a: dict(zip(g["seed"], g["test_acc"].astype(float))) for a, g in last.groupby("arch_id")
               if a in archs.index}
    ids = sorted(by_seed)
    kinds = {a: archs.loc[a, "kind"] for a in ids}
    members = {k: [a for a in ids if kinds[a] == k] for k in ("searched", "random")}
    logf = {a: math.log10(float(archs.loc[a, column])) for a in ids}
    reference = (1.0, math.log10(1.1 * float(archs.loc[ids, column].max()))) if ids else (1.0, 0.0)
    # the seeds every architecture finished: each gives one front of each kind
    seeds = sorted(set.intersection(*(set(by_seed[a]) for a in ids))) if ids else []

    def hv(kind: str, acc_of) -> float:
        chosen = members[kind]
        return hypervolume([1 - acc_of(a) for a in chosen], [logf[a] for a in chosen], reference)

    def over_seeds(per_seed: list[float], mean_value: float, what: str) -> dict[str, Any]:
        if not per_seed:  # no seed that every architecture finished: the fronts of the means alone
            return {"value": mean_value, "low": None, "high": None, "n": 0,
                    "method": "none: no seed that every architecture finished, no interval"}
        return t_interval(per_seed, what)

    out: dict[str, Any] = {"axis": column, "reference": {"error": reference[0], f"log10_{column}": reference[1]},
                           "max_seeds": max((len(v) for v in by_seed.values()), default=0),
                           "architectures": {a: t_interval(list(by_seed[a].values())) for a in ids},
                           "hypervolume": {}}
    present = [k for k in ("searched", "random") if members[k]]
    fronts = {k: [hv(k, lambda a: by_seed[a][s]) for s in seeds] for k in present}
    of_means = {k: hv(k, lambda a: float(np.mean(list(by_seed[a].values())))) for k in present}
    for k in present:
        out["hypervolume"][k] = over_seeds(fronts[k], of_means[k], "seeds (each seed's front)")
    if len(present) == 2:
        out["hypervolume"]["difference"] = over_seeds(
            [a - b for a, b in zip(fronts["searched"], fronts["random"])], of_means["searched"] - of_means["random"],
            "paired seeds (each seed's two fronts)")
    matched = []
    for a in members["searched"] if members["random"] else []:
        r = min(members["random"], key=lambda x: (abs(logf[x] - logf[a]), x))
        common = sorted(set(by_seed[a]) & set(by_seed[r]))
        if not common:  # failed trials left no seed to pair: nothing to compare
            continue
        difference = t_interval([by_seed[a][s] - by_seed[r][s] for s in common], "paired seeds")
        matched.append({"arch_id": a, "random_id": r, column: float(archs.loc[a, column]),
                        f"random_{column}": float(archs.loc[r, column]), "difference": difference,
                        "verdict": verdict(difference)})
    out["matched"] = matched
    if matched:
        # searched networks matched to one random network are not independent of each other:
        # their differences are averaged per random network, and the t interval is over those
        per_random: dict[str, list[float]] = {}
        for m in matched:
            per_random.setdefault(m["random_id"], []).append(m["difference"]["value"])
        overall = t_interval([float(np.mean(v)) for v in per_random.values()], "random networks matched")
        out["overall"] = {"difference": overall, "verdict": verdict(overall), "pairs": len(matched),
                          "better": sum(m["verdict"] == "better" for m in matched),
                          "worse": sum(m["verdict"] == "worse" for m in matched)}
    return out


def describe(stats: dict[str, Any]) -> list[str]:
    """Console lines for a comparison."""
    lines = []
    if stats.get("init", {}).get("searched") == "inherited":
        lines.append("searched networks started from their inherited weights, random ones from scratch "
                     "(they have none): the comparison is not like for like")
    ref, column = stats["reference"], stats.get("axis", "flops")
    name_of, scale, unit = {"flops": ("FLOPs", 1e-6, "MFLOPs"), "latency_ms": ("latency", 1.0, "ms")}[column]
    for name, hv in stats["hypervolume"].items():
        tail = f"  {verdict(hv)}" if name == "difference" else ""
        lines.append(f"hypervolume {name:<10} {show(hv)}{tail}"
                     f"  (error x log10 {name_of}, reference ({ref['error']:g}, {ref[f'log10_{column}']:.3f}))")
    for m in stats["matched"]:
        lines.append(f"{m['arch_id']} vs {m['random_id']} ({m[column] * scale:.3f} vs "
                     f"{m[f'random_{column}'] * scale:.3f} {unit}): accuracy points "
                     f"{show(m['difference'], 100, '+.2f')}  {m['verdict']}")
    if "overall" in stats:
        o = stats["overall"]
        lines.append(f"searched - random at matched {name_of}: accuracy points {show(o['difference'], 100, '+.2f')}"
                     f"  {o['verdict']}; {o['better']} of {o['pairs']} pairs better, {o['worse']} worse")
    return lines


def summary(comparison: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """A retrain's comparison as MLflow metrics (each interval's value, and its low and high
    where it has them) and tags: each verdict ("better", "worse", "not resolved") and method."""
    overall = {name: part["overall"] for name, part in (("matched", comparison),
                                                         ("matched_latency", comparison.get("latency", {})))
               if "overall" in part}
    intervals = {f"hypervolume_{k}": v for k, v in comparison.get("hypervolume", {}).items()}
    intervals |= {f"hypervolume_latency_{k}": v for k, v in comparison.get("latency", {}).get("hypervolume", {}).items()}
    intervals |= {f"hypervolume_point{p['point']}": p["hypervolume"] for p in comparison.get("sweep", {}).get("points", [])}
    intervals |= {name: o["difference"] for name, o in overall.items()}
    metrics, tags = {}, {}
    for name, iv in intervals.items():
        metrics |= {f"{name}{end}": iv[key] for key, end in (("value", ""), ("low", "_low"), ("high", "_high"))
                    if iv[key] is not None}
        tags[f"goldnas.{name}.interval"] = f"n={iv['n']}, {iv['method']}"
    for name in ("hypervolume_difference", "hypervolume_latency_difference", *overall):
        if name in intervals:
            tags[f"goldnas.{name}.verdict"] = verdict(intervals[name])
    for name, o in overall.items():
        metrics |= {f"{name}_pairs": o["pairs"], f"{name}_pairs_better": o["better"], f"{name}_pairs_worse": o["worse"]}
    return metrics, tags

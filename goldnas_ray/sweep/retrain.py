"""Retraining a sweep: which architectures, and which schedule gave the better front.

``pipelines/retrain.py --search-dir <sweep>`` retrains every finished search's records, each
named ``<search>.<arch id>`` (``--union-front``: every distinct architecture once, duplicates
by genotype merged, whichever searches recorded it). Each candidate knows the searches it
came from, so the report can rebuild each search's front from the retrained accuracies: its
hypervolume in (test error, log10 FLOPs), against one reference point for the whole sweep,
and per grid point the mean over its seeds with a bootstrap interval (the seeds' hypervolumes
resampled with replacement): "which schedule" with its uncertainty.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from goldnas_ray.core.config import Config
from goldnas_ray.files.search_files import OutputDirError
from goldnas_ray.retrain.candidates import Candidate, SearchResult, load_search
from goldnas_ray.retrain.stats import hypervolume
from goldnas_ray.sweep.plan import Sweep, point_label, search_state
from goldnas_ray.sweep.report import genotype_key
from goldnas_ray.files.store import location

# config sections that must agree across a sweep's searches for their networks to be retrained
# and compared under one recipe on one dataset
SHARED = ("data", "retrain")


def load_sweep(folder: Path, union_front: bool = False) -> tuple[SearchResult, dict[str, dict[str, Any]]]:
    """The finished searches of the sweep in ``folder`` as one search result (every record, or
    the union), and what each search is: name -> {point, label, seed}."""
    sweep = Sweep.read(folder)
    done = [s for s in sweep.searches if search_state(location(folder) / s.name) == "finished"]
    if not done:
        raise OutputDirError(f"sweep {folder}: no search has finished; nothing to retrain")
    results = {s.name: load_search(Path(folder) / s.name) for s in done}
    first = results[done[0].name]
    for s in done[1:]:
        for section in SHARED:
            mine, theirs = getattr(results[s.name].config, section), getattr(first.config, section)
            if mine != theirs:
                differ = [k for k in type(mine).model_fields if getattr(mine, k) != getattr(theirs, k)]
                raise OutputDirError(f"sweep {folder}: {s.name} and {done[0].name} differ in "
                                     f"{', '.join(f'{section}.{k}' for k in differ)}; a sweep is retrained "
                                     f"under one recipe on one dataset")
        if results[s.name].records["input_shape"] != first.records["input_shape"]:
            raise OutputDirError(f"sweep {folder}: {s.name} searched another input shape than {done[0].name}")
    candidates: list[Candidate] = []
    seen: dict[str, Candidate] = {}
    for s in done:
        for c in results[s.name].searched:
            key = genotype_key(c.genotype)
            if union_front and key in seen:
                seen[key].sources.append(s.name)
                continue
            merged = Candidate(f"{s.name}.{c.arch_id}", c.kind, c.genotype, c.flops, c.params, c.search_epoch,
                               c.search_lambda, sources=[s.name])
            seen.setdefault(key, merged)
            candidates.append(merged)
    records = dict(first.records) | {"mlflow_run_id": sweep.mlflow_run_id,
                                     "mlflow_tracking_uri": sweep.mlflow_tracking_uri}
    # the union's config: the first search's (data and recipe are shared; the schedule is not)
    result = SearchResult(Path(folder), records, Config.from_dict(first.records["config"]), first.table, candidates)
    info = {s.name: {"point": s.point, "label": point_label(s.values), "seed": s.seed} for s in done}
    return result, info


def point_hypervolumes(last: pd.DataFrame, architectures: pd.DataFrame, searches: dict[str, dict[str, Any]],
                       resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Each search's front hypervolume from the retrained accuracies (``last``: one row per
    finished trial, arch_id and test_acc; ``architectures``: arch_id, flops, sources), and per
    grid point their mean over seeds with a bootstrap interval."""
    archs = architectures.set_index("arch_id")
    acc = last.groupby("arch_id")["test_acc"].mean()
    ids = [a for a in acc.index if a in archs.index]
    if not ids:
        return {"reference": None, "searches": {}, "points": []}
    reference = (1.0, math.log10(1.1 * float(archs.loc[ids, "flops"].max())))
    per_search = {}
    for name in searches:
        mine = [a for a in ids if name in (archs.loc[a, "sources"] or [])]
        if mine:
            per_search[name] = hypervolume([1 - acc[a] for a in mine],
                                           [math.log10(float(archs.loc[a, "flops"])) for a in mine], reference)
    rng = np.random.default_rng(seed)
    points = []
    for point in sorted({v["point"] for v in searches.values()}):
        names = [n for n, v in searches.items() if v["point"] == point and n in per_search]
        if not names:
            continue
        values = np.array([per_search[n] for n in names])
        boot = values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)
        points.append({"point": point, "grid_point": searches[names[0]]["label"], "seeds": len(names),
                       "value": float(values.mean()), "low": float(np.percentile(boot, 2.5)),
                       "high": float(np.percentile(boot, 97.5))})
    return {"reference": {"error": reference[0], "log10_flops": reference[1]}, "resamples": resamples,
            "searches": per_search, "points": points}


def describe_points(stats: dict[str, Any]) -> list[str]:
    """Console lines: each grid point's front hypervolume over its seeds."""
    lines = []
    for p in sorted(stats["points"], key=lambda p: -p["value"]):
        lines.append(f"hypervolume {p['grid_point']:<28} {p['value']:.4f}  95% [{p['low']:.4f}, {p['high']:.4f}]"
                     f"  over {p['seeds']} seed(s)")
    return lines

"""Retraining a sweep: which architectures, and which schedule gave the better front.

``pipelines/retrain.py --search-dir <sweep>`` retrains every finished search's records, each
named ``<search>.<arch id>`` (``--union-front``: every distinct architecture once, duplicates
by genotype merged, whichever searches recorded it). The searches must agree on their data
(but what only a search reads: its batch size, cutout and subset) and their recipe. Each candidate knows the searches it
came from, so the report can rebuild each search's front from the retrained accuracies: its
hypervolume in (test error, log10 FLOPs), against one reference point for the whole sweep,
and per grid point the mean over its search seeds with a 95% Student-t interval over them
(``retrain.stats.t_interval``; one seed: no interval): "which schedule" with its uncertainty.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from goldnas_ray.core.config import Config
from goldnas_ray.files.search_files import OutputDirError
from goldnas_ray.retrain.candidates import Candidate, SearchResult, load_search
from goldnas_ray.retrain.stats import hypervolume, show, t_interval
from goldnas_ray.sweep.plan import Sweep, point_label, search_state
from goldnas_ray.sweep.report import sources, union
from goldnas_ray.files.store import location

# config that must agree across a sweep's searches for their networks to be retrained and
# compared under one recipe on one dataset: the data (but what only the search reads) and the recipe
SEARCH_ONLY_DATA = {"batch_size", "cutout", "subset"}


def _differences(mine: Config, theirs: Config) -> list[str]:
    found = [f"data.{k}" for k in type(mine.data).model_fields
             if k not in SEARCH_ONLY_DATA and getattr(mine.data, k) != getattr(theirs.data, k)]
    return found + [f"retrain.{k}" for k in type(mine.retrain).model_fields
                    if getattr(mine.retrain, k) != getattr(theirs.retrain, k)]


def load_sweep(folder: Path, union_front: bool = False) -> tuple[SearchResult, dict[str, dict[str, Any]]]:
    """The finished searches of the sweep in ``folder`` as one search result (every record, or
    with ``union_front`` the union, ``sweep.report.union``), and what each search is: name ->
    {point, label, seed}."""
    sweep = Sweep.read(folder)
    done = [s for s in sweep.searches if search_state(location(folder) / s.name) == "finished"]
    if not done:
        raise OutputDirError(f"sweep {folder}: no search has finished; nothing to retrain")
    results = {s.name: load_search(Path(folder) / s.name) for s in done}
    first = results[done[0].name]
    for s in done[1:]:
        differ = _differences(results[s.name].config, first.config)
        if differ:
            raise OutputDirError(f"sweep {folder}: {s.name} and {done[0].name} differ in {', '.join(differ)}; a "
                                 f"sweep is retrained under one recipe on one dataset")
        if results[s.name].records["input_shape"] != first.records["input_shape"]:
            raise OutputDirError(f"sweep {folder}: {s.name} searched another input shape than {done[0].name}")
    of = {(s.name, c.arch_id): c for s in done for c in results[s.name].searched}
    if union_front:  # one candidate per genotype, named after the first search that recorded it
        groups = [[(r["search"], r["arch_id"]) for r in entry["recorded_by"]]
                  for entry in union(location(folder), sweep, [s.name for s in done])]
    else:
        groups = [[(s.name, c.arch_id)] for s in done for c in results[s.name].searched]
    candidates = []
    for group in groups:
        name, arch = group[0]
        c = of[(name, arch)]
        candidates.append(Candidate(f"{name}.{arch}", c.kind, c.genotype, c.flops, c.params, c.search_epoch,
                                    c.search_lambda, sources=[n for n, _ in group], weights=c.weights))
    records = dict(first.records) | {"mlflow_run_id": sweep.mlflow_run_id,
                                     "mlflow_tracking_uri": sweep.mlflow_tracking_uri}
    # the first search's config: data and recipe are shared; the schedule is not
    result = SearchResult(Path(folder), records, first.config, first.table, candidates)
    info = {s.name: {"point": s.point, "label": point_label(s.values), "seed": s.seed} for s in done}
    return result, info


def point_hypervolumes(last: pd.DataFrame, architectures: pd.DataFrame, searches: dict[str, dict[str, Any]]
                       ) -> dict[str, Any]:
    """Each search's front hypervolume from the retrained accuracies (``last``: one row per
    finished trial, arch_id and test_acc; ``architectures``: arch_id, flops, sources), and per
    grid point their mean over its search seeds with a Student-t interval (an object: value,
    low, high, n, method; ``retrain.stats.t_interval``)."""
    archs = architectures.set_index("arch_id")
    acc = last.groupby("arch_id")["test_acc"].mean()
    # the searches' architectures (random ones, with no sources, move no reference point)
    ids = [a for a in acc.index if a in archs.index and sources(archs.loc[a, "sources"])]
    if not ids:
        return {"reference": None, "searches": {}, "points": []}
    reference = (1.0, math.log10(1.1 * float(archs.loc[ids, "flops"].max())))
    per_search = {}
    for name in searches:
        mine = [a for a in ids if name in sources(archs.loc[a, "sources"])]
        if mine:
            per_search[name] = hypervolume([1 - acc[a] for a in mine],
                                           [math.log10(float(archs.loc[a, "flops"])) for a in mine], reference)
    points = []
    for point in sorted({v["point"] for v in searches.values()}):
        names = [n for n, v in searches.items() if v["point"] == point and n in per_search]
        if not names:
            continue
        points.append({"point": point, "grid_point": searches[names[0]]["label"], "seeds": len(names),
                       "hypervolume": t_interval([per_search[n] for n in names], "search seeds")})
    return {"reference": {"error": reference[0], "log10_flops": reference[1]}, "searches": per_search,
            "points": points}


def describe_points(stats: dict[str, Any]) -> list[str]:
    """Console lines: each grid point's front hypervolume over its seeds."""
    lines = []
    for p in sorted(stats["points"], key=lambda p: -p["hypervolume"]["value"]):
        lines.append(f"hypervolume {p['grid_point']:<28} {show(p['hypervolume'])}")
    return lines

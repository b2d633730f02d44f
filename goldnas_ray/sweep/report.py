"""A sweep's report, read from its searches' folders (nothing but their files is needed).

- ``sweep_searches.csv``: one row per search: its grid point and seed, finished or why not, the
  number of records, the FLOPs of its first and last record, the FLOPs at its stop, epochs and
  seconds;
- ``sweep_points.csv``: one row per grid point, over its seeds: finished searches, records
  (mean, min, max), first and last record FLOPs (mean and standard deviation, MFLOPs), epochs
  to the stop, and ``seed_gap_pct``: how far apart the seeds' recorded FLOPs lie (for every
  record of every seed, the distance in FLOPs to the nearest record of each other seed,
  relative to the larger of the two; the median of those, in percent: 0 when every seed
  recorded the same FLOPs);
- ``sweep.png``: FLOPs (a fraction of the supernet's) and lambda over the epochs of every
  search, one colour per grid point, one line style per seed;
- ``union.json``: every architecture any search recorded, duplicates (the same genotype) merged,
  with the searches that recorded it.

:func:`read_fronts` gives ``pipelines/compare.py`` a sweep's fronts (one per search) and those
of a sweep's retrain (one per grid point).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from goldnas_ray.core.genotype import Genotype
from goldnas_ray.files.search_files import HISTORY, OutputDirError, read_manifest, read_records, records_path
from goldnas_ray.files.store import Location, location
from goldnas_ray.retrain.compare import Front, read_front
from goldnas_ray.retrain.plan import MANIFEST, MANIFEST_FORMAT
from goldnas_ray.retrain.report import non_dominated
from goldnas_ray.sweep.plan import Sweep, is_sweep, point_label, search_state

SEARCHES_CSV = "sweep_searches.csv"
POINTS_CSV = "sweep_points.csv"
CHART = "sweep.png"
UNION = "union.json"


def search_rows(out: Location, sweep: Sweep) -> pd.DataFrame:
    """One row per search of ``sweep``, from its folder under ``out``."""
    rows = []
    for s in sweep.searches:
        folder = out / s.name
        row: dict[str, Any] = {"search": s.name, "point": s.point, "grid_point": point_label(s.values),
                               "seed": s.seed, **{k: v for k, v in s.values.items()}}
        records = read_records(folder) if records_path(folder) is not None else None
        finished = bool(records and records.get("finished"))
        row["status"] = "finished" if finished else ("failed" if s.name in sweep.failed else "unfinished")
        row["error"] = sweep.failed.get(s.name, "")
        if records is not None:
            archs = records.get("architectures") or []
            flops = sorted((a["flops"] for a in archs), reverse=True)
            history = (pd.read_parquet((folder / HISTORY).open_buffer()) if (folder / HISTORY).is_file()
                       else pd.DataFrame())
            row |= {"records": len(archs), "first_record_flops": flops[0] if flops else None,
                    "last_record_flops": flops[-1] if flops else None,
                    "supernet_flops": records.get("supernet_flops"), "epochs": records.get("epochs"),
                    "flops_at_stop": int(history["flops"].iloc[-1]) if len(history) else None,
                    "seconds": float(history["seconds"].sum()) if len(history) else None}
        rows.append(row)
    return pd.DataFrame(rows)


def seed_gap(flops_by_seed: list[list[float]]) -> float | None:
    """The median, over every record of every seed and every other seed, of the relative
    FLOPs distance to that other seed's nearest record (percent); None with fewer than two
    seeds that recorded something."""
    seeds = [f for f in flops_by_seed if f]
    if len(seeds) < 2:
        return None
    gaps = [min(abs(a - b) / max(a, b) for b in other)
            for i, mine in enumerate(seeds) for j, other in enumerate(seeds) if i != j for a in mine]
    return 100 * statistics.median(gaps)


def point_rows(out: Location, sweep: Sweep, searches: pd.DataFrame) -> pd.DataFrame:
    """One row per grid point, over its seeds' finished searches."""
    rows = []
    for i, values in enumerate(sweep.points):
        mine = searches[searches["point"] == i]
        done = mine[mine["status"] == "finished"]
        row: dict[str, Any] = {"point": i, "grid_point": point_label(values), **values,
                               "searches": len(mine), "finished": len(done)}
        if len(done):
            flops_by_seed = [[a["flops"] for a in read_records(out / name).get("architectures") or []]
                             for name in done["search"]]
            row |= {"records_mean": done["records"].mean(), "records_min": int(done["records"].min()),
                    "records_max": int(done["records"].max()),
                    "first_record_mflops": done["first_record_flops"].mean() / 1e6,
                    "first_record_mflops_sd": _sd(done["first_record_flops"]) / 1e6,
                    "last_record_mflops": done["last_record_flops"].mean() / 1e6,
                    "last_record_mflops_sd": _sd(done["last_record_flops"]) / 1e6,
                    "epochs_mean": done["epochs"].mean(), "seed_gap_pct": seed_gap(flops_by_seed),
                    "seconds_mean": done["seconds"].mean()}
        rows.append(row)
    return pd.DataFrame(rows)


def _sd(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def genotype_key(geno: Genotype) -> str:
    """The same architecture, whatever search recorded it: the genotype without its metadata."""
    raw = geno.to_dict()
    raw.pop("metadata", None)
    return json.dumps(raw, sort_keys=True)


def union(out: Location, sweep: Sweep, finished: list[str]) -> list[dict[str, Any]]:
    """Every architecture the ``finished`` searches recorded, one entry per genotype (the
    first search's record names it), largest FLOPs first."""
    from goldnas_ray.core.genotype import load_genotype

    merged: dict[str, dict[str, Any]] = {}
    plans = sweep.by_name()
    for name in finished:
        for arch in read_records(out / name).get("architectures") or []:
            key = genotype_key(load_genotype(out / name / arch["genotype"]))
            entry = merged.setdefault(key, {"id": f"{name}.{arch['id']}", "flops": arch["flops"],
                                            "params": arch["params"], "genotype": f"{name}/{arch['genotype']}",
                                            "recorded_by": []})
            entry["recorded_by"].append({"search": name, "arch_id": arch["id"], "point": plans[name].point,
                                         "seed": plans[name].seed, "epoch": arch["epoch"]})
    return sorted(merged.values(), key=lambda e: (-e["flops"], e["id"]))


def plot_sweep(out: Location, sweep: Sweep, finished: list[str], path: Location) -> Location:
    """FLOPs (share of the supernet's) and lambda over the epochs of every search."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    ax_f, ax_l = fig.subplots(1, 2)
    plans, styles = sweep.by_name(), ["-", "--", ":", "-."]
    shown: set[int] = set()
    for name in finished:
        s = plans[name]
        hist = pd.read_parquet((out / name / HISTORY).open_buffer())
        full = read_records(out / name)["supernet_flops"]
        colour, style = f"C{s.point % 10}", styles[sweep.seeds.index(s.seed) % len(styles)]
        label = point_label(s.values) if s.point not in shown else None
        shown.add(s.point)
        ax_f.plot(hist["epoch"], hist["flops"] / full, color=colour, ls=style, lw=1.3, label=label)
        ax_l.plot(hist["epoch"], hist["lambda"], color=colour, ls=style, lw=1.3)
    ax_f.set(xlabel="epoch", ylabel="FLOPs / supernet FLOPs", title="FLOPs over the search")
    ax_l.set(xlabel="epoch", ylabel="lambda", title="lambda (one line style per seed)")
    ax_l.set_yscale("symlog", linthresh=1e-4)
    if shown:
        ax_f.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return path.write(lambda tmp: fig.savefig(tmp, dpi=100))


def write_report(out: "Location | Any", sweep: Sweep) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every file of the report; returns (searches, grid points)."""
    out = location(out)
    searches = search_rows(out, sweep)
    points = point_rows(out, sweep, searches)
    (out / SEARCHES_CSV).write(lambda tmp: searches.to_csv(tmp, index=False))
    (out / POINTS_CSV).write(lambda tmp: points.to_csv(tmp, index=False))
    finished = list(searches.loc[searches["status"] == "finished", "search"])
    (out / UNION).write_text(json.dumps(union(out, sweep, finished), indent=1))
    if finished:
        plot_sweep(out, sweep, finished, out / CHART)
    return searches, points


def format_points(points: pd.DataFrame) -> str:
    """The grid points' table for the console."""
    lines = [f"{'grid point':<28} {'done':>5} {'records':>11} {'first MFLOPs':>14} {'last MFLOPs':>14} "
             f"{'epochs':>7} {'seed gap':>9}"]
    for _, p in points.iterrows():
        if not p["finished"]:
            lines.append(f"{p['grid_point']:<28} {0:>2}/{p['searches']:<2} (no search finished)")
            continue
        gap = "" if pd.isna(p.get("seed_gap_pct")) else f"{p['seed_gap_pct']:.1f}%"
        lines.append(f"{p['grid_point']:<28} {p['finished']:>2}/{p['searches']:<2} "
                     f"{p['records_mean']:>5.1f} [{p['records_min']:.0f}-{p['records_max']:.0f}] "
                     f"{p['first_record_mflops']:>7.3f}±{p['first_record_mflops_sd']:<6.3f}"
                     f"{p['last_record_mflops']:>7.3f}±{p['last_record_mflops_sd']:<6.3f}"
                     f"{p['epochs_mean']:>7.1f} {gap:>9}")
    return "\n".join(lines)


def sources(value: Any) -> list[str]:
    """A candidate's searches as a list, whatever a table made of them (None for a random one)."""
    return [str(v) for v in value] if isinstance(value, (list, tuple, np.ndarray)) else []


def read_fronts(where: "str | Path | Location") -> list[Front]:
    """The fronts a folder holds: a sweep's, one per finished search (its records); a retrain
    of a sweep's, one per grid point (the retrained searched architectures its searches
    recorded, over its seeds); any other, its one front (:func:`read_front`). A sweep's fronts
    are labelled with the folder's name first, so that two sweeps can share a chart."""
    loc = location(where)
    if is_sweep(loc):
        sweep = Sweep.read(loc)
        fronts = [read_front(loc / s.name, label=f"{loc.name}: {s.name} {s.label}") for s in sweep.searches
                  if search_state(loc / s.name) == "finished"]
        if not fronts:
            raise OutputDirError(f"sweep {loc}: no search has finished yet; nothing to draw")
        return fronts
    manifest = loc / MANIFEST
    searches = read_manifest(manifest, (MANIFEST_FORMAT,), "a goldnas-ray retrain manifest").get("sweep") \
        if manifest.is_file() else None
    if not searches or not (loc / "frontier.parquet").is_file():
        return [read_front(loc)]
    everything = pd.read_parquet((loc / "frontier.parquet").open_buffer())
    table = everything[everything["kind"] == "searched"]
    fronts = []
    for point in sorted({v["point"] for v in searches.values()}):
        names = {n for n, v in searches.items() if v["point"] == point}
        mine = table[[bool(names & set(sources(src))) for src in table.get("sources", [None] * len(table))]]
        label = next(v["label"] for v in searches.values() if v["point"] == point)
        if len(mine):  # the grid point's own front
            mine = mine.assign(on_front=non_dominated(mine["flops"], mine["accuracy_mean"]))
            fronts.append(Front(f"{loc.name}: {label}", "retrain", mine.reset_index(drop=True)))
    if not fronts:
        raise OutputDirError(f"{loc} is the retrain of a sweep, and none of its architectures names the "
                             f"searches it came from")
    randoms = everything[everything["kind"] == "random"]
    if len(randoms):  # the baseline of every grid point
        fronts.append(Front(f"{loc.name}: random", "retrain", randoms.reset_index(drop=True)))
    return fronts

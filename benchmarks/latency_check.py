"""How well a latency table predicts real networks: the table's sum against measured end-to-end
latency of discrete networks spanning the space, at batch 1 and at the training batch.

    python benchmarks/latency_check.py                                  # digits default, CPU
    python benchmarks/latency_check.py --search-dir runs/mine           # its records among the networks
    python benchmarks/latency_check.py --device cuda --config configs/cifar10.yaml --batches 1,96

For each batch: a table made as pipelines/profile_latency.py makes it (its calibration
architectures drawn with one seed), then --networks other networks (a search's records when
given, the rest random architectures of the space drawn with another seed, keep
probabilities from 0.05 to 0.95) measured end to end, each the minimum (--statistic) of
--repeats forward passes taken in interleaved rounds. Printed: Spearman rank correlation and
median absolute error (%) of the table's prediction, of the plain sum of the parts (no fitted
correction), the Spearman of FLOPs against the measured latency (how well FLOPs alone would
rank them), and "remeasured": the median difference between two measurements of the same
networks, one before the table is made and one after (the machine's own reproducibility, the
floor under any prediction's error). --json writes every row.

--load (at the first batch): the same table profiled again while a busy process (a Python
loop this script starts and stops) shares this process's CPU, both pinned to it, once kept
whatever its checks say (as tables were before goldnas-ray checked its profiles) and once as
profile_latency.py keeps it (measured again, or refused); each set against the quiet
measurements beside the quiet table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

from goldnas_ray.core.config import Config
from goldnas_ray.core.costs import CostTable
from goldnas_ray.core.latency import LatencyTableError, measure, measure_networks
from goldnas_ray.data.from_config import data_shape
from goldnas_ray.retrain.sampling import spread_architectures


def spearman(a, b) -> float:
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def median_error(predicted, measured) -> float:
    return 100 * statistics.median(abs(p - m) / m for p, m in zip(predicted, measured))


def networks(cfg: Config, shape, classes: int, n: int, search_dir: str | None) -> list[tuple[str, object]]:
    found = []
    if search_dir:
        from goldnas_ray.core.genotype import load_genotype
        records = json.loads((Path(search_dir) / "records.json").read_text())["architectures"]
        found = [(r["id"], load_genotype(Path(search_dir) / r["genotype"])) for r in records][:n]
    rest = spread_architectures(cfg.space, shape, classes, n - len(found), seed=2024, low=0.05, high=0.95)
    found += [(f"random-{i:02d}", geno) for i, geno in enumerate(rest)]
    return found


@contextmanager
def busy_beside():
    """A busy process on this process's CPU (both pinned to one core) until the block ends. The
    pin holds this thread and the threads started after it: torch's intra-op threads, already
    running with --threads > 1, stay where they were (the figures in docs/latency.md use 1)."""
    mine = os.sched_getaffinity(0)
    core = {min(mine)}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(busy.pid, core)
        os.sched_setaffinity(0, core)
        yield
    finally:
        os.sched_setaffinity(0, mine)
        busy.kill()
        busy.wait()


def table_figures(table, nets, measured: list[float]) -> dict:
    """How a table's checks and predictions look against ``measured`` (the quiet networks)."""
    predicted = [table.latency_ms(g) for _, g in nets]
    c = table.checks
    return {"spearman": spearman(predicted, measured), "median_error_pct": median_error(predicted, measured),
            "scale": table.correction.get("scale"), "worst_same_op_ratio": c["same_op_worst_ratio"],
            "disagreeing": len(c["disagreeing"]), "profiles": c["attempts"], "seconds": table.measured["seconds"],
            "max_residual_pct": max((abs(r) for r in c["residuals_pct"]), default=None)}


def under_load(cfg: Config, shape, classes: int, batch: int, a, calibration, nets, measured) -> dict:
    """The table profiled under load, before the checks (kept as it came) and after them."""
    kw = dict(warmup=a.warmup, repeats=a.repeats, calibration=calibration, statistic=a.statistic)
    found = {}
    with busy_beside():
        unchecked = measure(cfg.space, shape, classes, batch, a.device, check=False, **kw)
        found["loaded, unchecked"] = table_figures(unchecked, nets, measured)
        try:
            checked = measure(cfg.space, shape, classes, batch, a.device, **kw)
            found["loaded, checked"] = table_figures(checked, nets, measured)
        except LatencyTableError as exc:
            found["loaded, checked"] = {"refused": str(exc)}
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--search-dir", help="a search's output folder: its records are among the networks")
    p.add_argument("--batches", default=None, help="comma-separated (default: 1 and data.batch_size)")
    p.add_argument("--networks", type=int, default=24, help="networks measured end to end (default 24)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--calibration", type=int, default=12)
    p.add_argument("--statistic", default="min", choices=["min", "median"])
    p.add_argument("--load", action="store_true",
                   help="also profile the first batch's table beside a busy process (see above)")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = (Config.from_yaml(a.config) if a.config else Config()).override(a.overrides)
    shape, classes = data_shape(cfg.data)
    batches = [int(b) for b in a.batches.split(",")] if a.batches else [1, cfg.data.batch_size]
    flops_table = CostTable.for_space(cfg.space, shape, classes)
    nets = networks(cfg, shape, classes, a.networks, a.search_dir)
    calibration = spread_architectures(cfg.space, shape, classes, a.calibration, seed=12345)
    out = {"device": None, "batches": {}}
    for batch in batches:
        started = time.time()
        genos = [g for _, g in nets]
        # the networks timed once before the table and once after: how far the machine itself
        # moves between two measurements is the floor under any prediction's error
        before = measure_networks(genos, batch, a.device, warmup=a.warmup, repeats=a.repeats, statistic=a.statistic)
        # unchecked: a benchmark prints its figures (the checks' among them) whatever they show
        table = measure(cfg.space, shape, classes, batch, a.device, warmup=a.warmup, repeats=a.repeats,
                        calibration=calibration, statistic=a.statistic, check=False)
        out["device"] = table.device
        rows = []
        timed = measure_networks(genos, batch, a.device, warmup=a.warmup, repeats=a.repeats, statistic=a.statistic)
        for (name, geno), (measured, spread) in zip(nets, timed):
            rows.append({"network": name, "flops": flops_table.flops(geno), "measured_ms": measured,
                         "spread_ms": spread, "predicted_ms": table.latency_ms(geno),
                         "parts_sum_ms": table.parts_sum_ms(geno)})
        m = [r["measured_ms"] for r in rows]
        summary = {
            "spearman": spearman([r["predicted_ms"] for r in rows], m),
            "median_error_pct": median_error([r["predicted_ms"] for r in rows], m),
            "spearman_parts_only": spearman([r["parts_sum_ms"] for r in rows], m),
            "median_error_pct_parts_only": median_error([r["parts_sum_ms"] for r in rows], m),
            "spearman_flops": spearman([r["flops"] for r in rows], m),
            "repeat_error_pct": median_error([b for b, _ in before], m),
            "measured_range_ms": [min(m), max(m)], "table_seconds": table.measured["seconds"],
            "correction": table.correction, "seconds": round(time.time() - started, 1),
        }
        out["batches"][str(batch)] = {"summary": summary, "rows": rows}
        if a.load and batch == batches[0]:
            out["load"] = {"batch": batch, "quiet": table_figures(table, nets, m)}
            out["load"].update(under_load(cfg, shape, classes, batch, a, calibration, nets, m))
    d = out["device"]
    print(f"{d['name']} ({d['type']}), torch {d['torch']}, {d['threads']} thread(s), {d['dtype']}; "
          f"{len(nets)} networks, {a.statistic} of {a.repeats} passes")
    print(f"{'batch':>6} {'measured ms':>16} {'Spearman':>9} {'median err':>11} {'parts only':>19} "
          f"{'FLOPs Spearman':>15} {'remeasured':>11} {'table s':>8}")
    for batch, r in out["batches"].items():
        s = r["summary"]
        lo, hi = s["measured_range_ms"]
        print(f"{batch:>6} {lo:>7.2f} - {hi:>6.2f} {s['spearman']:>9.3f} {s['median_error_pct']:>10.1f}% "
              f"{s['spearman_parts_only']:>9.3f} / {s['median_error_pct_parts_only']:>6.1f}% "
              f"{s['spearman_flops']:>15.3f} {s['repeat_error_pct']:>10.1f}% {s['table_seconds']:>8.1f}")
    if "load" in out:
        print(f"batch {out['load']['batch']}, against the quiet measurements: a table profiled quietly, and beside "
              f"a busy process on the same core before and after the checks")
        print(f"{'table':>18} {'Spearman':>9} {'median err':>11} {'scale':>7} {'worst ratio':>12} "
              f"{'parts over':>11} {'max resid':>10} {'profiles':>9} {'s':>6}")
        for name, f in out["load"].items():
            if name == "batch":
                continue
            if "refused" in f:
                print(f"{name:>18} refused: {f['refused']}")
                continue
            print(f"{name:>18} {f['spearman']:>9.3f} {f['median_error_pct']:>10.1f}% {f['scale']:>7.3f} "
                  f"{f['worst_same_op_ratio']:>11.1f}x {f['disagreeing']:>11} {f['max_residual_pct'] or 0:>9.1f}% "
                  f"{f['profiles']:>9} {f['seconds']:>6.1f}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

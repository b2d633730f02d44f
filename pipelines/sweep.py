"""Run a sweep of searches: every combination of the --grid values, for every seed, is one search.

    python pipelines/sweep.py --out runs/sw --grid search.lambda0=0.001,0.002,0.004 --seeds 0,1,2
    python pipelines/sweep.py --out runs/sw --grid search.lambda0=0.001,0.002 --grid search.c0=1.5,2 \\
        --seeds 0,1 --smoke-test
    ray job submit --working-dir . -- python pipelines/sweep.py --out /shared/runs/sw \\
        --grid search.lambda0=0.001,0.002 --seeds 0,1,2 --workers-per-search 2 --mlflow-uri http://mlflow:5000
    python pipelines/sweep.py --resume --out runs/sw       # finished searches kept, the rest continued
    python pipelines/sweep.py --resume --out runs/sw --grid search.lambda0=0.001,0.002   # or started
    python pipelines/retrain.py --search-dir runs/sw       # retrain every search's records
    python pipelines/compare.py runs/sw                    # every search's records on one chart

Each search is the one pipelines/search.py runs (its folder <out>/p<point>-s<seed> holds
records.json, genotypes/, history.parquet, checkpoints/), as many at once as the cluster
holds. Writes sweep.json, sweep_points.csv, sweep_searches.csv, sweep.png and union.json
under --out; with MLflow, a parent run with one child run per search.

--resume on a folder with no sweep in it yet (missing, empty, or left by a start stopped before
sweep.json) starts one from the flags and says so in its first line; on a sweep it continues it,
taking --grid, --seeds, --config, --set and --smoke-test only when they plan the same searches.
So the same command is a job's first try and every retry.
"""
from __future__ import annotations

import argparse
import sys

from goldnas_ray import cli
from goldnas_ray.cli.outputs import output_folder
from goldnas_ray.cli.process import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="output folder; must not exist or be empty unless --resume "
                                               "(default: runs/sweep-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the sweep stored in --out (none there yet: start it)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a config key and its values, e.g. search.lambda0=0.001,0.002 (repeatable: "
                        "the sweep runs every combination)")
    # the flags a continued sweep checks against its plan default to None (not given); the
    # drivers' own defaults apply then, as the help says
    p.add_argument("--seeds", default=None, help="seeds of every grid point, e.g. 0,1,2 (default 0)")
    cli.add_common_flags(p)
    p.add_argument("--workers-per-search", type=int, default=None, metavar="N",
                   help="Ray Train workers (DDP ranks) of each search (default 1: the search runs in "
                        "its Tune trial's process)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retries of a search that fails with an error other than its input's (default 2)")
    p.add_argument("--experiment", default=None, help="MLflow experiment name (default goldnas-sweep)")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs per search worker (default 1); a worker of k CPUs runs k torch threads")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per search worker; > 0 trains on CUDA (default 0: CPU)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        out = output_folder(args.out, args.resume, "sweep")
        cli.run_sweep_on_ray(out, args)

    return run_main(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())

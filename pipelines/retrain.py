"""Retrain a search's architectures from scratch on Ray Tune and report the accuracy/FLOPs front.

    python pipelines/retrain.py --search-dir runs/search-X                 # every recorded architecture
    python pipelines/retrain.py --search-dir runs/search-X --random 4 --seeds 2
    python pipelines/retrain.py --search-run <mlflow run id> --mlflow-uri http://mlflow:5000
    python pipelines/retrain.py --search-dir runs/search-X --smoke-test    # about a minute
    python pipelines/retrain.py --search-dir runs/search-X --quick         # inherited weights, a tenth of the epochs
    python pipelines/retrain.py --resume --out runs/retrain-Y              # continue an interrupted one
    python pipelines/retrain.py --resume --out runs/r1 --search-dir runs/s1  # continue runs/r1, or start it
    python pipelines/retrain.py --search-dir runs/sweep-Z --union-front    # a sweep's records, once each
    ray job submit --working-dir . -- python pipelines/retrain.py --search-dir /shared/runs/s1 \\
        --cpus-per-trial 4 --gpus-per-trial 0.5

--resume on a folder with no retrain in it yet (missing, empty, or left by a start stopped
before Tune saved its experiment) starts one from --search-dir or --search-run and says so in
its first line: the same command is a job's first try and every retry.

One Ray Tune trial per (architecture, seed), as many at once as the cluster holds. Writes
frontier.parquet, frontier.csv, frontier.png, trials.parquet and retrain.json under --out.
"""
from __future__ import annotations

import argparse
import sys

from goldnas_ray import cli
from goldnas_ray.cli.outputs import output_folder, resumes
from goldnas_ray.cli.process import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--search-dir", help="output folder of a search (records.json, genotypes/)")
    p.add_argument("--search-run", help="MLflow run id of a search: its artifacts are read instead")
    p.add_argument("--out", help="output folder; must not exist or be empty unless "
                                            "--resume (default: runs/retrain-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the retrain stored in --out (none there yet: start it)")
    p.add_argument("--union-front", action="store_true",
                   help="--search-dir is a sweep: train every distinct architecture its searches recorded "
                        "once (default: every search's records, each its own)")
    p.add_argument("--quick", action="store_true",
                   help="a quick front: each searched network fine-tuned from its inherited weights for a tenth "
                        "of the epochs (retrain.quick); no random networks")
    cli.add_common_flags(p)
    cli.add_retrain_flags(p)
    cli.add_worker_flags(p)
    args = p.parse_args(argv)
    if args.quick:
        args.overrides.append("retrain.quick=true")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        out = output_folder(args.out, args.resume, "retrain")
        # no retrain there yet: a new one, from --search-dir / --search-run and the other flags
        resume = args.resume and resumes(out, "retrain", needs=None if args.search_dir or args.search_run
                                         else "--search-dir or --search-run")
        cli.run_retrain_on_ray(out, args, search_dir=args.search_dir, search_run=args.search_run,
                               config_file=args.config, resume=resume)

    return run_main(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())

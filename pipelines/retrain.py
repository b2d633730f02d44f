"""Retrain a search's architectures from scratch on Ray Tune and report the accuracy/FLOPs front.

    python pipelines/retrain.py --search-dir runs/search-X                 # every recorded architecture
    python pipelines/retrain.py --search-dir runs/search-X --random 4 --seeds 2
    python pipelines/retrain.py --search-run <mlflow run id> --mlflow-uri http://mlflow:5000
    python pipelines/retrain.py --search-dir runs/search-X --smoke-test    # about a minute
    python pipelines/retrain.py --resume --out runs/retrain-Y              # continue an interrupted one
    ray job submit --working-dir . -- python pipelines/retrain.py --search-dir /shared/runs/s1 \\
        --cpus-per-trial 4 --gpus-per-trial 0.5

One Ray Tune trial per (architecture, seed), as many at once as the cluster holds. Writes
frontier.parquet, frontier.csv, frontier.png, trials.parquet and retrain.json under --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from goldnas_ray.cli import output_folder, run_main  # noqa: E402

SMOKE = ["retrain.epochs=2", "retrain.batch_size=128"]


def add_retrain_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared with pipelines/pipeline.py."""
    p.add_argument("--epochs", type=int, help="epochs per trial (config: retrain.epochs)")
    p.add_argument("--seeds", type=int, help="trials per architecture, seeds seed..seed+K-1 "
                                             "(config: retrain.seeds)")
    p.add_argument("--random", type=int, default=0, metavar="K",
                   help="also train K random architectures of the same space, FLOPs matched to "
                        "the searched ones (kind=random)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial, fractions allowed (0.5: two trials share a GPU)")
    p.add_argument("--max-trial-failures", type=int, default=2,
                   help="retries of a failed trial, from its last checkpoint (default 2)")
    p.add_argument("--retrain-experiment", default="goldnas-retrain",
                   help="MLflow experiment of the retrain runs (default goldnas-retrain)")


def retrain_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(SMOKE) if args.smoke_test else []
    overrides += args.overrides
    if args.epochs is not None:
        overrides.append(f"retrain.epochs={args.epochs}")
    if args.seeds is not None:
        overrides.append(f"retrain.seeds={args.seeds}")
    return overrides


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--search-dir", type=Path, help="output folder of a search (frontier.json, genotypes/)")
    p.add_argument("--search-run", help="MLflow run id of a search: its artifacts are read instead")
    p.add_argument("--out", type=Path, help="output folder; must not exist or be empty unless "
                                            "--resume (default: runs/retrain-<date>-<time>)")
    p.add_argument("--config", type=Path, help="YAML whose fields replace the search's (retrain, data, seed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. retrain.drop_path=0.1 (repeatable)")
    p.add_argument("--smoke-test", action="store_true", help="2 epochs per trial: about a minute")
    p.add_argument("--resume", action="store_true", help="continue the retrain stored in --out")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the "
                                        "search's, else sqlite:///<out>/mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true", help="do not track the retrain in MLflow")
    add_retrain_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        from goldnas_ray.tune_driver import run_retrain

        run_retrain(output_folder(args.out, args.resume, "retrain"), search_dir=args.search_dir,
                    search_run=args.search_run, config_file=args.config,
                    overrides=retrain_overrides(args), random_k=args.random,
                    cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                    max_failures=args.max_trial_failures, mlflow_uri=args.mlflow_uri,
                    experiment=args.retrain_experiment, tracking=not args.no_mlflow, resume=args.resume)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())

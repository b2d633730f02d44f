"""Run a GOLD-NAS search.

    python pipelines/search.py                         # Ray Train (local Ray, or RAY_ADDRESS)
    ray job submit --working-dir . -- python pipelines/search.py --workers 2
    python pipelines/search.py --local                 # in this process, no Ray
    python pipelines/search.py --local --smoke-test    # a run of seconds
    python pipelines/search.py --local --config cfg.yaml --set search.lambda0=0.02

Writes frontier.json, genotypes/, history.parquet and checkpoints/ under --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from goldnas_ray.cli import output_folder, run_main  # noqa: E402
from goldnas_ray.config import Config  # noqa: E402

SMOKE = ["space.num_cells=3", "space.init_channels=4", "search.max_epochs=3",
         "search.lambda0=1.0", "search.xi_max=0.2", "search.t0=0", "data.batch_size=128"]


def add_search_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared with pipelines/pipeline.py."""
    p.add_argument("--config", type=Path, help="YAML file with space/data/search/retrain sections")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. search.lambda0=0.02 (repeatable)")
    p.add_argument("--seed", type=int, help="random seed (config: seed)")
    p.add_argument("--max-epochs", type=int, help="stop after this many epochs (config: search.max_epochs)")
    p.add_argument("--smoke-test", action="store_true", help="a tiny search that runs in seconds")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP ranks)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="GPUs per worker; > 0 trains on CUDA with NCCL (default 0: CPU, gloo)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="worker-group restarts Ray Train may make after a failure (default 2)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                                        "else sqlite:///<out>/mlflow.db)")
    p.add_argument("--experiment", default="goldnas-search", help="MLflow experiment name")
    p.add_argument("--no-mlflow", action="store_true", help="do not track the run in MLflow")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="output folder; must not exist or be empty unless --resume "
                        "(default: runs/search-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the search stored in --out")
    p.add_argument("--local", action="store_true", help="run in this process, without Ray")
    add_search_flags(p)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    cfg = Config.from_yaml(args.config) if args.config else Config()
    overrides = list(SMOKE) if args.smoke_test else []
    overrides += args.overrides
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.max_epochs is not None:
        overrides.append(f"search.max_epochs={args.max_epochs}")
    return cfg.override(overrides).validate()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        out = output_folder(args.out, args.resume, "search")
        cfg = None if args.resume else build_config(args)
        if args.local:
            from goldnas_ray.runner import run_local

            run_local(cfg, out, resume=args.resume, mlflow_uri=args.mlflow_uri,
                      experiment=args.experiment, tracking=not args.no_mlflow)
        else:
            from goldnas_ray.ray_driver import run_ray

            run_ray(cfg, out, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                    gpus_per_worker=args.gpus_per_worker, resume=args.resume,
                    mlflow_uri=args.mlflow_uri, experiment=args.experiment,
                    max_failures=args.max_failures, tracking=not args.no_mlflow)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())

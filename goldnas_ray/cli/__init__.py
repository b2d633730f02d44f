"""What the pipeline scripts share: the flags and their presets, and the thin glue from the
flags to the layers (a search, a retrain, a sweep run on Ray or in this process). The package's
modules: :mod:`goldnas_ray.cli.outputs`, the default output folder and what ``--resume`` does
with it; :mod:`goldnas_ray.cli.process`, the error convention, the stops and the process-wide
settings of a pipeline's process and of its Ray job's processes (``run_main``).

The cli package is the only place of the package that sets process-wide state (environment
variables, logger levels, signal handlers; ``cli.process``): everything below ``cli`` leaves
the process as it found it (tests/test_side_effects.py checks it).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from goldnas_ray.cli.outputs import resumes
from goldnas_ray.cli.process import ray_runtime_env
from goldnas_ray.core.config import Config
from goldnas_ray.files.store import Location, location


# ---- flags the pipelines share -------------------------------------------------------------
# n0 operators pruned every epoch whatever the float trajectory (xi_max 0.5: the weakest of a
# node's k >= 2 operators weighs at most 1/k), and a record before every pruning that lowers
# the FLOPs (the dense rule with a 2% gap): a smoke run of E epochs records up to E + 1
# architectures, the last one always. The stop is the ratio's: a preset's absolute FLOPs are
# for its full-size space
SEARCH_SMOKE = ["space.num_cells=3", "space.init_channels=4", "search.max_epochs=3",
                "search.lambda0=1.0", "search.xi_max=0.5", "search.t0=0", "data.batch_size=128",
                "search.record_gap=0.02", "search.record_min_gap=0.0", "search.flops_min=null",
                "retrain.latency_repeats=3"]
# a smoke retrain times each network 3 times, not 10 (its figures check the set-up, not a CPU);
# the search's preset says so too, for the retrain of a smoke search
RETRAIN_SMOKE = ["retrain.epochs=2", "retrain.batch_size=128", "retrain.latency_repeats=3"]


def add_common_flags(p: argparse.ArgumentParser) -> None:
    """Config, Ray address, MLflow and console flags of every pipeline."""
    p.add_argument("--config", help="YAML file with space/data/search/retrain sections (a path or a storage "
                                    "URI, s3://...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. search.lambda0=0.02 (repeatable)")
    p.add_argument("--smoke-test", action="store_true", help="a tiny run of seconds to minutes")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, which `ray job "
                                     "submit` sets; without either, an embedded local Ray starts)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                                        "else sqlite:///<out>/mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true", help="do not track the run in MLflow")
    p.add_argument("--verbose", action="store_true", help="show Ray's own per-epoch messages too")
    from goldnas_ray.orchestration.placement import PLACEMENT_TIMEOUT

    p.add_argument("--placement-timeout", type=_seconds, default=PLACEMENT_TIMEOUT, metavar="SECONDS",
                   help="how long a run waits for the cluster to place its first search's (trial's) workers, "
                        f"an autoscaler adding nodes for them, before it gives up (default {PLACEMENT_TIMEOUT:g})")


def _seconds(text: str) -> float:
    """A number of seconds above 0 (argparse names the flag when this raises)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text} must be above 0 seconds")
    return value


def add_search_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, help="random seed (config: seed)")
    p.add_argument("--max-epochs", type=int, help="stop after this many epochs (config: search.max_epochs)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP ranks)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="worker-group restarts Ray Train may make after a failure (default 2)")
    p.add_argument("--experiment", default="goldnas-search", help="MLflow experiment name")


def add_worker_flags(p: argparse.ArgumentParser) -> None:
    """What one Ray Train worker holds: a search's workers, and a retrain's with
    --workers-per-trial above 1."""
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs per Ray Train worker (search default: all CPUs of an embedded local Ray, "
                        "shared by the workers, 1 each on a joined cluster; retrain default: 1); a worker "
                        "of k CPUs runs k torch threads")
    p.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="GPUs per Ray Train worker; > 0 trains on CUDA with NCCL (default 0: CPU, gloo)")


def add_retrain_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, help="epochs per trial (config: retrain.epochs)")
    p.add_argument("--seeds", type=int, help="trials per architecture, seeds seed..seed+K-1 "
                                             "(config: retrain.seeds)")
    p.add_argument("--random", type=int, default=0, metavar="K",
                   help="also train K random architectures of the same space, FLOPs matched to "
                        "the searched ones (kind=random)")
    p.add_argument("--workers-per-trial", type=int, default=1, metavar="N",
                   help="N > 1: each trial is a Ray Train run of N workers (DDP; --cpus-per-worker and "
                        "--gpus-per-worker each); 1 (default): the trial trains in its own process "
                        "(--cpus-per-trial, --gpus-per-trial)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs of a one-worker trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs of a one-worker trial, fractions allowed (0.5: two trials share a GPU)")
    p.add_argument("--max-trial-failures", type=int, default=2,
                   help="how many times Ray Tune retries a failed trial, from its last checkpoint (default 2: "
                        "at most 3 attempts). One failure: any error that ends an attempt, whether its "
                        "process or any worker of its --workers-per-trial run dies or training raises; a "
                        "multi-worker trial's Ray Train run does not restart its workers itself")
    p.add_argument("--retrain-experiment", default="goldnas-retrain",
                   help="MLflow experiment of the retrain runs (default goldnas-retrain)")
    p.add_argument("--register-as", metavar="NAME", help="MLflow registered model of the retrained front "
                                                         "(config: retrain.register_as; default goldnas-DATASET)")


def _overrides(args: argparse.Namespace, smoke: list[str], flags: dict[str, str]) -> list[str]:
    """--smoke-test's settings, then --set, then each flag of ``flags`` (flag -> config key)
    that was given."""
    found = list(smoke) if args.smoke_test else []
    found += args.overrides
    found += [f"{key}={getattr(args, flag)}" for flag, key in flags.items() if getattr(args, flag) is not None]
    return found


def search_config(args: argparse.Namespace) -> Config:
    """The config of a new search: --config, then --smoke-test, --set, --seed, --max-epochs."""
    cfg = Config.from_yaml(location(args.config)) if args.config else Config()
    return cfg.override(_overrides(args, SEARCH_SMOKE, {"seed": "seed", "max_epochs": "search.max_epochs"}))


def retrain_overrides(args: argparse.Namespace) -> list[str]:
    """The retrain's config changes: --smoke-test, --set, --epochs, --seeds, --register-as."""
    return _overrides(args, RETRAIN_SMOKE, {"epochs": "retrain.epochs", "seeds": "retrain.seeds",
                                            "register_as": "retrain.register_as"})


# ---- the pipelines' bodies -------------------------------------------------------------------
def runtime_env(args: argparse.Namespace) -> dict[str, Any]:
    """The runtime_env of ``args``' Ray job: embedded unless --address or RAY_ADDRESS."""
    return ray_runtime_env(args.verbose, embedded=not (args.address or os.environ.get("RAY_ADDRESS")),
                           placement_timeout=args.placement_timeout)


def run_search_locally(cfg: Config | None, out: Location, args: argparse.Namespace, resume: bool = False) -> None:
    from goldnas_ray.run.loop import run_local
    from goldnas_ray.tracking.common import check_uri, resolve_uri
    from goldnas_ray.tracking.search import search_tracker

    tracker = None
    if not args.no_mlflow:
        uri = resolve_uri(out, args.mlflow_uri)
        check_uri(uri)
        tracker = search_tracker(uri, args.experiment, out, workers=1)
    run_local(cfg, out, resume=resume, tracker=tracker)


def run_search_on_ray(cfg: Config | None, out: Location, args: argparse.Namespace, resume: bool = False) -> None:
    """A search on Ray Train: new from ``cfg``, or with ``resume`` the one in ``out``
    (:func:`resumes` decides)."""
    from goldnas_ray.orchestration.search_driver import run_ray

    run_ray(cfg, out, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
            gpus_per_worker=args.gpus_per_worker, resume=resume, mlflow_uri=args.mlflow_uri,
            experiment=args.experiment, max_failures=args.max_failures, tracking=not args.no_mlflow,
            address=args.address, verbose=args.verbose, runtime_env=runtime_env(args),
            placement_timeout=args.placement_timeout)


def trial_request(args: argparse.Namespace):
    """What each retrain trial holds: --cpus/gpus-per-trial for one worker, N workers of
    --cpus/gpus-per-worker (1 CPU, 0 GPU by default) with --workers-per-trial N."""
    from goldnas_ray.retrain.plan import Resources

    if args.workers_per_trial > 1:
        cpus = args.cpus_per_worker if args.cpus_per_worker is not None else 1.0
        return Resources(args.workers_per_trial, cpus, args.gpus_per_worker)
    return Resources(1, args.cpus_per_trial, args.gpus_per_trial)


def run_retrain_on_ray(out: Location, args: argparse.Namespace, *, search_dir: "str | Location | None" = None,
                       search_run: str | None = None, config_file: "str | Path | None" = None,
                       resume: bool = False) -> None:
    from goldnas_ray.orchestration.retrain_driver import run_retrain

    run_retrain(out, search_dir=search_dir, search_run=search_run,
                config_file=location(config_file) if config_file is not None else None,  # through storage
                overrides=[] if resume else retrain_overrides(args), random_k=args.random,
                trial=trial_request(args), max_failures=args.max_trial_failures, mlflow_uri=args.mlflow_uri,
                experiment=args.retrain_experiment, tracking=not args.no_mlflow, resume=resume,
                address=args.address, runtime_env=runtime_env(args),
                union_front=getattr(args, "union_front", False), placement_timeout=args.placement_timeout)


def run_sweep_on_ray(out: Location, args: argparse.Namespace) -> None:
    """A sweep (pipelines/sweep.py): new from --config, --smoke-test, --set, --grid, --seeds, or
    continued with --resume (as it was planned: its grid, seeds, resources and MLflow store;
    --resume on a folder with no sweep yet starts one, :func:`resumes`). A continued sweep takes
    the flags that plan it only when they plan the same searches, so the first try's command
    serves every retry. A sweep that ends with failed searches is an error (status 2)."""
    from goldnas_ray.orchestration.sweep_driver import run_sweep
    from goldnas_ray.sweep.plan import check_finished, check_same_plan, not_as_planned, parse_grid, parse_seeds

    if args.resume and resumes(out, "sweep"):
        check_same_plan(out, args, sweep_base)
        other = not_as_planned(out, args)
        if other:
            print(f"--resume: the sweep keeps the resources per search and MLflow store it was planned "
                  f"with; not used: {', '.join(other)}")
        sweep = run_sweep(out, resume=True, address=args.address, runtime_env=runtime_env(args),
                          max_failures=args.max_failures, verbose=args.verbose,
                          placement_timeout=args.placement_timeout)
    else:
        given = {"workers": args.workers_per_search, "gpus_per_worker": args.gpus_per_worker,
                 "experiment": args.experiment}  # not given (None): run_sweep's defaults
        sweep = run_sweep(out, base=sweep_base(args), grid=parse_grid(args.grid), seeds=parse_seeds(args.seeds),
                          cpus_per_worker=args.cpus_per_worker, mlflow_uri=args.mlflow_uri,
                          tracking=not args.no_mlflow, max_failures=args.max_failures,
                          address=args.address, runtime_env=runtime_env(args), verbose=args.verbose,
                          placement_timeout=args.placement_timeout,
                          **{k: v for k, v in given.items() if v is not None})
    check_finished(sweep, out)


def sweep_base(args: argparse.Namespace) -> Config:
    """The config every search of a new sweep starts from: --config, --smoke-test, --set."""
    base = Config.from_yaml(location(args.config)) if args.config else Config()
    return base.override(_overrides(args, SEARCH_SMOKE, {}))

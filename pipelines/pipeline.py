"""Search, then retrain every recorded architecture: one job from supernet to frontier.

    python pipelines/pipeline.py --out runs/p1                    # digits, local Ray
    python pipelines/pipeline.py --out runs/p1 --random 4 --seeds 2
    python pipelines/pipeline.py --out runs/p1 --smoke-test       # about two minutes
    ray job submit --working-dir . -- python pipelines/pipeline.py --out /shared/runs/p1 \\
        --workers 4 --gpus-per-worker 1 --gpus-per-trial 0.5 --mlflow-uri http://mlflow:5000
    python pipelines/pipeline.py --resume --out runs/p1           # continue where it stopped

Writes <out>/search (the search's files) and <out>/retrain (the frontier report). Both
stages track into the same MLflow store; the retrain's parent run carries the search run's
id as the tag goldnas.search_run_id.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import retrain as retrain_cli  # noqa: E402
import search as search_cli  # noqa: E402

from goldnas_ray.artifacts import CHECKPOINT, OutputDirError, check_new_out_dir  # noqa: E402
from goldnas_ray.cli import output_folder, run_main  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="output folder, holding search/ and retrain/; must not "
                                            "exist or be empty unless --resume "
                                            "(default: runs/pipeline-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the pipeline stored in --out")
    search_cli.add_search_flags(p)
    retrain_cli.add_retrain_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        from goldnas_ray.ray_driver import run_ray
        from goldnas_ray.tune_driver import run_retrain

        out = output_folder(args.out, args.resume, "pipeline").resolve()
        search_out, retrain_out = out / "search", out / "retrain"
        if args.resume:
            if not (search_out / CHECKPOINT).is_file():
                raise OutputDirError(f"--resume: {out} is not a pipeline output folder (no "
                                     f"search/{CHECKPOINT} inside)")
            cfg = None
        else:
            check_new_out_dir(out, "pipeline")
            cfg = search_cli.build_config(args)
            # the retrain recipe travels inside the search's config: fail on it now, not after
            # the search
            cfg.override(retrain_cli.retrain_overrides(args)).validate()
        run_ray(cfg, search_out, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                gpus_per_worker=args.gpus_per_worker, resume=args.resume, mlflow_uri=args.mlflow_uri,
                experiment=args.experiment, max_failures=args.max_failures, tracking=not args.no_mlflow)
        resume_retrain = args.resume and (retrain_out / "retrain.json").is_file()
        run_retrain(retrain_out, search_dir=None if resume_retrain else search_out,
                    overrides=[] if resume_retrain else retrain_cli.retrain_overrides(args),
                    random_k=args.random, cpus_per_trial=args.cpus_per_trial,
                    gpus_per_trial=args.gpus_per_trial, max_failures=args.max_trial_failures,
                    mlflow_uri=args.mlflow_uri, experiment=args.retrain_experiment,
                    tracking=not args.no_mlflow, resume=resume_retrain)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())

"""Search, then retrain every recorded architecture: one job from supernet to report.

    python pipelines/pipeline.py --out runs/p1                    # digits, embedded local Ray
    python pipelines/pipeline.py --out runs/p1 --random 4 --seeds 2
    python pipelines/pipeline.py --out runs/p1 --smoke-test       # about two minutes
    ray job submit --working-dir . -- python pipelines/pipeline.py --out /shared/runs/p1 \\
        --workers 4 --gpus-per-worker 1 --gpus-per-trial 0.5 --mlflow-uri http://mlflow:5000
    python pipelines/pipeline.py --resume --out runs/p1           # continue where it stopped (or start)

Writes <out>/search (the search's files) and <out>/retrain (the report). Both stages track
into the same MLflow store; the retrain's parent run carries the search run's id as the tag
goldnas.search_run_id.

--resume continues the search where it stopped, then the retrain (started when retrain/ holds
none yet); on a folder with no pipeline in it yet (missing, empty, or left by a start stopped
before the search's first checkpoint) it starts one from the flags and says so in its first
line. So the same command is a job's first try and every retry (cluster/kuberay/rayjob.yaml).
"""
from __future__ import annotations

import argparse
import sys

from goldnas_ray import cli
from goldnas_ray.cli.outputs import output_folder, resumes
from goldnas_ray.cli.process import run_main
from goldnas_ray.files.search_files import CHECKPOINT, OutputDirError, check_new_out_dir, left_by_a_probe
from goldnas_ray.files.store import Location
from goldnas_ray.run.ending import RunStopped


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="output folder, holding search/ and retrain/; must not "
                                            "exist or be empty unless --resume "
                                            "(default: runs/pipeline-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the pipeline stored in --out (none there yet: start it)")
    cli.add_common_flags(p)
    cli.add_search_flags(p)
    cli.add_retrain_flags(p)
    cli.add_worker_flags(p)  # the search's workers, and the retrain's with --workers-per-trial
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        out = output_folder(args.out, args.resume, "pipeline")
        search_out, retrain_out = out / "search", out / "retrain"
        resume = args.resume and resume_search(out)
        if not args.resume:
            check_new_out_dir(out, "pipeline")
        cfg = None
        if not resume:
            cfg = cli.search_config(args)
            # the retrain recipe travels inside the search's config: fail on it now, not after
            # the search
            cfg = cfg.override(cli.retrain_overrides(args))
        try:
            cli.run_search_on_ray(cfg, search_out, args, resume)
            # the retrain: continued, or (none in retrain/ yet) started from the finished search
            resume_retrain = resume and resumes(retrain_out, "retrain")
            cli.run_retrain_on_ray(retrain_out, args, search_dir=None if resume_retrain else search_out,
                                   resume=resume_retrain)
        except RunStopped as exc:  # either stage: the pipeline resumes as a whole
            exc.out = out
            raise

    return run_main(body, args.verbose)


def resume_search(out: Location) -> bool:
    """--resume: whether the pipeline in ``out`` has a search to continue (its retrain then
    continues or starts when the search is done), or holds none yet (missing, empty, or left by
    a start stopped before the search's first checkpoint): a new pipeline, said in the first
    line (cli.outputs.resumes). A storage probe's object a killed driver left in ``out`` is removed."""
    names = out.names()
    foreign = [name for name in names if name not in ("search", "retrain") and not left_by_a_probe(name)]
    if foreign:
        raise OutputDirError(f"--resume: {out} is not a pipeline output folder (it holds {', '.join(foreign)}; "
                             f"a pipeline's holds search/ and retrain/)")
    if not (out / "search" / str(CHECKPOINT)).is_file() and (out / "retrain").names():
        raise OutputDirError(f"--resume: {out} holds a retrain/ but no search to continue (no search/{CHECKPOINT})")
    for name in names:
        if left_by_a_probe(name):
            (out / name).delete()
    return resumes(out / "search", "search", starting=f"pipeline in {out}")


if __name__ == "__main__":
    sys.exit(main())

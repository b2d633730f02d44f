"""Where a pipeline's run writes and what ``--resume`` does with it: :func:`output_folder` (the
folder given, or a new dated one; a storage location probed), :func:`resumes` (continue the run
there, or start one where there is none yet), and the end of the stop line that names the
command continuing a run (:func:`resume_line`, :func:`resume_with`).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from goldnas_ray.files.search_files import (OutputDirError, is_mlflow_store, left_by_a_probe, read_records,
                                            records_path)
from goldnas_ray.files.store import Location, location, working_copy_note
from goldnas_ray.orchestration.errors import USER_ERRORS


def output_folder(out: str | Path | None, resume: bool, stage: str) -> Location:
    """Where a run writes: ``out`` (a path or a storage URI), or ``<root>/<stage>-<date>-<time>``
    for a new run, with root GOLDNAS_RUNS when set, else ``runs``. A relative path is taken
    against GOLDNAS_RUNS when set. Inside a ``ray job submit --working-dir`` job a relative
    path without GOLDNAS_RUNS is refused: the job runs in a temporary copy of the working
    directory, deleted with the job. A storage location is probed (a small object written
    and deleted) so that a missing bucket or missing rights fail now. The folder is kept for
    ``cli.process.run_main``'s stop line (a stop before the run's work began names how to
    resume)."""
    root = os.environ.get("GOLDNAS_RUNS")
    if out is None:
        if resume:
            raise OutputDirError(f"--resume needs --out, the folder of the {stage} to continue")
        out = time.strftime(f"{stage}-%Y%m%d-%H%M%S") if root else Path("runs") / time.strftime(
            f"{stage}-%Y%m%d-%H%M%S")
    relative = "://" not in str(out) and not Path(out).is_absolute()
    if relative and root:
        where = location(root) / str(out)
    elif relative and working_copy_note():
        raise OutputDirError(
            f"--out {out} is relative, and this job runs in a temporary copy of its working "
            f"directory ({working_copy_note()}), deleted when the job ends: give an absolute path "
            f"on storage every node shares, a storage URI (s3://...), or set GOLDNAS_RUNS to a "
            f"root for relative names")
    else:
        where = location(out)
    where.probe()
    _FOLDER.update(out=where, stage=stage)
    return where


# ---- --resume on a folder that holds no run yet ----------------------------------------------
# What each stage writes in its folder before it has anything to continue from (its marker:
# ``_holds_run``), by top-level name: a start stopped there (a killed driver, a lost head node)
# leaves these, and they carry no results, so --resume removes them and starts the run anew. An
# MLflow sqlite store beside them (mlflow.db*, mlartifacts/) is kept: the stopped start's run
# stays in it, the new run is added (files.search_files.check_new_out_dir lets a new run in). A
# storage probe's object that a driver killed inside output_folder's probe left
# (files.search_files.left_by_a_probe) is a leftover of any stage's start.
_BUFFER = (".mlflow-buffer", ".mlflow-buffer.failed.jsonl")
STARTS_LEAVE = {
    # Ray Train's folder and the workers' notes, the first epoch's files written before the
    # checkpoint that makes a search resumable (records.json unfinished, genotypes, ...)
    "search": {"ray", ".workers", "records.json", "genotypes", "config.yaml", "history.parquet", "plots",
               "latency.json", "checkpoints", *_BUFFER},
    # the genotypes and the copy of a search in a bucket written before retrain.json; and
    # retrain.json itself, Tune's folder and the trials' notes while Tune has saved no
    # experiment to continue and no trial finished
    "retrain": {"genotypes", "search", "retrain.json", "ray", ".trials", *_BUFFER},
    "sweep": set(_BUFFER),  # its MLflow runs are made before sweep.json
}
MARKERS = {"search": "checkpoints/latest.pt", "retrain": "retrain.json", "sweep": "sweep.json"}


def resumes(out: Location, stage: str, log: Callable[[str], None] = print, starting: str | None = None,
            needs: str | None = None) -> bool:
    """What --resume does with ``out``: True to continue the ``stage`` ("search", "retrain",
    "sweep") stored there; False, having said so in a line (the run's first), to start one
    there when it holds no run yet: missing, empty, or holding only what a start stopped before
    its first checkpoint (or retrain.json, sweep.json) leaves, which is removed first. So one
    command serves a job's first try and every retry. ``starting``: what that line names (a
    pipeline's search says "pipeline in <its folder>"); ``needs``: why this command line cannot start one
    (raised before anything is removed). A folder that holds anything else is an
    OutputDirError: earlier results are never overwritten."""
    if _holds_run(out, stage):
        return True
    names = out.names()
    store = [n for n in names if is_mlflow_store(n)]
    foreign = [n for n in names if n not in STARTS_LEAVE[stage] and n not in store and not left_by_a_probe(n)]
    if foreign:
        raise OutputDirError(f"--resume: {out} is not a {stage} output folder (no {MARKERS[stage]} inside), and "
                             f"holds what no {stage} leaves there: {', '.join(foreign)}; give the folder of the "
                             f"{stage} to continue, or a new or empty one")
    if stage == "search" and records_path(out) is not None and read_records(out).get("finished"):
        # a copy made without checkpoints/, or a one-epoch search killed between its records and
        # its first checkpoint (a later epoch finds the earlier epoch's checkpoint)
        raise OutputDirError(f"--resume: {out} holds a finished search's records.json without its "
                             f"{MARKERS[stage]}: nothing to continue, and its records are not overwritten; "
                             f"use them as they are (retrain.py --search-dir), or remove records.json to run "
                             f"the search again there")
    if needs:
        raise OutputDirError(f"--resume: no {stage} in {out} yet, and starting one needs {needs}")
    left = [n for n in names if n not in store]
    for name in left:
        _remove(out / name)
    removed = f" (removed what a start stopped before its first checkpoint left in {out}: {', '.join(left)})" \
        if left else ""
    log(f"--resume: no {starting or f'{stage} in {out}'} yet; starting a new one{removed}")
    return False


def _holds_run(out: Location, stage: str) -> bool:
    """Whether ``out`` holds a ``stage`` that --resume continues: a search's checkpoint, a
    sweep's sweep.json, a retrain's retrain.json with Tune's experiment (or a finished trial:
    the driver then says what is missing)."""
    if not (out / MARKERS[stage]).is_file():
        return False
    if stage != "retrain":
        return True
    from goldnas_ray.orchestration.retrain_driver import finished_trials, tune_saved

    return tune_saved(out) or bool(finished_trials(out))


def _remove(where: Location) -> None:
    if where.local is not None:
        if where.local.is_dir():
            import shutil

            shutil.rmtree(where.local)
        else:
            where.local.unlink(missing_ok=True)
        return
    if where.is_file():
        where.delete()
    for rel in where.files():  # a prefix: every object under it
        (where / rel).delete()


# the run's folder and stage once output_folder has found them: a stop that comes before the
# run's work began (a wait for the cluster to place it) still names the command that resumes it
_FOLDER: dict[str, Any] = {}


def resume_line() -> str:
    """"; resume with: ..." when the folder :func:`output_folder` gave this process holds a run
    that ``--resume --out`` continues (a search's checkpoint, a pipeline's search, retrain.json
    with Tune's experiment, sweep.json), else nothing: a new run is started by its own command."""
    out, stage = _FOLDER.get("out"), _FOLDER.get("stage")
    if out is None:
        return ""
    try:
        held = _holds_run(out / "search", "search") if stage == "pipeline" else _holds_run(out, stage)
    except (OSError, *USER_ERRORS):  # an unreachable store: the stop line without the hint
        held = False
    return resume_with(out) if held else ""


def resume_with(out: "str | Path | Location") -> str:
    return f"; resume with: python {sys.argv[0]} --resume --out {location(out).uri}"

"""The search loop, written once for both backends.

:func:`search_loop` runs epochs until the search stops: each epoch is
``GoldSearch.run_epoch`` (train, decide on rank 0, broadcast, prune, move lambda), then rank 0
writes the output files and the checkpoint, logs to the tracker and prints the epoch line.
The in-process path (:func:`run_local`) passes the no-op communicator; the Ray Train worker
(``goldnas_ray.orchestration.search_worker``) passes a torch.distributed one and a ``report``
hook that hands the checkpoint to Ray Train. :func:`search_start` decides once, for both,
whether a search is new, resumed or already finished; :func:`load_or_create` builds it.
:func:`read_latency` reads a cost=latency search's table through the storage layer (a path or
a storage URI), once, in the process that starts a new search: the workers and a sweep's
trials get it by value, and a resumed search takes it from its checkpoint. Trackers (MLflow) are injected: nothing here imports Ray or MLflow.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from goldnas_ray.core.comm import Communicator, LocalComm
from goldnas_ray.core.config import Config, ConfigError
from goldnas_ray.core.latency import LatencyTable, LatencyTableError, parse_table
from goldnas_ray.core.search import GoldSearch
from goldnas_ray.data import Dataset
from goldnas_ray.data.batches import check_batches
from goldnas_ray.data.from_config import load_data as load_from_config
from goldnas_ray.data.from_config import train_augment
from goldnas_ray.files.search_files import (CHECKPOINT, RECORDS, check_out_dir, load_checkpoint, read_records,
                                            save_checkpoint, write_outputs)
from goldnas_ray.files.store import Location, location
from goldnas_ray.run.console import EpochProgress, describe_start, format_epoch
from goldnas_ray.run.drawing import plot_genotype
from goldnas_ray.run.ending import tracked_or_stopped
from goldnas_ray.run.plots import write_plots


class Tracker(Protocol):
    """Where a search's metrics and files go besides ``--out`` (MLflow: tracking.search)."""

    run_id: str
    uri: str

    def log_epoch(self, row: dict[str, Any]) -> None: ...

    def log_outputs(self, out: Location) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...

    def page(self) -> str: ...


# (history row, the serialised state rank 0 just wrote, None on other ranks), every epoch
Reporter = Callable[[dict[str, Any], "bytes | None"], None]

# (config, dataset name, run id to reopen or None) -> the tracker of this search
TrackerFactory = Callable[[Config, str, "str | None"], Tracker]


@dataclass
class SearchStart:
    """Where a search starts, decided once for both backends by :func:`search_start`."""

    config: Config
    resume: bool          # continue from <out>/checkpoints/latest.pt
    finished: bool        # resumed, but it had already finished: nothing to run, nothing reopened
    run_id: str | None    # the MLflow run a resumed search goes on logging into
    epochs: int           # epochs already done


def search_start(out: Location, resume: bool, cfg: Config | None) -> SearchStart:
    """A new search (``out`` new or empty: earlier results are never overwritten) from ``cfg``,
    or, with ``resume``, the search stored in ``out`` as its records.json describes it (written
    before every checkpoint, so it is there whenever the checkpoint is)."""
    check_out_dir(out, resume)
    if not resume:
        if cfg is None:
            raise ValueError("a new search needs a config")
        return SearchStart(cfg, False, False, None, 0)
    records = read_records(out)
    return SearchStart(Config.from_dict(records["config"]), True, bool(records["finished"]),
                       records.get("mlflow_run_id"), int(records["epochs"]))


def run_info(search: GoldSearch, dataset: str, workers: int) -> dict[str, Any]:
    """What records.json says about the run besides its records."""
    m = search.model
    return {
        "dataset": dataset,
        "workers": workers,
        "space_log10_size": round(m.log10_size, 2),
        "supernet_flops": m.full_flops,
        "flops_min": search.flops_min,
        "input_shape": list(search.input_shape),
        "num_classes": search.num_classes,
    }


def load_or_create(cfg: Config | None, device: torch.device | str,
                   state: dict[str, Any] | None = None,
                   data_for: Callable[[Config], Dataset] | None = None,
                   latency: LatencyTable | None = None) -> tuple[GoldSearch, Dataset]:
    """The search to run and its data: restored from ``state`` (a checkpoint: ``out``'s on
    --resume, or the one Ray Train hands a restarted worker group), else new from ``cfg``.
    ``data_for(config)`` gives the data (default: loaded into memory; a worker that streams
    passes its stream, which has the same interface). ``latency``: a new cost=latency search's
    table as the driver read it (else read here, :func:`read_latency`); a restored search's is
    in ``state``, and no file is read."""
    data_for = data_for or load_data
    if state is not None:
        search = GoldSearch.from_state_dict(state, device)
        return search, data_for(search.cfg)
    if cfg is None:
        raise ValueError("a new search needs a config")
    latency = latency if latency is not None else read_latency(cfg)
    data = data_for(cfg)
    return GoldSearch(cfg, data.input_shape, data.num_classes, device, latency), data


def read_latency(cfg: Config) -> LatencyTable | None:
    """A cost=latency search's table, read from search.latency_table (a path or a storage URI)
    through the storage layer (its checks' figures printed); None for another cost.
    LatencyTableError (a config error) when the file is missing or not a table; a store that
    keeps failing raises its StorageError."""
    if cfg.search.cost != "latency":
        return None
    where = location(cfg.search.latency_table)
    try:
        content = where.read_bytes()
    except FileNotFoundError:
        raise LatencyTableError(f"latency table {where} does not exist (make one with "
                                f"pipelines/profile_latency.py)") from None
    except OSError as exc:  # a local folder, no permission
        raise LatencyTableError(f"latency table {where} is not readable: {exc}") from None
    table = parse_table(content, str(where))
    print(f"latency table {where}: {table.describe_checks()}", flush=True)  # how far to trust it
    return table


def load_data(cfg: Config) -> Dataset:
    return load_from_config(cfg.data)


def steps_per_epoch(images: int, batch_size: int, world_size: int) -> int:
    return (images // world_size) // batch_size


def search_loop(search: GoldSearch, data: Dataset, out: Location, info: dict[str, Any], *,
                comm: Communicator | None = None, tracker: Tracker | None = None,
                log: Callable[[str], None] = print, report: Reporter | None = None,
                worker_log: Location | None = None, progress_every: float = 30.0) -> None:
    """Run epochs until the search stops. Rank 0 writes ``out`` and the tracker after every
    epoch; with ``worker_log``, it appends every rank's digest of its alive set and alphas
    (they must agree, or the run stops). ``report(row, checkpoint)`` runs on every rank after
    each epoch, with the serialised state just written on rank 0 (None on the others)."""
    comm = comm if comm is not None else LocalComm()
    cfg, lead = search.cfg, comm.rank == 0
    search.keeps_weights = lead  # rank 0 writes the inherited weights: no other rank builds them
    steps = steps_per_epoch(data.num_train, cfg.data.batch_size, comm.world_size)
    augment = train_augment(cfg.data, cfg.data.cutout)
    drawn: set[str] = set()
    while not search.finished:
        checkpoint = None
        batches = data.train_batches(cfg.data.batch_size, cfg.seed, search.epoch, comm.rank, comm.world_size,
                                     augment, search.device)
        progress = EpochProgress(search.epoch, steps, progress_every, log) if lead else None
        row = search.run_epoch(batches, comm, progress)
        digests = comm.digests(search.model)
        if lead:
            if worker_log is not None:
                worker_log.append_line(json.dumps({"epoch": search.epoch, "ranks": digests}))
            # outputs first, checkpoint last: a folder with a checkpoint always has its records
            write_outputs(out, search, info)
            draw_records(out, search, drawn)
            checkpoint = save_checkpoint(out, search.state_dict())
            if tracker is not None:
                tracker.log_epoch(row)
            log(format_epoch(row, cfg.search.max_epochs, search.model.full_flops))
        if report is not None:
            report(row, checkpoint)
    if lead:
        write_plots(out)  # an output of the search, tracked or not
        if tracker is not None:
            tracker.log_outputs(out)
            tracker.finish()


def draw_records(out: Location, search: GoldSearch, drawn: set[str]) -> None:
    """genotypes/<id>.png beside each recorded architecture's JSON (drawn once)."""
    for rec in search.records:
        if rec.id in drawn:
            continue
        png = out / (rec.genotype_path.rsplit(".", 1)[0] + ".png")
        if not png.is_file():
            plot_genotype(rec.genotype, png)
        drawn.add(rec.id)


def run_local(cfg: Config | None, out: "str | Path | Location", resume: bool = False, *,
              log: Callable[[str], None] = print, device: str = "cpu",
              tracker: TrackerFactory | None = None, report: Reporter | None = None,
              latency: LatencyTable | None = None) -> GoldSearch:
    """Run (or resume) a whole search in this process, writing the output files each epoch;
    ``report(row, checkpoint)`` after each (a sweep's Tune trial passes its progress on).
    ``latency``: a new cost=latency search's table as its caller read it (else read here)."""
    out = location(out)
    start = search_start(out, resume, cfg)
    state = load_checkpoint(out / CHECKPOINT) if start.resume else None
    if start.finished:
        log(f"search in {out} already finished after epoch {start.epochs}; nothing to do")
        return GoldSearch.from_state_dict(state, device)
    if start.config.data.path == "stream":
        raise ConfigError("data.path=stream streams through Ray Data: run without --local")
    search, data = load_or_create(start.config, device, state, latency=latency)
    check_batches(data.num_train, 1, search.cfg.data.batch_size, "data.batch_size")
    if start.resume:
        log(f"resuming {out} after epoch {search.epoch}")
    out.mkdir()
    info = run_info(search, data.name, workers=1)
    run = None
    if tracker is not None:
        run = tracker(search.cfg, data.name, start.run_id)
        info |= {"mlflow_run_id": run.run_id, "mlflow_tracking_uri": run.uri}
    log(describe_start(search, data.name))
    started = time.perf_counter()
    with tracked_or_stopped(run.finish if run is not None else None, out,
                            lambda: f"after epoch {search.epoch} of at most {search.cfg.search.max_epochs}", log):
        search_loop(search, data, out, info, tracker=run, log=log, report=report)
    log(f"search finished after {search.epoch} epochs ({time.perf_counter() - started:.0f}s here); "
        f"{len(search.records)} architectures recorded in {out / RECORDS}")
    if run is not None:
        log(f"MLflow run {run.run_id}: open {run.page()}")
    return search

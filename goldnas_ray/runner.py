"""The in-process search loop (``pipelines/search.py --local``) and the helpers it shares
with the Ray Train loop: progress lines, run info, and per-epoch output writing."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from goldnas_ray import artifacts
from goldnas_ray.config import Config
from goldnas_ray.data import Dataset, iterate_batches, load_dataset
from goldnas_ray.search import GoldSearch


def format_epoch(row: dict[str, Any], max_epochs: int, full_flops: int) -> str:
    line = (f"epoch {row['epoch']:>3}/{max_epochs}  lambda {row['lambda']:.4g}  "
            f"FLOPs {row['flops'] / 1e6:.3f}M ({100 * row['flops'] / full_flops:.1f}%)  "
            f"alive {row['alive_ops']}  pruned {row['pruned']}  loss {row['loss']:.4f}  "
            f"acc {100 * row['accuracy']:.1f}%  {row['seconds']:.1f}s  "
            f"{row['images_per_second']:.0f} img/s")
    if row.get("recorded"):
        line += f"  -> recorded {row['recorded']}"
    return line


def run_info(search: GoldSearch, dataset: str, workers: int) -> dict[str, Any]:
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


def describe_start(search: GoldSearch, dataset: Dataset | str, workers: int = 1) -> str:
    m, s = search.model, search.cfg.space
    name = dataset if isinstance(dataset, str) else dataset.name
    return (f"GOLD-NAS search on {name}: {s.num_cells} cells x {s.num_nodes} nodes, "
            f"{len(s.operators)} operators ({', '.join(s.operators)}), {m.num_ops_full} gated operators\n"
            f"search space: 10^{m.log10_size:.1f} architectures; supernet {m.full_flops / 1e6:.3f} MFLOPs "
            f"(x2 per multiply-add); stop at {search.flops_min / 1e6:.3f} MFLOPs or epoch "
            f"{search.cfg.search.max_epochs}; {workers} worker(s)")


def run_local(cfg: Config | None, out: Path, resume: bool = False,
              log: Callable[[str], None] = print, device: str = "cpu",
              mlflow_uri: str | None = None, experiment: str = "goldnas-search",
              tracking: bool = False) -> GoldSearch:
    """Run (or resume) a whole search in this process, writing the output files each epoch."""
    out = Path(out)
    artifacts.check_out_dir(out, resume)
    uri = None
    if tracking:
        from goldnas_ray.tracking import check_uri, resolve_uri

        uri = resolve_uri(out, mlflow_uri)
        check_uri(uri)
    if resume:
        state = artifacts.load_checkpoint(out / artifacts.CHECKPOINT)
        cfg = Config.from_dict(state["config"]).validate()
        data = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.download)
        search = GoldSearch.from_state_dict(state, device)
        log(f"resuming {out} after epoch {search.epoch}")
    else:
        assert cfg is not None
        cfg.validate()
        data = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.download)
        search = GoldSearch(cfg, data.input_shape, data.num_classes, device)
        out.mkdir(parents=True, exist_ok=True)
    info = run_info(search, data.name, workers=1)
    tracker = None
    if uri:
        from goldnas_ray.tracking import SearchTracker, run_tags

        run_id = artifacts.read_run_id(out) if resume else None
        tracker = SearchTracker(uri, experiment, out.name, cfg.to_dict(),
                                run_tags(cfg.space, data.name, 1, out), run_id=run_id)
        info |= {"mlflow_run_id": tracker.run_id, "mlflow_tracking_uri": uri}
    log(describe_start(search, data))
    started = time.perf_counter()
    while not search.finished:
        epoch = search.epoch
        batches = iterate_batches(data.x_train, data.y_train, cfg.data.batch_size, cfg.seed, epoch,
                                  cutout_size=cfg.data.cutout)
        stats = search.train_epoch(batches)
        row = search.end_epoch(stats)
        state = search.state_dict()
        artifacts.save_checkpoint(out, state)
        artifacts.write_outputs(out, state, info)
        if tracker is not None:
            tracker.log_epoch(row)
        log(format_epoch(row, cfg.search.max_epochs, search.model.full_flops))
    if tracker is not None:
        tracker.log_outputs(out)
        tracker.finish()
    log(f"search finished after {search.epoch} epochs ({time.perf_counter() - started:.0f}s here); "
        f"{len(search.records)} architectures recorded in {out / artifacts.FRONTIER}")
    return search

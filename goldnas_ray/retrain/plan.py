"""What a retrain trains, decided and checked before anything runs, and written down.

:func:`plan_retrain` reads and checks a search folder, the config changes, the data and the
random baselines, and returns a :class:`Manifest`; :meth:`Manifest.write` stores it as
``<out>/retrain.json`` and :meth:`Manifest.read` brings it back for ``--resume``.
:meth:`Manifest.specs` turns it into one :class:`TrialSpec` per (architecture, seed), what a
Tune trial receives. Plain data and checks: testable without Ray.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from goldnas_ray.core.config import Config, ConfigError, DataConfig
from goldnas_ray.data.from_config import load_data
from goldnas_ray.data.stream import StreamInfo, stream_info, streams
from goldnas_ray.files.store import KindedError, Location, location
from goldnas_ray.files.search_files import OutputDirError, check_new_out_dir, read_manifest
from goldnas_ray.retrain.candidates import Candidate, SearchResult, load_search, random_candidates

MANIFEST = "retrain.json"
MANIFEST_FORMAT = "goldnas-ray/retrain"


class RetrainError(KindedError, RuntimeError):
    """Some trials did not finish (``kind`` infrastructure: the message says which and how to
    continue), or a retrain's input cannot be used (``kind`` input, the default)."""


def trial_key(arch_id: str, seed: int) -> str:
    return f"{arch_id}-s{seed}"

QUICK_FRACTION = 0.1  # a quick front's epochs: this fraction of retrain.epochs, rounded up


@dataclass
class Resources:
    """What one trial holds: ``workers`` Ray Train workers (one: the Tune trial trains itself)
    of ``cpus`` CPUs and ``gpus`` GPUs each."""

    workers: int = 1
    cpus: float = 1.0
    gpus: float = 0.0

    @property
    def use_gpu(self) -> bool:
        return self.gpus > 0

    @property
    def threads(self) -> int:
        """torch threads per worker: its whole CPUs (at least one)."""
        return max(1, int(self.cpus))


def check_workers(workers: int, cpus: float | None, gpus: float, flags: str) -> None:
    """A run of ``workers`` workers of ``cpus`` CPUs (None: the driver chooses) and ``gpus``
    GPUs each needs at least one worker, > 0 CPUs and >= 0 GPUs: else a ConfigError naming
    ``flags``, the pipeline's flags that set them."""
    if workers < 1 or (cpus is not None and cpus <= 0) or gpus < 0:
        raise ConfigError(f"{flags}: a run needs at least one worker of > 0 CPUs and >= 0 GPUs, got {workers} "
                          f"worker(s) x ({'default' if cpus is None else f'{cpus:g}'} CPU, {gpus:g} GPU)")


@dataclass
class TrialSpec:
    """One Tune trial: an architecture, a seed, the recipe, the data (streamed: its metadata),
    the resources and where to report."""

    key: str
    arch_id: str
    seed: int
    genotype: dict[str, Any]
    recipe: dict[str, Any]
    data: dict[str, Any]
    out: str
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    stream: dict[str, Any] | None = None  # StreamInfo of a streamed training split
    eval_stream: bool = False  # the test split streamed too (else decoded into memory)
    weights: str | None = None  # its inherited weights (a URI), else trained from scratch

    @property
    def threads(self) -> int:
        return Resources(self.workers, self.cpus_per_worker, self.gpus_per_worker).threads

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


@dataclass
class Manifest:
    """retrain.json: the source search, the config, the architectures and the MLflow runs."""

    search_dir: str
    search_run_id: str | None
    dataset: str
    config: Config
    candidates: list[Candidate]
    mlflow_tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    mlflow_child_run_ids: dict[str, str] = field(default_factory=dict)
    # what each trial holds: a --resume keeps it (its checkpoints are those of that many workers)
    resources: Resources | None = None
    # the training split's metadata when it streams (read from the data, not written down)
    stream: StreamInfo | None = field(default=None, repr=False)
    num_train: int = field(default=0, repr=False)  # training images a trial reads
    # retraining a sweep: each search's grid point and seed (name -> {point, label, seed})
    sweep: dict[str, dict[str, Any]] | None = None

    @property
    def seeds(self) -> list[int]:
        return [self.config.seed + i for i in range(self.config.retrain.seeds)]

    @property
    def trials(self) -> list[str]:
        return [trial_key(c.arch_id, s) for c in self.candidates for s in self.seeds]

    def data(self) -> DataConfig:
        """What a trial reads: the search's data, with the retrain's subset of the training
        images (the whole split by default; the search may have used data.subset of it)."""
        return self.config.data.model_copy(update={"subset": self.config.retrain.subset})

    def specs(self, out: "Path | Location", resources: Resources) -> dict[str, TrialSpec]:
        """One spec per (architecture, seed). A streamed training split (``stream``) reaches the
        trials through Ray Data; the test split streams too when the same rule says so."""
        data, stream = self.data(), self.stream
        stream_dict = asdict(stream) if stream is not None else None
        eval_stream = stream is not None and streams(data, stream.test_gb)
        return {trial_key(c.arch_id, s): TrialSpec(
            trial_key(c.arch_id, s), c.arch_id, s, c.genotype.to_dict(), self.config.retrain.model_dump(),
            data.model_dump(), location(out).uri, resources.workers, resources.cpus, resources.gpus,
            stream_dict, eval_stream, (location(out) / c.weights).uri if c.weights else None)
            for c in self.candidates for s in self.seeds}

    def to_dict(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "version": 1, "search_dir": self.search_dir,
                "search_run_id": self.search_run_id, "dataset": self.dataset,
                "config": self.config.to_dict(), "seeds": self.seeds,
                "architectures": [c.row() for c in self.candidates], "trials": self.trials,
                "mlflow_tracking_uri": self.mlflow_tracking_uri, "mlflow_run_id": self.mlflow_run_id,
                "mlflow_child_run_ids": self.mlflow_child_run_ids,
                "resources": asdict(self.resources) if self.resources is not None else None,
                "sweep": self.sweep}

    def write(self, out: "Path | Location") -> Location:
        return (location(out) / MANIFEST).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def read(cls, out: Path) -> "Manifest":
        """The manifest of the retrain in ``out`` (for --resume), its genotypes loaded."""
        path = location(out) / MANIFEST
        if not path.is_file():
            raise OutputDirError(f"--resume: {out} is not a retrain output folder (no {MANIFEST} inside)")
        raw = read_manifest(path, (MANIFEST_FORMAT,), "a goldnas-ray retrain manifest")
        manifest = cls(raw["search_dir"], raw.get("search_run_id"), raw["dataset"],
                       Config.from_dict(raw["config"]),
                       [Candidate.from_row(row, out) for row in raw["architectures"]],
                       raw.get("mlflow_tracking_uri"), raw.get("mlflow_run_id"),
                       dict(raw.get("mlflow_child_run_ids") or {}))
        if raw.get("resources"):
            manifest.resources = Resources(**raw["resources"])
        manifest.sweep = raw.get("sweep")
        manifest.stream = stream_info(manifest.data())
        manifest.num_train = (manifest.stream or load_data(manifest.data())).num_train
        return manifest


def _check_inherited(c: Candidate) -> None:
    """``c``'s inherited weights are there and are its architecture's, before any trial."""
    import safetensors.torch

    from goldnas_ray.core.discrete import build_network, load_inherited

    try:
        state = safetensors.torch.load(location(c.weights).read_bytes())
    except FileNotFoundError as exc:
        raise OutputDirError(f"retrain.init=inherited: {c.arch_id}'s inherited weights are missing: {exc}") from exc
    except safetensors.SafetensorError as exc:
        raise OutputDirError(f"retrain.init=inherited: {c.weights} is not a safetensors file: {exc}") from exc
    try:
        load_inherited(build_network(c.genotype), state)
    except ValueError as exc:
        raise OutputDirError(f"retrain.init=inherited: {c.weights}: {exc}") from exc


def plan_retrain(out: "Path | Location", search_dir: Path, *, search_run_id: str | None = None,
                 config_file: Location | None = None, overrides: Sequence[str] = (),
                 random_k: int = 0, sweep: "tuple[SearchResult, dict[str, dict[str, Any]]] | None" = None
                 ) -> Manifest:
    """Check everything a new retrain depends on and decide what it trains; writes nothing.
    ``sweep``: a sweep's searches read as one (``sweep.retrain.load_sweep``) and what each
    search is, instead of the search in ``search_dir``."""
    if random_k < 0:
        raise ConfigError(f"--random must be >= 0, got {random_k}")
    check_new_out_dir(out, "retrain")
    search, searches = sweep if sweep is not None else (load_search(Path(search_dir)), None)
    cfg = search.config
    if config_file is not None:
        cfg = cfg.merge_yaml(config_file)
    cfg = cfg.override(list(overrides))
    if cfg.retrain.quick:  # a short fine-tune of inherited weights, never set beside scratch-trained ones
        if random_k:
            raise ConfigError("a quick front (--quick, retrain.quick) fine-tunes inherited weights: random networks "
                              "have none, and trained from scratch as briefly they are no baseline; drop --random")
        cfg = cfg.override(["retrain.init=inherited",
                            f"retrain.epochs={math.ceil(QUICK_FRACTION * cfg.retrain.epochs)}"])
    manifest = Manifest(str(search.folder), search_run_id or search.records.get("mlflow_run_id"),
                        cfg.data.dataset, cfg, search.searched)
    stream = stream_info(manifest.data())  # metadata only for a streamed set; else read it all
    data = stream if stream is not None else load_data(manifest.data())
    shape, classes = search.records["input_shape"], search.records["num_classes"]
    if list(data.input_shape) != list(shape) or data.num_classes != classes:
        raise OutputDirError(f"data {cfg.data.dataset} has images {list(data.input_shape)} and "
                             f"{data.num_classes} classes; the search ran on {shape} and {classes}")
    manifest.dataset, manifest.stream, manifest.num_train = data.name, stream, data.num_train
    for c in manifest.candidates:  # inherited weights travel only where they are used
        if cfg.retrain.init == "scratch":
            c.weights = None
        elif not c.weights:
            raise ConfigError(f"retrain.init=inherited: {c.arch_id} has no inherited weights in {search.folder} "
                              f"(a search keeps them since 2026-12-03): use retrain.init=scratch")
        else:
            _check_inherited(c)
    manifest.candidates += random_candidates(search, random_k, cfg.seed) if random_k else []
    manifest.sweep = searches
    return manifest

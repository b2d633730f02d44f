"""What a retrain trains, decided and checked before anything runs, and written down.

:func:`plan_retrain` reads and checks a search folder, the config changes, the data and the
random baselines, and returns a :class:`Manifest`; :meth:`Manifest.write` stores it as
``<out>/retrain.json`` and :meth:`Manifest.read` brings it back for ``--resume``.
:meth:`Manifest.specs` turns it into one :class:`TrialSpec` per (architecture, seed), what a
Tune trial receives. Plain data and checks: testable without Ray.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from goldnas_ray.core.config import Config, ConfigError
from goldnas_ray.data.from_config import load_data
from goldnas_ray.data.stream import stream_info
from goldnas_ray.files.store import Location, location
from goldnas_ray.files.search_files import OutputDirError, check_new_out_dir
from goldnas_ray.retrain.candidates import Candidate, load_search, random_candidates

MANIFEST = "retrain.json"
MANIFEST_FORMAT = "goldnas-ray/retrain"


class RetrainError(RuntimeError):
    """Some trials did not finish; the message says which and how to continue."""


def trial_key(arch_id: str, seed: int) -> str:
    return f"{arch_id}-s{seed}"


@dataclass
class TrialSpec:
    """One Tune trial: an architecture, a seed, the recipe and where to report."""

    key: str
    arch_id: str
    seed: int
    genotype: dict[str, Any]
    recipe: dict[str, Any]
    data: dict[str, Any]
    threads: int
    use_gpu: bool
    out: str


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

    @property
    def seeds(self) -> list[int]:
        return [self.config.seed + i for i in range(self.config.retrain.seeds)]

    @property
    def trials(self) -> list[str]:
        return [trial_key(c.arch_id, s) for c in self.candidates for s in self.seeds]

    def specs(self, out: "Path | Location", cpus_per_trial: float, gpus_per_trial: float) -> dict[str, TrialSpec]:
        config = self.config.to_dict()
        return {trial_key(c.arch_id, s): TrialSpec(
            trial_key(c.arch_id, s), c.arch_id, s, c.genotype.to_dict(), config["retrain"], config["data"],
            max(1, int(cpus_per_trial)), gpus_per_trial > 0, location(out).uri)
            for c in self.candidates for s in self.seeds}

    def to_dict(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "version": 1, "search_dir": self.search_dir,
                "search_run_id": self.search_run_id, "dataset": self.dataset,
                "config": self.config.to_dict(), "seeds": self.seeds,
                "architectures": [c.row() for c in self.candidates], "trials": self.trials,
                "mlflow_tracking_uri": self.mlflow_tracking_uri, "mlflow_run_id": self.mlflow_run_id,
                "mlflow_child_run_ids": self.mlflow_child_run_ids}

    def write(self, out: "Path | Location") -> Location:
        return (location(out) / MANIFEST).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def read(cls, out: Path) -> "Manifest":
        """The manifest of the retrain in ``out`` (for --resume), its genotypes loaded."""
        path = location(out) / MANIFEST
        if not path.is_file():
            raise OutputDirError(f"--resume: {out} is not a retrain output folder (no {MANIFEST} inside)")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OutputDirError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
            raise OutputDirError(f"{path} is not a goldnas-ray retrain manifest")
        return cls(raw["search_dir"], raw.get("search_run_id"), raw["dataset"],
                   Config.from_dict(raw["config"]),
                   [Candidate.from_row(row, out) for row in raw["architectures"]],
                   raw.get("mlflow_tracking_uri"), raw.get("mlflow_run_id"),
                   dict(raw.get("mlflow_child_run_ids") or {}))


def plan_retrain(out: "Path | Location", search_dir: Path, *, search_run_id: str | None = None,
                 config_file: Path | None = None, overrides: Sequence[str] = (),
                 random_k: int = 0) -> Manifest:
    """Check everything a new retrain depends on and decide what it trains; writes nothing."""
    if random_k < 0:
        raise ConfigError(f"--random must be >= 0, got {random_k}")
    check_new_out_dir(out, "retrain")
    search = load_search(Path(search_dir))
    cfg = search.config
    if config_file is not None:
        cfg = cfg.merge_yaml(config_file)
    cfg = cfg.override(list(overrides))
    if stream_info(cfg.data) is not None:
        raise ConfigError("retraining reads its data into memory, and this set streams (data.path=stream, "
                          "or larger than data.stream_above_gb): set data.path=memory for the retrain")
    data = load_data(cfg.data)
    shape, classes = search.records["input_shape"], search.records["num_classes"]
    if list(data.input_shape) != list(shape) or data.num_classes != classes:
        raise OutputDirError(f"data {cfg.data.dataset} has images {list(data.input_shape)} and "
                             f"{data.num_classes} classes; the search ran on {shape} and {classes}")
    randoms = random_candidates(search, random_k, cfg.seed) if random_k else []
    return Manifest(str(search.folder), search_run_id or search.records.get("mlflow_run_id"), data.name,
                    cfg, search.searched + randoms)

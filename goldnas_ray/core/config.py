"""Run configuration: one dataclass per concern, loadable from YAML, overridable from the CLI.

Every value is validated by :func:`Config.validate` before any model is built, and each error
names the offending field (``search.xi_min``), so a typo never costs compute.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from goldnas_ray.core.operations import PRIMITIVES

COSTS = ("flops", "params", "ops")
AMP_MODES = ("off", "bf16")
RECORD_RULES = ("paper", "dense")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


@dataclass
class SpaceConfig:
    """The relaxed search space (DESIGN.md section 2)."""

    num_cells: int = 6
    num_nodes: int = 4
    init_channels: int = 8
    stem_multiplier: int = 3
    operators: list[str] = field(default_factory=lambda: ["skip_connect", "sep_conv_3x3"])
    auxiliary: bool = False
    # "cifar": one 3x3 conv at full resolution (DARTS's CIFAR stem); "imagenet": DARTS's
    # ImageNet stem, three stride-2 3x3 convs in two stems, 224 -> 28 before the first cell
    stem: str = "cifar"


DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "parquet")
DATA_PATHS = ("auto", "memory", "stream")


@dataclass
class DataConfig:
    """Where images come from and how a batch is augmented (goldnas_ray/data/datasets.py
    describes each dataset). ``digits`` ships inside scikit-learn; ``cifar10`` / ``cifar100``
    read the binary releases from ``root`` (downloading only when ``download`` is true);
    ``imagefolder`` reads ``root/train/<class>/*`` and ``root/val/<class>/*``; ``parquet``
    reads encoded images and labels from the Parquet data at ``root``. A transform left at
    None takes its dataset's default: crop with 4-pixel padding and flip for the CIFAR sets,
    random resized crop and flip for image folders and Parquet data with ``image_size`` set,
    none for digits."""

    dataset: str = "digits"
    root: str = "data"
    download: bool = False
    batch_size: int = 64
    cutout: int = 0
    labels: str = "fine"                 # cifar100: fine (100) or coarse (20) labels
    image_column: str = "image"          # parquet
    label_column: str = "label"          # parquet
    image_size: int | None = None        # resize decoded images (imagefolder, parquet)
    subset: float = 1.0                  # fraction of each class's training images kept
    crop_padding: int | None = None      # random crop with zero padding
    flip: bool | None = None             # horizontal flip
    random_resized_crop: bool | None = None
    path: str = "auto"                   # memory | stream (Ray Data) | auto (by size)
    stream_above_gb: float = 8.0         # auto: stream when the decoded set is larger


@dataclass
class SearchConfig:
    """One-level optimisation, gradual pruning and the variable resource constraint
    (DESIGN.md sections 3 and 4)."""

    max_epochs: int = 80
    # weights
    w_lr: float = 0.05
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    # architecture parameters
    a_lr: float = 1.0
    a_momentum: float = 0.9
    a_weight_decay: float = 0.0
    auxiliary_weight: float = 0.4
    # resource constraint
    cost: str = "flops"
    ops_cost_k: float = 10.0
    lambda0: float = 0.002
    c0: float = 2.0
    # pruning
    xi_min: float = 0.01
    xi_max: float = 0.05
    n0: int = 4
    t0: int = 3
    # stop when the live FLOPs fall to flops_min (absolute) or, when it is unset,
    # to flops_min_ratio x the full supernet's FLOPs
    flops_min: float | None = None
    flops_min_ratio: float = 0.3
    # which architectures are recorded (core/schedule.py ParetoRecorder): "paper" (held still
    # for more than t0 epochs) or "dense" (held still in FLOPs, or before a gap of more than
    # record_gap x the supernet's FLOPs opens; none within record_min_gap of the last)
    record_rule: str = "dense"
    record_gap: float = 0.12
    record_min_gap: float = 0.03
    # speed options (benchmarks/search_step.py measures them on and off). channels_last:
    # NHWC tensors, faster convolutions on CPUs (oneDNN) and tensor cores; amp: "bf16"
    # autocast for the forward pass (CUDA, or CPUs with bf16 units), "off" for float32
    channels_last: bool = True
    amp: str = "off"


@dataclass
class RetrainConfig:
    """Training one architecture from scratch: DARTS's recipe (DESIGN.md section 4): SGD with
    a cosine learning rate, cutout, auxiliary head, drop-path rising linearly to its maximum.
    DARTS's CIFAR-10 values: 600 epochs, batch 96, lr 0.025, cutout 16, drop_path 0.2; the
    defaults here suit the embedded digits data (8x8 images, 1,437 training images)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    cutout: int = 0
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path: float = 0.2
    seeds: int = 1
    color_jitter: bool = False  # brightness/contrast/saturation 0.4, hue 0.2 (DARTS ImageNet)
    label_smoothing: float = 0.0  # DARTS ImageNet: 0.1
    schedule: str = "cosine"  # cosine | step: lr x lr_gamma after every epoch (DARTS ImageNet)
    lr_gamma: float = 0.97
    warmup_epochs: int = 0  # linear warm-up from lr / (warmup_epochs + 1)

    def validate(self) -> "RetrainConfig":
        _positive_int("retrain.epochs", self.epochs)
        _positive_int("retrain.batch_size", self.batch_size)
        _positive_int("retrain.seeds", self.seeds)
        if not self.lr > 0:
            raise ConfigError(f"retrain.lr must be > 0, got {self.lr}")
        if not 0 <= self.lr_min <= self.lr:
            raise ConfigError(f"retrain.lr_min must be in [0, retrain.lr], got {self.lr_min}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"retrain.momentum must be in [0, 1), got {self.momentum}")
        for name in ("weight_decay", "grad_clip", "auxiliary_weight", "cutout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"retrain.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.drop_path < 1:
            raise ConfigError(f"retrain.drop_path must be in [0, 1), got {self.drop_path}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"retrain.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.schedule not in ("cosine", "step"):
            raise ConfigError(f"retrain.schedule must be cosine or step, got {self.schedule!r}")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"retrain.lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if not isinstance(self.warmup_epochs, int) or not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(f"retrain.warmup_epochs must be an integer in [0, epochs), got {self.warmup_epochs!r}")
        return self


@dataclass
class Config:
    space: SpaceConfig = field(default_factory=SpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    seed: int = 0

    # ---- I/O -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "Config":
        cfg = cls()
        apply_dict(cfg, raw or {}, prefix="")
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        return cls.from_dict(_read_yaml(path))

    def merge_yaml(self, path: str | Path) -> "Config":
        """Apply the fields a YAML file sets, keeping every other value."""
        raw = _read_yaml(path)
        apply_dict(self, raw or {}, prefix="")
        return self

    def override(self, assignments: list[str]) -> "Config":
        """Apply ``section.key=value`` strings (values parsed as YAML scalars)."""
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like section.key=value")
            key, value = item.split("=", 1)
            nested: Any = yaml.safe_load(value)
            for part in reversed(key.strip().split(".")):
                nested = {part: nested}
            apply_dict(self, nested, prefix="")
        return self

    # ---- validation ------------------------------------------------------------------
    def validate(self) -> "Config":
        s, q = self.space, self.search
        _positive_int("space.num_cells", s.num_cells)
        _positive_int("space.num_nodes", s.num_nodes)
        _positive_int("space.init_channels", s.init_channels)
        _positive_int("space.stem_multiplier", s.stem_multiplier)
        if not s.operators:
            raise ConfigError("space.operators must name at least one operator")
        for op in s.operators:
            if op not in PRIMITIVES:
                raise ConfigError(
                    f"space.operators: unknown operator {op!r}; known: {', '.join(PRIMITIVES)}"
                )
        if len(set(s.operators)) != len(s.operators):
            raise ConfigError("space.operators lists an operator twice")
        if s.stem not in ("cifar", "imagenet"):
            raise ConfigError(f"space.stem must be cifar or imagenet, got {s.stem!r}")
        _validate_data(self)
        _positive_int("search.max_epochs", q.max_epochs)
        for name in ("w_lr", "a_lr", "c0"):
            if not getattr(q, name) > 0:
                raise ConfigError(f"search.{name} must be > 0, got {getattr(q, name)}")
        if q.c0 <= 1:
            raise ConfigError(f"search.c0 must be > 1 (lambda must grow), got {q.c0}")
        for name in ("w_momentum", "a_momentum"):
            if not 0 <= getattr(q, name) < 1:
                raise ConfigError(f"search.{name} must be in [0, 1), got {getattr(q, name)}")
        for name in ("w_weight_decay", "a_weight_decay", "grad_clip", "auxiliary_weight"):
            if getattr(q, name) < 0:
                raise ConfigError(f"search.{name} must be >= 0, got {getattr(q, name)}")
        if not q.lambda0 > 0:
            raise ConfigError(f"search.lambda0 must be > 0, got {q.lambda0}")
        if q.cost not in COSTS:
            raise ConfigError(f"search.cost: unknown cost {q.cost!r}; known: {', '.join(COSTS)}")
        if not 0 <= q.xi_min < 1:
            raise ConfigError(f"search.xi_min must be in [0, 1), got {q.xi_min}")
        if not 0 <= q.xi_max < 1:
            raise ConfigError(f"search.xi_max must be in [0, 1), got {q.xi_max}")
        if q.xi_min > q.xi_max:
            raise ConfigError(f"search.xi_min ({q.xi_min}) must not exceed search.xi_max ({q.xi_max})")
        _positive_int("search.n0", q.n0)
        if not isinstance(q.t0, int) or q.t0 < 0:
            raise ConfigError(f"search.t0 must be an integer >= 0, got {q.t0!r}")
        if q.flops_min is not None and not q.flops_min > 0:
            raise ConfigError(f"search.flops_min must be > 0, got {q.flops_min}")
        if not 0 < q.flops_min_ratio < 1:
            raise ConfigError(f"search.flops_min_ratio must be in (0, 1), got {q.flops_min_ratio}")
        if q.record_rule not in RECORD_RULES:
            raise ConfigError(f"search.record_rule must be one of {', '.join(RECORD_RULES)}, got {q.record_rule!r}")
        if not 0 < q.record_gap < 1 or not 0 <= q.record_min_gap < q.record_gap:
            raise ConfigError(f"search.record_gap must be in (0, 1) and search.record_min_gap in [0, record_gap), "
                              f"got {q.record_gap} and {q.record_min_gap}")
        if not isinstance(q.channels_last, bool):
            raise ConfigError(f"search.channels_last must be true or false, got {q.channels_last!r}")
        if q.amp not in AMP_MODES:
            raise ConfigError(f"search.amp must be one of {', '.join(AMP_MODES)}, got {q.amp!r}")
        self.retrain.validate()
        return self


def _validate_data(cfg: "Config") -> None:
    d = cfg.data
    if d.dataset not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {d.dataset!r}; known: {', '.join(DATASETS)}")
    _positive_int("data.batch_size", d.batch_size)
    for name in ("cutout", "crop_padding"):
        value = getattr(d, name)
        if value is not None and value < 0:
            raise ConfigError(f"data.{name} must be >= 0, got {value}")
    if d.image_size is not None:
        _positive_int("data.image_size", d.image_size)
    if not 0 < d.subset <= 1:
        raise ConfigError(f"data.subset must be in (0, 1], got {d.subset}")
    if d.labels not in ("fine", "coarse"):
        raise ConfigError(f"data.labels must be fine or coarse, got {d.labels!r}")
    if d.path not in DATA_PATHS:
        raise ConfigError(f"data.path must be one of {', '.join(DATA_PATHS)}, got {d.path!r}")
    if d.random_resized_crop and not d.image_size:
        raise ConfigError("data.random_resized_crop needs data.image_size (the crops' size)")


def _read_yaml(path: str | Path) -> dict[str, Any] | None:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(raw).__name__}")
    return raw


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def apply_dict(target: Any, raw: dict[str, Any], prefix: str) -> None:
    """Copy ``raw`` onto dataclass ``target``, rejecting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config field {name!r}; known: {', '.join(fields)}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            apply_dict(current, value, prefix=f"{name}.")
            continue
        setattr(target, key, _coerce(name, current, value, fields[key].type))


def _coerce(name: str, current: Any, value: Any, annotation: Any) -> Any:
    optional = "None" in str(annotation)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} may not be null")
    if isinstance(current, bool) or "bool" == str(annotation):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(current, int) and not isinstance(current, bool) and "float" not in str(annotation):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if isinstance(current, float) or "float" in str(annotation):
        if isinstance(value, str):  # YAML 1.1 reads "1e12" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if isinstance(current, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of names, got {value!r}")
        return list(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    return value

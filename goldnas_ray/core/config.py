"""Run configuration: one typed model per concern (pydantic v2), loadable from YAML, overridable
from the command line, and validated whenever one is built or changed.

Every value is checked against its type, its allowed choices and its bounds, and the checks
that span fields (``search.xi_min <= search.xi_max``) run with them, so a typo never costs
compute; an error names the field and the value (``data.flip: input should be a valid
boolean, got 3``). YAML files and ``--set section.key=value`` overrides go through the same
models. The JSON Schema of a config file (so that editors check YAML as it is typed) and the
reference table of docs/configuration.md are generated from the models::

    python -m goldnas_ray.core.config --schema      # JSON Schema of a config file
    python -m goldnas_ray.core.config --markdown    # the table of every field

The dataset registry (which names ``data.dataset`` accepts and what each one is) lives here
too, since the config is where a dataset is chosen; ``goldnas_ray.data`` attaches a loader to
every name of it.
"""
from __future__ import annotations

import json
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator, model_validator

from goldnas_ray.core.operations import PRIMITIVES


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the value."""


# ---- the dataset registry -------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset name stands for. ``family`` chooses the default augmentation (cifar: crop
    with 4-pixel padding and flip; images: random resized crop and flip with data.image_size;
    digits: none); ``streamable`` sets whether Ray Data may stream it (data.path)."""

    name: str
    family: Literal["digits", "cifar", "images"]
    streamable: bool
    root: str  # what data.root holds (Markdown), for the docs' datasets table


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("digits", "digits", False, "nothing: shipped in scikit-learn"),
    DatasetSpec("cifar10", "cifar", False, "`cifar-10-batches-bin/` (the official binary release)"),
    DatasetSpec("cifar100", "cifar", False, "`cifar-100-binary/` (the official binary release)"),
    DatasetSpec("imagefolder", "images", True, "`train/<class>/*` and `val/<class>/*`: JPEG / PNG files"),
    DatasetSpec("parquet", "images", True, "Parquet files: `train/` and `val/` inside, or one table"),
)}

DatasetName = Literal[tuple(DATASETS)]  # type: ignore[valid-type]
Operator = Literal[PRIMITIVES]  # type: ignore[valid-type]
PositiveInt = Annotated[StrictInt, Field(gt=0)]  # strict: true and 3.0 are not counts
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # [0, 1)
OpenFraction = Annotated[float, Field(gt=0, lt=1)]  # (0, 1)


class Section(BaseModel):
    """A config section: unknown keys refused, every value validated when a section is built or
    a field assigned; an invalid value raises ConfigError naming ``section.field``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)
    prefix: ClassVar[str] = ""

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc, type(self))) from None

    def __setattr__(self, name: str, value: Any) -> None:
        before = self.__dict__.get(name)
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            # a cross-field check runs after the field is set: a refused value must not stay
            if name in self.__dict__:
                self.__dict__[name] = before
            raise ConfigError(describe_errors(exc, type(self))) from None

    @classmethod
    def from_dict(cls, raw: Any) -> Any:
        """A validated section (or whole config) from a mapping; missing fields take defaults."""
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{cls.prefix.rstrip('.') or 'a config'} must be a mapping, got {type(raw).__name__}")
        try:
            return cls.model_validate(raw or {})
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc, cls)) from None


class SpaceConfig(Section):
    """The relaxed search space (docs/algorithm.md, "Space")."""

    prefix: ClassVar[str] = "space."

    num_cells: PositiveInt = Field(6, description="cells L; reduction cells at L/3 and 2L/3")
    num_nodes: PositiveInt = Field(4, description="intermediate nodes per cell (4: 14 edges)")
    init_channels: PositiveInt = Field(8, description="channels C of the first cells")
    stem_multiplier: PositiveInt = Field(3, description="the CIFAR stem's output: this x C channels")
    operators: list[Operator] = Field(  # type: ignore[valid-type]
        default=["skip_connect", "sep_conv_3x3"], min_length=1,
        description="candidate operators on every edge (a YAML list, or names joined by commas)")
    auxiliary: StrictBool = Field(False, description="auxiliary head on the 2L/3 cell during the search")
    stem: Literal["cifar", "imagenet"] = Field(
        "cifar", description="cifar: one 3x3 conv at full size; imagenet: three stride-2 convs (224 -> 28)")

    @field_validator("operators", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @field_validator("operators")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"space.operators lists an operator twice: {value}")
        return value


class DataConfig(Section):
    """Where images come from and how a batch is augmented (goldnas_ray/data/datasets.py
    describes each dataset). A transform left unset takes its dataset's default: crop with
    4-pixel padding and flip for the CIFAR sets, random resized crop and flip for image folders
    and Parquet data with ``image_size`` set, none for digits."""

    prefix: ClassVar[str] = "data."

    dataset: DatasetName = Field("digits", description="one of the registry's datasets")  # type: ignore[valid-type]
    root: str = Field("data", description="a folder, file or storage URI (s3://...) holding the data")
    download: StrictBool = Field(False, description="cifar10 / cifar100: fetch the release when missing")
    batch_size: PositiveInt = Field(64, description="images per step and worker in the search")
    cutout: NonNegativeInt = Field(0, description="cutout square side in the search (0: none)")
    labels: Literal["fine", "coarse"] = Field("fine", description="cifar100: fine (100) or coarse (20) labels")
    image_column: str = Field("image", description="parquet: the column of encoded image bytes")
    label_column: str = Field("label", description="parquet: the column of integer labels")
    image_size: PositiveInt | None = Field(
        None, description="resize decoded images (shorter side to size x 256/224) and crop to this size")
    subset: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="fraction of each class's training images kept (fixed by the seed)")
    crop_padding: NonNegativeInt | None = Field(None, description="random crop with this zero padding")
    flip: StrictBool | None = Field(None, description="random horizontal flip")
    random_resized_crop: StrictBool | None = Field(None, description="random resized crop to image_size")
    path: Literal["auto", "memory", "stream"] = Field(
        "auto", description="memory, stream (Ray Data), or auto: stream above stream_above_gb")
    stream_above_gb: PositiveFloat = Field(8.0, description="auto: stream when the decoded training set is larger")

    @model_validator(mode="after")
    def _crops_need_a_size(self) -> "DataConfig":
        if self.random_resized_crop and not self.image_size:
            raise ValueError("data.random_resized_crop needs data.image_size (the crops' size)")
        if self.path == "stream" and not DATASETS[self.dataset].streamable:
            streamable = ", ".join(n for n, s in DATASETS.items() if s.streamable)
            raise ValueError(f"data.path=stream reads {streamable} data, not {self.dataset}")
        return self


class SearchConfig(Section):
    """One-level optimisation, gradual pruning and the variable resource constraint
    (docs/algorithm.md, "One-level optimisation" to "Stop")."""

    prefix: ClassVar[str] = "search."

    max_epochs: PositiveInt = Field(80, description="stop after this many epochs at the latest")
    w_lr: PositiveFloat = Field(0.05, description="weights: SGD learning rate")
    w_momentum: Fraction = Field(0.9, description="weights: SGD momentum")
    w_weight_decay: NonNegativeFloat = Field(3e-4, description="weights: weight decay")
    grad_clip: NonNegativeFloat = Field(5.0, description="weights: gradient norm clip (0: none)")
    a_lr: PositiveFloat = Field(1.0, description="alphas: SGD learning rate")
    a_momentum: Fraction = Field(0.9, description="alphas: SGD momentum")
    a_weight_decay: NonNegativeFloat = Field(0.0, description="alphas: weight decay")
    auxiliary_weight: NonNegativeFloat = Field(0.4, description="weight of the auxiliary head's loss")
    cost: Literal["flops", "params", "ops", "latency"] = Field(
        "flops", description="resource term: FLOPs, parameters, the operator-count form, or measured "
                             "latency (search.latency_table)")
    latency_table: str | None = Field(
        None, description="cost=latency: the JSON of pipelines/profile_latency.py for this space and data")
    latency_batch: PositiveInt = Field(1, description="cost=latency: the batch the table was timed at")
    latency_min_ms: PositiveFloat | None = Field(
        None, description="cost=latency: stop when the predicted latency falls to this (ms)")
    latency_min_ratio: OpenFraction = Field(
        0.3, description="cost=latency, without latency_min_ms: stop at this x the supernet's latency")
    ops_cost_k: PositiveFloat = Field(10.0, description="k of the ops cost, sum of log(1 + k w)")
    lambda0: PositiveFloat = Field(0.002, description="first step of lambda, on the normalised cost")
    c0: Annotated[float, Field(gt=1)] = Field(2.0, description="lambda's growth and back-off factor")
    xi_min: Fraction = Field(0.01, description="prune every operator whose weight is at most this")
    xi_max: Fraction = Field(0.05, description="then the weakest, n0 times, if its weight is at most this")
    n0: PositiveInt = Field(4, description="pruning rounds per epoch; lambda backs off after n0 prunes")
    t0: NonNegativeInt = Field(3, description="epochs an architecture must hold still to be recorded")
    flops_min: PositiveFloat | None = Field(
        None, description="stop when the FLOPs (one image, multiply-add = 2) fall to this")
    flops_min_ratio: OpenFraction = Field(0.3, description="without flops_min: stop at this x the supernet's FLOPs")
    record_rule: Literal["paper", "dense"] = Field(
        "dense", description="paper: held still > t0 epochs; dense: also before a gap opens in the cost (FLOPs or latency)")
    record_gap: OpenFraction = Field(0.12, description="dense: record before falling more than this x the supernet's cost")
    record_min_gap: Fraction = Field(0.03, description="dense: no record within this x the supernet of the last")
    channels_last: StrictBool = Field(True, description="NHWC tensors: faster convolutions on CPUs and tensor cores")
    amp: Literal["off", "bf16"] = Field("off", description="bf16 autocast of the forward pass")

    @model_validator(mode="after")
    def _ordered(self) -> "SearchConfig":
        if self.cost == "latency" and not self.latency_table:
            raise ValueError("search.cost=latency needs search.latency_table (make one with "
                             "pipelines/profile_latency.py)")
        if self.xi_min > self.xi_max:
            raise ValueError(f"search.xi_min ({self.xi_min}) must not exceed search.xi_max ({self.xi_max})")
        if self.record_min_gap >= self.record_gap:
            raise ValueError(f"search.record_min_gap ({self.record_min_gap}) must be below search.record_gap "
                             f"({self.record_gap})")
        return self


class RetrainConfig(Section):
    """Training one architecture from scratch: DARTS's recipe (docs/retraining.md, "Recipe"): SGD with a
    cosine learning rate, cutout, auxiliary head, drop-path rising linearly to its maximum.
    DARTS's CIFAR-10 values: 600 epochs, batch 96, lr 0.025, cutout 16, drop_path 0.2; the
    defaults here suit the embedded digits data (8x8 images, 1,437 training images)."""

    prefix: ClassVar[str] = "retrain."

    epochs: PositiveInt = Field(30, description="epochs per trial")
    batch_size: PositiveInt = Field(64, description="images per step and worker")
    lr: PositiveFloat = Field(0.025, description="SGD learning rate")
    lr_min: NonNegativeFloat = Field(0.0, description="cosine: the learning rate it anneals to")
    momentum: Fraction = Field(0.9, description="SGD momentum")
    weight_decay: NonNegativeFloat = Field(3e-4, description="weight decay")
    grad_clip: NonNegativeFloat = Field(5.0, description="gradient norm clip (0: none)")
    cutout: NonNegativeInt = Field(0, description="cutout square side (0: none)")
    auxiliary: StrictBool = Field(True, description="train with the auxiliary head")
    auxiliary_weight: NonNegativeFloat = Field(0.4, description="weight of the auxiliary head's loss")
    drop_path: Fraction = Field(0.2, description="drop-path probability reached at the last epoch")
    seeds: PositiveInt = Field(1, description="trials per architecture: seeds seed .. seed + seeds - 1")
    init: Literal["scratch", "inherited"] = Field(
        "scratch", description="searched networks' initial weights: scratch (the paper's protocol) or "
        "inherited from the supernet at record time (random ones: always scratch)")
    quick: StrictBool = Field(
        False, description="a quick front: init inherited, a tenth of epochs (rounded up), searched networks only")
    color_jitter: StrictBool = Field(False, description="brightness/contrast/saturation 0.4, hue 0.2")
    label_smoothing: Fraction = Field(0.0, description="label smoothing of the loss (DARTS ImageNet: 0.1)")
    schedule: Literal["cosine", "step"] = Field(
        "cosine", description="cosine to lr_min, or lr x lr_gamma after every epoch")
    lr_gamma: Annotated[float, Field(gt=0, le=1)] = Field(0.97, description="step: decay per epoch")
    warmup_epochs: NonNegativeInt = Field(0, description="linear warm-up from lr / (warmup_epochs + 1)")
    subset: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="fraction of each class's training images a trial trains on (data.subset is the search's)")
    channels_last: StrictBool = Field(True, description="NHWC tensors, as in the search")
    amp: Literal["off", "bf16"] = Field("off", description="bf16 autocast of the forward and the evaluation")
    latency_repeats: NonNegativeInt = Field(
        10, description="the report's latency_ms: timed passes per network and batch, on the driver's CPU "
                        "(0: not measured)")
    register_as: str | None = Field(
        None, description="MLflow registered model the retrain's front is registered under "
                          "(default goldnas-DATASET, e.g. goldnas-digits)")

    @model_validator(mode="after")
    def _ordered(self) -> "RetrainConfig":
        if self.lr_min > self.lr:
            raise ValueError(f"retrain.lr_min ({self.lr_min}) must not exceed retrain.lr ({self.lr})")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"retrain.warmup_epochs ({self.warmup_epochs}) must be below retrain.epochs "
                             f"({self.epochs})")
        return self


class Config(Section):
    """A whole run: the space searched, the data, the search, the retraining recipe, the seed."""

    space: SpaceConfig = Field(default_factory=SpaceConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    seed: NonNegativeInt = Field(0, description="the run's seed: initial weights, data order, augmentation")

    # ---- building ---------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        return cls.from_dict(_read_yaml(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def merge_yaml(self, path: str | Path) -> "Config":
        """A new config: this one with the fields a YAML file sets."""
        return self.merged(_read_yaml(path) or {})

    def merged(self, changes: dict[str, Any]) -> "Config":
        """A new config: this one with ``changes`` (nested sections) applied, validated whole."""
        if not isinstance(changes, dict):
            raise ConfigError(f"config changes must be a mapping, got {type(changes).__name__}")
        return type(self).from_dict(_deep_merge(self.to_dict(), changes))

    def override(self, assignments: list[str]) -> "Config":
        """A new config: this one with ``section.key=value`` strings applied (values read as YAML
        scalars, or as the string written for text fields), validated once all are applied."""
        changes: dict[str, Any] = {}
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like section.key=value")
            key, text = (s.strip() for s in item.split("=", 1))
            parts = key.split(".")
            value = _parse_value(parts, text)
            target = changes
            for part in parts[:-1]:
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    raise ConfigError(f"override {item!r}: {part} is a value, not a section")
            target[parts[-1]] = value
        return self.merged(changes)


def describe_errors(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line naming each invalid field (``section.field``), its value and what is expected."""
    prefix = getattr(model, "prefix", "")
    found = []
    for err in exc.errors(include_url=False):
        path = prefix + ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = _fields_at(model, err["loc"][:-1])
            found.append(f"unknown config field {path!r}; known: {', '.join(known)}")
        elif err["type"] == "value_error":  # a check spanning fields: its message names them
            found.append(err["msg"].removeprefix("Value error, "))
        elif err["type"] == "literal_error":
            found.append(f"{path}: {err['input']!r} is not one of {err['ctx']['expected']}")
        else:
            msg = err["msg"][0].lower() + err["msg"][1:]
            found.append(f"{path}: {msg}, got {err['input']!r}")
    return "; ".join(found)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The fields of the section at ``loc`` in ``model``; none when it is no section."""
    found = _annotation(loc, model)
    return list(found.model_fields) if isinstance(found, type) and issubclass(found, BaseModel) else []


def _parse_value(parts: list[str], text: str) -> Any:
    """The value of ``--set key=text``: YAML's reading of ``text``, except that a text field
    keeps the string as written (``data.root=123``, ``data.image_column=yes``)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if value is not None and not isinstance(value, str) and _is_text(_annotation(parts)):
        return text
    return value


def _annotation(parts: "list[str] | tuple", model: Any = Config) -> Any:
    """The annotation of the field at ``parts`` in ``model``; None when there is no such field."""
    for part in parts:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return None  # unknown: the model's own check names it
        model = fields[part].annotation
    return model


def _is_text(annotation: Any) -> bool:
    """A str field, or an optional one, or a choice among strings."""
    if annotation is str:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return any(_is_text(a) for a in typing.get_args(annotation) if a is not type(None))
    return False


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: str | Path) -> dict[str, Any] | None:
    """A YAML file's mapping: ``path`` a local path, or anything with ``is_file`` and
    ``read_text`` (a storage location: the pipelines read --config through the storage layer)."""
    path = path if hasattr(path, "read_text") else Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(raw).__name__}")
    return raw


# ---- what the models publish ---------------------------------------------------------------
SCHEMA_ID = "https://goldnas-ray.invalid/config.schema.json"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file (YAML or JSON): every section, field, type, bound and
    choice; unknown keys are errors."""
    schema = Config.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "goldnas-ray config", **{k: v for k, v in schema.items() if k != "title"}}


_TYPES = {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "null"}
BAR = " \\| "  # a bar inside a Markdown table's cell
_BOUNDS = {"exclusiveMinimum": ">", "minimum": ">=", "exclusiveMaximum": "<", "maximum": "<=", "minItems": "at least"}


def _row(key: str, prop: dict[str, Any]) -> str:
    """The reference table's row of one field, from its JSON Schema (``prop``)."""
    parts = prop.get("anyOf", [prop])  # an optional value: its type, then null
    choices = [c for p in parts for c in p.get("enum", p.get("items", {}).get("enum", []))]
    names = [_TYPES.get(p.get("type"), "") for p in parts]
    if "enum" in prop:
        names = ["name"] if len(choices) > 8 else [f"`{c}`" for c in choices]
    elif prop.get("type") == "array":
        names = ["list of " + ("operator names" if choices else "str")]
    listed = choices if len(choices) > 8 or prop.get("type") == "array" else []
    bounds = [f"{sign} {p[word]}" for p in parts for word, sign in _BOUNDS.items() if word in p]
    allowed = "; ".join(x for x in (", ".join(bounds), ", ".join(listed)) if x)
    value = prop.get("default")
    default = ("unset" if value is None else "`[" + ", ".join(map(str, value)) + "]`" if isinstance(value, list)
               else f"`{json.dumps(value) if isinstance(value, bool) else value}`")
    return f"| `{key}` | {BAR.join(names)} | {default} | {allowed} | {prop.get('description', '')} |"


def reference_table() -> str:
    """The Markdown table of every field (key, type, default, allowed values, meaning), read from
    the config's JSON Schema, then the datasets' (what data.root holds, whether it streams)."""
    schema = json_schema()
    lines = ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, prop in schema["properties"].items():
        section = schema["$defs"][prop["$ref"].rsplit("/", 1)[1]]["properties"] if "$ref" in prop else None
        lines += ([_row(f"{name}.{k}", p) for k, p in section.items()] if section else [_row(name, prop)])
    lines += ["", "| `data.dataset` | `data.root` holds | data.path=stream |", "| --- | --- | --- |"]
    lines += [f"| `{d.name}` | {d.root} | {'yes' if d.streamable else 'no'} |" for d in DATASETS.values()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--schema"]:
        print(json.dumps(json_schema(), indent=1))
    elif argv == ["--markdown"]:
        print(reference_table(), end="")
    else:
        print("usage: python -m goldnas_ray.core.config --schema | --markdown", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

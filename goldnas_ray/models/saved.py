"""A trained network as a folder of three files, readable without goldnas-ray's training code.

    <folder>/weights.safetensors   the DiscreteNet's state_dict (auxiliary head dropped), floats
                                   as float32; safetensors metadata {"format": "goldnas-ray/model"}
    <folder>/genotype.json         the architecture (``Genotype.to_json``, versioned)
    <folder>/model.json            what it is and was trained on: {"format", "version", "arch_id",
                                   "seed", "kind", "init", "dataset": {...}, "metrics": {...},
                                   "flops", "params", "search", "retrain"}

A retrain writes one per finished (architecture, seed) under ``<out>/models/<arch_id>-s<seed>/``
(:func:`model_folders` lists them); an export folder holds the same three files beside its
ONNX and torch.export programs. :func:`load_model` checks every file (present, its format and
version, weights that are the genotype's, names and shapes) before it builds the network, and
names the file and the problem. No pickle: safetensors and JSON only (docs/genotypes.md).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from goldnas_ray.core.config import DATASETS, DataConfig
from goldnas_ray.core.counting import count_params, total_flops
from goldnas_ray.core.discrete import DiscreteNet, build_network
from goldnas_ray.core.genotype import Genotype, GenotypeError, load_genotype
from goldnas_ray.files.store import Location, location

FORMAT = "goldnas-ray/model"
VERSION = 1
MODELS = "models"  # a retrain's model folders: <out>/models/<trial key>/
WEIGHTS, GENOTYPE, INFO = "weights.safetensors", "genotype.json", "model.json"
AUX_HEAD = "aux_head."

# what model.json must hold beside format and version (the model card and load_model read them)
REQUIRED = ("arch_id", "seed", "kind", "dataset", "metrics")


class ModelError(ValueError):
    """A model folder cannot be read: the message names the file and what is wrong with it."""


def save_model(folder: "str | Path | Location", net: nn.Module, genotype: Genotype, info: dict[str, Any]) -> None:
    """Write ``net``'s weights, ``genotype`` and ``info`` (model.json, ``format`` and ``version``
    added; ``flops`` and ``params`` counted when ``info`` lacks them) into ``folder``. model.json
    is written last, so a folder that holds it is complete."""
    import safetensors.torch

    folder = location(folder)
    tensors = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
               for k, v in net.state_dict().items() if not k.startswith(AUX_HEAD)}
    shape = (genotype.in_channels, genotype.input_size, genotype.input_size)
    counted = {"flops": info.get("flops") or total_flops(net, shape), "params": info.get("params") or count_params(net)}
    folder.mkdir()
    (folder / WEIGHTS).write_bytes(safetensors.torch.save(tensors, metadata={"format": FORMAT}))
    (folder / GENOTYPE).write_text(genotype.to_json())
    (folder / INFO).write_text(json.dumps({"format": FORMAT, "version": VERSION} | info | counted, indent=1))


def read_info(path: "str | Path | Location") -> dict[str, Any]:
    """model.json of the model folder ``path``, checked: present, a JSON object of this format
    and of a version this release reads."""
    file = location(path) / INFO
    if not file.is_file():
        raise ModelError(f"{location(path)} is not a model folder: {INFO} is missing")
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ModelError(f"{file}: format must be {FORMAT!r}, got {got!r}")
    version = raw.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelError(f"{file}: version must be a positive integer, got {version!r}")
    if version > VERSION:
        raise ModelError(f"{file}: version {version} is newer than this release reads ({VERSION}); "
                         f"upgrade goldnas-ray")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise ModelError(f"{file} lacks {', '.join(missing)}")
    return raw


def load_model(path: "str | Path | Location") -> DiscreteNet:
    """The trained network of a model folder (a retrain's ``models/<key>/`` or an export's), in
    eval mode on the CPU. Every file is checked first, against the genotype's network built on
    the meta device (no memory, no time): a missing file, a wrong format or version, and weights
    that are not the genotype's (names or shapes) raise ModelError naming the file."""
    import safetensors.torch

    folder = location(path)
    read_info(folder)
    geno = _genotype(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{folder}: {WEIGHTS} is missing")
    data = weights.read_bytes()
    _check_weights(weights, _header(weights, data), geno)
    net = build_network(geno)
    net.load_state_dict(safetensors.torch.load(data))
    return net.eval()


def model_folders(retrain_dir: "str | Path | Location") -> dict[str, Location]:
    """The complete model folders of a retrain: trial key (``<arch_id>-s<seed>``) -> folder."""
    models = location(retrain_dir) / MODELS
    return {name: models / name for name in models.subfolders() if (models / name / INFO).is_file()}


def dataset_info(d: DataConfig, data: Any) -> dict[str, Any]:
    """model.json's ``dataset``: what a network was trained and evaluated on, and the input it
    expects: ``(pixels / scale - mean) / std`` per channel, ``in_channels`` x ``input_size``
    squared. ``data``: the loaded ``Dataset`` or a streamed set's ``StreamInfo``."""
    c, size, _ = data.input_shape
    # a set normalised when loaded (digits) says how; the others are normalised per batch
    scale, mean, std = getattr(data, "loaded_as", None) or (255, data.mean, data.std)
    eval_size = getattr(data, "num_test", 0) or len(getattr(data, "y_test", ()))
    train, test = _splits(d, data)
    return {"name": d.dataset, "root": d.root, "train_split": train, "eval_split": test,
            "train_size": int(data.num_train), "eval_size": int(eval_size), "subset": d.subset,
            "num_classes": int(data.num_classes), "in_channels": int(c), "input_size": int(size),
            "scale": scale, "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _splits(d: DataConfig, data: Any) -> tuple[str, str]:
    """The names of the training and evaluation splits of ``d``'s dataset."""
    subset = f" ({d.subset:g} of each class, seeded)" if d.subset < 1 else ""
    family = DATASETS[d.dataset].family
    if family == "digits":
        return f"train: 80% stratified, seed 0{subset}", "test: the other 20%"
    if family == "cifar":
        return f"train{subset}", "test"
    if getattr(data, "held_out", False) or (d.dataset == "parquet" and not _has_val(d)):
        return f"all rows but every 10th{subset}", "held out: every 10th row"
    return f"train{subset}", "val"


def _has_val(d: DataConfig) -> bool:
    return (location(d.root) / "val").is_dir()


def _genotype(folder: Location) -> Genotype:
    file = folder / GENOTYPE
    if not file.is_file():
        raise ModelError(f"{folder}: {GENOTYPE} is missing")
    try:
        return load_genotype(file)
    except GenotypeError as exc:
        raise ModelError(str(exc)) from None


def _header(file: Location, data: bytes) -> dict[str, Any]:
    """The safetensors header of ``data`` (8 bytes of length, then JSON), checked for this format."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise ModelError(f"{file} is not a safetensors file") from None
    found = (header.get("__metadata__") or {}).get("format")
    if found != FORMAT:
        raise ModelError(f"{file}: safetensors metadata format must be {FORMAT!r}, got {found!r}")
    return header


def _check_weights(file: Location, header: dict[str, Any], geno: Genotype) -> None:
    """The tensors of ``header`` are exactly those of ``geno``'s network, shape for shape (an
    inherited network's edge scales may be there or not)."""
    with torch.device("meta"):
        expected = {k: list(v.shape) for k, v in build_network(geno).state_dict().items()}
    found = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(k for k in set(found) - set(expected)  # an edge's scale: an edge of the genotype's
                        if not (k.endswith(".scale") and any(e.startswith(f"{k[:-6]}.ops.") for e in expected)))
    wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    if missing or unexpected or wrong:
        shapes = [f"{k} {found[k]} (the genotype's: {expected[k]})" for k in wrong[:3]]
        raise ModelError(f"{file} does not hold the weights of {GENOTYPE}'s network: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, other shapes {shapes} "
                         f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of other shapes)")

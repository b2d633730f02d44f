"""MODEL_CARD.md: what an exported network is, what it expects, how good and how costly it is,
and where it came from, for someone who never ran goldnas-ray.

Everything comes from the model's model.json (dataset and its splits, the normalisation,
FLOPs, params, the search and retrain), the retrain's row of the architecture
(``models.pick.representatives``: the accuracy interval over its seeds, the measured
latency and where; absent for a model fetched from MLflow's registry), the export's checks,
the command line that exported it, and the project's licence.
"""
from __future__ import annotations

import shlex
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from goldnas_ray.retrain.stats import show

CARD = "MODEL_CARD.md"
LICENSE = Path(__file__).resolve().parents[2] / "LICENSE"


def licence() -> str:
    """The project's licence: its LICENSE file's first two non-blank lines (a checkout), else the
    installed package's licence expression."""
    if LICENSE.is_file():
        lines = [line.strip() for line in LICENSE.read_text().splitlines() if line.strip()]
        return " ".join(lines[:2])
    found = metadata.metadata("goldnas-ray")
    return found.get("License-Expression") or found.get("License") or "see the goldnas-ray package"


def model_card(info: dict[str, Any], differences: dict[str, float], argv: Sequence[str],
               row: pd.Series | None = None, *, opset: int) -> str:
    """The card's Markdown. ``info``: model.json; ``differences``: the exports' largest absolute
    differences from the network; ``argv``: the command that exported it; ``row``: the
    architecture's row of the retrain's representatives, when the retrain's reports are at hand;
    ``opset``: model.onnx's ONNX opset."""
    data = info["dataset"]
    lines = [f"# {info['arch_id']}, seed {info['seed']}: a {info['kind']} network for {data['name']}", "",
             f"An image classifier of {data['num_classes']} classes, "
             + ("found by a GOLD-NAS search" if info["kind"] == "searched" else "drawn at random (a baseline "
                "of matched FLOPs beside a GOLD-NAS search's networks)")
             + f" and retrained ({_init(info)}) by goldnas-ray.", ""]
    lines += _files(opset) + _data(data) + _quality(info, row) + _cost(info, row)
    lines += ["## Where it came from", "",
              f"- search: `{info.get('search')}`", f"- retrain: `{info.get('retrain')}`",
              f"- exported with: `{shlex.join(argv)}`",
              "- checks when exported, largest absolute difference of the logits from the PyTorch network on "
              "random inputs at two batch sizes: "
              + ", ".join(f"{name} {diff:.3g}" for name, diff in differences.items()), "",
              "## Licence", "", f"{licence()} (the licence of goldnas-ray, which made these files).", ""]
    return "\n".join(lines)


def _init(info: dict[str, Any]) -> str:
    return "from its inherited search weights" if info.get("init") == "inherited" else "from scratch"


def _files(opset: int) -> list[str]:
    return ["## Files", "",
            "| file | what |", "|---|---|",
            f"| model.onnx | ONNX (opset {opset}): input `image` (batch, C, H, W) float32, output `logits` "
            "(batch, classes); the batch size is free |",
            "| model.pt2 | torch.export program: `torch.export.load(path).module()(x)` |",
            "| weights.safetensors | the weights (state_dict of goldnas-ray's DiscreteNet) |",
            "| genotype.json | the architecture (goldnas-ray's genotype format) |",
            "| model.json | the facts below, machine-readable; `goldnas_ray.load_model(folder)` reads the folder |", ""]


def _data(data: dict[str, Any]) -> list[str]:
    size = data["input_size"]
    shape = f"(batch, {data['in_channels']}, {size}, {size}), float32, channels first"
    if data.get("mean") is not None and data.get("std") is not None:
        scale = data.get("scale", 255)
        norm = (f"pixels divided by {scale} (to [0, 1]), then per channel `(x - mean) / std` with "
                f"mean {list(data['mean'])} and std {list(data['std'])}")
    else:
        norm = "none: the dataset's images are stored as floats already, the network takes them as they are"
    return ["## Data and input", "",
            f"- dataset: {data['name']}",
            f"- trained on: {data['train_split']} ({data['train_size']} images)",
            f"- evaluated on: {data['eval_split']} ({data['eval_size']} images), which training never saw",
            f"- input: {shape}", f"- normalisation: {norm}",
            f"- output: {data['num_classes']} logits per image; the class is the index of the largest", ""]


def _quality(info: dict[str, Any], row: pd.Series | None) -> list[str]:
    metrics = info.get("metrics", {})
    lines = ["## Accuracy", "",
             f"- this network (seed {info['seed']}): {100 * metrics['test_acc']:.2f}% on the evaluation data "
             f"after the last of {metrics['epochs']} epochs "
             "(no epoch chosen on the test set)"]
    if row is not None:
        seeds = ", ".join(map(str, row["seeds"]))
        lines.append(f"- the architecture, mean over its seeds ({seeds}), in %: {show(row['accuracy'], 100, '.2f')}"
                     + ("; this seed is the one closest to the mean" if int(row.get("representative_seed", row["seed"])) == int(info["seed"]) else ""))
    return lines + [""]


def _cost(info: dict[str, Any], row: pd.Series | None) -> list[str]:
    latency = row["latency_ms"] if row is not None else None
    measured = (f"{latency:.3f} ms at batch 1 (float32, eval), measured end to end by the retrain on "
                f"{row['latency_device']} (the batch named there is its other timing, frontier.csv latency_ms_batch)"
                if latency is not None and pd.notna(latency) else
                "not measured (the retrain's reports were not at hand, or retrain.latency_repeats=0)")
    return ["## Cost", "",
            f"- FLOPs per image: {info['flops']:,} ({info['flops'] / 1e6:.3f} MFLOPs; a multiply-add counts 2)",
            f"- parameters: {info['params']:,}", f"- latency: {measured}", ""]

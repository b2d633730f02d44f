"""A trained network as files a deployment takes, each checked against the network when written.

:func:`export_model` writes, into a local folder: the model folder's three files
(``models.saved.save_model``: weights.safetensors, genotype.json, model.json), ``model.onnx``
(torch.onnx's exporter, opset :data:`ONNX_OPSET`, one input ``image`` of shape (batch, C, H, W),
one output ``logits`` of shape (batch, classes), the batch dimension dynamic, weights inside the
file) and ``model.pt2``
(``torch.export.export`` with the same dynamic batch, ``torch.export.save``, whose weights and constants go through torch.save, i.e. pickle:
load it only from a source you trust, with ``torch.export.load(path).module()``; the
safetensors weights and the genotype are the pickle-free copy).

Both exports are then run and compared with the PyTorch network, in eval mode on the CPU, on
random inputs (standard normal: what normalised images look like) at each batch size of
:data:`CHECK_BATCHES`, more than one, so a batch dimension fixed by mistake fails: onnxruntime
runs model.onnx, the loaded pt2 program runs model.pt2. The largest absolute difference of the
logits is printed for each, and an export above :data:`TOLERANCE` is refused (ExportError).
:func:`export_folder` does all this for a saved model folder, with its MODEL_CARD.md
(``models.card``), and copies the result to its destination only once every check passed.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from goldnas_ray.core.genotype import Genotype
from goldnas_ray.files.store import Location, location
from goldnas_ray.models.card import CARD, model_card
from goldnas_ray.retrain.plan import RetrainError

ONNX_OPSET = 18
TOLERANCE = 1e-4  # largest absolute difference of the logits an export may have
CHECK_BATCHES = (1, 5)  # batch sizes the exports are checked at (the example traced is of 2)
MAX_BATCH = 4096  # the dynamic batch dimension's upper bound
INPUT, OUTPUT = "image", "logits"


class ExportError(RetrainError):
    """An export that does not compute what the network computes: the message says by how much."""


def export_model(folder: Path, net: nn.Module, genotype: Genotype, info: dict[str, Any],
                 log: Callable[[str], None] = print) -> dict[str, float]:
    """Write the model folder's files, model.onnx and model.pt2 into the local ``folder`` and
    check both exports; returns each one's largest absolute difference ({"onnx", "pt2"})."""
    from goldnas_ray.models.saved import save_model

    net = net.eval().cpu().to(memory_format=torch.contiguous_format)
    save_model(location(folder), net, genotype, info)
    shape = (genotype.in_channels, genotype.input_size, genotype.input_size)
    example = (torch.randn((2, *shape), generator=torch.Generator().manual_seed(0)),)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}}
    with torch.no_grad():
        torch.export.save(torch.export.export(net, example, dynamic_shapes=dynamic), folder / "model.pt2")
        torch.onnx.export(net, example, folder / "model.onnx", dynamo=True, opset_version=ONNX_OPSET,
                          input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=dynamic, verbose=False,
                          external_data=False)  # one file: these networks are far below ONNX's 2 GB
    differences = check_exports(folder, net, shape)
    for name, diff in differences.items():
        log(f"model.{name}: largest absolute difference of the logits from the PyTorch network {diff:.3g} "
            f"(batches of {' and '.join(map(str, CHECK_BATCHES))} random inputs; refused above {TOLERANCE:g})")
    bad = {name: diff for name, diff in differences.items() if not diff <= TOLERANCE}  # NaN is refused too
    if bad:
        raise ExportError("; ".join(f"model.{name} differs from the PyTorch network by up to {diff:.3g} "
                                    f"(more than {TOLERANCE:g})" for name, diff in bad.items()))
    return differences


def check_exports(folder: Path, net: nn.Module, shape: tuple[int, int, int]) -> dict[str, float]:
    """The largest absolute difference between ``net``'s logits and those of model.onnx (run by
    onnxruntime) and model.pt2 (the loaded program), over random inputs at each batch size of
    :data:`CHECK_BATCHES`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    program = torch.export.load(folder / "model.pt2").module()
    gen = torch.Generator().manual_seed(1)
    differences: dict[str, list[float]] = {"onnx": [], "pt2": []}
    for batch in CHECK_BATCHES:
        x = torch.randn((batch, *shape), generator=gen)
        with torch.no_grad():
            want = net(x).numpy()
            got = {"onnx": session.run([OUTPUT], {INPUT: x.numpy()})[0], "pt2": program(x).numpy()}
        for name, out in got.items():
            if out.shape != want.shape:
                raise ExportError(f"model.{name} gives logits of shape {out.shape} for a batch of {batch}, "
                                  f"the network {want.shape}")
            differences[name].append(float(np.abs(out - want).max()))
    return {name: float(np.max(found)) for name, found in differences.items()}  # a NaN stays one


def export_folder(model: "str | Path | Location", out: "str | Path | Location", argv: Sequence[str],
                  row: pd.Series | None = None, log: Callable[[str], None] = print) -> dict[str, float]:
    """Export the model folder ``model`` (a retrain's ``models/<arch>-s<seed>/``, or one fetched
    from the registry) to ``out`` (a path or storage URI): the checked exports and MODEL_CARD.md,
    made in a local temporary folder and copied to ``out`` only once every check passed.
    ``row``: the architecture's row of ``models.pick.representatives``, for the card."""
    from goldnas_ray.models.saved import load_model, read_info

    model, out = location(model), location(out)
    info = read_info(model)
    net = load_model(model)  # checks every file of the folder, genotype.json among them
    with tempfile.TemporaryDirectory(prefix="goldnas-export-") as tmp:
        differences = export_model(Path(tmp), net, net.genotype, info, log)
        (Path(tmp) / CARD).write_text(model_card(info, differences, argv, row, opset=ONNX_OPSET))
        out.mkdir()
        out.upload(Path(tmp))
    return differences

"""The files a search leaves behind (DESIGN.md section 5), written atomically.

    <out>/frontier.json        recorded architectures + the run's config and space size
    <out>/genotypes/<id>.json  one architecture each (see genotype.py)
    <out>/history.parquet      one row per epoch
    <out>/config.yaml          the resolved config
    <out>/checkpoints/latest.pt  the whole search state (torch.save of tensors and plain data;
                               read back with weights_only=True)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

FRONTIER = "frontier.json"
HISTORY = "history.parquet"
CHECKPOINT = Path("checkpoints") / "latest.pt"


class OutputDirError(ValueError):
    """--out / --resume points somewhere unusable; nothing was written."""


def check_out_dir(out: Path, resume: bool) -> None:
    """Refuse to overwrite earlier results; for --resume, demand a search output folder."""
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise OutputDirError(f"--resume: {out} is not a search output folder "
                                 f"(no {CHECKPOINT} inside)")
        return
    check_new_out_dir(out, "search")


def check_new_out_dir(out: Path, stage: str) -> None:
    """A new run's output folder must not exist or be empty: earlier results are never
    overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputDirError(f"output folder {out} already exists and is not empty; pass a new "
                             f"--out, or --resume to continue the {stage} stored there")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def save_checkpoint(out: Path, state: dict[str, Any]) -> Path:
    path = out / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def write_outputs(out: Path, state: dict[str, Any], info: dict[str, Any]) -> None:
    """frontier.json, genotypes/ and history.parquet from a search ``state`` dict."""
    records = state["recorder"]["records"]
    archs = []
    for rec in records:
        rel = Path("genotypes") / f"{rec['id']}.json"
        _atomic_write(out / rel, json.dumps(rec["genotype"], indent=1).encode())
        archs.append({k: rec[k] for k in ("id", "epoch", "flops", "params", "lambda", "alive_ops")}
                     | {"genotype": str(rel)})
    frontier = {
        "format": "goldnas-ray/frontier",
        "version": 1,
        "finished": state["finished"],
        "epochs": state["epoch"],
        "flops_convention": "FLOPs of one image; a multiply-add counts 2 (torch.utils.flop_counter)",
        **info,
        "config": state["config"],
        "architectures": archs,
    }
    _atomic_write(out / FRONTIER, json.dumps(frontier, indent=1).encode())
    _atomic_write(out / "config.yaml", yaml.safe_dump(state["config"], sort_keys=False).encode())
    history = pd.DataFrame(state["history"])
    tmp = out / f".{HISTORY}.tmp-{os.getpid()}"
    history.to_parquet(tmp, index=False)
    tmp.replace(out / HISTORY)


def read_run_id(out: Path) -> str | None:
    """The MLflow run id recorded in ``out``'s frontier.json, or None when there is none yet
    (a crash between the checkpoint and the frontier write leaves no frontier.json)."""
    path = Path(out) / FRONTIER
    return json.loads(path.read_text()).get("mlflow_run_id") if path.is_file() else None


def read_frontier(out: Path) -> dict[str, Any]:
    path = Path(out) / FRONTIER
    if not path.is_file():
        raise OutputDirError(f"{out} holds no {FRONTIER}; is it a search output folder?")
    return json.loads(path.read_text())

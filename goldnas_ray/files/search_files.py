"""The files a search leaves behind (DESIGN.md section 5), each written atomically.

    <out>/records.json         the recorded architectures (fields of each, genotype path),
                               the run's config, space size and supernet FLOPs
    <out>/genotypes/<id>.json  one architecture each (see core/genotype.py)
    <out>/history.parquet      one row per epoch
    <out>/config.yaml          the resolved config
    <out>/checkpoints/latest.pt  the whole search state (torch.save of tensors and plain data;
                               read back with weights_only=True)

``records.json`` lists what the search recorded; the accuracy/FLOPs front is what a retrain
measures on them (``frontier.*`` of the retrain report). Search folders written before the
rename hold the same content as ``frontier.json``, which is still read.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
import yaml

from goldnas_ray.core.genotype import Genotype
from goldnas_ray.files.atomic import atomic_write, write_json, write_text

if TYPE_CHECKING:
    from goldnas_ray.core.search import GoldSearch

RECORDS = "records.json"
LEGACY_RECORDS = "frontier.json"
RECORDS_FORMAT = "goldnas-ray/records"
LEGACY_FORMAT = "goldnas-ray/frontier"
HISTORY = "history.parquet"
CONFIG = "config.yaml"
CHECKPOINT = Path("checkpoints") / "latest.pt"


class OutputDirError(ValueError):
    """--out / --resume / --search-dir points somewhere unusable; nothing was written."""


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


def save_checkpoint(out: Path, state: dict[str, Any]) -> Path:
    return atomic_write(Path(out) / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def write_genotype(path: Path, geno: Genotype) -> Path:
    return write_text(path, geno.to_json())


def write_outputs(out: Path, search: "GoldSearch", info: dict[str, Any]) -> None:
    """records.json, genotypes/, config.yaml and history.parquet of ``search`` as it stands."""
    out = Path(out)
    for rec in search.records:
        write_genotype(out / rec.genotype_path, rec.genotype)
    config = search.cfg.to_dict()
    write_json(out / RECORDS, {
        "format": RECORDS_FORMAT,
        "version": 1,
        "finished": search.finished,
        "epochs": search.epoch,
        "flops_convention": "FLOPs of one image; a multiply-add counts 2 (torch.utils.flop_counter)",
        **info,
        "config": config,
        "architectures": [rec.fields() | {"genotype": rec.genotype_path} for rec in search.records],
    })
    write_text(out / CONFIG, yaml.safe_dump(config, sort_keys=False))
    history = pd.DataFrame(search.history)
    atomic_write(out / HISTORY, lambda tmp: history.to_parquet(tmp, index=False))


def records_path(out: Path) -> Path | None:
    """``out``'s records.json (or the legacy frontier.json), or None when there is neither."""
    for name in (RECORDS, LEGACY_RECORDS):
        if (Path(out) / name).is_file():
            return Path(out) / name
    return None


def read_records(out: Path) -> dict[str, Any]:
    """The content of a search's records.json, format checked."""
    path = records_path(out)
    if path is None:
        raise OutputDirError(f"{out} holds no {RECORDS}; is it a search output folder?")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OutputDirError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(content, dict) or content.get("format") not in (RECORDS_FORMAT, LEGACY_FORMAT):
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise OutputDirError(f"{path} is not a goldnas-ray search record (format {found!r})")
    return content


def read_run_id(out: Path) -> str | None:
    """The MLflow run id recorded in ``out``'s records.json, or None when there is none yet."""
    return read_records(out).get("mlflow_run_id") if records_path(out) else None

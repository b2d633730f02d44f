"""The files a search leaves behind (docs/design.md, "Data flow"), each written atomically.

    <out>/records.json         the recorded architectures (fields of each, genotype path),
                               the run's config, space size and supernet FLOPs
    <out>/genotypes/<id>.json  one architecture each (see core/genotype.py)
    <out>/genotypes/<id>.safetensors  its weights in the supernet when recorded, as the discrete
                               network's state (SuperNet.inherited_state; size in records.json)
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
from typing import TYPE_CHECKING, Any, Union

import pandas as pd
import torch
import yaml
from safetensors.torch import save

from goldnas_ray.core.genotype import Genotype
from goldnas_ray.files.store import PROBE, Location, location

Where = Union[str, Path, Location]

if TYPE_CHECKING:
    from goldnas_ray.core.search import GoldSearch

RECORDS = "records.json"
LEGACY_RECORDS = "frontier.json"
RECORDS_FORMAT = "goldnas-ray/records"
LEGACY_FORMAT = "goldnas-ray/frontier"
HISTORY = "history.parquet"
CONFIG = "config.yaml"
LATENCY = "latency.json"  # a cost=latency search's table, copied beside its records
CHECKPOINT = Path("checkpoints") / "latest.pt"


class OutputDirError(ValueError):
    """--out / --resume / --search-dir points somewhere unusable; nothing was written."""


def check_out_dir(out: Where, resume: bool) -> None:
    """Refuse to overwrite earlier results; for --resume, demand a search output folder."""
    out = location(out)
    if resume:
        if not (out / str(CHECKPOINT)).is_file():
            raise OutputDirError(f"--resume: {out} is not a search output folder "
                                 f"(no {CHECKPOINT} inside)")
        return
    check_new_out_dir(out, "search")


def check_new_out_dir(out: Where, stage: str) -> None:
    """A new run's output folder must not exist or be empty: earlier results are never
    overwritten. An MLflow sqlite store alone (mlflow.db, its mlartifacts/) does not count: the
    new run is added to it (a start stopped before its first checkpoint leaves one, and
    ``--resume`` starts the run anew beside it, cli.outputs.resumes)."""
    out = location(out)
    if out.is_file() or [n for n in out.names() if not is_mlflow_store(n)]:
        raise OutputDirError(f"output folder {out} already exists and is not empty; pass a new "
                             f"--out, or --resume to continue the {stage} stored there")


def is_mlflow_store(name: str) -> bool:
    """Whether ``name``, in a run's folder, is part of the MLflow sqlite store kept there
    (mlflow.db and its journal files, mlartifacts/): a new run is added to it."""
    return name.startswith("mlflow.db") or name == "mlartifacts"


def left_by_a_probe(name: str) -> bool:
    """Whether ``name``, in a run's folder, is a storage probe's object (store.Location.probe)
    that a driver killed between the probe's write and delete left: no results, safe to remove."""
    return name.startswith(PROBE)


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    import io
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_checkpoint(out: Where, state: dict[str, Any]) -> bytes:
    """Write ``state`` as ``out``'s checkpoint; returns the bytes written."""
    data = checkpoint_bytes(state)
    (location(out) / str(CHECKPOINT)).write_bytes(data)
    return data


def load_checkpoint(path: Where) -> dict[str, Any]:
    loc = location(path)
    source = loc.local if loc.local is not None else loc.open_buffer()
    return torch.load(source, map_location="cpu", weights_only=True)


def write_genotype(path: Where, geno: Genotype) -> Location:
    return location(path).write_text(geno.to_json())


def write_outputs(out: Where, search: "GoldSearch", info: dict[str, Any]) -> None:
    """records.json, genotypes/, config.yaml, history.parquet (and latency.json, the table of a
    cost=latency search) of ``search`` as it stands
    (a genotype file already written is not written again: a record never changes)."""
    out = location(out)
    have = set((out / "genotypes").names())
    for rec in search.records:
        if rec.genotype_path.removeprefix("genotypes/") not in have:
            write_genotype(out / rec.genotype_path, rec.genotype)
    weights = write_weights(out / "genotypes", search, have)
    config = search.cfg.to_dict()
    (out / RECORDS).write_text(json.dumps({
        "format": RECORDS_FORMAT,
        "version": 1,
        "finished": search.finished,
        "epochs": search.epoch,
        "flops_convention": "FLOPs of one image; a multiply-add counts 2 (torch.utils.flop_counter)",
        **info,
        "config": config,
        "architectures": [rec.fields() | {"genotype": rec.genotype_path} | (
            {"weights": f"genotypes/{rec.id}.safetensors", "weights_bytes": weights[rec.id]}
            if rec.id in weights else {}) for rec in search.records],
    }, indent=1))
    (out / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    if search.latency is not None and not (out / LATENCY).is_file():  # the table its costs came from
        (out / LATENCY).write_text(json.dumps(search.latency.to_dict(), indent=1))
    history = pd.DataFrame(search.history)
    (out / HISTORY).write(lambda tmp: history.to_parquet(tmp, index=False))


def write_weights(folder: Location, search: "GoldSearch", have: set[str]) -> dict[str, int]:
    """<id>.safetensors in ``folder`` (whose files are ``have``) for each record whose inherited
    weights wait in ``search.inherited`` (safetensors: no code runs on loading); returns record id
    -> bytes of its weights file. Each size is noted as its file is written (a file written
    before a resume is asked of the store once), so an epoch asks the store for no sizes."""
    for rec_id, state in list(search.inherited.items()):
        if f"{rec_id}.safetensors" not in have:
            data = save(state)
            (folder / f"{rec_id}.safetensors").write_bytes(data)
            search.weights_bytes[rec_id] = len(data)
        del search.inherited[rec_id]
    for name in have:
        rec_id = name.removesuffix(".safetensors")
        if name.endswith(".safetensors") and rec_id not in search.weights_bytes:
            search.weights_bytes[rec_id] = (folder / name).size()
    return search.weights_bytes


def records_path(out: Where) -> Location | None:
    """``out``'s records.json (or the legacy frontier.json), or None when there is neither."""
    out = location(out)
    return next((out / n for n in (RECORDS, LEGACY_RECORDS) if (out / n).is_file()), None)


def read_manifest(path: Location, formats: tuple[str, ...], what: str) -> dict[str, Any]:
    """A run's JSON file whose ``format`` is one of ``formats``: its content, or an error naming
    the file (``what``: what it should have been, "a goldnas-ray sweep manifest")."""
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OutputDirError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(content, dict) or content.get("format") not in formats:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise OutputDirError(f"{path} is not {what} (format {found!r})")
    return content


def read_records(out: Where) -> dict[str, Any]:
    """The content of a search's records.json, format checked."""
    path = records_path(out)
    if path is None:
        raise OutputDirError(f"{location(out)} holds no {RECORDS}; is it a search output folder?")
    return read_manifest(path, (RECORDS_FORMAT, LEGACY_FORMAT), "a goldnas-ray search record")


def read_run_id(out: Where) -> str | None:
    """The MLflow run id recorded in ``out``'s records.json, or None when there is none yet."""
    return read_records(out).get("mlflow_run_id") if records_path(out) else None

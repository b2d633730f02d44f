"""Which data a retrained network learned from and was scored on, as MLflow dataset inputs.

Each run of a retrain (the parent and every child) records two inputs: the training split
(context ``training``) and the test split (context ``evaluation``), each with its name
(``digits-train``), digest, split, size and source, so the MLflow UI shows that a model was
scored on other images than it learned from.

The digest names the data's source, not its bytes: a hash of the config that selects the
images (dataset, ``data.root`` as a URI, labels, image size and columns; for the training
split ``retrain.subset``, the share of it a trial trains on) and the split. Hashing the images would mean
reading a whole dataset (an ImageNet folder, a bucket of Parquet files) again at the end of a
retrain; the config is what the retrain itself read them by. Two retrains with equal digests
read the same files (unless the files under ``data.root`` were changed in between).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from goldnas_ray.core.config import Config
from goldnas_ray.files.store import location

TRAINING, EVALUATION = "training", "evaluation"  # MLflow's contexts of a dataset input
SPLITS = {TRAINING: "train", EVALUATION: "test"}
CONTEXT = "mlflow.data.context"
SOURCE_TYPE = "goldnas-ray"  # the source is a goldnas-ray data config (JSON)
# the metrics a trial logs about one split: linked to that split's dataset on the logged model
SPLIT_METRICS = {"test_acc": EVALUATION, "train_loss": TRAINING, "train_acc": TRAINING}


@dataclass(frozen=True)
class DataInput:
    """One split as MLflow records it: ``name`` (``digits-train``), ``digest``, ``split`` (in
    words), ``size`` (images; None when unknown), ``source`` (the config that selects the images)."""

    context: str
    name: str
    digest: str
    split: str
    size: int | None
    source: dict[str, Any]

    def entity(self):
        """The ``mlflow.entities.DatasetInput`` of this split, tagged with its context and split."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        profile = json.dumps({"num_rows": self.size, "split": self.split})
        dataset = Dataset(self.name, self.digest, SOURCE_TYPE, json.dumps(self.source, sort_keys=True),
                          profile=profile)
        return DatasetInput(dataset, tags=[InputTag(CONTEXT, self.context), InputTag("split", self.split)])


def data_inputs(config: Config, sizes: dict[str, int | None], splits: dict[str, str] | None = None
                ) -> dict[str, DataInput]:
    """context -> :class:`DataInput` of the data ``config`` selects; ``sizes``: context ->
    images of that split (from the retrain's model folders or its manifest); ``splits``:
    context -> the split in words (model.json's ``train_split`` / ``eval_split``: "train: 80%
    stratified, seed 0"), else ``train`` / ``test``."""
    d = config.data
    base = {"dataset": d.dataset, "labels": d.labels, "image_size": d.image_size,
            "image_column": d.image_column, "label_column": d.label_column}
    if d.dataset != "digits":  # digits come with scikit-learn: data.root names nothing
        base["root"] = location(d.root).uri
    found = {}
    for context, split in SPLITS.items():
        source = base | {"split": split}
        if context == TRAINING:
            source |= {"subset": config.retrain.subset}  # a trial's share (retrain.plan.Manifest.data)
        digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
        found[context] = DataInput(context, f"{d.dataset}-{split}", digest, (splits or {}).get(context, split),
                                   sizes.get(context), source)
    return found


def split_sizes(info: dict[str, Any] | None, num_train: int, num_test: int | None) -> dict[str, int | None]:
    """context -> images: a model folder's model.json ``dataset`` section where there is one
    (``train_size``, ``eval_size``), else the retrain manifest's counts."""
    data = (info or {}).get("dataset") or {}
    return {TRAINING: data.get("train_size", num_train or None),
            EVALUATION: data.get("eval_size", num_test or None)}


def split_names(info: dict[str, Any] | None) -> dict[str, str]:
    """context -> the split in words, from a model folder's model.json (none without one)."""
    data = (info or {}).get("dataset") or {}
    return {c: data[k] for c, k in ((TRAINING, "train_split"), (EVALUATION, "eval_split")) if data.get(k)}

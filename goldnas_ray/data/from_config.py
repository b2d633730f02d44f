"""What a run's ``data`` config selects: the dataset to load and the transforms of a batch."""
from __future__ import annotations

from goldnas_ray.core.config import DATASETS, DataConfig
from goldnas_ray.data.batches import Augment
from goldnas_ray.data.datasets import Dataset, load_dataset


def load_data(d: DataConfig) -> Dataset:
    """The dataset ``d`` names, with its subset; every problem raises DataError naming the file."""
    data = load_dataset(d.dataset, d.root, d.download, subset=d.subset, labels=d.labels,
                        image_size=d.image_size, image_column=d.image_column, label_column=d.label_column)
    if d.image_size:
        data.model_size = d.image_size
    return data


def data_shape(d: DataConfig) -> tuple[tuple[int, int, int], int]:
    """The input shape and classes of the data, from its metadata when it streams."""
    from goldnas_ray.data.stream import stream_info

    data = stream_info(d) or load_data(d)
    return tuple(data.input_shape), data.num_classes


def train_augment(d: DataConfig, cutout: int, color_jitter: bool = False) -> Augment:
    """A training batch's transforms: the config's, or its dataset's defaults where unset."""
    family = DATASETS[d.dataset].family
    cifar, images = family == "cifar", family == "images"
    crop = d.crop_padding if d.crop_padding is not None else (4 if cifar else 0)
    flip = d.flip if d.flip is not None else (cifar or images)
    resized = d.random_resized_crop if d.random_resized_crop is not None else (images and bool(d.image_size))
    return Augment(crop_padding=crop, flip=flip, cutout=cutout, color_jitter=color_jitter,
                   resized_crop=d.image_size if resized and d.image_size else 0,
                   eval_size=d.image_size or 0)


def eval_augment(d: DataConfig) -> Augment:
    """A test batch's transforms: resize and centre-crop to ``image_size`` when it is set."""
    return Augment(eval_size=d.image_size or 0)

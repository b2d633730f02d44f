"""Datasets as in-memory tensors.

``digits`` (8x8 grey handwritten digits, 1,797 images) ships inside scikit-learn, so the
default run needs no download. ``cifar10`` reads the official binary release
(``cifar-10-batches-bin``: records of 1 label byte + 3,072 pixel bytes).
"""
from __future__ import annotations

import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class DataError(ValueError):
    """A dataset is missing or malformed."""


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # float32 N x C x H x W, normalised
    y_train: torch.Tensor  # int64 N
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def load_dataset(name: str, root: str | Path = "data", download: bool = False) -> Dataset:
    if name == "digits":
        return load_digits()
    if name == "cifar10":
        return load_cifar10(root, download)
    raise DataError(f"unknown dataset {name!r}; known: digits, cifar10")


def load_digits(test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's digits with a fixed stratified split (seed 0): 1,437 train, 360 test."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=0, stratify=y)
    mean, std = x_tr.mean(), x_tr.std()
    to_t = lambda a: torch.from_numpy((a - mean) / std).unsqueeze(1).contiguous()  # noqa: E731
    return Dataset("digits", to_t(x_tr), torch.from_numpy(y_tr), to_t(x_te), torch.from_numpy(y_te), 10)


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise DataError(f"{path} is not a CIFAR-10 binary batch ({raw.size} bytes is not a "
                        f"multiple of 3073)")
    records = raw.reshape(-1, 3073)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{path} holds label {labels.max()}; CIFAR-10 labels are 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(root: str | Path, download: bool = False) -> Dataset:
    folder = Path(root) / "cifar-10-batches-bin"
    if not folder.is_dir():
        if not download:
            raise DataError(f"CIFAR-10 not found at {folder}; set data.download=true or place "
                            f"the binary release there")
        Path(root).mkdir(parents=True, exist_ok=True)
        archive = Path(root) / "cifar-10-binary.tar.gz"
        urllib.request.urlretrieve(CIFAR10_URL, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    train_files = [folder / f"data_batch_{i}.bin" for i in range(1, 6)]
    test_file = folder / "test_batch.bin"
    for f in [*train_files, test_file]:
        if not f.is_file():
            raise DataError(f"CIFAR-10 file {f} is missing")
    parts = [_read_cifar_bin(f) for f in train_files]
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    x_te, y_te = _read_cifar_bin(test_file)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    to_t = lambda a: ((torch.from_numpy(a).float() / 255.0 - mean) / std).contiguous()  # noqa: E731
    return Dataset("cifar10", to_t(x_tr), torch.from_numpy(y_tr), to_t(x_te), torch.from_numpy(y_te), 10)

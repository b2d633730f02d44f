"""Datasets held in memory: a loader for every name of the registry (``goldnas_ray.core.config.
DATASETS``), read from a local folder or any storage URI through one storage layer.

    digits       8x8 grey handwritten digits shipped inside scikit-learn (the default: no
                 download); float32, already normalised
    cifar10      the official binary release, ``<root>/cifar-10-batches-bin``
    cifar100     the official binary release, ``<root>/cifar-100-binary`` (coarse and fine
                 label bytes; ``data.labels`` picks one, fine by default)
    imagefolder  ``<root>/train/<class>/*`` and ``<root>/val/<class>/*`` JPEG / PNG files (the
                 ImageNet layout); classes are the sorted folder names
    parquet      ``<root>`` a Parquet file or folder with a column of encoded image bytes and an
                 integer label column (``data.image_column``, ``data.label_column``):
                 ``<root>/train`` and ``<root>/val`` when it holds both, else one table of which
                 every 10th row is held out for testing (:func:`held_out`)

``root`` is a local path or a URI (``s3://bucket/prefix?endpoint_override=...``): splits, class
folders and files are found by listing it through ``goldnas_ray.files.store``, so a set in a
bucket is split exactly as the same set on disk. Image sets are kept as uint8 (CIFAR-10's
50,000 training images: 150 MB, not 600) with their channel mean and std; batches are
converted, augmented and normalised on the training device (``data.batches``). With
``data.image_size`` set, decoded images are resized (shorter side to size x 256/224) and
centre-cropped to a common square, from which training crops are taken. ``data.subset`` keeps
a fixed per-class fraction of the training set (seeded), as searches on ImageNet keep 10% or
2.5%. Every problem is reported with the file it is in, before training: a DataError for
data that is missing, unreadable or malformed (a fault of the input), while a StorageError the
storage layer gives kind infrastructure (a store that kept failing after its retries, or a
failure of the store it does not recognise) is passed on as it is, so that a sweep tries the
search again: ``files.store`` alone decides which is which.
"""
from __future__ import annotations

import io
import tarfile
import urllib.request
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from goldnas_ray.core.config import DATASETS as SPECS
from goldnas_ray.data.batches import Augment, eval_batches, iterate_batches
from goldnas_ray.data.transforms import stored_size
from goldnas_ray.files.store import INFRASTRUCTURE, Location, StorageError, location, retrying

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
HELD_OUT_EVERY = 10  # a table without splits: rows 9, 19, 29, ... are the test split


class DataError(ValueError):
    """A dataset is missing or malformed; the message names the file. A fault of the input:
    reading it again fails the same way (a storage outage is a StorageError instead)."""

    kind = "input"


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # N x C x H x W: uint8 pixels, or float32 already normalised
    y_train: torch.Tensor  # int64 N
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] | None = None  # per channel, of pixels / 255 (uint8 sets)
    std: tuple[float, ...] | None = None
    model_size: int | None = None  # the size crops are cut to, when stored images are larger
    # float32 sets, normalised when loaded: (scale, mean, std) of (pixels / scale - mean) / std
    loaded_as: tuple[int, tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    def train_batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                      augment: Augment | None = None, device: torch.device | str | None = None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of this rank's training batches (see ``batches.iterate_batches``)."""
        return iterate_batches(self.x_train, self.y_train, batch_size, seed, epoch, rank, world_size,
                               augment=augment, mean=self.mean, std=self.std, device=device)

    def eval_batches(self, batch_size: int, augment: Augment | None = None,
                     device: torch.device | str | None = None, rank: int = 0, world_size: int = 1
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of the test split (every world_size-th image, in order), prepared
        for evaluation; the whole split for one rank."""
        return eval_batches(self.x_test[rank::world_size], self.y_test[rank::world_size], batch_size, augment,
                            self.mean, self.std, device)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """What the network sees: the stored images, or their crops of ``model_size``."""
        c, h, w = self.x_train.shape[1:]
        return (c, self.model_size, self.model_size) if self.model_size else (c, h, w)


Loader = Callable[..., Dataset]
LOADERS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    """Attach the loader of registry entry ``name`` (core.config.DATASETS)."""
    if name not in SPECS:
        raise KeyError(f"{name!r} is not in the dataset registry (goldnas_ray.core.config.DATASETS)")

    def add(fn: Loader) -> Loader:
        LOADERS[name] = fn
        return fn
    return add


def load_dataset(name: str, root: str | Path = "data", download: bool = False, *,
                 subset: float = 1.0, seed: int = 0, **options) -> Dataset:
    """The dataset ``name`` of the registry, its training set cut to ``subset`` per class."""
    if name not in LOADERS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}")
    try:
        data = LOADERS[name](root=root, download=download, **options)
    except StorageError as exc:
        if exc.kind == INFRASTRUCTURE:  # the store's fault (store.py decides): the data may be fine
            raise
        raise DataError(f"cannot read {name} data at {root}: {exc}") from exc
    if len(data.y_train) == 0 or len(data.y_test) == 0:
        raise DataError(f"dataset {name} at {root} has an empty training or test split")
    return keep_subset(data, subset, seed) if subset < 1 else data


def subset_indices(labels: torch.Tensor, num_classes: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``fraction`` of each class's images (at least one per class present),
    chosen by a generator seeded with ``seed`` alone: the in-memory and the streamed paths keep
    exactly the same images."""
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().view(-1)
        if len(idx):
            take = max(1, round(fraction * len(idx)))
            keep.append(idx[torch.randperm(len(idx), generator=gen)[:take]])
    return torch.cat(keep).sort().values


def keep_subset(data: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """The same dataset with ``fraction`` of each class's training images (:func:`subset_indices`)."""
    order = subset_indices(data.y_train, data.num_classes, fraction, seed)
    return dataclasses.replace(data, x_train=data.x_train[order], y_train=data.y_train[order])


def check_labels(labels: Sequence | np.ndarray, where: str, num_classes: int | None = None) -> np.ndarray:
    """Labels as int64, each an integer in [0, num_classes) (or >= 0 when the number of classes
    is not known); raises DataError naming ``where``, the row and the first bad label. The one
    check every dataset's labels go through."""
    values = labels if isinstance(labels, np.ndarray) else np.asarray(list(labels), dtype=object)
    bound = f"0..{num_classes - 1}" if num_classes is not None else "integers >= 0"
    integral = values.dtype.kind in "iu" or all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
    if not integral:
        row = next(i for i, v in enumerate(values)
                   if not isinstance(v, (int, np.integer)) or isinstance(v, bool))
        raise DataError(f"{where} holds label {values[row]!r} at row {row}; labels must be {bound}")
    ints = values.astype(np.int64)
    bad = (ints < 0) | (ints >= num_classes if num_classes is not None else False)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{where} holds label {ints[row]} at row {row}; labels must be {bound}")
    return ints


def held_out(n: int, start: int = 0) -> np.ndarray:
    """Which of rows start .. start + n - 1 of a table without splits belong to its test split:
    every 10th (9, 19, ...). The in-memory and the streamed paths use this one rule, so neither
    trains on a test row."""
    return np.arange(start, start + n) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1


@register("digits")
def load_digits(test_fraction: float = 0.2, **_: object) -> Dataset:
    """scikit-learn's digits with a fixed stratified split (seed 0): 1,437 train, 360 test."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=0, stratify=y)
    mean, std = x_tr.mean(), x_tr.std()
    to_t = lambda a: torch.from_numpy((a - mean) / std).unsqueeze(1).contiguous()  # noqa: E731
    return Dataset("digits", to_t(x_tr), torch.from_numpy(y_tr), to_t(x_te), torch.from_numpy(y_te), 10,
                   loaded_as=(16, (float(mean),), (float(std),)))


# ---- CIFAR ----------------------------------------------------------------------------------
def _read_cifar_bin(path: Location, label_bytes: int, label_index: int, classes: int, kind: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + 3072
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise DataError(f"{path} is not a {kind} binary file ({raw.size} bytes is not a multiple "
                        f"of {record})")
    records = raw.reshape(-1, record)
    labels = check_labels(records[:, label_index], str(path), classes)
    return records[:, label_bytes:].reshape(-1, 3, 32, 32), labels


def _fetch(root: Location, folder: Location, url: str, download: bool, kind: str) -> None:
    if folder.is_dir():
        return
    if not download:
        raise DataError(f"{kind} not found at {folder}; set data.download=true or place the "
                        f"binary release there")
    if root.is_remote:
        raise DataError(f"{kind} not found at {folder}, and data.download unpacks into a local folder "
                        f"only: place the binary release in the bucket, or use a local data.root")
    root.mkdir()
    archive = root.local / url.rsplit("/", 1)[-1]
    urllib.request.urlretrieve(url, archive)
    with tarfile.open(archive) as tar:
        tar.extractall(root.local, filter="data")


def _cifar(name: str, train_files: list[Location], test_file: Location, label_bytes: int,
           label_index: int, classes: int, mean, std) -> Dataset:
    for f in [*train_files, test_file]:
        if not f.is_file():
            raise DataError(f"{name} file {f} is missing")
    parts = [_read_cifar_bin(f, label_bytes, label_index, classes, name) for f in train_files]
    x_te, y_te = _read_cifar_bin(test_file, label_bytes, label_index, classes, name)
    t = torch.from_numpy
    return Dataset(name, t(np.concatenate([p[0] for p in parts])), t(np.concatenate([p[1] for p in parts])),
                   t(x_te.copy()), t(y_te), classes, mean, std)


@register("cifar10")
def load_cifar10(root: str | Path = "data", download: bool = False, **_: object) -> Dataset:
    root = location(root)
    folder = root / "cifar-10-batches-bin"
    _fetch(root, folder, CIFAR10_URL, download, "CIFAR-10")
    return _cifar("cifar10", [folder / f"data_batch_{i}.bin" for i in range(1, 6)],
                  folder / "test_batch.bin", 1, 0, 10, CIFAR10_MEAN, CIFAR10_STD)


@register("cifar100")
def load_cifar100(root: str | Path = "data", download: bool = False, labels: str = "fine",
                  **_: object) -> Dataset:
    """Records of coarse label byte, fine label byte, 3,072 pixel bytes."""
    root = location(root)
    folder = root / "cifar-100-binary"
    _fetch(root, folder, CIFAR100_URL, download, "CIFAR-100")
    fine = labels == "fine"
    return _cifar("cifar100", [folder / "train.bin"], folder / "test.bin", 2, 1 if fine else 0,
                  100 if fine else 20, CIFAR100_MEAN, CIFAR100_STD)


# ---- encoded images ----------------------------------------------------------------------------
def decode_image(data: bytes, where: str, image_size: int | None) -> np.ndarray:
    """RGB uint8 (3, H, W) of one encoded image; resized and centre-cropped to image_size x
    image_size stored pixels (shorter side to image_size x 256/224 first) when it is set."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{where} is not a readable image: {exc}") from exc
    if image_size:
        img = _resize_center(img, stored_size(image_size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _resize_center(img, side: int):
    from PIL import Image

    w, h = img.size
    scale = side / min(w, h)
    img = img.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def _stack(images: list[np.ndarray], names: list[str]) -> torch.Tensor:
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        first = images[0].shape
        odd = next(n for im, n in zip(images, names) if im.shape != first)
        raise DataError(f"images differ in size ({names[0]} is {first[1]}x{first[2]}, {odd} is "
                        f"{images[names.index(odd)].shape[1]}x{images[names.index(odd)].shape[2]}); "
                        f"set data.image_size to resize them to one size")
    return torch.from_numpy(np.stack(images))


def channel_stats(x: torch.Tensor | np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), as fractions of 255."""
    f = torch.as_tensor(x).float().div_(255)
    return tuple(f.mean(dim=(0, 2, 3)).tolist()), tuple(f.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist())


def folder_split(root: "str | Path | Location", split: str, classes: list[str] | None = None
                 ) -> tuple[list[str], list[Location], list[int]]:
    """(classes, image files, labels) of ``root/split/<class>/*``, listed through the storage
    layer; ``classes`` (the training split's) must match the folders found."""
    folder = location(root) / split
    if not folder.is_dir():
        raise DataError(f"image folder split {folder} is missing (expected train/<class>/ and val/<class>/)")
    found = folder.subfolders()
    if classes is None:
        classes = found
        if len(classes) < 2:
            raise DataError(f"{folder} holds {len(classes)} class folder(s); at least 2 are needed")
    elif found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise DataError(f"{folder} has other classes than the training split: missing {missing}, extra {extra}")
    files, labels = [], []
    for label, name in enumerate(classes):
        mine = [folder / name / f for f in (folder / name).names() if f.lower().endswith(IMAGE_SUFFIXES)]
        if not mine:
            raise DataError(f"class folder {folder / name} holds no JPEG or PNG image")
        files += mine
        labels += [label] * len(mine)
    return classes, files, labels


@register("imagefolder")
def load_imagefolder(root: str | Path = "data", image_size: int | None = None, **_: object) -> Dataset:
    classes, train_files, y_tr = folder_split(root, "train")
    _, val_files, y_te = folder_split(root, "val", classes)
    x_tr = _stack([decode_image(f.read_bytes(), str(f), image_size) for f in train_files], list(map(str, train_files)))
    x_te = _stack([decode_image(f.read_bytes(), str(f), image_size) for f in val_files], list(map(str, val_files)))
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{location(root)}: train images are {tuple(x_tr.shape[2:])}, val images "
                        f"{tuple(x_te.shape[2:])}; set data.image_size")
    mean, std = channel_stats(x_tr)
    return Dataset("imagefolder", x_tr, torch.tensor(y_tr), x_te, torch.tensor(y_te), len(classes), mean, std)


def parquet_splits(root: "str | Path | Location") -> dict[str, Location]:
    """The Parquet data of each split: ``{"train": root/train, "val": root/val}`` when ``root``
    holds both folders, ``{"all": root}`` when it holds neither (then :func:`held_out` splits
    its rows). Found by listing ``root`` through the storage layer: a bucket and a disk give
    the same answer."""
    loc = location(root)
    present = {s: loc / s for s in ("train", "val") if (loc / s).is_dir()}
    if len(present) == 2:
        return present
    if present:
        (have,) = present
        other = "val" if have == "train" else "train"
        raise DataError(f"Parquet data at {loc} holds {have}/ but no {other}/: give both splits, or "
                        f"neither (then every {HELD_OUT_EVERY}th row is held out for testing)")
    return {"all": loc}


def parquet_files(source: Location) -> tuple[list[str], object]:
    """The files of a Parquet file or folder, in sorted order, and their pyarrow filesystem.
    Every reader gets this one list, so that row i (and whether it is held out) is the same
    row for the in-memory path and the streamed one. Names starting with ``_`` or ``.`` are
    metadata, as for pyarrow."""
    path, fs = source.arrow()
    if not source.is_dir():
        return [path], fs
    names = [f for f in source.files() if not any(part.startswith(("_", ".")) for part in f.split("/"))]
    if not names:
        raise DataError(f"Parquet folder {source} holds no file")
    return [f"{path}/{name}" for name in names], fs


def read_parquet_table(source: Location, columns: list[str] | None = None, head: int | None = None):
    """A Parquet file or folder as one pyarrow table (its first ``head`` rows only: a sample
    that reads no more row groups than it needs), through the storage layer."""
    import pyarrow.dataset as pads

    paths, fs = parquet_files(source)
    parts = _parquet_read(source, lambda: pads.dataset(paths, filesystem=fs, format="parquet"))
    check_columns(parts.schema.names, source, columns or ())  # from the schema, before any row
    return _parquet_read(source, lambda: parts.head(head, columns=columns) if head is not None
                         else parts.to_table(columns=columns))


def _parquet_read(source: Location, call: Callable[[], object]):
    """``call()`` through the storage layer's retries: a StorageError of kind infrastructure
    (the store's fault) is raised as it is, one of kind input (a missing or corrupt file,
    pyarrow's ArrowInvalid) becomes a DataError."""
    try:
        return retrying(call, f"Parquet data at {source}")
    except StorageError as exc:
        if exc.kind == INFRASTRUCTURE:
            raise
        raise DataError(f"cannot read {exc}") from exc


def check_columns(names: Sequence[str], source: Location, columns: Sequence[str]) -> None:
    """Refuse a table (its column ``names``) without one of ``columns``."""
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"Parquet data at {source} has no column {missing[0]!r} (columns: "
                        f"{', '.join(names)}); set data.image_column / data.label_column")


def image_bytes_of(blob) -> bytes:
    """An encoded image from a Parquet cell: bytes, or a struct with a ``bytes`` field."""
    return blob if isinstance(blob, bytes) else (blob or {}).get("bytes", b"")


@register("parquet")
def load_parquet(root: str | Path = "data", image_size: int | None = None, image_column: str = "image",
                 label_column: str = "label", **_: object) -> Dataset:
    decoded = {}
    for split, source in parquet_splits(root).items():
        table = read_parquet_table(source, columns=[image_column, label_column])
        labels = check_labels(table.column(label_column).to_pylist(), f"Parquet data at {source} ({label_column!r})")
        names = [f"{source} row {i}" for i in range(len(labels))]
        images = [decode_image(image_bytes_of(b), n, image_size)
                  for b, n in zip(table.column(image_column).to_pylist(), names)]
        decoded[split] = (_stack(images, names), torch.from_numpy(labels))
    if "all" in decoded:
        x, y = decoded.pop("all")
        held = torch.from_numpy(held_out(len(y)))
        decoded = {"train": (x[~held], y[~held]), "val": (x[held], y[held])}
    (x_tr, y_tr), (x_te, y_te) = decoded["train"], decoded["val"]
    classes = int(max(y_tr.max(), y_te.max())) + 1
    mean, std = channel_stats(x_tr)
    return Dataset("parquet", x_tr, y_tr, x_te, y_te, classes, mean, std)

"""Datasets held in memory, and the registry that names them (``data.dataset``).

    digits       8x8 grey handwritten digits shipped inside scikit-learn (the default: no
                 download); float32, already normalised
    cifar10      the official binary release, ``<root>/cifar-10-batches-bin``
    cifar100     the official binary release, ``<root>/cifar-100-binary`` (coarse and fine
                 label bytes; ``data.labels`` picks one, fine by default)
    imagefolder  ``<root>/train/<class>/*`` and ``<root>/val/<class>/*`` JPEG / PNG files (the
                 ImageNet layout); classes are the sorted folder names
    parquet      ``<root>`` a Parquet file or folder (or a URI pyarrow opens) with a column of
                 encoded image bytes and an integer label column (``data.image_column``,
                 ``data.label_column``); ``<root>/train`` and ``<root>/val`` when it is a
                 folder holding both, else a fixed 10% of the rows are held out

Image sets are kept as uint8 (CIFAR-10's 50,000 training images: 150 MB, not 600) with their
channel mean and std; batches are converted, augmented and normalised on the training device
(``data.batches``). With ``data.image_size`` set, decoded images are resized (shorter side to
size x 256/224) and centre-cropped to a common square, from which training crops are taken.
``data.subset`` keeps a fixed per-class fraction of the training set (seeded), as searches on
ImageNet keep 10% or 2.5%. Every problem is reported with the file it is in, before training.
"""
from __future__ import annotations

import io
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from goldnas_ray.core.config import DATASETS as SPECS
from goldnas_ray.data.batches import Augment, eval_batches, iterate_batches

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DataError(ValueError):
    """A dataset is missing or malformed; the message names the file."""


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
                     device: torch.device | str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test split in order, prepared for evaluation."""
        return eval_batches(self.x_test, self.y_test, batch_size, augment, self.mean, self.std, device)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """What the network sees: the stored images, or their crops of ``model_size``."""
        c, h, w = self.x_train.shape[1:]
        return (c, self.model_size, self.model_size) if self.model_size else (c, h, w)


Loader = Callable[..., Dataset]
LOADERS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    """Attach the loader of registry entry ``name`` (goldnas_ray.core.config.DATASETS)."""
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
    data = LOADERS[name](root=root, download=download, **options)
    if len(data.y_train) == 0 or len(data.y_test) == 0:
        raise DataError(f"dataset {name} at {root} has an empty training or test split")
    return keep_subset(data, subset, seed) if subset < 1 else data


def keep_subset(data: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """The same dataset with ``fraction`` of each class's training images (at least one),
    chosen by a generator seeded with ``seed`` alone."""
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(data.num_classes):
        idx = (data.y_train == c).nonzero().view(-1)
        if len(idx):
            take = max(1, round(fraction * len(idx)))
            keep.append(idx[torch.randperm(len(idx), generator=gen)[:take]])
    order = torch.cat(keep).sort().values
    return Dataset(data.name, data.x_train[order], data.y_train[order], data.x_test, data.y_test,
                   data.num_classes, data.mean, data.std, data.model_size)


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
    return Dataset("digits", to_t(x_tr), torch.from_numpy(y_tr), to_t(x_te), torch.from_numpy(y_te), 10)


# ---- CIFAR ----------------------------------------------------------------------------------
def _read_cifar_bin(path: Path, label_bytes: int, label_index: int, classes: int, kind: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + 3072
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise DataError(f"{path} is not a {kind} binary file ({raw.size} bytes is not a multiple "
                        f"of {record})")
    records = raw.reshape(-1, record)
    labels = records[:, label_index].astype(np.int64)
    if labels.max() >= classes:
        raise DataError(f"{path} holds label {labels.max()}; {kind} labels are 0..{classes - 1}")
    return records[:, label_bytes:].reshape(-1, 3, 32, 32), labels


def _fetch(root: Path, folder: Path, url: str, download: bool, kind: str) -> None:
    if folder.is_dir():
        return
    if not download:
        raise DataError(f"{kind} not found at {folder}; set data.download=true or place the "
                        f"binary release there")
    root.mkdir(parents=True, exist_ok=True)
    archive = root / url.rsplit("/", 1)[-1]
    urllib.request.urlretrieve(url, archive)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")


def _cifar(name: str, root: Path, train_files: list[Path], test_file: Path, label_bytes: int,
           label_index: int, classes: int, mean, std) -> Dataset:
    for f in [*train_files, test_file]:
        if not f.is_file():
            raise DataError(f"{name} file {f} is missing")
    parts = [_read_cifar_bin(f, label_bytes, label_index, classes, name) for f in train_files]
    x_te, y_te = _read_cifar_bin(test_file, label_bytes, label_index, classes, name)
    t = torch.from_numpy
    return Dataset(name, t(np.concatenate([p[0] for p in parts])), t(np.concatenate([p[1] for p in parts])),
                   t(x_te), t(y_te), classes, mean, std)


@register("cifar10")
def load_cifar10(root: str | Path = "data", download: bool = False, **_: object) -> Dataset:
    root = Path(root)
    folder = root / "cifar-10-batches-bin"
    _fetch(root, folder, CIFAR10_URL, download, "CIFAR-10")
    return _cifar("cifar10", root, [folder / f"data_batch_{i}.bin" for i in range(1, 6)],
                  folder / "test_batch.bin", 1, 0, 10, CIFAR10_MEAN, CIFAR10_STD)


@register("cifar100")
def load_cifar100(root: str | Path = "data", download: bool = False, labels: str = "fine",
                  **_: object) -> Dataset:
    """Records of coarse label byte, fine label byte, 3,072 pixel bytes."""
    if labels not in ("fine", "coarse"):
        raise DataError(f"data.labels must be 'fine' or 'coarse' for cifar100, got {labels!r}")
    root = Path(root)
    folder = root / "cifar-100-binary"
    _fetch(root, folder, CIFAR100_URL, download, "CIFAR-100")
    fine = labels == "fine"
    return _cifar("cifar100", root, [folder / "train.bin"], folder / "test.bin", 2, 1 if fine else 0,
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
        img = _resize_center(img, round(image_size * 256 / 224))
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


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    f = x.float().div_(255)
    return tuple(f.mean(dim=(0, 2, 3)).tolist()), tuple(f.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist())


def _split_folder(folder: Path, classes: list[str] | None, image_size: int | None
                  ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    if not folder.is_dir():
        raise DataError(f"image folder split {folder} is missing (expected train/<class>/ and val/<class>/)")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if classes is None:
        classes = found
        if len(classes) < 2:
            raise DataError(f"{folder} holds {len(classes)} class folder(s); at least 2 are needed")
    elif found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise DataError(f"{folder} has other classes than the training split: missing {missing}, extra {extra}")
    images, labels, names = [], [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {folder / name} holds no JPEG or PNG image")
        for path in files:
            images.append(decode_image(path.read_bytes(), str(path), image_size))
            labels.append(label)
            names.append(str(path))
    return classes, _stack(images, names), torch.tensor(labels, dtype=torch.int64)


@register("imagefolder")
def load_imagefolder(root: str | Path = "data", image_size: int | None = None, **_: object) -> Dataset:
    root = Path(root)
    classes, x_tr, y_tr = _split_folder(root / "train", None, image_size)
    _, x_te, y_te = _split_folder(root / "val", classes, image_size)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{root}: train images are {tuple(x_tr.shape[2:])}, val images {tuple(x_te.shape[2:])}; "
                        f"set data.image_size")
    mean, std = _channel_stats(x_tr)
    return Dataset("imagefolder", x_tr, y_tr, x_te, y_te, len(classes), mean, std)


@register("parquet")
def load_parquet(root: str | Path = "data", image_size: int | None = None, image_column: str = "image",
                 label_column: str = "label", **_: object) -> Dataset:
    import pyarrow.parquet as pq

    root_s = str(root)
    splits = {"train": f"{root_s}/train", "val": f"{root_s}/val"}
    has_splits = Path(root_s).is_dir() and all(Path(p).exists() for p in splits.values())
    tables = {}
    for split, source in (splits.items() if has_splits else [("all", root_s)]):
        try:
            tables[split] = pq.read_table(source)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read Parquet data at {source}: {exc}") from exc
        missing = [c for c in (image_column, label_column) if c not in tables[split].column_names]
        if missing:
            raise DataError(f"Parquet data at {source} has no column {missing[0]!r} (columns: "
                            f"{', '.join(tables[split].column_names)}); set data.image_column / "
                            f"data.label_column")
    decoded = {}
    for split, table in tables.items():
        blobs = table.column(image_column).to_pylist()
        labels = table.column(label_column).to_pylist()
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in labels):
            raise DataError(f"Parquet data at {root_s} ({split}): column {label_column!r} must hold "
                            f"integers >= 0")
        names = [f"{root_s} ({split}) row {i}" for i in range(len(blobs))]
        images = [decode_image(b if isinstance(b, bytes) else (b or {}).get("bytes", b""), n, image_size)
                  for b, n in zip(blobs, names)]
        decoded[split] = (_stack(images, names), torch.tensor(labels, dtype=torch.int64))
    if not has_splits:
        x, y = decoded.pop("all")
        held = torch.arange(len(y)) % 10 == 9  # a fixed 10% held out for testing
        decoded = {"train": (x[~held], y[~held]), "val": (x[held], y[held])}
    (x_tr, y_tr), (x_te, y_te) = decoded["train"], decoded["val"]
    classes = int(max(y_tr.max(), y_te.max())) + 1
    mean, std = _channel_stats(x_tr)
    return Dataset("parquet", x_tr, y_tr, x_te, y_te, classes, mean, std)

"""Small datasets written in the real formats, for the tests: CIFAR-100 binary, an image
folder of JPEG and PNG files, a Parquet table of encoded images; and a search's records read
back (a folder or a storage Location alike)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np


def write_cifar100(root: Path, n_train: int = 120, n_test: int = 40, seed: int = 0) -> Path:
    """<root>/cifar-100-binary/{train,test}.bin: records of coarse byte, fine byte, 3,072 pixels.
    Fine label = i % 100, coarse = fine // 5; the red channel's mean encodes the fine label."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.bin", n_train), ("test.bin", n_test)):
        fine = np.arange(n) % 100
        pixels = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        pixels[:, 0] = (fine * 2).astype(np.uint8)[:, None, None]
        records = np.concatenate([(fine // 5)[:, None].astype(np.uint8), fine[:, None].astype(np.uint8),
                                  pixels.reshape(n, -1)], 1)
        records.tofile(folder / name)
    return root


def image_bytes(array: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def write_imagefolder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 6, size=(40, 48),
                      seed: int = 0, val_per_class: int = 2) -> Path:
    """<root>/{train,val}/<class>/*.jpg|png; class k's images are mostly colour k."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
                img[..., k % 3] += 180
                fmt, suffix = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
                (folder / f"{i}.{suffix}").write_bytes(image_bytes(img, fmt))
    return root


def write_parquet(path: Path, n: int = 60, classes: int = 4, size=(32, 32), seed: int = 0,
                  image_column: str = "image", label_column: str = "label") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    labels = [i % classes for i in range(n)]
    blobs = []
    for label in labels:
        img = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
        img[..., label % 3] += 150
        blobs.append(image_bytes(img, "PNG"))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({image_column: pa.array(blobs, pa.binary()), label_column: labels}), path)
    return path


def upload(folder: Path, uri: str) -> str:
    """Copy every file below ``folder`` to the storage URI ``uri`` (a bucket prefix); returns it."""
    from goldnas_ray.files.store import location

    location(uri).upload(folder)
    return uri


def pixel_digests(images) -> set[str]:
    """Short digests of uint8 images (N, C, H, W): which images a split holds, whatever order."""
    import hashlib

    return {hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest()[:16] for im in np.asarray(images)}


def records(out) -> dict:
    """The records.json of the search in ``out`` (a folder or a storage Location)."""
    return json.loads((out / "records.json").read_text())


def frontier_summary(out) -> list[tuple]:
    """What two runs of one search record alike: each recorded architecture's id, epoch, FLOPs
    and params."""
    return [(a["id"], a["epoch"], a["flops"], a["params"]) for a in records(out)["architectures"]]

"""Write scikit-learn's digits as a CIFAR-10 binary release: a learnable set in CIFAR's format
and size, for measuring what needs 32x32 colour images where CIFAR-10 itself is not on disk.

    python benchmarks/digits_as_cifar.py DIR      # then --set data.dataset=cifar10 --set data.root=DIR

Each 8x8 digit is enlarged 3x (nearest), placed at a random offset in a 32x32 image, drawn in a
random light colour on a random dark one, with Gaussian pixel noise: the class is in the shape
only, and a network must ignore position and colour to find it. 1,437 training
images in data_batch_1..5.bin and 360 test images in test_batch.bin (the split is seeded), each
record a label byte then 3,072 bytes of red, green and blue planes, as the real release.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

SIZE, SCALE = 32, 3


def cifar_records(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> bytes:
    """CIFAR-10 binary records of the 8x8 digit images (values 0-16)."""
    out = np.empty((len(images), 1 + 3 * SIZE * SIZE), dtype=np.uint8)
    for i, (img, label) in enumerate(zip(images, labels)):
        shape = np.kron(img.reshape(8, 8) / 16.0, np.ones((SCALE, SCALE)))  # 24x24, 0..1
        canvas = np.zeros((SIZE, SIZE))
        y, x = rng.integers(0, SIZE - 8 * SCALE + 1, 2)
        canvas[y:y + 8 * SCALE, x:x + 8 * SCALE] = shape
        fg, bg = rng.uniform(150, 255, 3), rng.uniform(0, 90, 3)
        rgb = canvas[None] * fg[:, None, None] + (1 - canvas[None]) * bg[:, None, None]
        rgb += rng.normal(0, 10, rgb.shape)
        out[i, 0] = label
        out[i, 1:] = np.clip(rgb, 0, 255).astype(np.uint8).reshape(-1)
    return out.tobytes()


def write(root: Path, seed: int = 0) -> Path:
    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    test, train = order[:360], order[360:]
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=False)
    for i, part in enumerate(np.array_split(train, 5), start=1):
        (folder / f"data_batch_{i}.bin").write_bytes(cifar_records(digits.images[part], digits.target[part], rng))
    (folder / "test_batch.bin").write_bytes(cifar_records(digits.images[test], digits.target[test], rng))
    return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="folder to write cifar-10-batches-bin/ into (must not hold one)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(f"wrote {write(a.root, a.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

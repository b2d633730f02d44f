import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from goldnas_ray.config import Config  # noqa: E402


def tiny_config(**search) -> Config:
    """A 3-cell, 4-channel space: a search epoch on digits takes about a second."""
    cfg = Config()
    cfg.space.num_cells = 3
    cfg.space.init_channels = 4
    cfg.data.batch_size = 128
    for key, value in search.items():
        setattr(cfg.search, key, value)
    return cfg.validate()


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def digits():
    from goldnas_ray.data import load_digits

    return load_digits()

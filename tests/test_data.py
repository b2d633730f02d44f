"""Each epoch's batches: sharding, determinism, cutout."""
import pytest
import torch

from goldnas_ray.data import cutout, epoch_generator, iterate_batches, shard_indices


@pytest.mark.parametrize("n, world", [(100, 1), (100, 2), (101, 3), (1437, 4)])
def test_shards_are_disjoint_equal_and_cover_all_but_the_remainder(n, world):
    shards = [shard_indices(n, seed=3, epoch=5, rank=r, world_size=world) for r in range(world)]
    flat = torch.cat(shards)
    assert all(len(s) == n // world for s in shards)
    assert len(set(flat.tolist())) == len(flat) == (n // world) * world
    assert set(flat.tolist()) <= set(range(n))


def test_order_depends_on_seed_and_epoch_only():
    a = shard_indices(50, 1, 2)
    torch.manual_seed(99)  # the global RNG plays no part
    assert torch.equal(a, shard_indices(50, 1, 2))
    assert not torch.equal(a, shard_indices(50, 1, 3)) and not torch.equal(a, shard_indices(50, 2, 2))


def test_batches_follow_the_shard_and_drop_the_last_partial_batch():
    x = torch.arange(20, dtype=torch.float32).view(20, 1, 1, 1)
    y = torch.arange(20)
    batches = list(iterate_batches(x, y, batch_size=3, seed=0, epoch=0, rank=1, world_size=2))
    assert [len(b[1]) for b in batches] == [3, 3, 3]
    seen = torch.cat([b[1] for b in batches])
    assert torch.equal(seen, shard_indices(20, 0, 0, 1, 2)[:9])
    assert all(torch.equal(bx.view(-1), by.float()) for bx, by in batches)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_cutout_zeroes_a_square_of_exactly_size_away_from_the_border(size):
    x = torch.ones(200, 1, 16, 16)
    out = cutout(x, size, epoch_generator(0, 0))
    zeros = (out == 0).squeeze(1)
    for img in zeros:
        rows, cols = img.any(1).nonzero(), img.any(0).nonzero()
        h = int(rows.max() - rows.min() + 1)
        w = int(cols.max() - cols.min() + 1)
        assert int(img.sum()) == h * w  # one filled rectangle
        assert h <= size and w <= size  # clipped at the border, never larger
    full = [int(img.sum()) for img in zeros]
    assert max(full) == size * size  # away from the border it is the whole square
    assert cutout(x, 0, epoch_generator(0, 0)) is x

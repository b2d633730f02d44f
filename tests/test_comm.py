"""The distributed epoch protocol on a real gloo process group of two processes on 127.0.0.1:
pooled statistics, rank 0's prune decision everywhere, identical alphas, divergence caught."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port, tiny_config


def _worker(rank: int, world: int, port: int, out: str) -> None:
    from goldnas_ray.core.comm import DistributedComm, DivergedRanksError, EpochStats
    from goldnas_ray.core.search import GoldSearch
    from goldnas_ray.data import iterate_batches, load_digits

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        comm = DistributedComm(torch.device("cpu"))
        found = {"rank": comm.rank, "world": comm.world_size}
        pooled = comm.reduce_stats(EpochStats(loss=float(rank + 1), accuracy=0.5 * rank, images=10 * (rank + 1),
                                              seconds=float(10 - rank)))
        found["pooled"] = [pooled.loss, pooled.accuracy, pooled.images, pooled.seconds]
        found["broadcast"] = comm.broadcast({"from": rank})
        data = load_digits()
        # xi_max 0.5: n0 operators go every epoch, whatever the float trajectory
        search = GoldSearch(tiny_config(lambda0=1.0, xi_max=0.5, t0=0, max_epochs=3), data.input_shape, 10)
        rows = []
        for _ in range(2):
            batches = iterate_batches(data.x_train[:512], data.y_train[:512], 128, 0, search.epoch, rank=rank,
                                      world_size=world)  # 2 steps a rank: what is pooled is the same
            rows.append(search.run_epoch(batches, comm))
            found.setdefault("digests", []).append(comm.digests(search.model))
        found["pruned"] = [r["pruned"] for r in rows]
        found["alive"] = [repr(k) for k in search.model.alive_ops()]
        if rank == 1:  # a rank whose alphas drift must stop the run
            with torch.no_grad():
                search.model.arch_parameters()[0].add_(1e-3)
        try:
            comm.digests(search.model)
            found["diverged"] = False
        except DivergedRanksError:
            found["diverged"] = True
        with open(f"{out}/rank-{rank}.json", "w") as f:
            json.dump(found, f)
        # leave together and at once: a rank still tearing gloo down when its peer's process
        # is gone can abort ("terminate called without an active exception")
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    os._exit(0)


def test_two_ranks_run_the_same_epochs(tmp_path):
    from multiprocessing import resource_tracker

    try:
        mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    finally:  # the spawn's resource tracker ignores SIGTERM: the session's end would wait for it
        resource_tracker._resource_tracker._stop()
    r0, r1 = (json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    # loss weighted by images: (1 * 10 + 2 * 20) / 30; accuracy (0 * 10 + 0.5 * 20) / 30; slowest rank
    assert r0["pooled"] == r1["pooled"] == pytest.approx([50 / 30, 10 / 30, 30, 10.0])
    assert r0["broadcast"] == r1["broadcast"] == {"from": 0}
    assert r0["pruned"] == r1["pruned"] == [4, 4]  # n0 = 4 each epoch
    assert r0["alive"] == r1["alive"]
    for epoch in r0["digests"]:
        assert epoch[0] == epoch[1]
    assert r0["digests"] == r1["digests"]
    assert r0["diverged"] and r1["diverged"]

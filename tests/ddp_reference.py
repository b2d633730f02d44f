"""An uninterrupted multi-worker trial computed beside Ray: the retrain recipe on N processes
joined by gloo, each rank on its (seed, epoch) share, as a Ray Train trial of N one-CPU
workers runs it. On the CPU that is deterministic, so a trial whose worker was killed and
restarted from its checkpoint must end with exactly these rows."""
from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path


def _worker(rank: int, world: int, port: int, out: str, result: str) -> None:
    import torch
    import torch.distributed as dist

    from goldnas_ray.core.comm import DistributedComm
    from goldnas_ray.core.genotype import load_genotype
    from goldnas_ray.data.from_config import load_data
    from goldnas_ray.files.store import location
    from goldnas_ray.retrain.plan import Manifest
    from goldnas_ray.retrain.recipe import Retrainer

    torch.set_num_threads(1)  # a trial worker of 1 CPU
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    comm = DistributedComm(torch.device("cpu"))
    manifest = Manifest.read(location(out))
    data = load_data(manifest.data())
    found = {}
    for c in manifest.candidates:
        for seed in manifest.seeds:
            trainer = Retrainer(load_genotype(location(out) / c.genotype_path), manifest.config.retrain, seed)
            rows = [trainer.train_epoch(data, manifest.data(), comm) for _ in range(manifest.config.retrain.epochs)]
            found[f"{c.arch_id}-s{seed}"] = [(r["test_acc"], r["train_loss"]) for r in rows]
    if rank == 0:
        Path(result).write_text(json.dumps(found))
    dist.barrier()
    dist.destroy_process_group()


def straight_retrain_ddp(out, workers: int) -> dict[str, list[tuple[float, float]]]:
    """trial key -> [(test accuracy, training loss) of each epoch] of the retrain in ``out``
    with ``workers`` workers per trial, uninterrupted."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        result = f"{tmp}/rows.json"
        mp.spawn(_worker, args=(workers, port, str(out), result), nprocs=workers, join=True)
        return {k: [tuple(r) for r in rows] for k, rows in json.loads(Path(result).read_text()).items()}

"""Retrain speed against the search's, per FLOP, and one worker per trial against two.

Part 1, side by side in one process at the same torch threads: for architectures of the space at
100%, 60% and 30% of the supernet's FLOPs (random ones, seeded; or a search's records with
--search-dir), the retrain's training step on the discrete network (`Retrainer.train_steps`:
forward with the auxiliary head and drop-path, backward, clipping, SGD) beside the search's
step on the supernet pruned to the same genotype (`GoldSearch.train_step`: forward, resource
term, backward, both SGDs): the two run the same operators at the same FLOPs, so their
FLOP/s compare the loops, not the networks. Rounds alternate which goes first; medians of the
steps. FLOP/s counts 3 x forward FLOPs per image (the usual forward + backward estimate), the
auxiliary head excluded from both.

Part 2 (--workers 1,2): a whole retrain epoch (`Retrainer.train_epoch`, evaluation included)
with one worker of all the threads against N workers of threads / N each (torch.distributed
on gloo, each worker on its share, DDP), images/s of the training for the whole trial.

    python benchmarks/retrain_epoch.py                          # CPU config: 32x32x3, C=16, 8 cells
    python benchmarks/retrain_epoch.py --device cuda --amp bf16 --batch 96 --channels 36 --cells 14
    python benchmarks/retrain_epoch.py --search-dir runs/mine --input-size 8 --in-channels 1 --channels 8 --cells 6
    python benchmarks/retrain_epoch.py --json retrain.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from goldnas_ray.core.comm import DistributedComm, LocalComm
from goldnas_ray.core.config import Config, RetrainConfig
from goldnas_ray.core.genotype import Genotype, load_genotype
from goldnas_ray.core.search import GoldSearch
from goldnas_ray.data import Dataset
from goldnas_ray.files.search_files import read_records
from goldnas_ray.retrain.recipe import Retrainer
from goldnas_ray.retrain.sampling import SpaceTable, sample_matched


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def architectures(a, cfg: Config, shape: tuple[int, int, int]) -> list[Genotype]:
    if a.search_dir:
        records = read_records(a.search_dir)
        return [load_genotype(Path(a.search_dir) / r["genotype"]) for r in records["architectures"]]
    table = SpaceTable.build(cfg.space, shape, a.classes)
    full = table.flops(Genotype.full(cfg.space.num_cells, cfg.space.num_nodes, cfg.space.operators,
                                     cfg.space.init_channels, cfg.space.stem_multiplier, shape[1], shape[0],
                                     a.classes, cfg.space.stem))
    return sample_matched(table, [f * full for f in a.fractions], seed=0, tolerance=0.03)


def step_pair(a, cfg: Config, geno: Genotype, device: torch.device) -> dict:
    """Median step seconds of the retrain and of the search, on the same genotype and batch."""
    shape = (geno.in_channels, geno.input_size, geno.input_size)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, *shape, generator=gen).to(device)
    y = torch.randint(0, a.classes, (a.batch,), generator=gen).to(device)
    trainer = Retrainer(geno, cfg.retrain, seed=0, device=device)
    search = GoldSearch(cfg, shape, a.classes, device)
    search.model.restrict_to(geno)
    search._rebuild_optimizers()
    search.schedule.lam = 0.01  # the resource term is part of the step
    comm = LocalComm()

    def retrain_steps(n: int) -> None:
        trainer.train_steps([(x, y)] * n, drop_prob=cfg.retrain.drop_path / 2, comm=comm)

    def search_steps(n: int) -> None:
        search.model.train()
        for _ in range(n):
            search.train_step(x, y)

    times: dict[str, list[float]] = {"retrain": [], "search": []}
    for name, run in (("retrain", retrain_steps), ("search", search_steps)):
        run(a.warmup)
    for r in range(a.rounds):
        order = [("retrain", retrain_steps), ("search", search_steps)]
        for name, run in (order if r % 2 == 0 else order[::-1]):
            sync(device)
            start = time.perf_counter()
            run(a.steps)
            sync(device)
            times[name].append((time.perf_counter() - start) / a.steps)
    flops = trainer.flops
    assert search.model.flops() == flops, "the pruned supernet and the discrete network must match"
    out = {"arch": geno.metadata.get("id", f"{flops / 1e6:.1f}M"), "mflops": flops / 1e6}
    for name in ("retrain", "search"):
        step = statistics.median(times[name])
        out[name] = {"step_s": step, "images_per_s": a.batch / step, "gflop_s": 3 * flops * a.batch / step / 1e9}
    out["ratio"] = out["retrain"]["gflop_s"] / out["search"]["gflop_s"]
    return out


# ---- part 2: one worker against N, a whole epoch ---------------------------------------------
def _epoch_worker(rank: int, world: int, port: int, threads: int, spec: dict, result: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    comm = DistributedComm(torch.device("cpu")) if world > 1 else LocalComm()
    geno = Genotype.from_dict(spec["genotype"])
    shape = (geno.in_channels, geno.input_size, geno.input_size)
    gen = torch.Generator().manual_seed(1)
    n = spec["images"]
    data = Dataset("random", torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen),
                   torch.randint(0, spec["classes"], (n,), generator=gen),
                   torch.randint(0, 256, (n // 4, *shape), dtype=torch.uint8, generator=gen),
                   torch.randint(0, spec["classes"], (n // 4,), generator=gen), spec["classes"],
                   (0.5,) * shape[0], (0.25,) * shape[0])
    trainer = Retrainer(geno, RetrainConfig.from_dict(spec["recipe"]), seed=0)
    rows = [trainer.train_epoch(data, comm=comm) for _ in range(spec["epochs"])]
    if rank == 0:
        Path(result).write_text(json.dumps(rows))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def workers_per_trial(a, cfg: Config, geno: Genotype, world: int) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = {"genotype": geno.to_dict(), "recipe": cfg.retrain.model_dump() | {"batch_size": a.batch},
            "images": a.epoch_images, "classes": a.classes, "epochs": a.epochs}
    threads = max(1, a.threads // world)
    with tempfile.TemporaryDirectory() as tmp:
        result = f"{tmp}/rows.json"
        mp.spawn(_epoch_worker, args=(world, port, threads, spec, result), nprocs=world, join=True)
        rows = json.loads(Path(result).read_text())[1:]  # the first epoch carries the warm-up
    rate = statistics.median(r["images_per_second"] for r in rows)
    return {"workers": world, "threads_each": threads, "images_per_s": rate,
            "epoch_s": statistics.median(r["seconds"] for r in rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--search-dir", help="time this search's records instead of random architectures")
    p.add_argument("--fractions", type=lambda s: [float(v) for v in s.split(",")], default=[1.0, 0.6, 0.3])
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--cells", type=int, default=8)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="off", choices=["off", "bf16"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", default="1,2", help="part 2: workers per trial to compare ('' to skip)")
    p.add_argument("--epoch-images", type=int, default=1024, help="part 2: training images per epoch")
    p.add_argument("--epochs", type=int, default=3, help="part 2: epochs (the first is not counted)")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    cfg = Config().override([f"space.num_cells={a.cells}", f"space.init_channels={a.channels}",
                             f"data.batch_size={a.batch}", f"retrain.batch_size={a.batch}", "space.auxiliary=false",
                             "retrain.auxiliary=false",  # neither loop runs the head: same FLOPs
                             f"search.amp={a.amp}", f"retrain.amp={a.amp}"])
    shape = (a.in_channels, a.input_size, a.input_size)
    genos = architectures(a, cfg, shape)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device {a.device} ({name}), {a.threads} thread(s), batch {a.batch} of {a.in_channels}x{a.input_size}x"
          f"{a.input_size}, C={a.channels}, {a.cells} cells, amp {a.amp}; medians of {a.rounds} rounds x {a.steps} steps")
    print(f"{'architecture':<14}{'MFLOPs':>8}  {'retrain img/s':>14}{'GFLOP/s':>9}  {'search img/s':>13}{'GFLOP/s':>9}"
          f"  {'retrain/search':>15}")
    steps = []
    for geno in genos:
        r = step_pair(a, cfg, geno, device)
        steps.append(r)
        print(f"{r['arch']:<14}{r['mflops']:>8.2f}  {r['retrain']['images_per_s']:>14.0f}{r['retrain']['gflop_s']:>9.2f}"
              f"  {r['search']['images_per_s']:>13.0f}{r['search']['gflop_s']:>9.2f}  {r['ratio']:>14.2f}x")
    workers = []
    if a.workers and a.device == "cpu":
        geno = genos[len(genos) // 2]
        for world in (int(w) for w in a.workers.split(",")):
            workers.append(workers_per_trial(a, cfg, geno, world))
        base = workers[0]["images_per_s"]
        print(f"one trial of {steps[len(genos) // 2]['arch']}, {a.epoch_images} images an epoch, {a.threads} threads "
              f"in all (median of epochs 2..{a.epochs}):")
        for w in workers:
            print(f"  {w['workers']} worker(s) x {w['threads_each']} thread(s): {w['images_per_s']:.0f} img/s, "
                  f"{w['epoch_s']:.1f} s an epoch ({w['images_per_s'] / base:.2f}x one worker)")
    if a.json:
        a.json.write_text(json.dumps({"device": name, "threads": a.threads, "batch": a.batch, "steps": steps,
                                      "workers": workers}, indent=1))


if __name__ == "__main__":
    sys.exit(main())

"""Retrain speed: seconds per epoch of each recorded architecture of a search, and the
throughput of several trials sharing one machine (or one GPU) at once, as Ray Tune runs them.

    .venv/bin/python benchmarks/retrain_epoch.py --search-dir runs/mine
    python benchmarks/retrain_epoch.py --search-dir runs/mine --device cuda --concurrent 2

Prints, per architecture, FLOPs and the median training seconds per epoch over the epochs
after the first (the first carries warm-up), images/s and achieved FLOP/s (forward + backward
counted as 3x the forward FLOPs). With --concurrent N, N processes train the smallest
architecture at the same time; the aggregate images/s is printed next to one process's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


import torch

from goldnas_ray.core.config import RetrainConfig
from goldnas_ray.data import load_digits
from goldnas_ray.core.genotype import load_genotype
from goldnas_ray.retrain.recipe import Retrainer
from goldnas_ray.files.search_files import read_records


def time_arch(path: Path, device: str, epochs: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    data = load_digits()
    trainer = Retrainer(load_genotype(path), RetrainConfig(epochs=max(epochs, 2)), seed=0, device=device)
    rows = [trainer.train_epoch(data) for _ in range(epochs)]
    rates = [r["images_per_second"] for r in rows[1:]]
    rate = statistics.median(rates)
    return {"arch": path.stem, "flops": trainer.flops, "params": trainer.params,
            "img_s": rate, "s_per_epoch": statistics.median(r["seconds"] for r in rows[1:]), "gflop_s": 3 * trainer.flops * rate / 1e9,
            "test_acc": rows[-1]["test_acc"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--search-dir", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    p.add_argument("--concurrent", type=int, default=0)
    p.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # worker mode
    args = p.parse_args()
    if args.one:
        print(json.dumps(time_arch(args.one, args.device, args.epochs, args.threads)))
        return
    records = read_records(args.search_dir)
    paths = [args.search_dir / a["genotype"] for a in records["architectures"]]
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}), "
          f"{args.threads} thread(s), batch 64, {args.epochs} epochs, median of epochs 2..{args.epochs}")
    results = [time_arch(path, args.device, args.epochs, args.threads) for path in paths]
    for r in results:
        print(f"{r['arch']:<10} {r['flops'] / 1e6:6.3f} MFLOPs {r['params']:>7} params  "
              f"{r['s_per_epoch']:6.2f} s/epoch  {r['img_s']:7.0f} img/s  {r['gflop_s']:6.2f} GFLOP/s")
    if args.concurrent > 1:
        smallest = min(results, key=lambda r: r["flops"])
        path = args.search_dir / "genotypes" / f"{smallest['arch']}.json"
        cmd = [sys.executable, __file__, "--search-dir", str(args.search_dir), "--device", args.device,
               "--epochs", str(args.epochs), "--threads", str(args.threads), "--one", str(path)]
        start = time.perf_counter()
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(args.concurrent)]
        outs = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
        wall = time.perf_counter() - start
        total = sum(o["img_s"] for o in outs)
        print(f"{args.concurrent} trials of {smallest['arch']} at once: {total:.0f} img/s together "
              f"({total / smallest['img_s']:.2f}x one trial alone, {smallest['img_s']:.0f} img/s); "
              f"{wall:.1f}s wall including start-up")


if __name__ == "__main__":
    main()

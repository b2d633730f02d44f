"""Per-epoch time of the same search in-process vs on Ray Train with one worker.

Runs both in one invocation, side by side: the median wall time per epoch (from one epoch's
end to the next, so checkpointing, file writing and ray.train.report are included), the
median pure training time, and the start-up time (process start to the end of the first
epoch, minus that epoch) reported separately.

    python benchmarks/ray_overhead.py --epochs 10
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


import pandas as pd

from goldnas_ray.core.config import Config


def summarise(out: Path, started: float) -> tuple[float, float, float]:
    h = pd.read_parquet(out / "history.parquet")
    walls = h["end_time"].diff().dropna().tolist()
    startup = h["end_time"].iloc[0] - started - h["seconds"].iloc[0]
    return statistics.median(walls), statistics.median(h["seconds"].iloc[1:]), startup


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--cpus", type=float, default=2, help="CPUs (and threads) for the Ray worker")
    args = p.parse_args()
    cfg = Config().override([f"search.max_epochs={args.epochs}"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from goldnas_ray.run.loop import run_local

        t = time.time()
        run_local(cfg, Path(tmp) / "local", log=lambda _: None)
        rows.append(("in-process",) + summarise(Path(tmp) / "local", t))

        from goldnas_ray.orchestration.search_driver import run_ray

        t = time.time()
        run_ray(Config.from_dict(cfg.to_dict()), Path(tmp) / "ray", workers=1, cpus_per_worker=args.cpus,
                tracking=False, log=lambda _: None)
        rows.append(("Ray Train, 1 worker",) + summarise(Path(tmp) / "ray", t))
    print(f"{args.epochs} epochs of the default digits search; medians over epochs 2..{args.epochs}")
    print(f"{'path':<22}{'epoch wall s':>13}{'train s':>9}{'start-up s':>12}")
    for name, wall, train, startup in rows:
        print(f"{name:<22}{wall:>13.2f}{train:>9.2f}{startup:>12.1f}")
    print(f"Ray / in-process per-epoch wall time: {rows[1][1] / rows[0][1]:.3f}")


if __name__ == "__main__":
    main()

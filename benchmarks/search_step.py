"""Search step speed: the full supernet vs the same supernet pruned to ~30% of its FLOPs.

Prints, side by side in one run: median step time (one forward + one backward + both
optimizer steps, as in the search), images/s, achieved GFLOP/s (3 x forward FLOPs per image,
the usual forward + backward estimate) and its ratio to a large float32 matmul's GFLOP/s on
the same machine (the practical peak).

    python benchmarks/search_step.py                 # the default digits space
    python benchmarks/search_step.py --input-size 32 --channels 16 --cells 8 --batch 64
    python benchmarks/search_step.py --device cuda --options   # each speed option on and off
    python benchmarks/search_step.py --fractions 1,0.6,0.3 --json steps.json
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch


from goldnas_ray.core.config import Config
from goldnas_ray.core.search import GoldSearch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_gflops(n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def prune_to(search: GoldSearch, fraction: float, seed: int = 0) -> None:
    """Prune random operators (never a node's last input) until FLOPs <= fraction x full."""
    model = search.model
    rng = random.Random(seed)
    while model.flops() > fraction * model.full_flops:
        keys = model.alive_ops()
        per_node: dict = {}
        for k in keys:
            per_node[(k.cell, k.dst)] = per_node.get((k.cell, k.dst), 0) + 1
        candidates = [k for k in keys if per_node[(k.cell, k.dst)] > 1 and model.costs.flops_by_part.get(k, 0) > 0]
        if not candidates:
            break
        model.prune([rng.choice(candidates)])
    search._rebuild_optimizers()


def time_steps(search: GoldSearch, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int = 3) -> list[float]:
    search.model.train()
    for _ in range(warmup):
        search.train_step(x, y)
    times = []
    for _ in range(steps):
        sync(str(search.device))
        t = time.perf_counter()
        search.train_step(x, y)  # returns float(loss): waits for the GPU too
        sync(str(search.device))
        times.append(time.perf_counter() - t)
    return times


def measure(cfg: Config, shape: tuple[int, int, int], x: torch.Tensor, y: torch.Tensor, fraction: float,
            steps: int, device: str) -> dict:
    search = GoldSearch(cfg, shape, 10, device=device)
    search.schedule.lam = 0.1  # include the cost term, as in a real search epoch
    if fraction < 1:
        prune_to(search, fraction)
    med = statistics.median(time_steps(search, x, y, steps))
    return {"fraction": fraction, "flops": search.model.flops(), "ops": len(search.model.alive_ops()),
            "step_s": med, "images_per_s": len(y) / med,
            "channels_last": cfg.search.channels_last, "amp": cfg.search.amp}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=Config().space.num_cells)
    p.add_argument("--channels", type=int, default=Config().space.init_channels)
    p.add_argument("--input-size", type=int, default=8)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=Config().data.batch_size)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--fractions", default="1,0.3", help="FLOPs fractions to prune to, e.g. 1,0.6,0.3")
    p.add_argument("--options", action="store_true",
                   help="also time the full supernet with each speed option switched")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = [f"space.num_cells={args.cells}", f"space.init_channels={args.channels}", "space.auxiliary=false",
            *args.set]
    cfg = Config().override(base)
    shape = (args.in_channels, args.input_size, args.input_size)
    x = torch.randn(args.batch, *shape, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)

    peak = matmul_gflops(device=args.device)
    rows = [measure(cfg, shape, x, y, float(f), args.steps, args.device) for f in args.fractions.split(",")]
    if args.options:
        q = cfg.search
        for override in (f"search.channels_last={str(not q.channels_last).lower()}",
                         f"search.amp={'off' if q.amp == 'bf16' else 'bf16'}"):
            rows.append(measure(Config().override(base + [override]), shape, x, y, 1.0,
                                args.steps, args.device))

    print(f"space: {args.cells} cells, {args.channels} channels, input {shape}, batch {args.batch}, "
          f"{args.threads} threads, device {args.device}; median of {args.steps} steps")
    print(f"peak: 2048x2048 float32 matmul {peak:.1f} GFLOP/s")
    print(f"{'supernet':<12}{'options':<22}{'MFLOPs/img':>11}{'ops':>6}{'step ms':>10}{'img/s':>9}"
          f"{'GFLOP/s':>9}{'of peak':>9}")
    for r in rows:
        achieved = 3 * r["flops"] * args.batch / r["step_s"] / 1e9
        r["gflops_per_s"] = achieved
        options = f"cl={'on' if r['channels_last'] else 'off'} amp={r['amp']}"
        label = f"{r['fraction']:.0%} FLOPs"
        print(f"{label:<12}{options:<22}{r['flops'] / 1e6:>11.3f}{r['ops']:>6}"
              f"{r['step_s'] * 1e3:>10.1f}{r['images_per_s']:>9.0f}{achieved:>9.2f}{achieved / peak:>9.1%}")
    full = rows[0]
    for r in rows[1:len(args.fractions.split(","))]:
        print(f"pruned/full: FLOPs {r['flops'] / full['flops']:.2f}, step time {r['step_s'] / full['step_s']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"peak_gflops_per_s": peak, "batch": args.batch, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

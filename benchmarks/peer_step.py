"""One search step of goldnas-ray beside the public GOLD-NAS code's, same config, one process.

A step is what both searches do per batch: one forward, one backward with the resource term
on, gradient clipping, the weight SGD and the alpha SGD. Both supernets see the same batch of
3x32x32 images, 10 classes, 4 nodes per cell, operators {skip_connect, sep_conv_3x3}, no
auxiliary head. Timed in rounds that alternate which one goes first; prints the median step
time of each, images/s, on CUDA the peak memory of each, and the ratios.

    python benchmarks/peer_step.py                       # CPU preset: batch 32, C=16, 8 cells
    python benchmarks/peer_step.py --preset paper --device cuda   # batch 96, C=36, 14 cells
    python benchmarks/peer_step.py --set search.channels_last=false   # one of our options off

The public code is read from --peer (default: ../shared/peers/gold_nas_unofficial beside the
project); it is imported, never copied. It calls ``.cuda()`` and imports torchvision for its
data pipeline, so on a CPU (or without torchvision) those two are stubbed out for it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from goldnas_ray.core.config import Config
from goldnas_ray.core.search import GoldSearch

PRESETS = {"cpu": dict(batch=32, channels=16, cells=8), "paper": dict(batch=96, channels=36, cells=14)}
DEFAULT_PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "gold_nas_unofficial"


def import_peer(folder: Path, device: torch.device):
    """The peer's model_search module, importable on any device."""
    if not (folder / "model_search.py").is_file():
        raise SystemExit(f"no model_search.py in {folder}: pass --peer FOLDER")
    try:
        import torchvision  # noqa: F401
    except Exception:  # it only builds the peer's data pipeline
        package = types.ModuleType("torchvision")
        for sub in ("transforms", "datasets"):
            module = types.ModuleType(f"torchvision.{sub}")
            setattr(package, sub, module)
            sys.modules[module.__name__] = module
        sys.modules["torchvision"] = package
    if device.type != "cuda":
        torch.Tensor.cuda = lambda self, *a, **k: self
        nn.Module.cuda = lambda self, *a, **k: self
    sys.path.insert(0, str(folder))
    import model_search
    return model_search


Step = Callable[[], object]


def peer_step(model_search, a: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> Step:
    # eta_min 0.01, reg_flops 1, mu 0: the public code's defaults
    net = model_search.Network(a.channels, 10, a.cells, False, 0.01, 1.0, 0.0).to(x.device)
    net.drop_path_prob = 0.0
    a_opt = torch.optim.SGD(net.arch_parameters(), 1.0, momentum=0.9)
    w_opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.9, weight_decay=3e-4)
    loss_fn = nn.CrossEntropyLoss()
    net.train()

    def step():
        a_opt.zero_grad()
        w_opt.zero_grad()
        logits, _, cost = net(x)
        loss = loss_fn(logits, y) + 1e-5 * cost
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5)
        a_opt.step()
        w_opt.step()
        return loss
    return step


def our_step(a: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> tuple[Step, Config]:
    cfg = Config().override([f"space.num_cells={a.cells}", f"space.init_channels={a.channels}",
                             "space.auxiliary=false", f"data.batch_size={a.batch}", *a.set])
    search = GoldSearch(cfg, (3, 32, 32), 10, device=x.device)
    search.schedule.lam = 0.1  # the resource term on, as in a search epoch
    search.model.train()
    return (lambda: search.train_step(x, y)), cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Step, n: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(n):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def build(make: Callable[[], Step], device: torch.device, warmup: int) -> tuple[Step, float]:
    """The step and its peak memory in GiB (built alone: what was there before is subtracted)."""
    if device.type != "cuda":
        step = make()
        for _ in range(warmup):
            step()
        return step, float("nan")
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step = make()
    for _ in range(warmup):
        step()
    sync(device)
    return step, (torch.cuda.max_memory_allocated(device) - before) / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--batch", type=int)
    p.add_argument("--channels", type=int)
    p.add_argument("--cells", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=3, help="rounds, alternating which step goes first")
    p.add_argument("--steps", type=int, default=5, help="timed steps of each per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peer", type=Path, default=DEFAULT_PEER, help="folder of the public code")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override goldnas-ray's config, e.g. search.amp=bf16")
    a = p.parse_args()
    for key, value in PRESETS[a.preset].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    x = torch.randn(a.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (a.batch,), device=device)

    peer = import_peer(a.peer, device)
    steps, memory = {}, {}
    steps["peer"], memory["peer"] = build(lambda: peer_step(peer, a, x, y), device, a.warmup)
    made = {}
    steps["ours"], memory["ours"] = build(lambda: made.setdefault("s", our_step(a, x, y))[0],
                                          device, a.warmup)
    cfg = made["s"][1]
    times = {"peer": [], "ours": []}
    for r in range(a.rounds):
        order = ("peer", "ours") if r % 2 == 0 else ("ours", "peer")
        for name in order:
            times[name] += timed(steps[name], a.steps, device)

    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"device {device}, {a.threads} threads; batch {a.batch} of 3x32x32, C={a.channels}, "
          f"{a.cells} cells; median of {a.rounds} x {a.steps} steps each")
    print(f"goldnas-ray options: channels_last={cfg.search.channels_last}, amp={cfg.search.amp}")
    print(f"{'':<22}{'s/step':>9}{'img/s':>9}" + (f"{'peak GiB':>10}" if device.type == "cuda" else ""))
    for name, label in (("peer", "public GOLD-NAS code"), ("ours", "goldnas-ray")):
        line = f"{label:<22}{med[name]:>9.4f}{a.batch / med[name]:>9.1f}"
        print(line + (f"{memory[name]:>10.2f}" if device.type == "cuda" else ""))
    print(f"ratio goldnas-ray/public, step time: {med['ours'] / med['peer']:.2f}"
          f" (images/s x{med['peer'] / med['ours']:.2f})")
    if device.type == "cuda":
        print(f"ratio goldnas-ray/public, peak memory: {memory['ours'] / memory['peer']:.2f}")
    if a.json:
        a.json.write_text(json.dumps({
            "device": str(device), "batch": a.batch, "channels": a.channels, "cells": a.cells,
            **{name: {"step_s": med[name], "images_per_s": a.batch / med[name],
                      "peak_gib": None if memory[name] != memory[name] else memory[name]}
               for name in med}}, indent=1))


if __name__ == "__main__":
    main()

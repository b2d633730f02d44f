"""What a search prints: its first lines, one line per epoch, progress inside long epochs."""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

from goldnas_ray.core.search import GoldSearch


def format_epoch(row: dict[str, Any], max_epochs: int, full_flops: int) -> str:
    line = (f"epoch {row['epoch']:>3}/{max_epochs}  lambda {row['lambda']:.4g}  "
            f"FLOPs {row['flops'] / 1e6:.3f}M ({100 * row['flops'] / full_flops:.1f}%)  "
            + (f"latency {row['latency_ms']:.3g} ms  " if row.get("latency_ms") is not None else "")
            + f"alive {row['alive_ops']}  pruned {row['pruned']}  loss {row['loss']:.4f}  "
            f"acc {100 * row['accuracy']:.1f}%  {row['seconds']:.1f}s  "
            f"{row['images_per_second']:.0f} img/s")
    if row.get("recorded"):
        line += f"  -> recorded {row['recorded']}"
    return line


def describe_start(search: GoldSearch, dataset: str, workers: int = 1) -> str:
    m, s = search.model, search.cfg.space
    return (f"GOLD-NAS search on {dataset}: {s.num_cells} cells x {s.num_nodes} nodes, "
            f"{len(s.operators)} operators ({', '.join(s.operators)}), {m.num_ops_full} gated operators\n"
            f"search space: 10^{m.log10_size:.1f} architectures; supernet {m.full_flops / 1e6:.3f} MFLOPs "
            f"(x2 per multiply-add); stop at " + (
                f"{search.latency_min:.3g} ms predicted (supernet {m.full_latency_ms:.3g} ms on "
                f"{search.latency.device.get('name', '?')}, batch {search.latency.key.get('batch')})"
                if search.latency is not None else f"{search.flops_min / 1e6:.3f} MFLOPs")
            + f" or epoch {search.cfg.search.max_epochs}; {workers} worker(s)")


class EpochProgress:
    """Progress inside one epoch: a line every ``every`` seconds (step, images/s, ETA), or a
    bar redrawn in place when the output is a terminal. Silent for epochs shorter than that."""

    def __init__(self, epoch: int, steps: int, every: float = 30.0,
                 log: Callable[[str], None] = print, stream: TextIO | None = None):
        self.epoch, self.steps, self.every, self.log = epoch, steps, every, log
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.next_at = self.start + (1.0 if self.tty else every)
        self.drawn = False

    def __call__(self, step: int, images: int) -> None:
        now = time.perf_counter()
        if now < self.next_at or step >= self.steps:
            if step >= self.steps and self.drawn:
                self.stream.write("\r\033[K")  # clear the bar before the epoch line
                self.stream.flush()
            return
        elapsed = now - self.start
        eta = elapsed / step * (self.steps - step)
        text = (f"  epoch {self.epoch + 1}: step {step}/{self.steps}  {images / elapsed:.0f} img/s  "
                f"ETA {eta:.0f}s")
        if self.tty:
            self.stream.write("\r" + text)
            self.stream.flush()
            self.drawn = True
            self.next_at = now + 1.0
        else:
            self.log(text)
            self.next_at = now + self.every

"""The GPU check: one script, one table, meant to finish in under 8 minutes on one GPU.

    python benchmarks/gpu_check.py                        # on a machine with one GPU
    python benchmarks/gpu_check.py --device cpu --smoke   # the same script in miniature

(a) peer    benchmarks/peer_step.py at the paper's search config (batch 96, C=36, 14 cells):
            step time, images/s and peak memory beside the public GOLD-NAS code's
(b) search  a 2-epoch search on random 32x32 images in the CIFAR-10 binary format, through
            Ray Train with one GPU worker: the worker must report device cuda and backend nccl
(c) retrain a smoke retrain of that search on Ray Tune at bf16 (retrain.amp), trials at
            --gpus-per-trial 0.5: two trials must have run at the same time on the one GPU;
            with 2 GPUs, then a trial of 2 workers (--workers-per-trial 2, one GPU each)
(d) steps   benchmarks/search_step.py at the paper's config: the supernet full and pruned to
            60% and 30% of its FLOPs, and each speed option switched; from those, the time of
            a whole CIFAR-10 search (50,000 images an epoch, FLOPs falling linearly from the
            full supernet to the 480 MFLOPs stop) for --search-epochs epochs, and how many
            epochs fit in one hour
(e) loop    benchmarks/retrain_epoch.py at the paper's config at bf16: the retrain's step
            against the search's, per FLOP, at 100/60/30% of the supernet
(f) sync    a search's and a retrain's steps under torch.cuda.set_sync_debug_mode("error"):
            any call inside them that waits for the GPU raises
(g) latency benchmarks/latency_check.py at the paper's space on CIFAR-10-sized input: a GPU
            latency table and its predictions against 20 networks measured end to end, at
            batch 1 and 96 (Spearman, median error)

Each part runs in its own process with a time limit; a failed part is a row of the table
saying why, and the script goes on. --json writes the figures too.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CIFAR_IMAGES = 50_000
STOP_FLOPS = 480e6  # the paper's stop: 240 M multiply-adds


def run(cmd: list[str], timeout: float, log: Path) -> tuple[bool, str]:
    """Run ``cmd`` from the project root; (succeeded, last line of its output or the reason)."""
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        log.write_text(f"{exc.stdout or ''}\n{exc.stderr or ''}")
        return False, f"timed out after {timeout:.0f} s"
    log.write_text(proc.stdout + "\n" + proc.stderr)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    if proc.returncode != 0:
        return False, f"exit {proc.returncode}: {lines[-1] if lines else ''}"[:160]
    return True, f"{time.time() - start:.0f} s"


def write_random_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Random images and labels in the CIFAR-10 binary release's layout."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)

    def records(n: int) -> bytes:
        labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
        return np.concatenate([labels, rng.integers(0, 256, (n, 3072), dtype=np.uint8)], 1).tobytes()
    per_file = math.ceil(n_train / 5)
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(records(min(per_file, n_train - per_file * (i - 1))))
    (folder / "test_batch.bin").write_bytes(records(n_test))


def check_peer(a, tmp: Path) -> dict:
    out = tmp / "peer.json"
    size = (["--preset", "cpu", "--batch", "8", "--channels", "4", "--cells", "5", "--rounds", "2",
             "--steps", "1", "--warmup", "1"] if a.smoke else ["--preset", "paper", "--rounds", "3", "--steps", "5"])
    cmd = [sys.executable, "benchmarks/peer_step.py", *size, "--device", a.device, "--json", str(out)]
    if a.peer:
        cmd += ["--peer", str(a.peer)]
    ok, why = run(cmd, a.part_timeout, tmp / "peer.log")
    if not ok:
        return {"ok": False, "detail": why}
    r = json.loads(out.read_text())
    peer, ours = r["peer"], r["ours"]
    detail = (f"ours {ours['images_per_s']:.0f} img/s vs {peer['images_per_s']:.0f}: "
              f"x{ours['images_per_s'] / peer['images_per_s']:.2f}")
    if peer["peak_gib"]:
        detail += (f"; peak {ours['peak_gib']:.2f} vs {peer['peak_gib']:.2f} GiB: "
                   f"x{ours['peak_gib'] / peer['peak_gib']:.2f}")
    return {"ok": True, "detail": detail, **r}


def search_args(a) -> list[str]:
    if a.smoke:
        return ["--set", "space.num_cells=5", "--set", "space.init_channels=4", "--set", "data.batch_size=32",
                "--set", "space.auxiliary=false"]
    return ["--config", "configs/cifar10.yaml"]


def check_search(a, tmp: Path) -> dict:
    data, out = tmp / "data", tmp / "search"
    write_random_cifar10(data, 256 if a.smoke else 1920, 64 if a.smoke else 192)
    gpus = "0" if a.device == "cpu" else "1"
    cmd = [sys.executable, "pipelines/search.py", "--no-mlflow", "--workers", "1", "--gpus-per-worker", gpus,
           "--max-epochs", "2", "--out", str(out), "--set", "data.dataset=cifar10", "--set", f"data.root={data}",
           *search_args(a)]
    ok, why = run(cmd, a.part_timeout, tmp / "search.log")
    if not ok:
        return {"ok": False, "detail": why}
    import pandas as pd
    epochs = len(pd.read_parquet(out / "history.parquet"))
    worker = json.loads((out / ".workers" / "rank-0.json").read_text())
    want = ("cpu", "gloo") if a.device == "cpu" else ("cuda", "nccl")
    got = (worker["device"].split(":")[0], worker["backend"])
    ok = epochs == 2 and got == want
    return {"ok": ok, "detail": f"{epochs} epochs, worker on {worker['device']} with {worker['backend']}"
                                + ("" if got == want else f" (expected {want[0]} with {want[1]})") + f", {why}"}


def check_retrain(a, tmp: Path) -> dict:
    out = tmp / "retrain"
    if not (tmp / "search" / "records.json").is_file():
        return {"ok": False, "detail": "no search to retrain (part b failed)"}
    gpus = "0" if a.device == "cpu" else "0.5"
    cmd = [sys.executable, "pipelines/retrain.py", "--no-mlflow", "--smoke-test", "--seeds", "2",
           "--search-dir", str(tmp / "search"), "--out", str(out), "--gpus-per-trial", gpus,
           "--cpus-per-trial", "1", "--set", f"retrain.amp={'off' if a.device == 'cpu' else 'bf16'}"]
    ok, why = run(cmd, a.part_timeout, tmp / "retrain.log")
    if not ok:
        return {"ok": False, "detail": why}
    two = ""
    if a.device != "cpu" and _gpus() >= 2:
        cmd = [sys.executable, "pipelines/retrain.py", "--no-mlflow", "--smoke-test", "--search-dir",
               str(tmp / "search"), "--out", str(tmp / "retrain-2w"), "--workers-per-trial", "2",
               "--gpus-per-worker", "1", "--cpus-per-worker", "1", "--set", "retrain.amp=bf16"]
        ok2, why2 = run(cmd, a.part_timeout, tmp / "retrain-2w.log")
        two = f"; 2 workers per trial: {'ok' if ok2 else 'FAILED'} ({why2})"
        ok = ok and ok2
    spans = []
    for f in sorted((out / ".trials").glob("*.jsonl")):
        entries = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        starts = [e["time"] for e in entries if "start_epoch" in e]
        ends = [e["time"] for e in entries if "finished_epoch" in e]
        devices = {e["device"].split(":")[0] for e in entries if "device" in e}
        if starts and ends:
            spans.append((min(starts), max(ends), devices))
    overlap = max((min(e1, e2) - max(s1, s2) for i, (s1, e1, _) in enumerate(spans)
                   for (s2, e2, _) in spans[i + 1:]), default=0.0)
    devices = set().union(*(d for _, _, d in spans)) if spans else set()
    want = "cpu" if a.device == "cpu" else "cuda"
    ok = ok and len(spans) >= 2 and overlap > 0 and devices == {want}
    return {"ok": ok, "detail": f"{len(spans)} trials on {'/'.join(sorted(devices)) or '?'}, two at once for "
                                f"{overlap:.1f} s, {why}{two}"}


def _gpus() -> int:
    import torch
    return torch.cuda.device_count()


def check_loop(a, tmp: Path) -> dict:
    out = tmp / "loop.json"
    size = (["--channels", "4", "--cells", "5", "--batch", "8", "--steps", "2", "--rounds", "2"] if a.smoke
            else ["--channels", "36", "--cells", "14", "--batch", "96", "--steps", "10", "--rounds", "3"])
    cmd = [sys.executable, "benchmarks/retrain_epoch.py", *size, "--device", a.device, "--workers", "",
           "--amp", "off" if a.device == "cpu" else "bf16", "--json", str(out)]
    ok, why = run(cmd, a.part_timeout, tmp / "loop.log")
    if not ok:
        return {"ok": False, "detail": why}
    steps = json.loads(out.read_text())["steps"]
    detail = ", ".join(f"{r['mflops']:.0f} MFLOPs: retrain {r['retrain']['gflop_s']:.0f} GFLOP/s, "
                       f"{r['ratio']:.2f}x the search's" for r in steps)
    return {"ok": True, "detail": detail, "steps": steps}


SYNC = r"""
import sys
import torch
from goldnas_ray.core.comm import LocalComm
from goldnas_ray.core.config import Config
from goldnas_ray.core.search import GoldSearch
from goldnas_ray.data import Augment, iterate_batches
from goldnas_ray.retrain.recipe import Retrainer

device = sys.argv[1]
cfg = Config().override(["space.num_cells=5", "space.init_channels=8", "data.batch_size=16"])
gen = torch.Generator().manual_seed(0)
x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=gen)
y = torch.randint(0, 10, (64,), generator=gen)
augment = Augment(crop_padding=2, flip=True, cutout=4, color_jitter=True)
search = GoldSearch(cfg, (3, 16, 16), 10, device=device)
search.schedule.lam = 0.1
trainer = Retrainer(search.model.genotype(), cfg.retrain.model_copy(update={"drop_path": 0.2}), 0, device)
for name, steps in (("search", lambda b: search.train_steps(b)),
                    ("retrain", lambda b: trainer.train_steps(b, 0.1, LocalComm()))):
    for attempt in (0, 1):  # the second from warm caches
        batches = iterate_batches(x, y, 16, 0, attempt, augment=augment, mean=(0.5,) * 3, std=(0.25,) * 3,
                                  device=device)
        if device.startswith("cuda"):
            torch.cuda.set_sync_debug_mode("error")
        try:
            loss, correct, images = steps(batches)
        finally:
            if device.startswith("cuda"):
                torch.cuda.set_sync_debug_mode("default")
        assert images == 64 and float(loss) > 0, (name, images)
    print(f"SYNC {name}: 2 epochs of 4 steps, no synchronising call")
"""


def check_latency(a, tmp: Path) -> dict:
    data, out = tmp / "latency-data", tmp / "latency.json"  # its own: the search part writes tmp / data
    if not (data / "cifar-10-batches-bin").is_dir():
        write_random_cifar10(data, 256, 64)
    size = (["--set", "space.num_cells=5", "--set", "space.init_channels=4", "--networks", "6", "--repeats", "3",
             "--calibration", "3", "--batches", "1,8"] if a.smoke
            else ["--config", "configs/cifar10.yaml", "--networks", "20", "--batches", "1,96"])
    cmd = [sys.executable, "benchmarks/latency_check.py", "--device", a.device, "--set", "data.dataset=cifar10",
           "--set", f"data.root={data}", *size, "--json", str(out)]
    ok, why = run(cmd, a.part_timeout, tmp / "latency.log")
    if not ok:
        return {"ok": False, "detail": why}
    batches = json.loads(out.read_text())["batches"]
    detail = "; ".join(f"batch {b}: Spearman {r['summary']['spearman']:.3f}, median error "
                       f"{r['summary']['median_error_pct']:.1f}% (remeasured {r['summary']['repeat_error_pct']:.1f}%)"
                       for b, r in batches.items())
    return {"ok": True, "detail": detail, "batches": {b: r["summary"] for b, r in batches.items()}}


def check_sync(a, tmp: Path) -> dict:
    ok, why = run([sys.executable, "-c", SYNC, a.device], a.part_timeout, tmp / "sync.log")
    lines = [line[5:] for line in (tmp / "sync.log").read_text().splitlines() if line.startswith("SYNC ")]
    return {"ok": ok and len(lines) == 2, "detail": "; ".join(lines) or why}


def check_steps(a, tmp: Path) -> dict:
    out = tmp / "steps.json"
    size = (["--channels", "4", "--cells", "5", "--batch", "8", "--steps", "2"] if a.smoke
            else ["--channels", "36", "--cells", "14", "--batch", "96", "--steps", "10"])
    cmd = [sys.executable, "benchmarks/search_step.py", "--input-size", "32", "--in-channels", "3", *size,
           "--fractions", "1,0.6,0.3", "--options", "--device", a.device, "--json", str(out)]
    ok, why = run(cmd, a.part_timeout, tmp / "steps.log")
    if not ok:
        return {"ok": False, "detail": why}
    r = json.loads(out.read_text())
    rows, batch = r["rows"], r["batch"]
    by_fraction = sorted((row for row in rows[:3]), key=lambda row: row["flops"])
    full = by_fraction[-1]
    options = "; ".join(f"cl={'on' if row['channels_last'] else 'off'} amp={row['amp']} "
                        f"{row['step_s'] / full['step_s']:.2f}x" for row in rows[3:])
    projection = project(by_fraction, full["flops"], batch, a.search_epochs)
    detail = (f"step {full['step_s'] * 1e3:.0f} ms full, {by_fraction[1]['step_s'] / full['step_s']:.2f}x at 60%, "
              f"{by_fraction[0]['step_s'] / full['step_s']:.2f}x at 30%; switched: {options}")
    return {"ok": True, "detail": detail, "projection": projection, **r}


def project(rows: list[dict], full_flops: float, batch: int, epochs: int) -> dict:
    """A search's hours if its FLOPs fall linearly from the full supernet to the stop over
    ``epochs`` epochs, each epoch's step time interpolated in FLOPs between the measured
    supernets (flat beyond them)."""
    xs = [row["flops"] / full_flops for row in rows]
    ys = [row["step_s"] for row in rows]
    stop = min(STOP_FLOPS / full_flops, 1.0)
    steps_per_epoch = math.ceil(CIFAR_IMAGES / batch)
    epoch_s = [steps_per_epoch * float(np.interp(1 - (1 - stop) * e / max(epochs - 1, 1), xs, ys))
               for e in range(epochs)]
    per_epoch = sum(epoch_s) / epochs
    return {"epochs": epochs, "stop_fraction": stop, "hours": sum(epoch_s) / 3600,
            "mean_epoch_s": per_epoch, "epochs_in_one_hour": int(3600 // per_epoch)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (with --smoke: a rehearsal)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: the whole script in about two minutes")
    p.add_argument("--peer", type=Path, help="folder of the public GOLD-NAS code (default: peer_step.py's)")
    p.add_argument("--search-epochs", type=int, default=100,
                   help="epochs of the projected CIFAR-10 search (default 100, an assumption: a "
                        "search's records.json says how many it took)")
    p.add_argument("--part-timeout", type=float, default=150, help="seconds each part may take")
    p.add_argument("--only", default="sync,peer,steps,loop,latency,search,retrain",
                   help="parts to run, comma-separated")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--keep", type=Path, help="keep the parts' logs and outputs in this folder")
    a = p.parse_args(argv)
    if a.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here: run with --device cpu --smoke for the rehearsal")
    checks = {"sync": check_sync, "peer": check_peer, "steps": check_steps, "loop": check_loop,
              "latency": check_latency, "search": check_search, "retrain": check_retrain}
    parts = [name for name in a.only.split(",") if name]
    for name in parts:
        if name not in checks:
            raise SystemExit(f"--only: unknown part {name!r}; known: {', '.join(checks)}")
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = a.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        results = {}
        for name in parts:
            print(f"[{time.time() - started:5.0f} s] {name} ...", flush=True)
            results[name] = checks[name](a, tmp)
    device = a.device
    if device.startswith("cuda"):
        import torch
        device = torch.cuda.get_device_name()
    print(f"\ngoldnas-ray GPU check on {device}{' (smoke sizes)' if a.smoke else ''}, "
          f"{time.time() - started:.0f} s")
    print(f"{'part':<9}{'ok':<5}detail")
    for name, r in results.items():
        print(f"{name:<9}{'yes' if r['ok'] else 'NO':<5}{r['detail']}")
    if "steps" in results and results["steps"].get("projection"):
        pr = results["steps"]["projection"]
        print(f"projection: a CIFAR-10 search of {pr['epochs']} epochs (FLOPs falling linearly to "
              f"{pr['stop_fraction']:.0%} of the supernet) takes {pr['hours']:.2f} h at "
              f"{pr['mean_epoch_s']:.0f} s per epoch on average; {pr['epochs_in_one_hour']} such epochs fit in one hour")
    if a.json:
        a.json.write_text(json.dumps({"device": device, "smoke": a.smoke, "results": results}, indent=1))
    sys.exit(0 if all(r["ok"] for r in results.values()) else 1)


if __name__ == "__main__":
    main()

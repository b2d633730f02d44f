"""Time every part of a search space's network on this device: the latency table that
`search.cost=latency` reads (`--set search.latency_table=FILE`).

    python pipelines/profile_latency.py --out latency.json                  # digits default, CPU, batch 1
    python pipelines/profile_latency.py --out latency-b64.json --batch 64   # at a training batch
    python pipelines/profile_latency.py --config configs/cifar10.yaml --set data.root=/data \
        --device cuda --out latency-gpu.json
    python pipelines/profile_latency.py --out "s3://bucket/tables/cpu.json?endpoint_override=..."

--out and --config are local paths or storage URIs (goldnas_ray/files/store.py): the table is
written, and the config read, through the storage layer.

Every (cell, edge, operator) is timed at the input it sees in the full network, and the fixed
parts (stem, each cell's input preprocessing, additions and concatenation, pooling and
classifier), at --batch, in eval mode without autograd, the minimum of --repeats calls (or the
median); then a few random architectures of the space end to end, to fit what the parts alone
miss as a scale and an offset (goldnas_ray/core/latency.py). The parts are timed in
interleaved rounds and the profile is checked (the same operator's parts against each other,
the scale against a sane range): one that fails is taken again, then refused, nothing written
(docs/latency.md#checks-a-table-from-a-busy-machine-is-refused). The JSON
names the device (CPU model or GPU name), torch version, threads, dtype and batch, and is keyed
to the space, input shape, classes and batch: a search with anything else refuses it.
"""
from __future__ import annotations

import argparse
import json
import sys
from goldnas_ray.cli.process import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True,
                   help="the JSON table to write, a path or a storage URI (refused if it exists)")
    p.add_argument("--config", help="YAML file with space/data sections (the search's), a path or a storage URI")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. space.init_channels=16 (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, help="torch threads on a CPU (default: torch's, stated in the table)")
    p.add_argument("--no-channels-last", action="store_true", help="time NCHW tensors instead of NHWC")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before each timing (default 5)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per figure (default 30)")
    p.add_argument("--statistic", default="min", choices=["min", "median"],
                   help="the figure kept of the timed calls (default min: see goldnas_ray/core/latency.py)")
    p.add_argument("--calibration", type=int, default=12,
                   help="random architectures timed end to end to fit the correction (default 12; 0: none)")
    p.add_argument("--no-check", action="store_true",
                   help="write the first profile whatever its checks say (their figures are kept in the table)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        import torch

        from goldnas_ray.core.config import Config, ConfigError
        from goldnas_ray.core.latency import measure
        from goldnas_ray.data.from_config import data_shape
        from goldnas_ray.retrain.sampling import spread_architectures
        from goldnas_ray.files.store import location

        out = location(args.out)  # an unknown scheme or malformed URI: one line, before any timing
        if out.is_file():
            raise ConfigError(f"--out {args.out} exists: a latency table is never overwritten")
        out.probe()  # a bucket: it exists and takes writes, before the timing
        for name in ("batch", "warmup", "repeats"):
            if getattr(args, name) < (0 if name == "warmup" else 1):
                raise ConfigError(f"--{name} must be positive, got {getattr(args, name)}")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: no CUDA device here")
        if args.threads:
            torch.set_num_threads(args.threads)
        cfg = (Config.from_yaml(location(args.config)) if args.config else Config()).override(args.overrides)
        shape, classes = data_shape(cfg.data)
        calibration = spread_architectures(cfg.space, shape, classes, args.calibration, seed=12345)
        print(f"timing the parts of {cfg.space.num_cells} cells x {cfg.space.num_nodes} nodes, operators "
              f"{','.join(cfg.space.operators)}, input {'x'.join(map(str, shape))}, batch {args.batch} on "
              f"{args.device} ({torch.get_num_threads()} threads, {args.dtype})", flush=True)
        table = measure(cfg.space, shape, classes, args.batch, args.device, args.dtype, not args.no_channels_last,
                        args.warmup, args.repeats, calibration, args.statistic,
                        log=lambda line: print(line, flush=True), check=not args.no_check)
        out.write_text(json.dumps(table.to_dict(), indent=1))  # a local parent folder is made
        m = table.measured
        print(f"wrote {out}: {len(table.parts_ms)} parts on {table.device['name']} in {m['seconds']:.1f} s; "
              f"the full network {m['full_network_ms']:.3f} ms measured, {m['full_network_predicted_ms']:.3f} ms "
              f"predicted")

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())

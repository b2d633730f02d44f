"""``python -m goldnas_ray.tracking.replay OUT``: send the MLflow writes a run buffered while its
tracking server was unreachable (``OUT/.mlflow-buffer``, and those of the folders directly in
OUT: a sweep's searches, see ``tracking.buffer``), in order, each once; the runs then end with
the status their run had. Exit 0 when nothing waits any more, 1 when the server still does
not answer (what was sent is counted: run it again), 2 on bad input.
"""
from __future__ import annotations

import argparse
import sys

from goldnas_ray.files.store import StorageError, location
from goldnas_ray.tracking.buffer import BUFFER, Buffer, Unreachable
from goldnas_ray.tracking.common import TrackingError, check_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m goldnas_ray.tracking.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="a run's output folder (a path or a storage URI)")
    parser.add_argument("--mlflow-uri", help="the tracking server, when it moved (default: the one buffered)")
    args = parser.parse_args(argv)
    from mlflow.tracking import MlflowClient

    try:
        out = location(args.out)
        buffers = [Buffer(f) for f in [out] + [out / name for name in out.subfolders() if name != BUFFER]]
        buffers = [b for b in buffers if b.pending() > 0]
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not buffers:
        print(f"no MLflow writes wait in {out}")
        return 0
    for buffer in buffers:
        uri = args.mlflow_uri or buffer.uri()
        try:
            check_uri(uri)  # a server still away: said in seconds, not MLflow's minutes
            sent = buffer.replay(MlflowClient(tracking_uri=uri))
        except TrackingError as exc:
            print(f"error: {exc}; {buffer.pending()} items still wait in {buffer.dir}", file=sys.stderr)
            return 1
        except Unreachable as exc:
            print(f"error: {exc}; {buffer.pending()} items still wait in {buffer.dir}: run this again",
                  file=sys.stderr)
            return 1
        print(f"replayed {sent} items from {buffer.dir} to {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

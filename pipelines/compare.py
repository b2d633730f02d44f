"""Put the fronts of several searches or retrains on one accuracy/FLOPs chart, and print them.

    python pipelines/compare.py runs/retrain-a runs/retrain-b              # two retrains
    python pipelines/compare.py runs/retrain-a runs/search-b --out cmp.png # a search's records as ticks
    python pipelines/compare.py 3f2c...e1 9ab0...77 --mlflow-uri http://mlflow:5000   # MLflow run ids
    python pipelines/compare.py s3://bucket/runs/r1 s3://bucket/runs/r2
    python pipelines/compare.py runs/sweep-a                 # a sweep: every search's records
    python pipelines/compare.py runs/retrain-of-sweep-a      # its retrain: one front per grid point

Each argument is an output folder (or storage URI) of pipelines/retrain.py or
pipelines/search.py (a sweep's folder: one source per search; the retrain of a sweep: one per
grid point), or the MLflow run id of a retrain's parent run or of a search. Writes the
chart (default compare.png) and prints one row per architecture per source.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from goldnas_ray.cli.process import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="RUN_OR_DIR", help="folders, storage URIs or MLflow run ids")
    p.add_argument("--out", default="compare.png", help="the chart to write (default compare.png)")
    p.add_argument("--mlflow-uri", help="tracking URI for run ids (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--title", default="", help="the chart's title")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--x", dest="axis", default="flops", choices=["flops", "latency"],
                   help="the x axis: FLOPs (default), or the latency the retrains measured (batch 1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        from goldnas_ray.retrain.compare import front_table, looks_like_run_id, plot_fronts, read_front
        from goldnas_ray.sweep.report import read_fronts
        from goldnas_ray.retrain.plan import RetrainError
        from goldnas_ray.tracking.retrain import fetch_front_run

        if len(set(args.sources)) != len(args.sources):
            raise RetrainError("a source is named twice")
        fronts, named = [], []  # each front, and the source it came from
        with tempfile.TemporaryDirectory(prefix="goldnas-compare-") as tmp:
            for i, source in enumerate(args.sources):
                if looks_like_run_id(source):
                    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
                    if not uri:
                        raise RetrainError(f"{source} looks like an MLflow run id: pass --mlflow-uri")
                    folder = fetch_front_run(source, uri, Path(tmp) / str(i))
                    found = [read_front(folder, label=source[:8])]
                else:
                    found = read_fronts(source)
                fronts += found
                named += [source] * len(found)
        labels = [f.label for f in fronts]
        for f, source in zip(fronts, named):
            if labels.count(f.label) > 1:  # e.g. two folders both called retrain/
                f.label = f"{source}{f.label[f.label.index(':'):] if ':' in f.label else ''}"
        table = front_table(fronts)
        chart = plot_fronts(fronts, args.out, args.title, args.axis)
        if args.csv:
            table.to_csv(args.csv, index=False)
        shown = table.assign(MFLOPs=(table["flops"] / 1e6).round(3)).drop(columns=["flops"])
        if "accuracy_mean" in shown:
            shown["accuracy_mean"] = (shown["accuracy_mean"] * 100).round(2)
        print(shown.to_string(index=False))
        print(f"chart: {chart}")

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())

"""Pick a retrained network and export it: ONNX, torch.export, safetensors, and a model card.

    python pipelines/export.py --retrain-dir runs/retrain-Y --out runs/model-best          # the best accuracy
    python pipelines/export.py --retrain-dir runs/retrain-Y --max-flops 50e6 --out runs/model-50m
    python pipelines/export.py --retrain-dir runs/retrain-Y --max-latency-ms 8 --max-params 1e6 --out m
    python pipelines/export.py --retrain-dir runs/retrain-Y --arch a3 --seed 1 --out runs/model-a3
    python pipelines/export.py --retrain-dir s3://bucket/runs/r1 --max-flops 2e6 --out s3://bucket/models/m1
    python pipelines/export.py --mlflow-model models:/goldnas-digits@best --mlflow-uri http://mlflow:5000 --out m

From a retrain's output folder: the named architecture, or the one with the best mean test
accuracy over its seeds among those under every budget given (FLOPs per image, parameters,
the retrain's measured batch-1 latency), and its seed closest to that mean unless --seed. A
budget nothing meets is refused, naming the smallest network there is. From MLflow's model
registry (--mlflow-model): that registered version.

Writes into --out (a new or empty folder, or a storage URI): model.onnx, model.pt2,
weights.safetensors, genotype.json, model.json and MODEL_CARD.md. Both exports are checked
against the network on random inputs at two batch sizes (largest difference printed, refused
above 1e-4); nothing is written unless they pass. docs/models.md says how to use them.
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
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--retrain-dir", help="output folder (or storage URI) of pipelines/retrain.py")
    source.add_argument("--mlflow-model", metavar="MODELS_URI",
                        help="a registered version: models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--mlflow-uri", help="tracking URI for --mlflow-model (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--arch", help="export this architecture (its id in frontier.csv) instead of picking one")
    p.add_argument("--max-flops", type=float, help="pick among networks of at most this many FLOPs per image")
    p.add_argument("--max-params", type=float, help="pick among networks of at most this many parameters")
    p.add_argument("--max-latency-ms", type=float,
                   help="pick among networks whose measured batch-1 latency (frontier.csv latency_ms) is at most this")
    p.add_argument("--seed", type=int, help="export this seed's network (default: the one closest to the mean)")
    p.add_argument("--out", required=True, help="a new or empty folder, or a storage URI, for the export")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        from goldnas_ray.files.search_files import OutputDirError
        from goldnas_ray.files.store import location
        from goldnas_ray.models.export import export_folder

        out = location(args.out)
        if out.is_file() or out.names():  # checked before any compute: earlier results are never overwritten
            raise OutputDirError(f"--out {out} already exists and is not empty: give a new or empty folder")
        command = ["python", "pipelines/export.py", *(sys.argv[1:] if argv is None else argv)]  # for the card
        if args.mlflow_model:
            with tempfile.TemporaryDirectory(prefix="goldnas-registry-") as tmp:
                export_folder(_from_registry(args, Path(tmp)), out, command)
        else:
            row, folder = _picked(args)
            export_folder(folder, out, command, row)
        print(f"exported to {out}: model.onnx, model.pt2, weights.safetensors, genotype.json, model.json, "
              f"MODEL_CARD.md; goldnas_ray.load_model({str(out)!r}) loads it")

    return run_main(body)


def _picked(args: argparse.Namespace):
    """The picked architecture's row and its model folder, the choice printed."""
    from goldnas_ray.models.pick import describe, model_folder, pick, representatives

    row = pick(representatives(args.retrain_dir), arch=args.arch, max_flops=args.max_flops,
               max_params=args.max_params, max_latency_ms=args.max_latency_ms, seed=args.seed)
    budgets = [f"{flag} {value:g}" for flag, value in (("--max-flops", args.max_flops),
                                                         ("--max-params", args.max_params),
                                                         ("--max-latency-ms", args.max_latency_ms)) if value is not None]
    why = ("named" if args.arch else "the best mean accuracy" + (f" under {', '.join(budgets)}" if budgets else ""))
    print(f"picked {describe(row)} ({why}); seed {row['seed']}"
          + (" (--seed)" if args.seed is not None else " (the closest to the mean)"))
    return row, model_folder(args.retrain_dir, row)


def _from_registry(args: argparse.Namespace, dest: Path) -> Path:
    """The registered version's model folder, fetched into ``dest``."""
    from goldnas_ray.retrain.plan import RetrainError
    from goldnas_ray.tracking.registry import download_model

    chosen = [flag for flag, value in (("--arch", args.arch), ("--max-flops", args.max_flops),
                                       ("--max-params", args.max_params), ("--max-latency-ms", args.max_latency_ms),
                                       ("--seed", args.seed)) if value is not None]
    if chosen:
        raise RetrainError(f"--mlflow-model names one registered version: {', '.join(chosen)} pick from a "
                           f"--retrain-dir")
    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RetrainError("--mlflow-model needs --mlflow-uri (or MLFLOW_TRACKING_URI)")
    return download_model(args.mlflow_model, uri, dest)


if __name__ == "__main__":
    sys.exit(main())

"""A quick front against scratch retraining of the same records: does it rank them alike, and
at what cost?

    python benchmarks/quick_front.py runs/rt-scratch runs/rt-quick

Each argument is a retrain's output folder: the first trained from scratch, the second
``pipelines/retrain.py --quick`` of the same search. Prints Kendall's tau between the quick
front's accuracies (after its fine-tune, and ``start_test_acc`` before it) and the scratch
accuracies over the records both trained, and each retrain's trials and trial-seconds (the
epochs' training and evaluation; a quick trial's batch-norm calibration is not in them).
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd
from scipy.stats import kendalltau

from goldnas_ray.files.store import location


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scratch")
    p.add_argument("quick")
    a = p.parse_args()
    scratch, quick = (pd.read_parquet((location(d) / "frontier.parquet").open_buffer()).set_index("arch_id")
                      for d in (a.scratch, a.quick))
    ids = sorted(set(scratch.index) & set(quick.index))
    for col in ("accuracy_mean", "start_test_acc"):
        if col in quick:
            tau, pvalue = kendalltau(quick.loc[ids, col], scratch.loc[ids, "accuracy_mean"])
            print(f"Kendall tau, quick {col} against scratch accuracy_mean over {len(ids)} records: "
                  f"{tau:+.3f} (p = {pvalue:.2f})")
    for d in (a.scratch, a.quick):
        trials = pd.read_parquet((location(d) / "trials.parquet").open_buffer())
        print(f"{d}: {trials['key'].nunique()} trials, {trials['seconds'].sum():.0f} trial-seconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())

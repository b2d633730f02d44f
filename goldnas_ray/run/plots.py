"""A search's plots: lambda and FLOPs over the epochs, recorded architectures marked."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from goldnas_ray.files.search_files import HISTORY
from goldnas_ray.files.store import Location, location


def write_plots(out: "str | Path | Location") -> list[Location]:
    """plots/lambda.png and plots/flops.png from ``out``'s history.parquet."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

    out = location(out)
    hist_path = out / HISTORY
    if not hist_path.is_file():
        return []
    hist = pd.read_parquet(hist_path.open_buffer())
    rec = hist[hist["recorded"].astype(str) != ""]
    paths = []
    for col, label, fname, log in (("lambda", "lambda", "lambda.png", True),
                                   ("flops", "MFLOPs per image", "flops.png", False)):
        fig = Figure(figsize=(6, 3.5))
        ax = fig.subplots()
        scale = 1e-6 if col == "flops" else 1.0
        ax.plot(hist["epoch"], hist[col] * scale, lw=1.5)
        ax.scatter(rec["epoch"], rec[col] * scale, color="C3", zorder=3, label="recorded architecture")
        if log and (hist[col] > 0).any():
            ax.set_yscale("symlog", linthresh=max(float(hist[col][hist[col] > 0].min()), 1e-6))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend(loc="best")
        fig.tight_layout()
        paths.append((out / "plots" / fname).write(lambda tmp: fig.savefig(tmp, dpi=100)))
    return paths

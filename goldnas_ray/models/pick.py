"""Which trained network to ship: one row per architecture of a retrain, and the rule that picks one.

:func:`representatives` reads a retrain's output folder (a path or a storage URI):
frontier.parquet (FLOPs, params, measured latency, the front) and trials.parquet (every
trial's epochs), and gives one row per trained architecture with its accuracy over the seeds
that finished (the last epoch's test accuracy, never the best epoch's: the test set chooses
nothing), its Student-t interval (``retrain.stats``), and its representative seed: the one
whose accuracy is closest to that mean (ties: the lowest seed), the trial a user gets when
asking for "this architecture".

:func:`pick` chooses the named architecture, or the best mean accuracy under every budget
given (FLOPs, parameters, measured batch-1 latency; ties: fewer FLOPs, then the id). Only
architectures whose chosen trial left a model folder (``<retrain>/models/<arch>-s<seed>/``)
can be picked. A budget nothing meets is refused, naming the smallest network there is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from goldnas_ray.files.store import Location, location
from goldnas_ray.models.saved import MODELS, model_folders
from goldnas_ray.retrain.plan import RetrainError, trial_key
from goldnas_ray.retrain.report import last_epochs
from goldnas_ray.retrain.stats import t_interval

KINDS = ("searched", "random")
# budget name -> (column, its words in a message)
BUDGETS = {"max_flops": ("flops", "FLOPs"), "max_params": ("params", "parameters"),
           "max_latency_ms": ("latency_ms", "latency (ms, batch 1)")}


class PickError(RetrainError):
    """No network can be picked as asked (an unknown architecture or seed, a budget nothing
    meets, a retrain without its reports or models): the message says why."""


def representatives(retrain_dir: "str | Path | Location") -> pd.DataFrame:
    """One row per trained architecture of the retrain in ``retrain_dir``: arch_id, kind, flops,
    params, latency_ms, latency_device, on_front (from frontier.parquet), accuracy_mean and
    ``accuracy`` (interval: value, low, high, n, method) over ``seeds`` (the finished ones),
    ``seed`` (the representative seed), ``models`` (the seeds whose model folder exists)."""
    loc = location(retrain_dir)
    frontier, trials = (_read(loc, name) for name in ("frontier.parquet", "trials.parquet"))
    if "finished" in trials:
        trials = trials[trials["finished"].astype(bool)]
    last = last_epochs(trials)
    saved = set(model_folders(loc))  # complete ones only
    rows = []
    for _, arch in frontier.iterrows():
        runs = last[last["arch_id"] == arch["arch_id"]].sort_values("seed")
        if runs.empty:
            continue
        accs = dict(zip(runs["seed"].astype(int), runs["test_acc"].astype(float)))
        interval = t_interval(list(accs.values()))
        mean = interval["value"]
        rows.append({"arch_id": arch["arch_id"], "kind": arch["kind"], "flops": int(arch["flops"]),
                     "params": int(arch["params"]), "latency_ms": _measured(arch, "latency_ms"),
                     "latency_device": _measured(arch, "latency_device"), "on_front": bool(arch["on_front"]),
                     "accuracy_mean": mean, "accuracy": interval, "seeds": sorted(accs),
                     "seed": min(accs, key=lambda s: (round(abs(accs[s] - mean), 12), s)),  # float noise: a tie
                     "models": [s for s in sorted(accs) if trial_key(arch["arch_id"], s) in saved]})
    columns = ["arch_id", "kind", "flops", "params", "latency_ms", "latency_device", "on_front",
               "accuracy_mean", "accuracy", "seeds", "seed", "models"]
    return pd.DataFrame(rows, columns=columns)


def _read(loc: Location, name: str) -> pd.DataFrame:
    if not (loc / name).is_file():
        raise PickError(f"{loc} holds no {name}: give the output folder of a finished retrain "
                        f"(pipelines/retrain.py --out)")
    return pd.read_parquet((loc / name).open_buffer())


def _measured(arch: pd.Series, column: str) -> Any:
    value = arch.get(column)
    return None if value is None or pd.isna(value) else value


def pick(table: pd.DataFrame, arch: str | None = None, max_flops: float | None = None,
         max_params: float | None = None, max_latency_ms: float | None = None,
         seed: int | None = None) -> pd.Series:
    """The chosen architecture's row of ``table`` (:func:`representatives`), its ``seed`` the
    representative one or ``seed``: ``arch`` by name, else the best mean accuracy among those
    that meet every budget given (ties: fewer FLOPs, then the id). Raises PickError naming the
    problem: an unknown name, a budget nothing meets (naming the smallest network), a seed
    that was not trained or left no model."""
    budgets = {name: limit for name, limit in (("max_flops", max_flops), ("max_params", max_params),
                                               ("max_latency_ms", max_latency_ms)) if limit is not None}
    if arch is not None and budgets:
        raise PickError("name an architecture or give budgets, not both")
    shippable = table[table["kind"].isin(KINDS) & table["models"].map(bool)]
    if shippable.empty:
        raise PickError("no trained architecture left a model folder (models/<arch>-s<seed>/ in the "
                        "retrain's output): retrain it with a version that saves its networks")
    if arch is not None:
        found = shippable[shippable["arch_id"] == arch]
        if found.empty:
            raise PickError(f"no trained architecture {arch} with a saved model; there are: "
                            f"{', '.join(shippable['arch_id'])}")
        row = found.iloc[0].copy()
    else:
        row = _best_under(shippable, budgets)
    return _with_seed(row, seed)


def _best_under(table: pd.DataFrame, budgets: dict[str, float]) -> pd.Series:
    """The best mean accuracy among the rows that meet every budget."""
    meets = pd.Series(True, index=table.index)
    for name, limit in budgets.items():
        column, words = BUDGETS[name]
        if table[column].isna().any():
            raise PickError(f"--{name.replace('_', '-')}: the retrain measured no {words} of some networks "
                            f"(retrain.latency_repeats=0, or a retrain made before it was measured)")
        meets &= table[column].astype(float) <= limit
    fit = table[meets]
    if fit.empty:
        wanted = " and ".join(f"{BUDGETS[n][1]} <= {limit:g}" for n, limit in budgets.items())
        smallest = {table.loc[table[BUDGETS[n][0]].astype(float).idxmin(), "arch_id"] for n in budgets}
        named = "; ".join(describe(table[table["arch_id"] == a].iloc[0]) for a in sorted(smallest))
        raise PickError(f"no network has {wanted}: the smallest there is: {named}")
    return fit.sort_values(["accuracy_mean", "flops", "arch_id"], ascending=[False, True, True]).iloc[0].copy()


def _with_seed(row: pd.Series, seed: int | None) -> pd.Series:
    if seed is None:
        if row["seed"] not in row["models"]:
            raise PickError(f"{row['arch_id']}'s representative seed {row['seed']} left no model folder; "
                            f"pass --seed, one of {row['models']}")
        return row
    if seed not in row["seeds"]:
        raise PickError(f"{row['arch_id']} was not trained with seed {seed} (finished seeds: {row['seeds']})")
    if seed not in row["models"]:
        raise PickError(f"{row['arch_id']} seed {seed} left no model folder (seeds with one: {row['models']})")
    row = row.copy()
    row["representative_seed"], row["seed"] = row["seed"], int(seed)
    return row


def describe(row: pd.Series) -> str:
    """``a3 (searched): 1,234,000 FLOPs, 5,678 params, 0.812 ms, accuracy 91.20% ...``, one line."""
    latency = f", {row['latency_ms']:.3f} ms" if row["latency_ms"] is not None and pd.notna(row["latency_ms"]) else ""
    acc = row["accuracy"]
    return (f"{row['arch_id']} ({row['kind']}): {row['flops']:,} FLOPs, {row['params']:,} params"
            f"{latency}, accuracy {100 * acc['value']:.2f}% over {acc['n']} seed(s)")


def model_folder(retrain_dir: "str | Path | Location", row: pd.Series) -> Location:
    """The model folder of the picked trial (``row``'s arch_id and seed)."""
    return location(retrain_dir) / MODELS / trial_key(row["arch_id"], int(row["seed"]))

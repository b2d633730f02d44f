"""What a sweep runs, decided and checked before anything runs, and written down.

A sweep is a grid of config values (``--grid search.lambda0=0.001,0.002``, one flag per key)
crossed with seeds: every (grid point, seed) is one ordinary search with its own output folder
``<sweep>/p<point>-s<seed>``. :func:`plan_sweep` validates every search's config (a value that
is no value of its field, or a combination the config refuses, stops the sweep before anything
runs, naming the point) and returns a :class:`Sweep`; :meth:`Sweep.write` stores it as
``<sweep>/sweep.json`` and :meth:`Sweep.read` brings it back for ``--resume`` and for the
retrain of a sweep. A ``--resume`` takes the flags that plan a sweep only when they plan the
same searches (:func:`check_same_plan`) and names the resource and MLflow flags its sweep.json
overrides (:func:`not_as_planned`); a sweep that ends with failed searches is a
:class:`SweepError` (:func:`check_finished`). Plain data and checks: testable without Ray.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from goldnas_ray.core.config import Config, ConfigError
from goldnas_ray.files.search_files import CHECKPOINT, OutputDirError, read_manifest, read_records, records_path
from goldnas_ray.files.store import INFRASTRUCTURE, INPUT, KindedError, Location, location

SWEEP_FILE = "sweep.json"
SWEEP_FORMAT = "goldnas-ray/sweep"


class SweepError(KindedError, RuntimeError):
    """Some searches of a sweep did not finish; the message says which and how to continue.
    ``kind``: input when every one failed on its own input, infrastructure otherwise."""


def parse_grid(flags: Sequence[str]) -> dict[str, list[str]]:
    """``["search.lambda0=0.001,0.002", ...]`` -> {key: [values]}, in the order given."""
    grid: dict[str, list[str]] = {}
    for flag in flags:
        key, sep, values = flag.partition("=")
        key = key.strip()
        if sep and key == "seed":
            raise ConfigError("give the seeds with --seeds 0,1,2, not --grid seed=...")
        if not sep or not key or "." not in key:
            raise ConfigError(f"--grid {flag!r}: expected section.key=v1,v2,... (e.g. search.lambda0=0.001,0.002)")
        items = [v.strip() for v in values.split(",")]
        if not all(items):
            raise ConfigError(f"--grid {flag!r}: an empty value")
        if len(set(items)) != len(items):
            raise ConfigError(f"--grid {flag!r}: a value is given twice")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; list its values in one flag")
        grid[key] = items
    return grid


def parse_seeds(text: str | None) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2] (distinct non-negative integers); None (--seeds not given): [0]."""
    if text is None:
        return [0]
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: distinct non-negative integers")
    return seeds


@dataclass
class SearchPlan:
    """One search of the sweep: its grid point (index and values), seed and folder name."""

    name: str  # the folder under the sweep, and the key of everything per search
    point: int
    values: dict[str, str]
    seed: int
    config: dict[str, Any]
    mlflow_run_id: str | None = None

    @property
    def label(self) -> str:
        return point_label(self.values) + f" seed={self.seed}"


def point_label(values: dict[str, str]) -> str:
    """``lambda0=0.001 c0=1.5``: the last part of each key, unless two keys share it."""
    tails = [k.rsplit(".", 1)[-1] for k in values]
    return " ".join(f"{t if tails.count(t) == 1 else k}={v}" for (k, v), t in zip(values.items(), tails))


@dataclass
class Sweep:
    """sweep.json: the grid, the seeds, every search's config and MLflow run, the resources."""

    grid: dict[str, list[str]]
    seeds: list[int]
    searches: list[SearchPlan]
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    experiment: str = "goldnas-sweep"
    mlflow_tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    failed: dict[str, str] = field(default_factory=dict)  # name -> why, as of the last run
    # name -> what the failure was a fault of ("input": not retried, --resume fails it again;
    # "infrastructure"); absent for an unclassified error, and in files written before it was kept
    failed_kinds: dict[str, str] = field(default_factory=dict)

    @property
    def points(self) -> list[dict[str, str]]:
        """The grid's points, in order: every combination of one value per key."""
        return [dict(zip(self.grid, combo)) for combo in itertools.product(*self.grid.values())]

    def by_name(self) -> dict[str, SearchPlan]:
        return {s.name: s for s in self.searches}

    def fail(self, name: str, why: str, kind: str | None) -> None:
        """Record that search ``name`` did not finish, why, and the kind of its error."""
        self.failed[name] = why
        if kind:
            self.failed_kinds[name] = kind
        else:
            self.failed_kinds.pop(name, None)

    def failed_on_input(self) -> list[str]:
        """The failed searches whose own input failed them: trying them again fails the same way."""
        return [name for name in self.failed if self.failed_kinds.get(name) == INPUT]

    def to_dict(self) -> dict[str, Any]:
        return {"format": SWEEP_FORMAT, "version": 1} | asdict(self)

    def write(self, out: "Path | Location") -> Location:
        return (location(out) / SWEEP_FILE).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def read(cls, out: "Path | Location") -> "Sweep":
        path = location(out) / SWEEP_FILE
        if not path.is_file():
            raise OutputDirError(f"{location(out)} is not a sweep output folder (no {SWEEP_FILE} inside)")
        raw = read_manifest(path, (SWEEP_FORMAT,), "a goldnas-ray sweep manifest")
        try:
            searches = [SearchPlan(**s) for s in raw["searches"]]
            return cls(raw["grid"], raw["seeds"], searches, raw["workers"], raw["cpus_per_worker"],
                       raw["gpus_per_worker"], raw.get("experiment", "goldnas-sweep"),
                       raw.get("mlflow_tracking_uri"), raw.get("mlflow_run_id"), dict(raw.get("failed") or {}),
                       dict(raw.get("failed_kinds") or {}))
        except (KeyError, TypeError) as exc:
            raise OutputDirError(f"{path} is not a complete sweep manifest ({type(exc).__name__}: {exc})") from None


def is_sweep(folder: "Path | Location") -> bool:
    return (location(folder) / SWEEP_FILE).is_file()


def plan_sweep(base: Config, grid: dict[str, list[str]], seeds: Sequence[int]) -> list[SearchPlan]:
    """One search per (grid point, seed), each config validated; the first invalid one stops
    the sweep with an error naming its point."""
    if not grid:
        raise ConfigError("a sweep needs at least one --grid key=v1,v2,...")
    if not seeds:
        raise ConfigError("a sweep needs at least one seed")
    searches = []
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    for i, values in enumerate(points):
        try:
            cfg = base.override([f"{k}={v}" for k, v in values.items()])
        except ConfigError as exc:
            raise ConfigError(f"grid point {point_label(values)}: {exc}") from None
        for seed in seeds:
            searches.append(SearchPlan(f"p{i}-s{seed}", i, values, seed,
                                       cfg.model_copy(update={"seed": seed}).to_dict()))
    return searches


def search_state(folder: Location) -> str:
    """finished, started (a checkpoint to continue from) or new (nothing to continue from:
    never run, or stopped before its first checkpoint)."""
    if records_path(folder) is not None and read_records(folder).get("finished"):
        return "finished"
    return "started" if (folder / str(CHECKPOINT)).is_file() else "new"


# ---- a continued sweep's flags, and how a sweep that did not finish ends --------------------
# ``args``: pipelines/sweep.py's flags
def not_as_planned(out: Location, args: Any) -> list[str]:
    """The resource and MLflow flags of a continued sweep that were given (not None, or
    --no-mlflow) with another value than its sweep.json's, as ``--flag value``: the first try's
    command, given again, names none."""
    planned = Sweep.read(out)
    kept = {"workers_per_search": planned.workers, "cpus_per_worker": planned.cpus_per_worker,
            "gpus_per_worker": planned.gpus_per_worker, "experiment": planned.experiment,
            "mlflow_uri": planned.mlflow_tracking_uri, "no_mlflow": planned.mlflow_tracking_uri is None}
    given = {f: getattr(args, f) for f in kept if getattr(args, f) is not None and getattr(args, f) is not False}
    return [f"--{f.replace('_', '-')}" + ("" if value is True else f" {value}")
            for f, value in given.items() if value != kept[f]]


def check_same_plan(out: Location, args: Any, base: Callable[[Any], Config]) -> None:
    """A continued sweep's planning flags (--grid, --seeds, --config, --set, --smoke-test), when
    given, must plan the searches of its sweep.json: else a ConfigError. ``base(args)``: the
    config every search of a new sweep of ``args`` starts from (``cli.sweep_base``)."""
    if not (args.grid or args.overrides or args.config or args.smoke_test or args.seeds is not None):
        return
    planned = Sweep.read(out)
    given = plan_sweep(base(args), parse_grid(args.grid), parse_seeds(args.seeds)) if args.grid else []
    same = lambda searches: json.loads(json.dumps([(s.name, s.config) for s in searches]))  # noqa: E731
    if same(given) != same(planned.searches):
        raise ConfigError(f"--resume: the sweep in {out} was planned with other --grid, --seeds, --config, --set or "
                          f"--smoke-test values than these; give the ones it was started with (or none) to continue "
                          f"it, or a new --out for a new sweep")


def check_finished(sweep: Sweep, out: Location) -> None:
    """A sweep that ends with failed searches is an error (status 2): a SweepError naming them,
    those that failed on their own input (--resume fails them again) and the command that
    continues the others."""
    if sweep.failed:
        inputs = sweep.failed_on_input()  # the kind each failure was recorded with
        others = [name for name in sweep.failed if name not in inputs]
        message = f"{len(sweep.failed)} of {len(sweep.searches)} searches did not finish: {', '.join(sweep.failed)}"
        if inputs:
            message += f"; failed on their own input: {', '.join(inputs)} (change those grid values: --resume " \
                       f"fails them again)"
        if others:
            message += f"; continue {', '.join(others)} with --resume --out {out.uri}"
        raise SweepError(message, INFRASTRUCTURE if others else INPUT)

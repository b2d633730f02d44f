"""A retrain's front in MLflow's model registry, and a registered version back as a model folder.

:func:`register_front` gives every point of a retrained front one version of one registered
model (``goldnas-<dataset>``, or ``retrain.register_as`` / ``--register-as NAME``): the
logged model of the architecture's representative seed (``models.pick.representatives``),
tagged ``arch_id``, ``seed``, ``kind``, ``flops``, ``params``, ``accuracy``. Aliases a serving
system or an export can point at: ``front-<k>`` (k = rank by FLOPs, 1 = the fewest) and
``best`` (the highest mean accuracy; ties: fewer FLOPs). A version is made once per logged
model, so a resumed retrain (or a second report) registers nothing twice; aliases move to the
latest front registered under the name, and ``front-<k>`` aliases beyond it are removed.

:func:`download_model` resolves ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` and writes
that version's model folder (weights.safetensors, genotype.json, model.json: the files
``goldnas_ray.load_model`` and ``pipelines/export.py`` read), stored in the logged model's
``goldnas/`` folder beside MLflow's own pt2 model.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from goldnas_ray.core.config import Config
from goldnas_ray.files.store import INFRASTRUCTURE, INPUT, Location
from goldnas_ray.tracking.common import TrackingError, check_uri

FOLDER = "goldnas"  # the model folder's files inside a logged model's artifacts
MODEL_FILES = ("weights.safetensors", "genotype.json", "model.json")
BEST, FRONT = "best", "front-"
URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


def registered_name(config: Config) -> str:
    """The registered model a retrain of ``config`` registers its front under."""
    return config.retrain.register_as or f"goldnas-{config.data.dataset}"


@dataclass(frozen=True)
class FrontPoint:
    """One architecture of a retrained front, as its registered version describes it."""

    arch_id: str
    seed: int
    kind: str
    flops: int
    params: int
    accuracy: float  # mean last-epoch test accuracy over the architecture's seeds
    model_id: str    # the logged model of (arch_id, seed)
    run_id: str      # its child run

    def tags(self) -> dict[str, str]:
        return {"model_id": self.model_id, "arch_id": self.arch_id, "seed": str(self.seed), "kind": self.kind,
                "flops": str(self.flops), "params": str(self.params), "accuracy": f"{self.accuracy:.6g}"}

    def description(self) -> str:
        return (f"{self.arch_id} ({self.kind}), seed {self.seed}: {self.flops / 1e6:.3f} MFLOPs, "
                f"{self.params} params, mean test accuracy {self.accuracy:.4f}")


def aliases(points: list[FrontPoint]) -> dict[str, FrontPoint]:
    """alias -> point: ``front-<k>`` by FLOPs rank (ties: the id), ``best`` by mean accuracy
    (ties: fewer FLOPs, then the id)."""
    ranked = sorted(points, key=lambda p: (p.flops, p.arch_id))
    found = {f"{FRONT}{k}": p for k, p in enumerate(ranked, start=1)}
    if points:
        found[BEST] = min(points, key=lambda p: (-p.accuracy, p.flops, p.arch_id))
    return found


def register_front(client, name: str, points: list[FrontPoint]) -> dict[str, str]:
    """One version of registered model ``name`` per point (an existing version of the same
    logged model is kept, not made again), the aliases of :func:`aliases`; returns alias ->
    version. ``client``: an MlflowClient of the tracking server (not buffered)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="networks of retrained GOLD-NAS fronts (goldnas-ray)")
    have = {model_of(mv): mv.version for mv in client.search_model_versions(f"name = '{name}'")}
    versions = {}
    for p in points:
        if p.model_id not in have:
            # the logged model's own location as the source: a models:/ source makes a store
            # without a server look the model up through MLflow's global tracking URI
            source = client.get_logged_model(p.model_id).artifact_location
            mv = client.create_model_version(name, source=source, run_id=p.run_id,
                                             tags=p.tags(), description=p.description(), model_id=p.model_id)
            have[p.model_id] = mv.version
        versions[p.model_id] = have[p.model_id]
    wanted = {alias: str(versions[p.model_id]) for alias, p in aliases(points).items()}
    for alias in client.get_registered_model(name).aliases:
        if alias.startswith(FRONT) and alias not in wanted:  # a longer front registered before
            client.delete_registered_model_alias(name, alias)
    for alias, version in wanted.items():
        client.set_registered_model_alias(name, alias, version)
    return wanted


def front_points(retrain_dir: "Location", run_ids: dict[str, str], model_ids: dict[str, str]) -> list[FrontPoint]:
    """The front of the retrain in ``retrain_dir`` (``on_front`` in frontier.parquet), each
    architecture at its representative seed (``models.pick.representatives``), whose child run
    (``run_ids``: trial key -> run id) holds a logged model (``model_ids``: run id -> model id);
    PickError, saying why, when the tables are missing or a front point lacks a logged model (a
    front registered in part would move its aliases)."""
    from goldnas_ray.models.pick import PickError, representatives
    from goldnas_ray.retrain.plan import trial_key

    table = representatives(retrain_dir)  # PickError without frontier.parquet and trials.parquet
    points = []
    for _, row in table[table["on_front"]].iterrows():
        run = run_ids.get(trial_key(row["arch_id"], int(row["seed"])))
        if run not in model_ids:
            raise PickError(f"front point {row['arch_id']} (seed {row['seed']}) has no logged model, and a front "
                            f"registered in part would move its aliases")
        points.append(FrontPoint(row["arch_id"], int(row["seed"]), row["kind"], int(row["flops"]), int(row["params"]),
                                 float(row["accuracy_mean"]), model_ids[run], run))
    return points


def model_of(mv) -> str | None:
    """The logged model a registered version was made from: its ``model_id`` (a store that
    keeps it) or the ``model_id`` tag :func:`register_front` sets (a sqlite store drops it)."""
    return mv.model_id or mv.tags.get("model_id")


def parse_models_uri(models_uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    found = URI.match(models_uri)
    if not found:
        raise TrackingError(f"{models_uri!r} is not a registered model version: give models:/NAME@ALIAS "
                            f"(e.g. models:/goldnas-digits@best) or models:/NAME/VERSION")
    return found["name"], found["alias"], found["version"]


def download_model(models_uri: str, tracking_uri: str, dest: Path) -> Path:
    """The model folder of registered version ``models_uri`` (``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``) on the MLflow store ``tracking_uri``, written into ``dest``
    (made if missing); returns ``dest``. An unknown name, alias or version, a version that is
    not a goldnas-ray network, a server that does not answer: a TrackingError naming it."""
    from mlflow.tracking import MlflowClient

    name, alias, version = parse_models_uri(models_uri)
    check_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = _version(client, name, alias, version, tracking_uri)
    if not model_of(mv):
        raise TrackingError(f"{models_uri} (version {mv.version}, source {mv.source}) is not a logged model of a "
                            f"goldnas-ray retrain: it holds no model folder")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _fetch(client, model_of(mv), tracking_uri, dest, f"{models_uri} (version {mv.version})")
    return dest


def _version(client, name: str, alias: str | None, version: str | None, uri: str):
    """The ModelVersion asked for; a TrackingError that says what exists where it does not."""
    from mlflow.exceptions import MlflowException

    from goldnas_ray.tracking.buffer import is_outage

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if is_outage(exc, uri):
            raise TrackingError(f"MLflow at {uri} is unreachable: {exc}", INFRASTRUCTURE) from exc
        names = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise TrackingError(f"MLflow at {uri} has no registered model {name!r} (it has: "
                            f"{', '.join(names) or 'none'})", INPUT) from exc
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        if is_outage(exc, uri):
            raise TrackingError(f"MLflow at {uri} is unreachable: {exc}", INFRASTRUCTURE) from exc
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        known = (f"aliases: {', '.join(sorted(model.aliases)) or 'none'}" if alias else
                 f"versions: {', '.join(map(str, versions)) or 'none'}")
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise TrackingError(f"registered model {name!r} at {uri} has no {what} ({known})", INPUT) from exc


def _fetch(client, model_id: str, uri: str, dest: Path, what: str) -> None:
    """The model folder files of logged model ``model_id`` into ``dest``."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    model = client.get_logged_model(model_id)
    with tempfile.TemporaryDirectory(prefix="goldnas-registry-") as tmp:
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{model.artifact_location}/{FOLDER}",
                                                           dst_path=tmp, tracking_uri=uri))
        except (MlflowException, OSError) as exc:
            raise TrackingError(f"{what}: cannot read its model folder ({model.artifact_location}/{FOLDER}): "
                                f"{exc}", INFRASTRUCTURE) from exc
        missing = [f for f in MODEL_FILES if not (got / f).is_file()]
        if missing:
            raise TrackingError(f"{what}: logged model {model_id} lacks {', '.join(missing)} in {FOLDER}/: not a "
                                f"goldnas-ray model folder", INPUT)
        for f in MODEL_FILES:
            shutil.copyfile(got / f, dest / f)


def log_registered(name: str, wanted: dict[str, str], log: Callable[[str], None]) -> None:
    """One console line: which version each alias of ``name`` points at."""
    by_version = {}
    for alias, version in wanted.items():
        by_version.setdefault(version, []).append(alias)
    log(f"MLflow registered model {name}: "
        + "; ".join(f"v{v} = {', '.join(a)}" for v, a in sorted(by_version.items(), key=lambda i: int(i[0]))))

"""What the MLflow trackers share: the tracking URI, where artifacts go, parameters in
batches, file artifacts.

Every write goes through ``MlflowClient`` (wrapped by ``buffer.BufferedClient``, which buffers a
tracking server's outage; no global fluent state), from one process only:
rank 0 of a search, the driver of a retrain.

Where a run's artifacts go is one rule (:func:`artifact_root`, applied when an experiment is
created by :func:`experiment_id`, which every tracker uses): beside a sqlite store
(``DIR/mlflow.db``: ``DIR/mlartifacts``, so the default store keeps them inside ``--out``),
inside a file store, in a tracking server's own artifact store. Never relative to the folder a
run starts in: a Ray job starts in a temporary copy of its working directory.
"""
from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from goldnas_ray.files.store import INFRASTRUCTURE, KindedError, Location, location, working_copy_note


class TrackingError(KindedError, ValueError):
    """The MLflow tracking URI cannot be used. ``kind``: :data:`INPUT` (the URI or credentials
    given are wrong) or :data:`INFRASTRUCTURE` (a server that does not answer, which may pass)."""


# what store_kind says; a sqlite file or a folder takes one writer (a sweep's driver)
SQLITE, FOLDER, DATABASE, SERVER, OTHER = "sqlite", "folder", "database", "server", "other"
FILE_STORES = (SQLITE, FOLDER)
# the database schemes MLflow's SQL store takes without a server: it has no artifact store of
# its own, and MLflow's default for one is ./mlruns, relative to wherever the process runs
SQL_SCHEMES = ("postgresql", "mysql", "mssql")


def store_kind(uri: str) -> str:
    """The kind of MLflow store ``uri`` names: :data:`SQLITE` (a file), :data:`FOLDER` (a file
    store: a path or file://), :data:`DATABASE` (another SQL database, no server),
    :data:`SERVER` (an http(s) tracking server) or :data:`OTHER` (databricks, a plugin's)."""
    if uri == "databricks":  # MLflow's one store named without a scheme
        return OTHER
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme == "sqlite":
        return SQLITE
    if scheme in ("", "file"):
        return FOLDER
    if scheme in SQL_SCHEMES:
        return DATABASE
    return SERVER if scheme in ("http", "https") else OTHER


def resolve_uri(out: "Path | Location", uri: str | None) -> str:
    """``uri``, else MLFLOW_TRACKING_URI, else a sqlite file inside a local ``out``. A sqlite
    or file store inside a job's temporary copy of its working directory is refused."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        store, copy = _store_dir(uri), working_copy_note()
        if store is not None and copy and store.is_relative_to(Path(copy).resolve()):
            raise TrackingError(f"MLflow store {uri} lies in this job's temporary copy of its working directory "
                                f"({copy}), deleted when the job ends: give an absolute path on storage every "
                                f"node shares, or a tracking server")
        return uri
    out = location(out)
    if out.is_remote:
        raise TrackingError(f"--out {out} is in object storage, where MLflow's default sqlite file "
                            f"cannot live: pass --mlflow-uri (a tracking server, e.g. one started "
                            f"with --artifacts-destination on the same store) or --no-mlflow")
    return f"sqlite:///{(out.local / 'mlflow.db').resolve()}"


def healthy(uri: str, timeout: float = 2.0) -> bool:
    """Whether the tracking server ``uri`` answers 200 on ``/health`` within ``timeout`` s."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def check_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast when an http(s) tracking server does not answer."""
    if store_kind(uri) == SERVER:
        if not healthy(uri, timeout):
            raise TrackingError(f"MLflow tracking server {uri} is unreachable: no 200 on /health within "
                                f"{timeout:g} s", INFRASTRUCTURE)
        _check_credentials(uri, timeout)


def _check_credentials(uri: str, timeout: float) -> None:
    """A server running MLflow's basic-auth app answers /health to anyone, the API only to
    its users: ask once, with the credentials MLflow's client would send."""
    import base64

    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            what = "rejects the credentials in" if user else "asks for credentials: set"
            raise TrackingError(f"MLflow tracking server {uri} {what} MLFLOW_TRACKING_USERNAME and "
                                f"MLFLOW_TRACKING_PASSWORD") from exc
    except (urllib.error.URLError, OSError):
        return  # reachable a moment ago; a real problem surfaces at the first write


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = str(v)
    return flat


# which runs a driver ends when its work fails at each stage (with FAILED, or KILLED on a stop):
# at the start, those it made so far (RUNNING, SCHEDULED: nothing would ever run them); during
# the trials, the running ones (a --resume runs the scheduled ones); in the report after them,
# the finished ones too (a retrain's FINISHED child still waits for its network)
ENDED = {"start": ("RUNNING", "SCHEDULED"), "trials": ("RUNNING",), "report": ("RUNNING", "FINISHED")}


# the MLflow UI opens an experiment of this kind on its model-training view (runs, metrics,
# models) rather than the GenAI one
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def artifact_root(uri: str) -> str | None:
    """Where a new experiment of store ``uri`` keeps its runs' artifacts: ``DIR/mlartifacts``
    (an absolute file:// URI) for a sqlite file ``DIR/...``; None where the store itself
    decides (a tracking server: its artifact store; a file store: inside itself). Another
    database without a server has nowhere to put them: a TrackingError."""
    kind = store_kind(uri)
    if kind not in (SQLITE, DATABASE):
        return None
    database = _sqlite_file(uri) if kind == SQLITE else None
    if database is None:
        raise TrackingError(f"MLflow store {uri} has no folder to keep the runs' artifacts beside: use a sqlite "
                            f"file (sqlite:///DIR/mlflow.db keeps them in DIR/mlartifacts) or a tracking "
                            f"server (mlflow server --backend-store-uri {uri} --artifacts-destination ...)")
    return (database.parent / "mlartifacts").as_uri()


def _sqlite_file(uri: str) -> Path | None:
    """The file of a sqlite URI (``sqlite:///a.db``: ``a.db``, ``sqlite:////abs/a.db``), made
    absolute; None for an in-memory database."""
    path = uri.split("://", 1)[1][1:].split("?")[0]
    return Path(path).resolve() if path and not path.startswith(":memory:") else None


def _store_dir(uri: str) -> Path | None:
    """The local folder of a sqlite or file store, None for any other."""
    kind, parsed = store_kind(uri), urlparse(uri)
    if kind == SQLITE:
        database = _sqlite_file(uri)
        return database.parent if database else None
    if kind == FOLDER:
        return Path(parsed.path if parsed.scheme else uri).resolve()
    return None


def fragile_location(location: str, uri: str) -> str | None:
    """Why an experiment's artifact ``location`` may be lost, or None: a relative folder (it
    follows whatever folder a run starts in), one inside a Ray job's temporary copy of its
    working directory, or one in the temp folder while store ``uri`` is not."""
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return None  # a server's store, a bucket
    path = parsed.path if parsed.scheme else location
    if not os.path.isabs(path):
        return "a relative folder, resolved against wherever a run starts"
    if "runtime_resources" in Path(path).parts:
        return "inside a Ray job's temporary copy of its working directory, removed with the job"
    tmp, store = Path(tempfile.gettempdir()).resolve(), _store_dir(uri)
    if Path(path).resolve().is_relative_to(tmp) and not (store and store.is_relative_to(tmp)):
        return "a temporary folder"
    return None


def experiment_id(client, name: str, log: Callable[[str], None] = print) -> str:
    """The id of experiment ``name``, created with its artifacts where :func:`artifact_root`
    puts them. An existing one keeps the location it was created with (MLflow cannot move it):
    one whose location may be lost gets a one-line warning."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_root(client.tracking_uri),
                                        tags=EXPERIMENT_KIND)
    why = fragile_location(exp.artifact_location, client.tracking_uri)
    if why:
        log(f"warning: MLflow experiment {name!r} keeps its runs' artifacts in {exp.artifact_location}, {why}; "
            f"a new --experiment name puts them beside the store")
    if "mlflow.experimentKind" not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
    return exp.experiment_id


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    """Flattened params (``section.key``; MlflowClient.log_batch splits them into the batches
    MLflow accepts). A value longer than MLflow's limit is never cut: it is logged whole as the
    artifact ``params/<key>.txt``, and the param says so."""
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    flat = flatten(params)
    long = {k: v for k, v in flat.items() if len(v) > MAX_PARAM_VAL_LENGTH}
    for key, value in long.items():
        client.log_text(run_id, value, f"params/{key}.txt")
        flat[key] = f"({len(value)} characters, over MLflow's {MAX_PARAM_VAL_LENGTH}: artifact params/{key}.txt)"
    client.log_batch(run_id, params=[Param(k, v) for k, v in flat.items()])


def log_metrics(client, run_id: str, values: dict[str, Any], step: int = 0,
                tags: dict[str, str] | None = None) -> None:
    """``values`` (name -> number; a None left out) as the metrics of ``step``, stamped now, and
    ``tags``, in one ``log_batch``."""
    import time

    from mlflow.entities import Metric, RunTag

    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items() if v is not None],
                     tags=[RunTag(k, v) for k, v in (tags or {}).items()])


def log_files(client, run_id: str, out: "Path | Location", names: tuple[str, ...]) -> None:
    """The named files of ``out`` that exist, and its genotypes/ folder, as artifacts (from a
    remote ``out`` through a local copy)."""
    out = location(out)
    with tempfile.TemporaryDirectory(prefix="goldnas-artifacts-") as tmp:
        folder = out.local if out.local is not None else Path(tmp)
        for name in names:
            if (out / name).is_file():
                if out.is_remote:
                    (folder / name).parent.mkdir(parents=True, exist_ok=True)
                    (folder / name).write_bytes((out / name).read_bytes())
                client.log_artifact(run_id, str(folder / name), os.path.dirname(name) or None)
        if (out / "genotypes").is_dir():
            if out.is_remote:
                (out / "genotypes").download(folder / "genotypes")
            client.log_artifacts(run_id, str(folder / "genotypes"), "genotypes")


def how_to_open(client: Any, run_id: str) -> str:
    """Where the MLflow UI shows run ``run_id`` of ``client``'s store (a ``BufferedClient``):
    its experiment's runs page, ``<server>/#/experiments/<id>/runs`` (the UI would open the
    experiment on its GenAI overview); a sqlite file's after the command that serves it. Without
    an answer about the run (the server away), the UI's address alone."""
    uri, kind = client.uri, store_kind(client.uri)
    try:
        run = client.ask("get_run", run_id) if kind in (SERVER, SQLITE) else None
    except Exception:  # noqa: BLE001 - only an address to print: the run's outcome stands
        run = None
    page = f"/#/experiments/{run.info.experiment_id}/runs" if run is not None else ""
    if kind == SQLITE:
        return f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000{page}"
    return f"{uri.rstrip('/')}{page}" if kind == SERVER else f"MLflow store {uri}"

"""What the MLflow trackers share: the tracking URI, parameters in batches, file artifacts.

Every write goes through ``MlflowClient`` (no global fluent state), from one process only:
rank 0 of a search, the driver of a retrain.
"""
from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from goldnas_ray.files.store import Location, location


class TrackingError(ValueError):
    """The MLflow tracking URI cannot be used."""


def resolve_uri(out: "Path | Location", uri: str | None) -> str:
    """``uri``, else MLFLOW_TRACKING_URI, else a sqlite file inside a local ``out``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    out = location(out)
    if out.is_remote:
        raise TrackingError(f"--out {out} is in object storage, where MLflow's default sqlite file "
                            f"cannot live: pass --mlflow-uri (a tracking server, e.g. one started "
                            f"with --artifacts-destination on the same store) or --no-mlflow")
    return f"sqlite:///{(out.local / 'mlflow.db').resolve()}"


def check_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast when an http(s) tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                if resp.status != 200:
                    raise TrackingError(f"MLflow server {uri} answered {resp.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable: {exc}") from exc
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


# the MLflow UI opens an experiment of this kind on its model-training view (runs, metrics,
# models) rather than the GenAI one
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags=EXPERIMENT_KIND)
    if "mlflow.experimentKind" not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
    return exp.experiment_id


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    """Flattened params (``section.key``), in batches of the 100 MLflow accepts at once."""
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


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


def how_to_open(uri: str) -> str:
    """The command (or address) that shows the runs of ``uri`` in the MLflow UI."""
    if uri.startswith("sqlite:///"):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"the MLflow UI at {uri}" if uri.startswith(("http://", "https://")) else f"MLflow store {uri}"

"""MLflow tracking of a retrain: a parent run, one nested child per (architecture, seed).

Every run it starts ends FINISHED, FAILED or KILLED, whatever fails (``end_retrain``, called by
the driver at the stage that failed: the start, the trials, or the report after them). Its
artifacts go where ``tracking.common.artifact_root`` puts the experiment's. Its writes go
through ``tracking.buffer.BufferedClient`` with the retrain's output: a tracking server that goes
away after a good start is buffered and replayed, never raised into the trials (while it is
away, the epochs a run holds are those this process logged; the replay leaves out the steps
the server already holds).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from goldnas_ray.models.pick import PickError
from goldnas_ray.models.saved import model_folders, read_info
from goldnas_ray.retrain.plan import Manifest, trial_key
from goldnas_ray.files.search_files import LEGACY_RECORDS, RECORDS, OutputDirError
from goldnas_ray.files.store import Location, location
from goldnas_ray.run.ending import ends_tracked_run
from goldnas_ray.tracking.buffer import BufferedClient, is_outage
from goldnas_ray.tracking.common import ENDED, check_uri, experiment_id, log_files, log_metrics, log_params
from goldnas_ray.tracking.datasets import SPLIT_METRICS, DataInput, data_inputs, split_names, split_sizes
from goldnas_ray.tracking.registry import (FOLDER, MODEL_FILES, FrontPoint, front_points, log_registered,
                                           register_front, registered_name)

TRIAL_METRICS = ("test_acc", "train_loss", "train_acc", "lr", "drop_path", "seconds", "images_per_second")


class RetrainTracker:
    """A retrain in MLflow: one parent run, one nested child run per (architecture, seed).

    Everything is written from the driver (the Ray Tune callback sees every trial's results),
    so concurrent trials never write to the store at once and a sqlite store is safe. Child
    runs are created up front, status SCHEDULED, and their ids kept in retrain.json: a trial
    restored after a failure or a ``--resume`` logs into its own run, each epoch once.
    """

    def __init__(self, uri: str, out: "Path | Location | None" = None):
        self.uri, self.out = uri, out
        self._client = None
        self._logged: dict[str, set[int]] = {}
        self.stopped = False  # end_retrain ran: nothing changes a run any more (not pickled)
        self.exported: set[str] = set()  # child runs whose network log_models logged
        self.ended: set[str] = set()  # runs end_run ended

    @property
    def client(self):
        if self._client is None:
            self._client = BufferedClient(self.uri, self.out)
        return self._client

    def _steps(self, run_id: str) -> set[int]:
        """The epochs run ``run_id`` holds: asked of the server, or none while it is away."""
        return {m.step for m in self.client.ask("get_metric_history", run_id, "test_acc") or []}

    def __getstate__(self) -> dict[str, Any]:  # Tune may pickle its callbacks
        return {"uri": self.uri, "out": self.out, "_client": None, "_logged": {}, "stopped": False,
                "exported": set(), "ended": set()}

    def start(self, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str],
              children: dict[str, tuple[str, dict[str, Any], dict[str, str]]]) -> tuple[str, dict[str, str]]:
        """Create the parent run and one child per entry of ``children`` (key -> (name,
        params, tags)); returns (parent id, key -> child id). When that fails half way, the
        runs made so far end FAILED."""
        exp_id = experiment_id(self.client, experiment)
        parent = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        with ends_tracked_run(lambda status: self.end_retrain(parent, status, "start")):
            return parent, self._children(exp_id, parent, params, children)

    def _children(self, exp_id: str, parent: str, params: dict[str, Any],
                  children: dict[str, tuple[str, dict[str, Any], dict[str, str]]]) -> dict[str, str]:
        log_params(self.client, parent, params)
        child_ids = {}
        for key, (name, child_params, child_tags) in children.items():
            run = self.client.create_run(exp_id, run_name=name,
                                         tags=child_tags | {"mlflow.parentRunId": parent})
            child_ids[key] = run.info.run_id
            log_params(self.client, run.info.run_id, child_params)
            # FLOPs and parameters as metrics too, so the UI can put them on a chart axis
            log_metrics(self.client, run.info.run_id, {n: child_params[n] for n in ("flops", "params")})
            self.client.update_run(run.info.run_id, status="SCHEDULED")
        return child_ids

    def start_retrain(self, experiment: str, out: "Path | Location", manifest: "Manifest") -> None:
        """The parent run of a new retrain and one SCHEDULED child per trial; their ids are
        stored in ``manifest``."""
        recipe = {f"retrain.{k}": v for k, v in manifest.config.to_dict()["retrain"].items()}
        children = {
            trial_key(c.arch_id, s): (trial_key(c.arch_id, s),
                                      {"arch_id": c.arch_id, "kind": c.kind, "flops": c.flops,
                                       "params": c.params, "seed": s, **recipe},
                                      {"kind": c.kind, "arch_id": c.arch_id})
            for c in manifest.candidates for s in manifest.seeds}
        tags = {"goldnas.stage": "retrain", "goldnas.out": location(out).uri, "dataset": manifest.dataset,
                "goldnas.search_dir": manifest.search_dir}
        if manifest.search_run_id:
            tags["goldnas.search_run_id"] = manifest.search_run_id
        params = {"seeds": len(manifest.seeds), "random": sum(c.kind == "random" for c in manifest.candidates),
                  "architectures": len(manifest.candidates), **recipe}
        if manifest.resources is not None:  # retrain.batch_size is per worker
            params["workers_per_trial"] = manifest.resources.workers
        manifest.mlflow_run_id, manifest.mlflow_child_run_ids = self.start(
            experiment, location(out).name, params, tags, children)

    def trial_started(self, run_id: str) -> None:
        if self.stopped:
            return
        self.client.update_run(run_id, status="RUNNING")
        if run_id not in self._logged:
            self._logged[run_id] = self._steps(run_id)

    def log_trial_epoch(self, run_id: str, row: dict[str, Any]) -> None:
        if self.stopped:
            return
        if run_id not in self._logged:
            self.trial_started(run_id)
        step = int(row["epoch"])
        if step in self._logged[run_id]:
            return
        self.client.moment = f"epoch {step} of run {run_id}"
        log_metrics(self.client, run_id, {n: row[n] for n in TRIAL_METRICS if n in row}, step)
        self._logged[run_id].add(step)

    def log_history(self, run_id: str, history: list[dict[str, Any]]) -> int:
        """Log the epochs of ``history`` (a trial's rows, read from its checkpoint) that the run
        lacks; returns how many. A result can be checkpointed and never reach the callback (the
        retrain stopped between the two): the resumed trial starts after it, so without this
        the run would miss that epoch."""
        import math

        from mlflow.entities import Metric

        if self.stopped:
            return 0
        have = self._steps(run_id) | self._logged.get(run_id, set())
        missing = [row for row in history if int(row["epoch"]) not in have]
        ts = int(time.time() * 1000)
        metrics = [Metric(n, float(row[n]), ts, int(row["epoch"])) for row in missing for n in TRIAL_METRICS
                   if row.get(n) is not None and not math.isnan(float(row[n]))]
        self.client.log_batch(run_id, metrics=metrics)  # MlflowClient splits it at MLflow's limits
        self._logged.setdefault(run_id, set()).update(int(row["epoch"]) for row in missing)
        return len(missing)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        if not self.stopped:
            self.client.set_terminated(run_id, status=status)
            self.ended.add(run_id)

    # the children's statuses end_retrain ends, by the stage that failed: at the "start" nothing
    # can resume them (no retrain.json); during the "trials" those not started stay SCHEDULED
    # for --resume; at the "report" after the trials, a finished trial's run whose network is
    # not logged yet has not got what it should hold
    ENDED = ENDED  # the stages' rule, the sweep's too

    def end_retrain(self, parent_id: str, status: str, stage: str = "trials") -> None:
        """End the parent and the children ``stage`` says (:data:`ENDED`) with ``status`` (KILLED
        when the job was stopped, FAILED after an error). --resume sets them running again,
        and a finished trial's run FINISHED once its network is logged. From then on the
        trials' callbacks (Tune goes on in its thread until the process exits) change no run."""
        self.stopped = True
        if self.client.buffering:  # the server cannot say which run: those this process started
            for run_id in set(self._logged) - self.exported - self.ended:
                self.client.set_terminated(run_id, status=status)
            self.client.set_terminated(parent_id, status=status)
            return
        exp = self.client.get_run(parent_id).info.experiment_id
        for run in self.client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'"):
            if run.info.status in self.ENDED[stage] and run.info.run_id not in self.exported:
                self.client.set_terminated(run.info.run_id, status=status)
        self.client.set_terminated(parent_id, status=status)

    def log_report(self, parent_id: str, out: "Path | Location", summary: dict[str, float],
                   table: Any = None, tags: dict[str, str] | None = None) -> None:
        """The report files and genotypes as the parent's artifacts, ``summary`` as metrics,
        ``tags`` (the comparison's verdicts and interval methods, ``retrain.stats.summary``),
        the front as the MLflow table ``front.json`` (``MlflowClient.load_table(experiment_id,
        "front.json", run_ids=[...])`` puts many retrains' fronts in one DataFrame)."""
        log_files(self.client, parent_id, out,
                   ("frontier.parquet", "frontier.csv", "frontier.png", "frontier_latency.png", "trials.parquet",
                    "retrain.json", "comparison.json"))
        if table is not None and len(table):
            self.client.log_table(parent_id, data=table, artifact_file=FRONT_TABLE)
        log_metrics(self.client, parent_id, summary, tags=tags)

    def log_models(self, models: dict[str, Any], folders: "dict[str, Location] | None" = None,
                   inputs: "dict[str, DataInput] | None" = None) -> dict[str, str]:
        """Each retrained network (child run id -> (eval-mode nn.Module, image shape)) as an
        MLflow 3 logged model ``model`` of its child run: torch.export's pt2 format (its weights go through
        torch.save: load it from a server you trust; the safetensors copy is pickle-free), a signature and an input example of the network's image
        shape, and in its ``goldnas/`` folder the run's model folder (``folders``: run id ->
        ``<out>/models/<key>/``) for ``registry.download_model``. The run's last-epoch metrics
        are linked to it (the split ones to their dataset of ``inputs``). Both
        ``mlflow.pytorch.load_model(f"runs:/{child}/model")`` and ``models:/<model_id>`` bring it
        back. A run that already holds a READY one (a resumed report) keeps it. While the server
        is away, the pt2 model goes to the run's ``model`` artifacts through the buffer
        instead. A child left FAILED by an earlier report that failed ends FINISHED once it
        holds its model. Returns run id -> logged model id."""
        logged = {}
        for run_id, (net, shape) in models.items():
            with tempfile.TemporaryDirectory(prefix="goldnas-model-") as tmp:
                model_id = self._unbuffered(lambda: self._logged_model(
                    run_id, net, shape, (folders or {}).get(run_id), inputs or {}, Path(tmp) / "logged"))
                if model_id is None:
                    _save_pt2(net, shape, Path(tmp) / "model")
                    self.client.log_artifacts(run_id, f"{tmp}/model", "model")
                else:
                    logged[run_id] = model_id
            self.exported.add(run_id)
            if self.client.buffering or self.client.get_run(run_id).info.status != "FINISHED":
                self.client.set_terminated(run_id, status="FINISHED")
        return logged

    def _unbuffered(self, call: Callable[[], Any]) -> Any:
        """``call()``, or None while the tracking server is away: logged models, dataset inputs
        and the registry are written to the server itself, never buffered."""
        if self.client.buffering:
            return None
        try:
            return call()
        except Exception as exc:
            if self.client.buffer is None or not is_outage(exc, self.uri):
                raise
            self.client.log(f"MLflow at {self.uri} unreachable ({type(exc).__name__}): no logged models, dataset "
                            f"inputs or registered versions this time; the networks go to the runs' artifacts")
            return None

    def _logged_model(self, run_id: str, net: Any, shape: tuple[int, int, int], folder: "Location | None",
                      inputs: "dict[str, DataInput]", tmp: Path) -> str:
        """The logged model of child ``run_id`` (made, or the READY one it has): its id."""
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model

        client = self.client.client
        run = client.get_run(run_id)
        found = ready_model(client, run)
        if found is not None:
            return found
        params = {k: run.data.params[k] for k in ("arch_id", "kind", "seed", "flops", "params")
                  if k in run.data.params}
        model = client.create_logged_model(run.info.experiment_id, name="model", source_run_id=run_id,
                                           params=params, tags={"goldnas.key": run.info.run_name},
                                           model_type=MODEL_TYPE)
        last = _link_metrics(client, run, model.model_id, inputs)
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, last)])
        _save_pt2(net, shape, tmp, Model(artifact_path=model.artifact_location, model_uuid=model.model_id,
                                         run_id=run_id, model_id=model.model_id))
        if folder is not None:
            for name in MODEL_FILES:
                (tmp / FOLDER / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / FOLDER / name).write_bytes((folder / name).read_bytes())
        client.log_model_artifacts(model.model_id, str(tmp))
        client.finalize_logged_model(model.model_id, "READY")
        return model.model_id

    def log_front(self, out: "Path | Location", manifest: "Manifest", networks: dict[str, Any],
                  log: Callable[[str], None]) -> None:
        """The finished trials' networks (child run id -> (net, shape)) as logged models with
        their model folders (``<out>/models/<key>/``), the training and evaluation datasets as
        inputs of the parent and every child, and the front registered under
        ``registry.registered_name`` (all of it while the server answers)."""
        out, runs = location(out), manifest.mlflow_child_run_ids
        keys = {run: key for key, run in runs.items()}
        complete = model_folders(out)
        folders = {run: complete[keys[run]] for run in networks if keys.get(run) in complete}
        info = read_info(next(iter(folders.values()))) if folders else None
        num_test = manifest.stream.num_test if manifest.stream is not None else None
        inputs = data_inputs(manifest.config, split_sizes(info, manifest.num_train, num_test), split_names(info))
        model_ids = self.log_models(networks, folders, inputs)
        self.log_inputs([manifest.mlflow_run_id, *runs.values()], inputs)
        if self.client.buffering:
            return
        try:
            points = front_points(out, runs, model_ids)
        except PickError as exc:  # a report without its tables: nothing to register
            log(f"the front is not registered in MLflow: {exc}")
            return
        if not points:
            log("the front is not registered in MLflow: no architecture finished")
            return
        self.register(registered_name(manifest.config), points, log)

    def log_inputs(self, run_ids: list[str], inputs: "dict[str, DataInput]") -> None:
        """The training and evaluation datasets as inputs of each run (none while the server
        is away)."""
        entities = [i.entity() for i in inputs.values()]
        for run_id in run_ids:
            self._unbuffered(lambda: self.client.client.log_inputs(run_id, datasets=entities))

    def register(self, name: str, points: "list[FrontPoint]", log: Callable[[str], None]) -> None:
        """The front's points as versions of registered model ``name`` with their aliases
        (``registry.register_front``); said and skipped while the server is away."""
        wanted = self._unbuffered(lambda: register_front(self.client.client, name, points))
        if wanted is None:
            log(f"MLflow at {self.uri} unreachable: the front is not registered as {name}")
        else:
            log_registered(name, wanted, log)


MODEL_TYPE = "goldnas-ray/DiscreteNet"


def ready_model(client, run) -> str | None:
    """The id of the READY logged model ``model`` whose source is ``run``, or None."""
    token = None
    while True:
        page = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                           filter_string="name = 'model'", page_token=token)
        for m in page:
            if m.source_run_id == run.info.run_id and str(m.status) in ("READY", "LoggedModelStatus.READY"):
                return m.model_id
        token = page.token
        if not token:
            return None


def _link_metrics(client, run, model_id: str, inputs: "dict[str, DataInput]") -> int:
    """Each metric of ``run`` at its last step logged again (same value, step and timestamp: the
    run's history gains nothing) with ``model_id``, so the logged model shows them; test_acc
    with the evaluation dataset, train_loss / train_acc with the training one. Returns the last
    epoch."""
    from mlflow.entities import Metric

    metrics = []
    for key in run.data.metrics:
        last = max(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        split = inputs.get(SPLIT_METRICS.get(key, ""))
        metrics.append(Metric(key, last.value, last.timestamp, last.step, model_id=model_id,
                              dataset_name=split.name if split else None,
                              dataset_digest=split.digest if split else None))
    if metrics:
        client.log_batch(run.info.run_id, metrics=metrics)
    return max((m.step for m in metrics if m.key == "test_acc"), default=0)


def _save_pt2(net: Any, shape: tuple[int, int, int], path: Path, mlflow_model: Any = None) -> None:
    """``net`` as an MLflow pytorch model in folder ``path``: pt2, signature, input example."""
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    example = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    with torch.no_grad():
        logits = net(torch.from_numpy(example)).numpy()
    mlflow.pytorch.save_model(net, str(path), input_example=example, signature=infer_signature(example, logits),
                              pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                              serialization_format="pt2", mlflow_model=mlflow_model)


FRONT_TABLE = "front.json"


def _fetch_run(run_id: str, uri: str, dest: Path, pick: Callable[[set[str]], list[str]], what: str) -> Path:
    """Download into ``dest`` the artifacts of MLflow run ``run_id`` that ``pick`` chooses from
    the run's listing; a store that fails is an OutputDirError: "cannot read ``what`` RUN"."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        for path in pick({a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run_id)}):
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dest),
                                                tracking_uri=uri)
    except (MlflowException, OSError) as exc:
        raise OutputDirError(f"cannot read {what} {run_id} at {uri}: {exc}") from exc
    return dest


def fetch_search_run(run_id: str, uri: str, dest: Path) -> Path:
    """Download the records and genotypes of MLflow search run ``run_id`` into ``dest``."""
    check_uri(uri)
    return _fetch_run(run_id, uri, dest, lambda listed: [
        LEGACY_RECORDS if LEGACY_RECORDS in listed and RECORDS not in listed else RECORDS, "genotypes"],
        "the search files of MLflow run")


def fetch_front_run(run_id: str, uri: str, dest: Path) -> Path:
    """A search run's records.json + genotypes, or a retrain parent's frontier.parquet, from
    MLflow into ``dest``."""
    def pick(listed: set[str]) -> list[str]:
        wanted = [p for p in ("frontier.parquet", "records.json", "frontier.json") if p in listed][:1]
        if not wanted:
            raise OutputDirError(f"MLflow run {run_id} at {uri} holds neither frontier.parquet nor records.json")
        return wanted

    return _fetch_run(run_id, uri, dest, pick, "MLflow run")

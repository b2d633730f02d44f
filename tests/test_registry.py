"""A retrained front in MLflow 3: logged models with linked metrics, dataset inputs, the model
registry (one version per front point, aliases front-<k> and best), and a registered version
fetched back as a model folder (goldnas_ray/tracking/registry.py, tracking/retrain.py).

The first tests use a sqlite store in this process; the last reads the session's tracked
pipeline run (conftest.py ``pipeline``: a smoke search and its retrain on the cluster, tracked on
the session's MLflow server, registered as ``ci-pipe``)."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import free_port

from goldnas_ray.core.config import Config
from goldnas_ray.files.store import INFRASTRUCTURE, INPUT, location
from goldnas_ray.tracking.common import TrackingError
from goldnas_ray.tracking.datasets import EVALUATION, TRAINING, data_inputs, split_sizes
from goldnas_ray.tracking.registry import FrontPoint, download_model, register_front, registered_name
from goldnas_ray.tracking.retrain import RetrainTracker

FILES = ("weights.safetensors", "genotype.json", "model.json")


def _tracked(tmp_path):
    """A sqlite store with a retrain of two architectures of one seed, each trained 2 epochs,
    each with a model folder (placeholder files: the registry copies them, never reads them)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RetrainTracker(uri)
    children = {key: (key, {"arch_id": key[:1], "kind": "searched", "flops": flops, "params": 5, "seed": 0}, {})
                for key, flops in (("a-s0", 10), ("b-s0", 20))}
    parent, runs = tracker.start("exp", "retrain", {"seeds": 1}, {}, children)
    folders = {}
    for key, run in runs.items():
        for epoch in (1, 2):
            tracker.log_trial_epoch(run, {"epoch": epoch, "test_acc": 0.5 + epoch / 10 + (key == "b-s0") / 10,
                                          "train_loss": 1 / epoch})
        tracker.end_run(run)
        folder = tmp_path / "models" / key
        folder.mkdir(parents=True)
        for name in FILES:
            (folder / name).write_text(json.dumps({"file": name, "key": key,
                                                   "dataset": {"train_size": 1437, "eval_size": 360}}))
        folders[run] = location(folder)
    return uri, tracker, parent, runs, folders


def _net():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(72, 3)).eval()


def test_logged_models_link_their_metrics_and_registering_twice_makes_no_new_version(tmp_path):
    from mlflow.tracking import MlflowClient

    uri, tracker, parent, runs, folders = _tracked(tmp_path)
    inputs = data_inputs(Config(), split_sizes(json.loads((tmp_path / "models/a-s0/model.json").read_text()),
                                               1437, None))
    nets = {run: (_net(), (1, 8, 8)) for run in runs.values()}
    models = tracker.log_models(nets, folders, inputs)
    assert tracker.log_models(nets, folders, inputs) == models  # a resumed report logs nothing again
    tracker.log_inputs([parent, *runs.values()], inputs)
    client = MlflowClient(uri)
    for key, run in runs.items():
        model = client.get_logged_model(models[run])
        assert model.source_run_id == run and str(model.status).endswith("READY")
        linked = {m.key: m for m in model.metrics}
        assert linked["test_acc"].step == 2 and linked["test_acc"].dataset_name == "digits-test"
        assert linked["test_acc"].value == pytest.approx(0.7 + (key == "b-s0") / 10)
        assert linked["train_loss"].dataset_name == "digits-train"
        # the run's own history keeps each epoch once
        assert [m.step for m in client.get_metric_history(run, "test_acc")] == [1, 2]
        assert [o.model_id for o in client.get_run(run).outputs.model_outputs] == [models[run]]
    contexts = {i.tags[0].value: i.dataset for i in client.get_run(parent).inputs.dataset_inputs}
    assert set(contexts) == {TRAINING, EVALUATION}
    assert contexts[TRAINING].digest != contexts[EVALUATION].digest
    assert json.loads(contexts[EVALUATION].profile)["num_rows"] == 360

    points = [FrontPoint(key[:1], 0, "searched", flops, 5, acc, models[runs[key]], runs[key])
              for key, flops, acc in (("a-s0", 10, 0.7), ("b-s0", 20, 0.8))]
    assert register_front(client, "goldnas-digits", points) == {"front-1": "1", "front-2": "2", "best": "2"}
    assert register_front(client, "goldnas-digits", points) == {"front-1": "1", "front-2": "2", "best": "2"}
    assert len(client.search_model_versions("name = 'goldnas-digits'")) == 2
    # a shorter front registered later under the name takes the aliases; front-2 goes
    register_front(client, "goldnas-digits", points[:1])
    assert {a: int(v) for a, v in client.get_registered_model("goldnas-digits").aliases.items()} == \
        {"front-1": 1, "best": 1}
    version = client.get_model_version("goldnas-digits", "2")
    assert version.tags["arch_id"] == "b" and version.tags["accuracy"] == "0.8" and version.tags["seed"] == "0"

    got = download_model("models:/goldnas-digits@best", uri, tmp_path / "best")
    assert sorted(p.name for p in got.iterdir()) == sorted(FILES)
    assert json.loads((got / "model.json").read_text())["key"] == "a-s0"
    assert json.loads((download_model("models:/goldnas-digits/2", uri, tmp_path / "v2") / "genotype.json")
                      .read_text())["key"] == "b-s0"


def test_a_registered_version_that_is_not_there_is_named(tmp_path):
    uri, tracker, _, runs, folders = _tracked(tmp_path)
    from mlflow.tracking import MlflowClient

    run = runs["a-s0"]
    models = tracker.log_models({run: (_net(), (1, 8, 8))}, folders)
    register_front(MlflowClient(uri), "mine", [FrontPoint("a", 0, "searched", 10, 5, 0.7, models[run], run)])
    for uri_asked, said in (("models:/other@best", "no registered model 'other' (it has: mine)"),
                            ("models:/mine@front-9", "no alias 'front-9' (aliases: best, front-1)"),
                            ("models:/mine/7", "no version 7 (versions: 1)"),
                            ("runs:/abc/model", "is not a registered model version")):
        with pytest.raises(TrackingError, match=said.replace("(", r"\(").replace(")", r"\)")) as err:
            download_model(uri_asked, uri, tmp_path / "x")
        assert err.value.kind == INPUT
    with pytest.raises(TrackingError, match="unreachable") as err:
        download_model("models:/mine@best", f"http://127.0.0.1:{free_port()}", tmp_path / "x")
    assert err.value.kind == INFRASTRUCTURE


def test_the_registered_name_is_per_dataset_unless_named():
    assert registered_name(Config()) == "goldnas-digits"
    assert registered_name(Config().override(["data.dataset=cifar10"])) == "goldnas-cifar10"
    assert registered_name(Config().override(["retrain.register_as=mine"])) == "mine"


def test_train_and_evaluation_inputs_differ_and_follow_the_data_they_name():
    one = data_inputs(Config(), {TRAINING: 10, EVALUATION: 5})
    assert (one[TRAINING].split, one[EVALUATION].split) == ("train", "test")
    assert one[TRAINING].digest != one[EVALUATION].digest
    fewer = data_inputs(Config().override(["retrain.subset=0.5"]), {})
    assert fewer[TRAINING].digest != one[TRAINING].digest and fewer[EVALUATION].digest == one[EVALUATION].digest


@pytest.mark.ray
@pytest.mark.mlflow
def test_the_pipelines_retrain_registers_its_front_and_records_its_data(pipeline, mlflow_server, tmp_path):
    import pandas as pd
    from mlflow.tracking import MlflowClient

    import goldnas_ray
    from goldnas_ray.models.pick import representatives
    from goldnas_ray.retrain.plan import trial_key

    retrain = pipeline[0] / "retrain"
    manifest = json.loads((retrain / "retrain.json").read_text())
    client = MlflowClient(mlflow_server)
    table = representatives(retrain)
    front = table[table["on_front"]].sort_values(["flops", "arch_id"])
    versions = {v.tags["arch_id"]: v for v in client.search_model_versions("name = 'ci-pipe'")}
    assert sorted(versions) == sorted(front["arch_id"]) and len(versions) == len(front)  # one per front point
    for _, row in front.iterrows():
        v = versions[row["arch_id"]]
        assert v.tags["seed"] == str(row["seed"]) and int(v.tags["flops"]) == row["flops"]
        assert v.run_id == manifest["mlflow_child_run_ids"][trial_key(row["arch_id"], int(row["seed"]))]
    best = front.sort_values(["accuracy_mean", "flops"], ascending=[False, True]).iloc[0]
    expected = {f"front-{k}": int(versions[a].version) for k, a in enumerate(front["arch_id"], start=1)}
    aliases = {a: int(v) for a, v in client.get_registered_model("ci-pipe").aliases.items()}  # str on a server
    assert aliases == expected | {"best": int(versions[best["arch_id"]].version)}

    # models:/ci-pipe@best is the best architecture's model folder, as the retrain wrote it
    got = download_model("models:/ci-pipe@best", mlflow_server, tmp_path / "best")
    key = trial_key(best["arch_id"], int(best["seed"]))
    for name in FILES:
        assert (got / name).read_bytes() == (retrain / "models" / key / name).read_bytes()
    info = json.loads((got / "model.json").read_text())
    assert (info["arch_id"], info["seed"]) == (best["arch_id"], int(best["seed"]))
    if hasattr(goldnas_ray, "load_model"):
        data = info["dataset"]
        x = torch.rand(4, data["in_channels"], data["input_size"], data["input_size"])
        with torch.no_grad():
            assert torch.equal(goldnas_ray.load_model(got)(x), goldnas_ray.load_model(retrain / "models" / key)(x))

    # each child: its logged model with the last epoch linked, its training and evaluation data
    trials = pd.read_parquet(retrain / "trials.parquet")
    for key, run_id in manifest["mlflow_child_run_ids"].items():
        run = client.get_run(run_id)
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert set(inputs) == {TRAINING, EVALUATION}
        assert inputs[TRAINING].digest != inputs[EVALUATION].digest
        assert (inputs[TRAINING].name, inputs[EVALUATION].name) == ("digits-train", "digits-test")
        [output] = run.outputs.model_outputs
        linked = {m.key: m for m in client.get_logged_model(output.model_id).metrics}
        last = trials[trials["key"] == key].sort_values("epoch").iloc[-1]
        assert linked["test_acc"].value == pytest.approx(last["test_acc"]) and linked["test_acc"].step == last["epoch"]
        assert linked["test_acc"].dataset_digest == inputs[EVALUATION].digest

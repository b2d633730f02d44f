"""SearchTracker against a real (sqlite) MLflow store."""
from goldnas_ray.tracking.search import METRICS, SearchTracker


def _row(epoch):
    return {col: float(epoch) for col in METRICS} | {"epoch": epoch}


def test_a_reopened_run_logs_each_epoch_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = SearchTracker(uri, "exp", "run", {"search": {"lambda0": 0.1}}, {"dataset": "digits"})
    for epoch in (1, 2):
        first.log_epoch(_row(epoch))
    # a restart resumes from the epoch-1 checkpoint: epoch 2 runs (and is logged) again
    again = SearchTracker(uri, "exp", "run", {}, {}, run_id=first.run_id)
    for epoch in (2, 3):
        again.log_epoch(_row(epoch))
    again.finish()
    history = again.client.get_metric_history(first.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    run = again.client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params["search.lambda0"] == "0.1"
    # where the run is shown: its experiment's runs page, after the command that serves the file
    exp = run.info.experiment_id
    assert again.page() == f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/#/experiments/{exp}/runs"


def test_a_checkpointed_epoch_that_never_reached_the_callback_is_logged_at_the_end(tmp_path):
    """A retrain stopped between a trial's checkpoint of epoch 2 and its result reaching the
    driver resumes at epoch 3: the report's pass over the checkpoints' histories fills the gap,
    and logs nothing twice."""
    from goldnas_ray.tracking.retrain import RetrainTracker

    tracker = RetrainTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    _, children = tracker.start("exp", "retrain", {"seeds": 1}, {},
                                {"a-s0": ("a-s0", {"flops": 1, "params": 2}, {})})
    run = children["a-s0"]
    history = [{"epoch": e, "test_acc": e / 10, "train_loss": 1 / e, "lr": 0.1} for e in (1, 2, 3, 4)]
    for row in (history[0], history[2], history[3]):  # epoch 2's result was lost
        tracker.log_trial_epoch(run, row)
    assert tracker.log_history(run, history) == 1
    assert tracker.log_history(run, history) == 0
    steps = {m.step: m.value for m in tracker.client.get_metric_history(run, "test_acc")}
    assert steps == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}
    assert len(tracker.client.get_metric_history(run, "train_loss")) == 4


def test_params_past_mlflows_batch_and_length_limits_are_logged_whole(tmp_path):
    """More params than one batch takes all arrive, and a value longer than MLflow's limit is
    not cut: it is an artifact, and its param says where."""
    from mlflow import MlflowClient
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from goldnas_ray.tracking.common import log_params

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("exp", artifact_location=str(tmp_path / "artifacts")))
    long = "x" * (MAX_PARAM_VAL_LENGTH + 10)
    log_params(client, run.info.run_id, {"many": {f"p{i}": i for i in range(250)}, "data": {"path": long}})
    params = client.get_run(run.info.run_id).data.params
    assert len(params) == 251 and params["many.p249"] == "249"
    assert "artifact params/data.path.txt" in params["data.path"]
    path = client.download_artifacts(run.info.run_id, "params/data.path.txt", str(tmp_path))
    assert open(path).read() == long

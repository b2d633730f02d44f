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

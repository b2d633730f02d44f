"""A sweep's plan, report arithmetic and the hypervolume of its retrain, without Ray."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from goldnas_ray.core.config import Config, ConfigError
from goldnas_ray.files.search_files import OutputDirError
from goldnas_ray.files.store import location
from goldnas_ray.retrain.stats import hypervolume
from goldnas_ray.sweep.plan import Sweep, parse_grid, parse_seeds, plan_sweep, point_label
from goldnas_ray.sweep.report import seed_gap
from goldnas_ray.sweep.retrain import describe_points, point_hypervolumes


def test_every_grid_point_and_seed_is_one_search_with_its_values_applied():
    grid = parse_grid(["search.lambda0=0.001,0.002", "search.c0=1.5,2,3"])
    searches = plan_sweep(Config(), grid, [0, 7])
    assert [s.name for s in searches[:4]] == ["p0-s0", "p0-s7", "p1-s0", "p1-s7"] and len(searches) == 12
    last = Config.from_dict(searches[-1].config)
    assert (last.search.lambda0, last.search.c0, last.seed) == (0.002, 3.0, 7)
    assert searches[-1].label == "lambda0=0.002 c0=3 seed=7"
    assert point_label({"search.amp": "off", "retrain.amp": "bf16"}) == "search.amp=off retrain.amp=bf16"


@pytest.mark.parametrize("flags, seeds, message", [
    (["search.lambda0"], "0", "expected section.key=v1,v2"),
    (["search.lambda0=0.1,,0.2"], "0", "an empty value"),
    (["search.lambda0=0.1,0.1"], "0", "given twice"),
    (["search.lambda0=0.1", "search.lambda0=0.2"], "0", "given twice"),
    (["seed=1,2"], "0", "--seeds 0,1,2"),
    (["search.lambda0=0.1"], "0,x", "expected integers"),
    (["search.lambda0=0.1"], "1,1", "distinct"),
])
def test_a_malformed_grid_or_seed_list_is_refused(flags, seeds, message):
    with pytest.raises(ConfigError, match=message):
        plan_sweep(Config(), parse_grid(flags), parse_seeds(seeds))


def test_an_invalid_point_stops_the_sweep_before_anything_runs_and_is_named():
    # each value alone is valid; the combination xi_min > xi_max is not
    grid = parse_grid(["search.xi_min=0.01,0.06", "search.xi_max=0.05,0.1"])
    with pytest.raises(ConfigError, match=r"grid point xi_min=0.06 xi_max=0.05: .*xi_min"):
        plan_sweep(Config(), grid, [0])
    with pytest.raises(ConfigError, match="search.nope"):
        plan_sweep(Config(), parse_grid(["search.nope=1,2"]), [0])


def test_the_manifest_round_trips(tmp_path):
    grid = parse_grid(["search.lambda0=0.001,0.002"])
    sweep = Sweep(grid, [0, 1], plan_sweep(Config(), grid, [0, 1]), workers=2, cpus_per_worker=1.5)
    sweep.failed = {"p1-s0": "SearchDiverged: ..."}
    sweep.write(tmp_path)
    back = Sweep.read(tmp_path)
    assert back.to_dict() == sweep.to_dict()
    assert back.points == [{"search.lambda0": "0.001"}, {"search.lambda0": "0.002"}]
    (tmp_path / "sweep.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(OutputDirError, match="not a goldnas-ray sweep"):
        Sweep.read(tmp_path)
    (tmp_path / "sweep.json").write_text(json.dumps({"format": "goldnas-ray/sweep", "grid": {}}))
    with pytest.raises(OutputDirError, match="not a complete sweep manifest"):
        Sweep.read(tmp_path)


def test_the_seed_gap_is_the_median_distance_to_the_other_seeds_nearest_record():
    assert seed_gap([[100, 50], [100, 50]]) == 0
    # seed 0's 100 is 10% from seed 1's 90; 50 is 0% from 50; seed 1's 90 -> 100: 10%, 50 -> 50: 0
    assert seed_gap([[100, 50], [90, 50]]) == pytest.approx(5.0)
    assert seed_gap([[100, 50]]) is None and seed_gap([[100], []]) is None


def test_each_grid_points_front_hypervolume_is_the_mean_over_its_seeds_with_an_interval():
    archs = pd.DataFrame([
        {"arch_id": "a", "flops": 1000, "sources": ["p0-s0", "p1-s0"]},
        {"arch_id": "b", "flops": 100, "sources": ["p0-s1"]},
        {"arch_id": "c", "flops": 500, "sources": ["p1-s0", "p1-s1"]},
    ])
    last = pd.DataFrame([{"arch_id": "a", "seed": 0, "test_acc": 0.9}, {"arch_id": "a", "seed": 1, "test_acc": 0.8},
                         {"arch_id": "b", "seed": 0, "test_acc": 0.5}, {"arch_id": "c", "seed": 0, "test_acc": 0.7}])
    searches = {"p0-s0": {"point": 0, "label": "x=1", "seed": 0}, "p0-s1": {"point": 0, "label": "x=1", "seed": 1},
                "p1-s0": {"point": 1, "label": "x=2", "seed": 0}, "p1-s1": {"point": 1, "label": "x=2", "seed": 1}}
    stats = point_hypervolumes(last, archs, searches)
    ref = (1.0, math.log10(1100))
    assert stats["searches"]["p0-s0"] == pytest.approx(hypervolume([1 - 0.85], [3.0], ref))
    assert stats["searches"]["p1-s0"] == pytest.approx(hypervolume([0.15, 0.3], [3.0, math.log10(500)], ref))
    assert stats["searches"]["p1-s1"] == pytest.approx(hypervolume([0.3], [math.log10(500)], ref))
    p0, p1 = stats["points"]
    # two seeds: the Student-t interval with 1 degree of freedom, mean +- t(0.975, 1) x sd / sqrt(2),
    # 12.7 times the half-range (the percentile bootstrap gave the range itself, a 50% interval)
    hvs = [stats["searches"]["p0-s0"], stats["searches"]["p0-s1"]]
    mean, half = sum(hvs) / 2, scipy_stats.t.ppf(0.975, 1) * abs(hvs[0] - hvs[1]) / 2
    assert p0["seeds"] == 2 and p0["hypervolume"] == pytest.approx(
        {"value": mean, "low": mean - half, "high": mean + half, "n": 2, "method": "student-t over 2 search seeds"})
    assert half == pytest.approx(12.706 * abs(hvs[0] - hvs[1]) / 2, rel=1e-4)
    assert p1["grid_point"] == "x=2"
    assert any(line.startswith("hypervolume x=1") and line.endswith(f"[{mean - half:.4f}, {mean + half:.4f}] "
                                                                      "(student-t over 2 search seeds)")
               for line in describe_points(stats))
    one = point_hypervolumes(last, archs, {k: v for k, v in searches.items() if k != "p0-s1"})["points"][0]
    assert one["hypervolume"]["low"] is None and one["hypervolume"]["method"] == "none: 1 search seeds, no interval"
    # a random architecture (no sources) counts for no search and moves no reference point
    archs.loc[len(archs)] = {"arch_id": "r", "flops": 5000, "sources": None}
    last.loc[len(last)] = {"arch_id": "r", "seed": 0, "test_acc": 0.99}
    again = point_hypervolumes(last, archs, searches)
    assert again["reference"] == stats["reference"] and again["searches"] == pytest.approx(stats["searches"])


def test_the_report_union_and_retrain_plan_of_two_searches_that_record_the_same(tmp_path):
    """Two searches whose configs differ only in a field a FLOPs search never reads record the
    same architectures: the report counts both, the union holds each genotype once with both
    searches, --union-front trains each once and the plain plan twice."""
    from conftest import tiny_config
    from goldnas_ray.run.loop import run_local
    from goldnas_ray.sweep.report import read_fronts, write_report
    from goldnas_ray.sweep.retrain import load_sweep

    base = tiny_config(lambda0=0.3, xi_max=0.5, t0=0, max_epochs=2, record_gap=0.02, record_min_gap=0.0,
                       ).override(["data.subset=0.25"])  # a quarter of digits: prunes, records the same
    grid = parse_grid(["search.latency_batch=1,2"])
    sweep = Sweep(grid, [0], plan_sweep(base, grid, [0]))
    for s in sweep.searches:
        run_local(Config.from_dict(s.config), tmp_path / s.name, log=lambda line: None)
    sweep.write(tmp_path)
    searches, points = write_report(tmp_path, sweep)
    records = json.loads((tmp_path / "p0-s0" / "records.json").read_text())["architectures"]
    assert list(searches["status"]) == ["finished", "finished"] and list(searches["records"]) == [len(records)] * 2
    assert list(searches["last_record_flops"]) == [min(a["flops"] for a in records)] * 2
    assert list(points["finished"]) == [1, 1] and points["seed_gap_pct"].isna().all()  # one seed each
    union = json.loads((tmp_path / "union.json").read_text())
    assert sorted(u["flops"] for u in union) == sorted(a["flops"] for a in records)
    assert all([r["search"] for r in u["recorded_by"]] == ["p0-s0", "p1-s0"] for u in union)
    assert (tmp_path / "sweep.png").stat().st_size > 10_000

    merged, info = load_sweep(tmp_path, union_front=True)
    assert len(merged.searched) == len(records) and all(c.sources == ["p0-s0", "p1-s0"] for c in merged.searched)
    every, _ = load_sweep(tmp_path)
    assert len(every.searched) == 2 * len(records) and {c.arch_id.split(".")[0] for c in every.searched} == {
        "p0-s0", "p1-s0"}
    assert info == {"p0-s0": {"point": 0, "label": "latency_batch=1", "seed": 0},
                    "p1-s0": {"point": 1, "label": "latency_batch=2", "seed": 0}}
    fronts = read_fronts(tmp_path)
    assert [f.label for f in fronts] == [f"{tmp_path.name}: p0-s0 latency_batch=1 seed=0",
                                         f"{tmp_path.name}: p1-s0 latency_batch=2 seed=0"]


def test_an_input_error_is_found_inside_ray_trains_wrapper_after_a_round_trip():
    """A search's input error raised on a Ray Train worker reaches the driver inside a
    WorkerGroupError (pickled across processes): the sweep finds it and does not retry it; a
    lost worker is not an input error."""
    import ray.cloudpickle as pickle
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    from goldnas_ray.core.search import SearchDiverged
    from goldnas_ray.files.store import INFRASTRUCTURE, INPUT, StorageError
    from goldnas_ray.orchestration.errors import error_kind, user_error

    wrapped = pickle.loads(pickle.dumps(WorkerGroupError("rank 1 failed", {0: RuntimeError("lost"),
                                                                          1: SearchDiverged("epoch 3: nan")})))
    found = user_error(wrapped)
    assert isinstance(found, SearchDiverged) and str(found) == "epoch 3: nan" and error_kind(wrapped) == INPUT
    assert error_kind(pickle.loads(pickle.dumps(ControllerError(SearchDiverged("x"))))) == INPUT
    assert error_kind(WorkerGroupError("lost", {0: RuntimeError("node died")})) is None
    # a storage outage the storage layer gave up on keeps its kind across the round trip
    outage = pickle.loads(pickle.dumps(WorkerGroupError("rank 0 failed", {0: StorageError("s3://b/x: timed out",
                                                                                          INFRASTRUCTURE)})))
    assert error_kind(outage) == INFRASTRUCTURE


def test_a_search_outcome_is_logged_once_and_a_resumed_success_clears_the_earlier_error(tmp_path):
    from goldnas_ray.tracking.sweep import SweepTracker

    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    grid = parse_grid(["search.lambda0=0.001"])
    sweep = Sweep(grid, [0], plan_sweep(Config(), grid, [0]))
    tracker.start("exp", location(tmp_path), sweep)
    run = sweep.searches[0].mlflow_run_id
    assert tracker.client.get_run(run).info.status == "SCHEDULED"
    tracker.end_search(run, None, "RuntimeError: node died")
    assert tracker.client.get_run(run).info.status == "FAILED"
    outcome = {"records": 3, "first_record_flops": 9e5, "last_record_flops": 4e5, "flops_at_stop": 4e5,
               "epochs": 12, "seconds": float("nan")}
    tracker.end_search(run, outcome, None)
    tracker.end_search(run, outcome | {"records": 99}, None)  # a later run of the sweep sees it finished too
    after = tracker.client.get_run(run)
    assert after.info.status == "FINISHED" and "goldnas.error" not in after.data.tags
    assert [m.value for m in tracker.client.get_metric_history(run, "records")] == [3]
    assert "seconds" not in after.data.metrics  # NaN is not an outcome


def test_a_sweep_retrain_accepts_different_search_only_data_and_refuses_a_different_recipe():
    from goldnas_ray.sweep.retrain import _differences

    base = Config()
    assert _differences(base.override(["data.batch_size=32", "data.cutout=8"]), base) == []
    assert _differences(base.override(["retrain.epochs=7", "data.flip=false"]), base) == ["data.flip", "retrain.epochs"]


def test_on_a_file_store_the_driver_logs_what_a_searchs_trial_reports_each_epoch_once(tmp_path, monkeypatch):
    """A sweep on sqlite: the trial's tracker writes nothing and names the child run; the rows
    it reports are logged by the driver (a row reported twice, after a restart, once); an
    epoch whose report never arrived comes from history.parquet; the files when it ends."""
    from conftest import tiny_config
    from goldnas_ray.run.loop import run_local
    from goldnas_ray.tracking.sweep import ReportedRun, SweepTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = SweepTracker(uri)
    assert driver.relays and not SweepTracker('http://127.0.0.1:1').relays
    grid = parse_grid(["search.lambda0=0.3"])
    base = tiny_config(xi_max=0.5, t0=0, max_epochs=3, record_gap=0.02, record_min_gap=0.0).override(["data.subset=0.25"])
    sweep = Sweep(grid, [0], plan_sweep(base, grid, [0]))
    driver.start("exp", location(tmp_path), sweep)
    run_id, out = sweep.searches[0].mlflow_run_id, tmp_path / "p0-s0"
    driver.search_running(run_id)
    reported = []
    run_local(Config.from_dict(sweep.searches[0].config), out, log=lambda line: None,
              tracker=lambda cfg, dataset, found: ReportedRun(uri, found or run_id),
              report=lambda row, checkpoint: reported.append(dict(row)))
    assert [r["epoch"] for r in reported] == [1, 2, 3]
    assert json.loads((out / "records.json").read_text())["mlflow_run_id"] == run_id
    assert driver.client.get_metric_history(run_id, "flops") == []  # the trial logged nothing
    for row in (reported[0], reported[2], reported[0]):  # epoch 2's report lost, epoch 1's repeated
        driver.search_epoch(run_id, row)
    assert [m.step for m in driver.client.get_metric_history(run_id, "flops")] == [1, 3]
    driver.search_history(run_id, location(out))
    history = pd.read_parquet(out / "history.parquet")
    logged = sorted((m.step, m.value) for m in driver.client.get_metric_history(run_id, "flops"))
    assert logged == [(int(e), float(f)) for e, f in zip(history["epoch"], history["flops"])]
    outcome = {"records": 1, "first_record_flops": 1.0, "last_record_flops": 1.0, "flops_at_stop": 1.0,
               "epochs": 3, "seconds": 1.0}
    uploads = []  # every file upload the store gets, counted where MLflow's client takes it
    for method in ("log_artifact", "log_artifacts"):
        real = getattr(driver.client.client, method)
        monkeypatch.setattr(driver.client.client, method,
                            lambda *args, real=real, method=method, **kw: uploads.append(method) or real(*args, **kw))
    driver.end_search(run_id, outcome, None, location(out))
    first = len(uploads)
    driver.end_search(run_id, outcome, None, location(out))  # a later run of the sweep: files not logged twice
    assert first >= 3 and len(uploads) == first
    artifacts = {f.path for f in driver.client.list_artifacts(run_id)}
    assert {"records.json", "history.parquet", "front.json", "genotypes"} <= artifacts
    front = json.loads(Path(driver.client.download_artifacts(run_id, "front.json", str(tmp_path / "dl"))).read_text())
    assert len(front["data"]) == len(json.loads((out / "records.json").read_text())["architectures"])
    assert driver.client.get_run(run_id).info.status == "FINISHED"


def _run_statuses(tracker, sweep):
    return [tracker.client.get_run(r).info.status for r in [sweep.mlflow_run_id] + [s.mlflow_run_id for s in sweep.searches]]


def test_a_sweep_whose_runs_fail_half_way_through_their_creation_ends_every_run_it_made(tmp_path, monkeypatch):
    """No sweep.json names the runs of a sweep whose start failed (nothing would resume them):
    the parent and every child made so far end FAILED, a SCHEDULED one too. Once started, a
    failure ends the running ones and leaves the scheduled ones to --resume."""
    from mlflow.exceptions import MlflowException

    from goldnas_ray.run.ending import ends_tracked_run
    from goldnas_ray.tracking.sweep import SweepTracker

    grid = parse_grid(["search.lambda0=0.001"])
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    sweep = Sweep(grid, [0, 1], plan_sweep(Config(), grid, [0, 1]))
    real = tracker.client.client.log_batch

    def log_batch(run_id, **kwargs):  # the store fails the second child's params
        if run_id == sweep.searches[1].mlflow_run_id:
            raise MlflowException("database is locked")
        return real(run_id, **kwargs)

    monkeypatch.setattr(tracker.client.client, "log_batch", log_batch)
    with pytest.raises(MlflowException), ends_tracked_run(lambda status: tracker.end_unfinished(sweep, status)):
        tracker.start("exp", location(tmp_path / "a"), sweep)
    monkeypatch.undo()
    assert _run_statuses(tracker, sweep) == ["FAILED"] * 3

    later = Sweep(grid, [0, 1], plan_sweep(Config(), grid, [0, 1]))
    tracker.start("exp", location(tmp_path / "b"), later)
    tracker.search_running(later.searches[0].mlflow_run_id)
    tracker.end_unfinished(later, "KILLED")
    assert _run_statuses(tracker, later) == ["KILLED", "KILLED", "SCHEDULED"]


def test_a_store_that_fails_a_reported_epoch_ends_no_search_and_the_history_fills_it_in(tmp_path):
    """On a file store the driver logs the epochs trials report; a write the store refuses (here
    the run deleted in the UI meanwhile) is said once, raises nothing out of Tune's callback,
    and the epochs are logged from history.parquet when the sweep ends."""
    from types import SimpleNamespace

    from goldnas_ray.files.search_files import HISTORY
    from goldnas_ray.orchestration.sweep_driver import SweepCallback
    from goldnas_ray.tracking.search import METRICS
    from goldnas_ray.tracking.sweep import SweepTracker

    driver = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    grid = parse_grid(["search.lambda0=0.001"])
    sweep = Sweep(grid, [0], plan_sweep(Config(), grid, [0]))
    driver.start("exp", location(tmp_path), sweep)
    run_id = sweep.searches[0].mlflow_run_id
    lines = []
    callback = SweepCallback({"p0-s0": {"name": "p0-s0", "mlflow_run_id": run_id, "max_epochs": 2, "label": "x"}},
                             lines.append, driver)
    trial = SimpleNamespace(config={"name": "p0-s0"})
    rows = [{col: float(epoch) for col in METRICS} | {"epoch": epoch} for epoch in (1, 2)]
    driver.client.delete_run(run_id)
    callback.on_trial_start(0, [], trial)
    for row in rows:
        callback.on_trial_result(0, [], trial, row)
    assert sum("failed a write" in line for line in lines) == 1
    assert sum(" epoch " in line for line in lines) == 2  # the progress goes on
    driver.client.restore_run(run_id)
    (tmp_path / "p0-s0").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "p0-s0" / HISTORY)
    driver.search_history(run_id, location(tmp_path / "p0-s0"))
    assert [m.step for m in driver.client.get_metric_history(run_id, "flops")] == [1, 2]


@pytest.mark.parametrize("uri, kind, one_writer", [
    ("sqlite:///a/mlflow.db", "sqlite", True), ("/data/mlruns", "folder", True), ("file:///data/mlruns", "folder", True),
    ("postgresql://db/mlflow", "database", False), ("mysql+pymysql://db/mlflow", "database", False),
    ("https://mlflow.example.com", "server", False), ("databricks", "other", False),
    ("databricks://profile", "other", False)])
def test_one_rule_says_what_kind_of_store_a_tracking_uri_names(uri, kind, one_writer):
    from goldnas_ray.tracking.common import store_kind
    from goldnas_ray.tracking.sweep import driver_writes

    assert store_kind(uri) == kind and driver_writes(uri) == one_writer


def test_the_code_that_raises_a_user_error_decides_its_kind():
    """One table of user errors; where a class covers input and infrastructure faults, the
    raise says which, and the kind survives a round trip between processes."""
    import ray.cloudpickle as pickle

    from goldnas_ray.files.store import INFRASTRUCTURE, INPUT
    from goldnas_ray.orchestration.errors import KINDS, USER_ERRORS, kind_of
    from goldnas_ray.retrain.plan import RetrainError
    from goldnas_ray.sweep.plan import SweepError
    from goldnas_ray.tracking.common import TrackingError, check_uri

    assert USER_ERRORS == tuple(KINDS)
    with pytest.raises(TrackingError) as unreachable:  # nothing listens there: may pass
        check_uri("http://127.0.0.1:9", timeout=2)
    assert kind_of(unreachable.value) == INFRASTRUCTURE
    with pytest.raises(TrackingError) as nowhere:  # a database without a folder for artifacts: the URI is wrong
        from goldnas_ray.tracking.common import artifact_root
        artifact_root("postgresql://db/mlflow")
    assert kind_of(nowhere.value) == INPUT
    unfinished = pickle.loads(pickle.dumps(RetrainError("2 of 4 trials did not finish", INFRASTRUCTURE)))
    assert kind_of(unfinished) == INFRASTRUCTURE and kind_of(RetrainError("a source is named twice")) == INPUT
    assert kind_of(SweepError("1 of 2 searches did not finish", INFRASTRUCTURE)) == INFRASTRUCTURE


def test_the_tune_callbacks_leave_the_drivers_log_and_tracker_behind_when_pickled():
    """Tune may pickle its callbacks with the experiment state: a sweep's tracker (an MLflow
    client of this process) and either log function stay behind; restored, log is print."""
    import pickle

    from goldnas_ray.orchestration.retrain_trial import RetrainCallback
    from goldnas_ray.orchestration.sweep_driver import SweepCallback

    class Unpicklable:
        def __reduce__(self):
            raise TypeError("a driver-only object was pickled")

    sweep = pickle.loads(pickle.dumps(SweepCallback({"p0-s0": {}}, log=Unpicklable(), tracker=Unpicklable())))
    assert (sweep.jobs, sweep.tracker, sweep.log, sweep.store_failed) == ({"p0-s0": {}}, None, print, False)
    retrain = pickle.loads(pickle.dumps(RetrainCallback(None, {"a": "run"}, 3, log=Unpicklable())))
    assert (retrain.run_ids, retrain.epochs, retrain.log) == ({"a": "run"}, 3, print)

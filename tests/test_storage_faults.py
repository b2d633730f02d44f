"""Faults of the infrastructure are retried, faults of the input are not; every file a run
reads goes through the storage layer.

Without services: the storage layer's classification (a transient OSError is retried within
a bounded budget and ends as a StorageError of kind infrastructure naming the object; a missing
file or malformed JSON is input), the kinds ``orchestration.errors`` reads (never through
``__context__``), a sweep's recorded kinds. With a moto server of this module's own (paused
with SIGSTOP by one test, so that no other test's endpoint is touched): a latency-cost search
and a sweep reading their table from the bucket, and a search that goes on through a 20 s
outage of the endpoint."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import start_moto, tiny_config
from drivers import drive

from goldnas_ray.core.config import ConfigError
from goldnas_ray.core.latency import LatencyTableError, measure
from goldnas_ray.data import DataError
from goldnas_ray.files.store import INFRASTRUCTURE, INPUT, StorageError, location, retrying, transient

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)

TIMEOUT = OSError("When getting information for key 'x' in bucket 'b': AWS Error NETWORK_CONNECTION during "
                  "HeadObject operation: curlCode: 28, Timeout was reached")
REFUSED = OSError("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Could not connect to "
                  "server; Details: Failed to connect to 127.0.0.1 port 1")
SLOW_DOWN = OSError("When uploading part for key 'x': AWS Error SLOW_DOWN during UploadPart operation: Please "
                    "reduce your request rate. (HTTP status 503)")


# ---- the classification, without services -----------------------------------------------------
@pytest.mark.parametrize("exc", [TIMEOUT, REFUSED, SLOW_DOWN, ConnectionResetError(104, "reset"),
                                 OSError("AWS Error INTERNAL_FAILURE (HTTP status 500)"), TimeoutError()])
def test_a_transient_fault_is_retried_until_it_passes(exc, capsys):
    calls, slept = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise exc
        return "content"
    assert transient(exc)
    assert retrying(flaky, "s3://b/x", sleep=slept.append) == "content"
    assert len(calls) == 3 and slept == [1.0, 2.0]  # exponential backoff
    assert capsys.readouterr().err.count("retrying") == 1  # one line when retrying starts, not per try


def test_a_transient_fault_that_lasts_gives_up_within_the_budget_naming_the_object(monkeypatch):
    monkeypatch.setenv("GOLDNAS_STORAGE_RETRY_S", "20")
    now, calls = [0.0], []

    def sleep(seconds):  # a clock of its own: the test waits for nothing
        now[0] += seconds

    def down():
        calls.append(now[0])
        raise TIMEOUT
    with pytest.raises(StorageError) as caught:
        retrying(down, "s3://b/run/records.json", sleep=sleep, clock=lambda: now[0])
    assert caught.value.kind == INFRASTRUCTURE
    assert str(caught.value).startswith("s3://b/run/records.json: ") and "gave up after 5 tries in 15s" in str(caught.value)
    assert calls == [0.0, 1.0, 3.0, 7.0, 15.0]  # the next wait (16 s) would pass the 20 s budget


@pytest.mark.parametrize("exc", [FileNotFoundError("s3://b/x does not exist"),
                                 ValueError("Unexpected query parameter in S3 URI: 'x'"),
                                 OSError("AWS Error ACCESS_DENIED during PutObject operation (HTTP status 403)"),
                                 OSError("AWS Error NO_SUCH_BUCKET during HeadBucket operation")])
def test_a_fault_of_the_input_is_not_retried(exc):
    calls = []

    def fails():
        calls.append(1)
        raise exc
    assert not transient(exc)
    with pytest.raises(StorageError) as caught:
        retrying(fails, "s3://b/x", sleep=lambda s: pytest.fail("slept"))
    assert caught.value.kind == INPUT and len(calls) == 1


def test_a_missing_or_malformed_latency_table_is_a_config_error(tmp_path):
    from goldnas_ray.orchestration.errors import error_kind
    from goldnas_ray.run.loop import read_latency

    with pytest.raises(LatencyTableError, match=r"latency table .*none.json does not exist") as missing:
        read_latency(tiny_config(cost="latency", latency_table=str(tmp_path / "none.json")))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LatencyTableError, match=r"bad.json is not readable JSON") as malformed:
        read_latency(tiny_config(cost="latency", latency_table=str(tmp_path / "bad.json")))
    assert error_kind(missing.value) == error_kind(malformed.value) == INPUT
    assert read_latency(tiny_config()) is None  # a FLOPs search reads no table


def test_a_resumed_search_reads_no_table_and_a_sweeps_errors_name_the_search(tmp_path, monkeypatch, digits):
    """Only a new search reads its table: a --resume (local, or on Ray: its driver reaches the
    cluster without reading it) takes it from the checkpoint, so a table gone since the start
    changes nothing; a sweep's pre-flight reads the new searches' tables only and names the
    search whose table is missing, keeping the kind of a store's outage."""
    from goldnas_ray.orchestration import search_driver, sweep_driver
    from goldnas_ray.run.loop import run_local
    from goldnas_ray.sweep.plan import parse_grid, plan_sweep

    table = measure(tiny_config().space, SHAPE, 10, batch=1, warmup=1, repeats=3)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table.to_dict()))
    cfg = tiny_config(lambda0=0.3, t0=1, max_epochs=1, cost="latency", latency_table=str(path),
                      latency_min_ratio=0.05)
    run_local(cfg, tmp_path / "s", log=lambda _: None)
    path.unlink()
    records = json.loads((tmp_path / "s" / "records.json").read_text())
    records["finished"], records["config"]["search"]["max_epochs"] = False, 2  # one more epoch to go
    (tmp_path / "s" / "records.json").write_text(json.dumps(records))

    class ReachedTheCluster(Exception):
        pass

    def connect(*_, **__):
        raise ReachedTheCluster
    monkeypatch.setattr(search_driver, "connect", connect)
    with pytest.raises(ReachedTheCluster):
        search_driver.run_ray(None, tmp_path / "s", resume=True, tracking=False, log=lambda _: None)
    with pytest.raises(LatencyTableError, match="t.json does not exist"):  # a new search reads it
        search_driver.run_ray(cfg, tmp_path / "new", tracking=False, log=lambda _: None)
    resumed = run_local(None, tmp_path / "s", resume=True, log=lambda _: None)
    assert resumed.latency.to_dict() == table.to_dict()  # from the checkpoint

    grid = parse_grid(["search.lambda0=0.001,0.002"])
    searches = plan_sweep(cfg, grid, [0])
    tables = sweep_driver._latency_tables(searches, {searches[0].name} - {searches[0].name})
    assert tables == {s.name: None for s in searches}  # begun before: nothing read
    with pytest.raises(LatencyTableError, match=rf"^search {searches[1].name} \(.*\): latency table .*t.json does "
                                                r"not exist") as caught:
        sweep_driver._latency_tables(searches, {searches[1].name})
    assert caught.value.kind == INPUT
    monkeypatch.setattr(sweep_driver, "read_latency",
                        lambda cfg: (_ for _ in ()).throw(StorageError("s3://b/t.json: timed out", INFRASTRUCTURE)))
    with pytest.raises(StorageError, match=rf"^search {searches[0].name} ") as caught:
        sweep_driver._latency_tables(searches, {searches[0].name})
    assert caught.value.kind == INFRASTRUCTURE


def test_an_input_error_handled_earlier_does_not_reclassify_a_later_one():
    from goldnas_ray.orchestration.errors import error_kind, user_error

    try:
        try:
            raise DataError("a file handled earlier")
        except DataError:
            raise RuntimeError("an unrelated bug")  # noqa: B904 - its __context__ is the DataError
    except RuntimeError as exc:
        later = exc
    assert isinstance(later.__context__, DataError)
    assert user_error(later) is None and error_kind(later) is None
    # an explicit cause is followed; a StorageError has its own kind
    try:
        raise RuntimeError("wrapped") from StorageError("s3://b/x: timed out", INFRASTRUCTURE)
    except RuntimeError as exc:
        assert error_kind(exc) == INFRASTRUCTURE
    assert error_kind(ConfigError("bad value")) == INPUT


def test_a_storage_outage_is_not_bad_data_but_an_unreadable_store_is(monkeypatch):
    """data/datasets.py passes on a StorageError the storage layer gave up on (kind
    infrastructure); any other failure to read is a DataError naming the data."""
    from goldnas_ray.data import datasets

    def outage(**_):
        retrying(lambda: (_ for _ in ()).throw(TIMEOUT), "s3://b/data/train.bin", sleep=lambda s: None)

    def denied(**_):
        retrying(lambda: (_ for _ in ()).throw(OSError("AWS Error ACCESS_DENIED (HTTP status 403)")), "s3://b/data")
    monkeypatch.setenv("GOLDNAS_STORAGE_RETRY_S", "0")
    monkeypatch.setitem(datasets.LOADERS, "digits", outage)
    with pytest.raises(StorageError) as caught:
        datasets.load_dataset("digits")
    assert caught.value.kind == INFRASTRUCTURE and not isinstance(caught.value, DataError)
    monkeypatch.setitem(datasets.LOADERS, "digits", denied)
    with pytest.raises(DataError, match="cannot read digits data at data: s3://b/data: access denied"):
        datasets.load_dataset("digits")
    # a failure of the store it does not recognise: infrastructure in store.py, so not bad data here
    unknown = OSError("When reading information for key 'd/x.parquet': AWS Error UNKNOWN (HTTP status 0)")
    with pytest.raises(StorageError) as caught:
        datasets._parquet_read(location("s3://b/d?endpoint_override=127.0.0.1:1"), lambda: (_ for _ in ()).throw(unknown))
    assert caught.value.kind == INFRASTRUCTURE and not isinstance(caught.value, DataError)


def test_a_corrupt_parquet_file_is_bad_data(tmp_path):
    """pyarrow raises OSError for a Parquet file whose footer it cannot read: input, not an outage."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from goldnas_ray.data.datasets import read_parquet_table

    pq.write_table(pa.table({"image": [b"x" * 64] * 50, "label": list(range(50))}), tmp_path / "t.parquet")
    raw = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "t.parquet").write_bytes(raw[:len(raw) // 2] + raw[-8:])  # cut: the footer points past the end
    with pytest.raises(DataError, match=r"cannot read Parquet data at .*t.parquet"):
        read_parquet_table(location(tmp_path / "t.parquet"))


def test_a_sweep_records_the_kind_of_each_failure_and_reads_files_without_it(tmp_path):
    from goldnas_ray.sweep.plan import Sweep, parse_grid, plan_sweep

    grid = parse_grid(["search.lambda0=0.001,0.002,0.003"])
    sweep = Sweep(grid, [0], plan_sweep(tiny_config(), grid, [0]))
    sweep.fail("p0-s0", "SearchDiverged: epoch 2: nan", INPUT)
    sweep.fail("p1-s0", "StorageError: s3://b/p1-s0/records.json: timed out", INFRASTRUCTURE)
    sweep.fail("p2-s0", "RuntimeError: a bug", None)
    sweep.write(tmp_path)
    again = Sweep.read(tmp_path)
    assert again.failed_on_input() == ["p0-s0"] and again.failed_kinds["p1-s0"] == INFRASTRUCTURE
    raw = json.loads((tmp_path / "sweep.json").read_text())
    del raw["failed_kinds"]  # as written before the kinds were kept: read, none counted as input
    (tmp_path / "sweep.json").write_text(json.dumps(raw))
    old = Sweep.read(tmp_path)
    assert set(old.failed) == {"p0-s0", "p1-s0", "p2-s0"} and old.failed_on_input() == []


def test_s3_timeouts_are_options_of_the_uri():
    import pickle

    loc = location("s3://b/run?endpoint_override=127.0.0.1:1&scheme=http&request_timeout=3")
    again = pickle.loads(pickle.dumps(loc / "x.json"))  # as a worker or a trial gets it
    for fs in (loc.fs, again.fs):
        options = fs.__reduce__()[1][0]  # (only to read them back: pyarrow has no other accessor)
        assert options["request_timeout"] == 3.0 and options["connect_timeout"] == 10.0  # the default
        assert (options["endpoint_override"], options["scheme"]) == ("127.0.0.1:1", "http")
    assert again.uri == loc.uri.replace("/run?", "/run/x.json?") and again.path == "b/run/x.json"
    assert "request_timeout=3" in loc.uri and str(loc) == "s3://b/run"
    with pytest.raises(StorageError, match="unknown option allow_bucket_creation='maybe'"):
        location("s3://b/run?endpoint_override=127.0.0.1:1&allow_bucket_creation=maybe")
    with pytest.raises(StorageError, match="credentials are never taken from the URI"):
        location("s3://key:secret@b/run?endpoint_override=127.0.0.1:1")
    with pytest.raises(StorageError, match="request_timeout='soon' is not a number"):
        location("s3://b/run?endpoint_override=127.0.0.1:1&request_timeout=soon")
    with pytest.raises(StorageError, match="connect_timeout is an option of s3:// locations only"):
        location("gs://b/run?connect_timeout=3")


# ---- against a moto server of this module --------------------------------------------------------
BUCKET = "faults"


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """A moto_server of this module alone (one test pauses it), its request log, one bucket."""
    root = tmp_path_factory.mktemp("moto-faults")
    with start_moto(root, BUCKET) as (proc, endpoint):
        yield {"proc": proc, "log": root / "moto.log",
               "uri": lambda key, extra="": f"s3://{BUCKET}/{key}?endpoint_override={endpoint}&scheme=http{extra}"}


@pytest.fixture(scope="module")
def table_in_bucket(moto):
    """A latency table of the tiny space on digits, timed quickly, uploaded to the bucket."""
    table = measure(tiny_config().space, SHAPE, 10, batch=1, warmup=1, repeats=3)
    uri = moto["uri"]("tables/tiny.json")
    location(uri).write_text(json.dumps(table.to_dict()))
    return table, uri


def _gets(moto, key: str) -> int:
    """How many times the object ``key`` was downloaded (moto's request log)."""
    return sum(f"GET /{BUCKET}/{key} " in line for line in Path(moto["log"]).read_text().splitlines())


@pytest.mark.s3
@pytest.mark.services
def test_a_latency_search_reads_its_table_from_the_bucket(moto, table_in_bucket, tmp_path, digits):
    from goldnas_ray.run.loop import run_local

    table, uri = table_in_bucket
    cfg = tiny_config(lambda0=0.3, t0=1, max_epochs=3, cost="latency", latency_table=uri, latency_min_ratio=0.05)
    search = run_local(cfg, tmp_path / "s", log=lambda _: None)
    assert search.latency.to_dict() == table.to_dict()
    assert json.loads((tmp_path / "s" / "latency.json").read_text()) == table.to_dict()
    records = json.loads((tmp_path / "s" / "records.json").read_text())["architectures"]
    assert records and all("latency_ms" in r for r in records)
    missing = tiny_config(cost="latency", latency_table=moto["uri"]("tables/none.json"))
    with pytest.raises(LatencyTableError, match=rf"latency table s3://{BUCKET}/tables/none.json does not exist"):
        run_local(missing, tmp_path / "m", log=lambda _: None)


@pytest.mark.s3
@pytest.mark.services
def test_a_config_file_is_read_from_the_bucket(moto):
    import argparse

    from goldnas_ray import cli

    parser = argparse.ArgumentParser()
    cli.add_common_flags(parser)
    cli.add_search_flags(parser)
    uri = moto["uri"]("configs/small.yaml")
    location(uri).write_text("space:\n  num_cells: 3\nsearch:\n  lambda0: 0.5\n")
    cfg = cli.search_config(parser.parse_args(["--config", uri, "--set", "seed=4"]))
    assert (cfg.space.num_cells, cfg.search.lambda0, cfg.seed) == (3, 0.5, 4)
    with pytest.raises(ConfigError, match=rf"config file s3://{BUCKET}/configs/none.yaml does not exist"):
        cli.search_config(parser.parse_args(["--config", moto["uri"]("configs/none.yaml")]))


@pytest.mark.s3
@pytest.mark.services
def test_profile_latency_writes_its_table_to_the_bucket_and_reads_its_config_there(moto, tmp_path, monkeypatch):
    import importlib.util

    from goldnas_ray.run.loop import read_latency

    spec = importlib.util.spec_from_file_location("profile_latency", ROOT / "pipelines" / "profile_latency.py")
    profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile)
    config, table = moto["uri"]("profile/space.yaml"), moto["uri"]("profile/t.json")
    location(config).write_text("space:\n  num_cells: 3\n  init_channels: 4\n")
    monkeypatch.chdir(tmp_path)  # a URI taken for a path would make a folder "s3:" here
    argv = ["--out", table, "--config", config, "--repeats", "2", "--warmup", "0", "--calibration", "2",
            "--threads", "1"]
    assert profile.main(argv) == 0
    assert not (tmp_path / "s3:").exists()
    read = read_latency(tiny_config(cost="latency", latency_table=table))
    assert read.key["space"]["init_channels"] == 4 and read.parts_ms
    assert profile.main(argv) == 2  # never overwritten, in a bucket too


@pytest.mark.s3
@pytest.mark.ray
@pytest.mark.services
def test_a_sweeps_trials_get_the_table_the_driver_read_from_the_bucket(moto, table_in_bucket, ray_cluster, tmp_path):
    """Two searches on the session's two-node cluster: the sweep's pre-flight reads the table in the
    bucket once, and its trials build their searches from that copy (moto served it once)."""
    table, uri = table_in_bucket
    before = _gets(moto, "tables/tiny.json")
    out = tmp_path / "sweep"
    proc = drive("sweep.py", "--out", str(out), "--no-mlflow", "--seeds", "0", "--grid", "search.lambda0=0.3,0.5",
                 "--cpus-per-worker", "1",
                 *[x for s in ("space.num_cells=3", "space.init_channels=4", "data.batch_size=128", "search.max_epochs=2",
                               "search.cost=latency", f"search.latency_table={uri}", "search.latency_min_ratio=0.05")
                   for x in ("--set", s)], cluster=ray_cluster)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for name in ("p0-s0", "p1-s0"):
        assert json.loads((out / name / "records.json").read_text())["finished"]
        assert json.loads((out / name / "latency.json").read_text()) == table.to_dict()
    assert _gets(moto, "tables/tiny.json") - before == 1


@pytest.mark.s3
@pytest.mark.services
def test_a_search_goes_on_through_a_paused_endpoint_and_a_missing_object_is_one_line(moto, table_in_bucket,
                                                                                     tmp_path):
    """moto stopped (SIGSTOP) once the search has written its first checkpoint into the bucket:
    the writes of the next epoch time out after 3 s (request_timeout in the URI), the storage
    layer says it is retrying, and 20 s later moto goes on (SIGCONT); the search finishes as if
    nothing had happened, and nothing calls it bad input. A missing object is still a one-line
    DataError, and deleting one that is gone is not an error."""
    import threading

    _, table_uri = table_in_bucket
    out = location(moto["uri"]("paused/run", "&request_timeout=3&connect_timeout=2"))
    settings = [x for s in ("space.num_cells=3", "space.init_channels=4", "data.batch_size=128",
                            "search.max_epochs=2", "search.cost=latency", f"search.latency_table={table_uri}",
                            "search.latency_min_ratio=0.01") for x in ("--set", s)]
    lines, retrying_seen = [], threading.Event()

    def read(stream):
        for line in stream:
            lines.append(line)
            if line.startswith("storage: ") and "retrying" in line:
                retrying_seen.set()
    run = subprocess.Popen([sys.executable, "pipelines/search.py", "--local", "--no-mlflow", *settings,
                            "--out", out.uri], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reader = threading.Thread(target=read, args=(run.stderr,), daemon=True)
    reader.start()
    try:
        checkpoint = out / "checkpoints/latest.pt"
        deadline = time.monotonic() + 300
        while not checkpoint.is_file() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert checkpoint.is_file() and run.poll() is None, "".join(lines)[-3000:]  # epoch 2 to go
        os.kill(moto["proc"].pid, signal.SIGSTOP)
        try:  # the search's next write meets the outage (on a busy machine an epoch can take long)
            assert retrying_seen.wait(timeout=300), "".join(lines)[-3000:]
            time.sleep(20)  # the endpoint stays down 20 s more while the search waits on it
        finally:
            os.kill(moto["proc"].pid, signal.SIGCONT)
        run.wait(timeout=600)
        reader.join(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    stderr = "".join(lines)
    assert run.returncode == 0, stderr[-3000:]
    assert "storage: s3://faults/paused/run/" in stderr, stderr[-3000:]
    assert not any(line.startswith("error:") for line in lines) and "DataError" not in stderr
    assert json.loads((out / "records.json").read_text())["finished"]
    (out / "gone.json").delete()  # nothing there: as after a retried delete whose answer was lost

    missing = drive("search.py", "--local", "--no-mlflow", *settings[:6], "--set", "data.dataset=parquet",
                    "--set", f"data.root={moto['uri']('no/such/set')}", "--out", str(tmp_path / "m"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: cannot read Parquet data at s3://faults/no/")
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr

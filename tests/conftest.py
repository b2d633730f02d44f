import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch

import ray_nodes
from drivers import drive
from readme_blocks import ReadmeShell

from goldnas_ray.core.config import Config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Everything this session starts carries its mark, so that it stops what it started and nothing
# else (tests/ray_nodes.py: `ray stop` would end every Ray cluster of the user on the machine);
# Ray's files of the session go under a temp root of its own, so that a cluster of the user's
# (/tmp/ray, its ray_current_cluster file) is never touched either.
#
# With pytest-xdist (`-n 2`: the fast selection, CONTRIBUTING.md) a controller that runs no test
# hands the tests to workers gw0, gw1...: each worker is a session of its own, marked
# "<controller's mark>-gw0" and so on, so that the controller can stop whatever its workers
# left (a worker it had to kill, say). A process counts as a worker only if the controller is
# its parent: a pytest that a test starts (as tests/test_teardown.py does) inherits the
# variables and is a session of its own.
_PARENT, _, _PARENT_SESSION = os.environ.get("GOLDNAS_TEST_CONTROLLER", "").partition(":")
_IS_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER")) and _PARENT == str(os.getppid())
if _IS_WORKER:
    SESSION = f"{_PARENT_SESSION}-{os.environ['PYTEST_XDIST_WORKER']}"
else:
    SESSION = f"gr{uuid.uuid4().hex[:8]}"
    os.environ["GOLDNAS_TEST_CONTROLLER"] = f"{os.getpid()}:{SESSION}"
os.environ[ray_nodes.MARKER] = SESSION
os.environ["RAY_TMPDIR"] = f"/tmp/{SESSION}"
# Ray Train's controller looks at its workers every 2 s by default: a run's reports, its end and
# a stop land up to that late, and the suite runs a hundred such runs. Inherited by the clusters
# the tests start (their raylets) and by embedded Ray.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


_WORKERS = False  # this process is an xdist controller, with workers to pass signals on to


def pytest_configure(config):
    """SIGTERM (a CI runner's timeout, `kill`) ends the session as Ctrl-C does: pytest stops
    the test it is in and runs every fixture's teardown, so the session's Ray cluster, MLflow
    server and S3 endpoint are stopped; without this, SIGTERM ends pytest at once and leaves
    them running (tests/test_teardown.py). Under xdist the controller passes the signal on to
    its workers, where the fixtures are, and waits for their teardown."""
    global _WORKERS
    _WORKERS = bool(getattr(config.option, "tx", None)) and not hasattr(config, "workerinput")
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame):
    # once: a second SIGTERM (a runner that signals the whole process group reaches a worker
    # directly and through its controller) would cut short the teardown the first one started
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _WORKERS:
        for pid in ray_nodes.children(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        # a worker's process outlives its session (execnet serves until the controller ends
        # it): what is waited for is its fixtures' teardown, the end of what they started
        deadline = time.time() + 240
        while time.time() < deadline and ray_nodes.marked(f"{SESSION}-", prefix=True):
            time.sleep(0.5)
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_unconfigure(config):
    """The controller, last: whatever a worker started and left (its fixtures' teardown cut short)."""
    if not _IS_WORKER:
        ray_nodes.stop(f"{SESSION}-", timeout=5, prefix=True)
        for left in Path("/tmp").glob(f"{SESSION}-*"):
            shutil.rmtree(left, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _stop_what_the_session_started():
    """The session's temp root while it runs (importing this file creates nothing); at the end,
    whatever the session started and left running (an embedded Ray whose driver was killed,
    say) is stopped, by its mark, and the root removed."""
    Path(os.environ["RAY_TMPDIR"]).mkdir(exist_ok=True)
    yield
    for mark in (SESSION, f"{SESSION}-cluster"):
        ray_nodes.stop(mark, timeout=5)
    shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)


def tiny_config(**search) -> Config:
    """A 3-cell, 4-channel space: a search epoch on digits takes about a second; its retrain
    times each network 3 times (as the smoke preset's does)."""
    return Config.from_dict({"space": {"num_cells": 3, "init_channels": 4}, "data": {"batch_size": 128},
                             "search": search, "retrain": {"latency_repeats": 3}})


# a test that uses one of these fixtures starts (or joins) the service: marked for it, so that
# `pytest -m "not services"` starts no server at all
SERVICE_FIXTURES = {"ray_cluster": "ray", "mlflow_server": "mlflow", "mlflow_s3_server": "mlflow", "s3": "s3"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups off the items
def pytest_collection_modifyitems(items):
    for item in items:
        # xdist (--dist loadgroup): the tests on the session's Ray cluster run one after another
        # on one worker (one such cluster, of 2 one-CPU nodes, on the machine); the others by
        # file, so that a file's module fixtures are made once
        group = "ray-cluster" if "ray_cluster" in item.fixturenames else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
        for fixture, mark in SERVICE_FIXTURES.items():
            if fixture in item.fixturenames:
                item.add_marker(mark)
        if any(item.get_closest_marker(mark) for mark in ("ray", "mlflow", "s3")):
            item.add_marker("services")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def digits():
    from goldnas_ray.data import load_digits

    return load_digits()


# ---- a real Ray cluster and a real MLflow server, one of each per test session ------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


@pytest.fixture(scope="session")
def readme_shell(tmp_path_factory):
    """A shell session that runs the README's blocks (see readme_blocks.py)."""
    root = tmp_path_factory.mktemp("readme")
    return ReadmeShell(root / "home", root / "runs", free_port(), free_port(), free_port())


@pytest.fixture(scope="session")
def ray_cluster(readme_shell):
    """The README's own commands start the cluster, as a user pastes them on a machine where
    the default run ran before (it leaves ~/.ray/auth_token, so the head requires tokens):
    the 'local-run' block, then 'cluster-start' (a head of 1 CPU here). A second node of 1 CPU
    joins, so 2 workers land on 2 nodes. The README's 'cluster-stop' block ends it."""
    ray = str(BIN / "ray")
    local_run = readme_shell.run("local-run", timeout=600)
    started = readme_shell.run("cluster-start", timeout=300)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    env = readme_shell.env
    assert (Path(env["HOME"]) / ".ray" / "auth_token").is_file()
    address = f"127.0.0.1:{readme_shell.gcs_port}"
    # the second node gets its own temp dir, as a node on another machine has: sharing the
    # head's would let its runtime-env agent unpack the job's working_dir over the folder the
    # driver runs in (short path: Ray puts unix sockets below it)
    node2 = tempfile.mkdtemp(prefix="rn2-", dir="/tmp")
    subprocess.run([ray, "start", "--address", address, "--node-ip-address", "127.0.0.1",
                    "--num-cpus", "1", "--disable-usage-stats", "--temp-dir", node2],
                   check=True, capture_output=True, env=env, timeout=180)
    dashboard = f"http://127.0.0.1:{readme_shell.dashboard_port}"
    wait_http(dashboard)
    yield {"address": address, "dashboard": dashboard, "env": env, "local_run": local_run,
           "temp_dirs": [Path(env["RAY_TMPDIR"]), Path(node2)]}  # each node's Ray files
    stopped = readme_shell.run("cluster-stop", timeout=180)  # the nodes' processes, by their mark
    shutil.rmtree(node2, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    left = ray_nodes.marked(readme_shell.env[ray_nodes.MARKER])
    assert left == [], ray_nodes.describe(left)


def run_mlflow_server(root: Path, artifacts: str, env=None):
    """An MLflow tracking server on 127.0.0.1 (its store in ``root``), yielding its URI."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", artifacts, "--workers", "1"],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(uri + "/health", timeout=120)
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    yield from run_mlflow_server(root, str(root / "artifacts"))


# ---- a real S3-compatible server (moto's server mode) on 127.0.0.1 ----------------------------
S3_BUCKET = "goldnas-ci"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "goldnas-test", "AWS_SECRET_ACCESS_KEY": "goldnas-test-secret",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def start_moto(root: Path, bucket: str):
    """A moto_server on a free port of 127.0.0.1 with ``bucket`` made, its request log in
    ``root/moto.log``, S3_CREDENTIALS in this process's environment while it runs; yields
    (its process, its endpoint). Stopped at the end even when a test left it paused (SIGSTOP)."""

    port = free_port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(root / "moto.log", "w"), stderr=subprocess.STDOUT)
    endpoint = f"127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    try:
        wait_http(f"http://{endpoint}/moto-api/", timeout=60)
        import pyarrow.fs as pafs
        fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?endpoint_override={endpoint}&scheme=http"
                                         f"&allow_bucket_creation=true")
        fs.create_dir(bucket)
        yield proc, endpoint
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3(readme_shell, tmp_path_factory):
    """moto_server with one bucket. Credentials reach the test process through the
    environment and the Ray cluster's processes (started with the README shell's HOME, before
    or after this) through ~/.aws/credentials there, as on a real node."""
    aws = Path(readme_shell.env["HOME"]) / ".aws"
    aws.mkdir(parents=True, exist_ok=True)
    (aws / "credentials").write_text(
        "[default]\naws_access_key_id = {AWS_ACCESS_KEY_ID}\naws_secret_access_key = "
        "{AWS_SECRET_ACCESS_KEY}\n".format(**S3_CREDENTIALS))
    (aws / "config").write_text("[default]\nregion = us-east-1\n")
    readme_shell.env.update(S3_CREDENTIALS)
    with start_moto(tmp_path_factory.mktemp("s3"), S3_BUCKET) as (_, endpoint):
        yield {"endpoint": endpoint, "bucket": S3_BUCKET,
               "uri": lambda prefix: f"s3://{S3_BUCKET}/{prefix}?endpoint_override={endpoint}&scheme=http"}


@pytest.fixture(scope="session")
def mlflow_s3_server(s3, tmp_path_factory):
    """An MLflow tracking server whose artifacts live in the bucket (served through it)."""
    root = tmp_path_factory.mktemp("mlflow-s3")
    env = dict(os.environ, MLFLOW_S3_ENDPOINT_URL=f"http://{s3['endpoint']}")
    yield from run_mlflow_server(root, f"s3://{s3['bucket']}/mlflow", env)


def kill_rank_after_report(out, epoch: int, run: subprocess.Popen, rank: int = 1, timeout: float = 300):
    """SIGKILL rank ``rank`` of the search writing ``out`` (a Location) once rank 0's report of
    ``epoch`` has returned (its .workers/reports.jsonl): Ray Train then holds the checkpoint of
    ``epoch - 1`` at least, so the restarted group goes on from there. Returns the killed pid,
    None when the run ended first."""

    workers = out / ".workers"
    deadline = time.time() + timeout
    while time.time() < deadline and run.poll() is None:
        reports, victim = workers / "reports.jsonl", workers / f"rank-{rank}.json"
        if reports.is_file() and victim.is_file():
            done = [json.loads(line)["epoch"] for line in reports.read_text().splitlines() if line.strip()]
            if done and max(done) >= epoch:
                pid = json.loads(victim.read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.2)
    return None


def straight_retrain(out) -> dict[str, list[tuple[float, float]]]:
    """What the retrain in ``out`` (a folder or storage URI) gives uninterrupted, computed here
    in one process: trial key -> [(test accuracy, training loss) of each epoch]. On the CPU a
    trial is deterministic, so a stopped and resumed retrain must give exactly this."""
    from goldnas_ray.core.genotype import load_genotype
    from goldnas_ray.data.from_config import load_data
    from goldnas_ray.files.store import location
    from goldnas_ray.retrain.plan import Manifest
    from goldnas_ray.retrain.recipe import Retrainer

    out = location(out)
    manifest = Manifest.read(out)
    data = load_data(manifest.data())
    found = {}
    for c in manifest.candidates:
        for seed in manifest.seeds:
            trainer = Retrainer(load_genotype(out / c.genotype_path), manifest.config.retrain, seed)
            rows = [trainer.train_epoch(data, manifest.data()) for _ in range(manifest.config.retrain.epochs)]
            found[f"{c.arch_id}-s{seed}"] = [(r["test_acc"], r["train_loss"]) for r in rows]
    return found


def trial_histories(trials) -> dict[str, list[tuple[float, float]]]:
    """trials.parquet as straight_retrain gives it."""
    return {key: list(zip(group.sort_values("epoch")["test_acc"], group.sort_values("epoch")["train_loss"]))
            for key, group in trials.groupby("key")}


def submit(cluster, script, *args, timeout=900, job_id=None, env_vars=None):
    """``ray job submit --working-dir <repo> -- python pipelines/<script> args``; with
    ``job_id`` the job gets that submission id and the call returns without waiting;
    ``env_vars``: the job's environment variables (its runtime_env's)."""
    no_wait = ["--no-wait", "--submission-id", job_id] if job_id else []
    runtime = {"excludes": [".venv", ".git", "runs", "data"], **({"env_vars": env_vars} if env_vars else {})}
    cmd = [str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard"], *no_wait,
           "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime),
           "--", sys.executable, f"pipelines/{script}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cluster["env"])


@pytest.fixture(scope="session")
def small_search(tmp_path_factory):
    """One small search in this process, read by the tests of a search's files (they copy its
    folder before changing anything in it): 2 epochs of tiny_config on digits that prune from
    the first epoch and record 3 architectures of falling FLOPs. ``out``, the GoldSearch that
    run_local returned, and the lines it logged."""
    from types import SimpleNamespace

    from goldnas_ray.run.loop import run_local

    out, lines = tmp_path_factory.mktemp("small-search") / "s", []
    cfg = tiny_config(max_epochs=2, lambda0=1.0, xi_max=0.2, t0=0, record_gap=0.02, record_min_gap=0.0)
    return SimpleNamespace(out=out, search=run_local(cfg, out, log=lines.append), lines=lines)


@pytest.fixture(scope="session")
def pipeline(ray_cluster, mlflow_server, tmp_path_factory):
    """pipelines/pipeline.py on the cluster, once a session (retrain and export tests read it): a 1-epoch smoke search (it records its final
    architecture, and the one before the epoch's pruning when that pruning lowered the FLOPs:
    the float trajectory decides), then their retrain beside one random architecture of matched
    FLOPs: 2 or 3 trials x 2 epochs, one CPU each on a cluster of 2 one-CPU nodes. Beside it, the
    most trials seen running at one moment: started (a start line in their .trials log) and not
    finished (no finished line yet), so their processes were alive together."""
    out = tmp_path_factory.mktemp("pipeline") / "p"
    most = [0]

    def count_running(run):
        while not run.ended.wait(0.05):
            logs = [p.read_text() for p in (out / "retrain" / ".trials").glob("*.jsonl")]
            most[0] = max(most[0], sum('"start_epoch"' in log and '"finished_epoch"' not in log for log in logs))

    done = drive("pipeline.py", "--smoke-test", "--max-epochs", "1", "--random", "1",
                 "--out", str(out), "--mlflow-uri", mlflow_server, "--experiment", "ci-pipe-search",
                 "--retrain-experiment", "ci-pipe-retrain", "--register-as", "ci-pipe", cluster=ray_cluster,
                 during=count_running)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out, done.stdout, most[0]

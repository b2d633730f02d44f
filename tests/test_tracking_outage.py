"""An MLflow tracking server that goes away after a good start never stops a run: its writes
are buffered in the run's output and replayed (tracking/buffer.py, tracking/replay.py).

The runs here reach the session's MLflow server (conftest) through a TCP relay of this module's,
on a port of its own: the test closes the relay (connections refused, open ones cut: what a
client sees of a server that went away) and opens it again on the same port, while the server
and its store run throughout, so no other test sees the outage and no server is started again.
MLflow's retry budget is shortened through its environment variables."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import free_port, tiny_config
from drivers import drive

from goldnas_ray.run.loop import run_local
from goldnas_ray.tracking import buffer, replay
from goldnas_ray.tracking.search import METRICS, search_tracker


def served(test):
    """A test on this module's relay to the session's MLflow server (marked as its users are)."""
    return pytest.mark.services(pytest.mark.mlflow(test))

EPOCHS = 8


class Server:
    """The session's MLflow server as the runs here see it: ``uri`` is a relay to it, which
    ``stop()`` closes and ``start()`` opens again."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rsplit(":", 1)
        self.port, self.listener, self.open, self.lock = free_port(), None, set(), threading.Lock()
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def stop(self) -> None:
        with self.lock:
            listener, self.listener = self.listener, None
            socks = [listener, *self.open]
            self.open.clear()
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept() or recv()
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by stop()
                return
            with self.lock:
                if self.listener is not listener:  # accepted in the instant of a stop
                    client.close()
                    return
                server = socket.create_connection((self.upstream[0].split("//")[-1], int(self.upstream[1])))
                self.open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture(scope="module")
def server(mlflow_server):
    """The relay for this module's tests (each leaves it open)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        patch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        patch.setattr(buffer, "PROBE_EVERY", 0.0)  # probe at every write: no waiting here
        srv = Server(mlflow_server)
        srv.start()
        yield srv
        srv.stop()


def _replay(out: Path, capsys) -> tuple[int, str]:
    """``python -m goldnas_ray.tracking.replay OUT`` in this process: exit status, stdout + stderr."""
    capsys.readouterr()
    code = replay.main([str(out)])
    said = capsys.readouterr()
    return code, said.out + said.err


def _search(out: Path, uri: str | None, on_epoch=lambda n: None) -> list[str]:
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.lstrip().startswith("epoch"):
            on_epoch(int(line.split()[1].split("/")[0]))

    tracker = search_tracker(uri, "outage", out, workers=1) if uri else None
    run_local(tiny_config(max_epochs=EPOCHS), out, tracker=tracker, log=log)
    return lines


def _records(out: Path) -> list[dict]:
    return [{k: a[k] for k in ("id", "epoch", "flops")} for a in json.loads((out / "records.json").read_text())["architectures"]]


def _check_run(uri: str, out: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_id = json.loads((out / "records.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for name in ("flops", "train_loss"):
        steps = [m.step for m in client.get_metric_history(run_id, METRICS[name] if name in METRICS else name)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (name, steps)  # every epoch, each once
    assert "records.json" in {a.path for a in client.list_artifacts(run_id)}
    assert not (out / buffer.BUFFER).exists()


@served
def test_an_outage_in_the_middle_of_a_search_is_buffered_and_replayed(server, tmp_path, capsys):
    def on_epoch(n: int) -> None:
        if n == 2:
            server.stop()
        elif n == 5:
            server.start()

    lines = _search(tmp_path / "tracked", server.uri, on_epoch)
    said = capsys.readouterr().out + "\n".join(lines)
    assert said.count("unreachable since epoch 3") == 1, said
    assert said.count("replayed") == 1, said
    _check_run(server.uri, tmp_path / "tracked")
    _search(tmp_path / "untracked", None)
    assert _records(tmp_path / "tracked") == _records(tmp_path / "untracked")


@served
def test_a_search_that_ends_while_the_server_is_down_is_completed_by_the_replay(server, tmp_path, capsys):
    out = tmp_path / "search"
    _search(out, server.uri, lambda n: server.stop() if n == 2 else None)
    said = capsys.readouterr().out
    assert "items wait" in said and "goldnas_ray.tracking.replay" in said, said
    assert (out / "records.json").is_file() and buffer.Buffer(out).pending() > 0
    # the command a user runs (its exit status is what a script of theirs reads)
    down = subprocess.run([sys.executable, "-m", "goldnas_ray.tracking.replay", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 1 and "unreachable" in down.stderr, down.stderr
    server.start()
    code, said = _replay(out, capsys)
    assert code == 0 and "replayed" in said, said
    _check_run(server.uri, out)


@served
def test_a_retrain_whose_server_goes_down_finishes_and_the_replay_completes_its_runs(server, ray_cluster,
                                                                                      tmp_path, capsys):
    """The server goes away once a trial's first epoch is checkpointed, and stays away: every
    trial finishes, the report is written, exit 0; the replay then ends the parent and every
    child FINISHED with each epoch once."""
    from mlflow.tracking import MlflowClient

    _search(tmp_path / "search", None)
    out = tmp_path / "retrain"

    def stop_after_a_first_epoch(running):
        while not running.is_set() and not list((out / "ray" / "retrain").glob("*/checkpoint_000000")):
            running.wait(0.05)
        if not running.is_set():
            server.stop()
    ended = threading.Event()
    watcher = threading.Thread(target=stop_after_a_first_epoch, args=(ended,))
    watcher.start()
    try:
        run = drive("retrain.py", "--search-dir", str(tmp_path / "search"), "--mlflow-uri", server.uri,
                    "--epochs", "2", "--set", "retrain.batch_size=128", "--out", str(out), cluster=ray_cluster,
                    env={k: os.environ[k] for k in buffer.BUDGET if k in os.environ})  # the module's budget
    finally:
        ended.set()
        watcher.join()
    console = run.console
    assert run.returncode == 0, console[-4000:]
    assert "unreachable since" in console and "items wait" in console, console[-4000:]
    assert (out / "frontier.csv").is_file()
    server.start()
    code, said = _replay(out, capsys)
    assert code == 0, said
    manifest = json.loads((out / "retrain.json").read_text())
    client = MlflowClient(tracking_uri=server.uri)
    assert client.get_run(manifest["mlflow_run_id"]).info.status == "FINISHED"
    for child in manifest["mlflow_child_run_ids"].values():
        assert client.get_run(child).info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(child, "test_acc")) == [1, 2]
    assert not (out / buffer.BUFFER).exists()


@served
def test_a_sweeps_parent_ends_while_the_server_is_down_and_the_replay_completes_it(server, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from goldnas_ray.core.config import Config
    from goldnas_ray.files.store import location
    from goldnas_ray.sweep.plan import Sweep, parse_grid, plan_sweep
    from goldnas_ray.tracking.sweep import SweepTracker

    tracker = SweepTracker(server.uri, location(tmp_path))
    grid = parse_grid(["search.lambda0=0.001"])
    sweep = Sweep(grid, [0], plan_sweep(Config(), grid, [0]))
    tracker.start("outage-sweep", location(tmp_path), sweep)
    sweep.write(location(tmp_path))
    child = sweep.searches[0].mlflow_run_id
    server.stop()
    tracker.end_search(child, {"records": 3, "epochs": 12}, None)
    tracker.log_report(sweep, location(tmp_path), None, failed=False)
    said = capsys.readouterr().out
    assert said.count("unreachable since") == 1 and "items wait" in said, said
    server.start()
    code, said = _replay(tmp_path, capsys)
    assert code == 0, said
    client = MlflowClient(tracking_uri=server.uri)
    assert client.get_run(sweep.mlflow_run_id).info.status == "FINISHED"
    assert "sweep.json" in {a.path for a in client.list_artifacts(sweep.mlflow_run_id)}
    ended = client.get_run(child)
    assert ended.info.status == "FINISHED" and ended.data.metrics["records"] == 3


def test_a_replay_that_stops_half_way_goes_on_after_what_it_sent(tmp_path):
    """Buffered lines (metrics with their steps and timestamps, a file, a table, the end) sent to
    a real sqlite store: a replay the store fails half way counts what it sent, and the next one
    sends the rest, each line once."""
    import pandas as pd
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("replay", (tmp_path / "art").as_uri())).info.run_id
    out, note = tmp_path / "out", tmp_path / "note.txt"
    note.write_text("kept")
    lines = buffer.Buffer(out)
    for step in (1, 2, 3):
        lines.add("http://x", "log_batch", (run,), {"metrics": [Metric("loss", 1.0 / step, 1000 + step, step)]})
    lines.add("http://x", "log_artifact", (run, str(note), None), {})
    note.unlink()  # the buffer holds its own copy
    lines.add("http://x", "log_table", (run,), {"data": pd.DataFrame({"id": ["a"], "flops": [3]}),
                                                "artifact_file": "front.json"})
    lines.add("http://x", "set_terminated", (run,), {"status": "FINISHED"})

    class FailsAtThird:  # the store answers two writes, then goes away
        calls = 0
        tracking_uri = client.tracking_uri

        def __getattr__(self, name):
            def call(*args, **kwargs):
                FailsAtThird.calls += name != "get_metric_history"
                if FailsAtThird.calls == 3:
                    try:  # as MLflow raises a refused connection: a 500 whose context says why
                        raise ConnectionRefusedError("Connection refused")
                    except OSError as exc:
                        raise MlflowException(f"API request failed with exception {exc}")
                return getattr(client, name)(*args, **kwargs)
            return call

    with pytest.raises(buffer.Unreachable):
        lines.replay(FailsAtThird())
    assert lines.sent() == 2 and lines.pending() == 4
    assert lines.replay(client) == 4 and not (out / buffer.BUFFER).exists()
    history = client.get_metric_history(run, "loss")
    assert sorted((m.step, m.timestamp) for m in history) == [(1, 1001), (2, 1002), (3, 1003)]
    assert client.get_run(run).info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run)} == {"note.txt", "front.json"}
    assert (tmp_path / "art").is_dir()


def _sqlite_run(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client, client.create_run(client.create_experiment("replay", (tmp_path / "art").as_uri())).info.run_id


def test_a_replay_leaves_out_the_steps_the_store_already_holds(tmp_path):
    """A resumed run buffers epochs the server already holds (it could not ask): the replay
    sends each (run, key, step) once, and the params of a batch all of whose metrics were
    there still go."""
    from mlflow.entities import Metric, Param

    client, run = _sqlite_run(tmp_path)
    client.log_batch(run, metrics=[Metric("loss", 1.0, 1000, 1), Metric("loss", 0.5, 1001, 2)])
    lines = buffer.Buffer(tmp_path / "out")
    lines.add("http://x", "log_batch", (run,), {"metrics": [Metric("loss", 1.0, 2000, 1), Metric("acc", 0.1, 2000, 1)],
                                                "params": [Param("p", "1")]})
    lines.add("http://x", "log_batch", (run,), {"metrics": [Metric("loss", 0.5, 2001, 2)]})
    lines.add("http://x", "log_batch", (run,), {"metrics": [Metric("loss", 0.3, 2002, 3)]})
    lines.add("http://x", "log_metric", (run, "loss", 0.3, 2003, 3), {})
    assert lines.replay(client) == 4
    assert sorted(m.step for m in client.get_metric_history(run, "loss")) == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run, "acc")] == [1]
    assert client.get_run(run).data.params == {"p": "1"}


def test_a_line_the_answering_store_keeps_refusing_is_set_aside_and_the_replay_goes_on(tmp_path):
    """A deterministic failure (a bare MlflowException: HTTP 500) is no outage: tried twice,
    said once, kept with its error beside the buffer; the lines after it are sent."""
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    client, run = _sqlite_run(tmp_path)
    lines, said = buffer.Buffer(tmp_path / "out"), []
    lines.add("http://x", "set_tag", (run, "bad", "x"), {})
    lines.add("http://x", "log_batch", (run,), {"metrics": [Metric("loss", 1.0, 1000, 1)]})

    class RefusesTheTag:
        tracking_uri, tries = client.tracking_uri, 0

        def set_tag(self, *args):
            RefusesTheTag.tries += 1
            raise MlflowException("x")

        def __getattr__(self, name):
            return getattr(client, name)

    assert lines.replay(RefusesTheTag(), said.append) == 2
    assert RefusesTheTag.tries == 2 and len(said) == 1 and "set aside" in said[0]
    kept = [json.loads(line) for line in (tmp_path / "out" / buffer.FAILED).read_text().splitlines()]
    assert [(k["line"]["method"], k["error"]) for k in kept] == [("set_tag", "x")]
    assert [m.step for m in client.get_metric_history(run, "loss")] == [1]
    assert "bad" not in client.get_run(run).data.tags and not (tmp_path / "out" / buffer.BUFFER).exists()


def test_only_connection_failures_and_gateway_answers_are_outages(tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
    from mlflow.tracking import MlflowClient

    from conftest import free_port

    assert not buffer.is_outage(MlflowException("x"))  # a bare one reports 500
    assert not buffer.is_outage(MlflowException("x"), "sqlite:///x.db")
    assert buffer.is_outage(MlflowException("x", error_code=TEMPORARILY_UNAVAILABLE))  # 503
    gone = f"http://127.0.0.1:{free_port()}"
    assert buffer.is_outage(MlflowException("x"), gone)  # a 500 and /health does not answer
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException) as refused:
        MlflowClient(tracking_uri=gone).get_run("0" * 32)
    assert buffer.is_outage(refused.value)
    assert not buffer.is_outage(MlflowException("API request to x failed with exception HTTPConnectionPool: Max "
                                                "retries exceeded (Caused by ResponseError('too many 500 error "
                                                "responses'))"))
    assert buffer.is_outage(MlflowException("... (Caused by ResponseError('too many 503 error responses'))"))


def test_a_pipelines_processes_get_the_short_http_budget_and_keep_the_users(monkeypatch):
    """The short MLflow budget is set by cli.process, the one place that sets process state (a fresh
    pipeline process, and every Ray process of its job through the runtime_env); a value the
    user set is kept, and the library sets none."""
    from goldnas_ray.cli import process

    env = {k: v for k, v in os.environ.items() if k not in buffer.BUDGET}
    env["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "7"
    code = ("import os; from goldnas_ray import tracking; from goldnas_ray.cli import process; from goldnas_ray.tracking import buffer; "
            "import json; print(json.dumps({k: os.environ.get(k) for k in buffer.BUDGET})); "
            "process.configure_process(); print(json.dumps({k: os.environ.get(k) for k in buffer.BUDGET}))")
    before, after = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   check=True).stdout.splitlines()
    assert json.loads(before) == {name: ("7" if name == "MLFLOW_HTTP_REQUEST_TIMEOUT" else None)
                                  for name in buffer.BUDGET}
    assert json.loads(after) == {**buffer.BUDGET, "MLFLOW_HTTP_REQUEST_TIMEOUT": "7"}
    for name in buffer.BUDGET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    for verbose in (False, True):
        assert process.ray_runtime_env(verbose)["env_vars"].items() >= {**buffer.BUDGET,
                                                                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "7"}.items()

"""The pipelines' error convention, console and helpers: a user error is one line and exit 2;
a bug keeps its traceback; progress inside long epochs; atomic writes."""
import io
import subprocess
import sys
from pathlib import Path

import pytest
from drivers import drive

from goldnas_ray.cli.process import run_main
from goldnas_ray.core.config import ConfigError
from goldnas_ray.files.atomic import atomic_write
from goldnas_ray.run.console import EpochProgress

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_process_settings(monkeypatch):
    """run_main called in the test process: its settings (environment, SIGTERM handler) are
    for a pipeline's own process, not pytest's."""
    monkeypatch.setattr("goldnas_ray.cli.process.configure_process", lambda verbose=False: None)


def test_user_errors_are_one_line_and_exit_2(capsys):
    def body():
        raise ConfigError("search.xi_min (0.2) must not exceed search.xi_max (0.05)")

    assert run_main(body) == 2
    err = capsys.readouterr().err
    assert err == "error: search.xi_min (0.2) must not exceed search.xi_max (0.05)\n"


def test_a_bug_keeps_its_traceback():
    # a ValueError or RuntimeError from inside the code is a bug, not a user error
    for exc in (ValueError, RuntimeError, KeyError):
        def body(exc=exc):
            raise exc("internal")

        with pytest.raises(exc):
            run_main(body)


def test_a_pipeline_bug_prints_a_traceback_and_exits_1(tmp_path):
    # a stop below which the supernet already is: a user error found when the supernet is
    # built (exit 2, one line) ...
    bad = drive("search.py", "--local", "--no-mlflow", "--out", str(tmp_path / "a"), "--set", "search.flops_min=1e12")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "search.flops_min" in bad.stderr and "must be below the full supernet" in bad.stderr
    assert not (tmp_path / "a").exists()
    # ... while a crash inside the code keeps Python's traceback and status 1 (the process's
    # own exit status: a process of its own)
    crash = subprocess.run([sys.executable, "-c",
                            "import sys; from goldnas_ray.cli.process import run_main\n"
                            "def body(): {}['missing']\n"
                            "sys.exit(run_main(body))"], capture_output=True, text=True, timeout=60)
    assert crash.returncode == 1 and "Traceback" in crash.stderr and "KeyError" in crash.stderr


def test_progress_lines_every_interval_with_eta(monkeypatch):
    clock = iter([0.0, 0.5, 31.0, 32.0, 62.0, 99.0])
    monkeypatch.setattr("goldnas_ray.run.console.time.perf_counter", lambda: next(clock))
    lines = []
    progress = EpochProgress(epoch=4, steps=100, every=30, log=lines.append, stream=io.StringIO())
    progress(1, 64)      # 0.5 s: too early
    progress(50, 3200)   # 31 s: a line, ETA = 31/50 * 50
    progress(51, 3264)   # 32 s: too early
    progress(99, 6336)   # 62 s: a line
    progress(100, 6400)  # the last step: the epoch line follows, no progress line
    assert len(lines) == 2
    assert lines[0] == "  epoch 5: step 50/100  103 img/s  ETA 31s"
    assert lines[1].startswith("  epoch 5: step 99/100")


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = atomic_write(tmp_path / "a.json", lambda tmp: tmp.write_text("old"))

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, broken)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize("value", ["0", "-5", "nan", "soon"])
def test_a_placement_timeout_not_above_0_is_refused_naming_the_flag(value, capsys):
    import importlib.util

    for name in ("search", "retrain", "sweep", "pipeline"):
        spec = importlib.util.spec_from_file_location(name, ROOT / "pipelines" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with pytest.raises(SystemExit) as ended:
            module.parse_args(["--placement-timeout", value])
        assert ended.value.code == 2
        assert "argument --placement-timeout:" in capsys.readouterr().err


def test_ray_trains_group_start_timeout_follows_the_placement_timeout_above_a_floor(monkeypatch):
    from goldnas_ray.cli.process import TRAIN_GROUP_START_FLOOR_S, ray_runtime_env

    name = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
    monkeypatch.delenv(name, raising=False)
    assert ray_runtime_env(placement_timeout=900)["env_vars"][name] == "900"
    assert ray_runtime_env(placement_timeout=5)["env_vars"][name] == f"{TRAIN_GROUP_START_FLOOR_S:g}"
    assert name not in ray_runtime_env(placement_timeout=None)["env_vars"]
    monkeypatch.setenv(name, "7")  # the user's own value wins
    assert ray_runtime_env(placement_timeout=900)["env_vars"][name] == "7"


@pytest.mark.parametrize("stage, marker", [("search", "checkpoints/latest.pt"), ("sweep", "sweep.json"),
                                           ("pipeline", "search/checkpoints/latest.pt")])
def test_a_stop_before_the_runs_work_began_names_the_resume_command_when_its_folder_holds_a_run(
        tmp_path, capsys, stage, marker):
    """Ctrl-C (or SIGTERM) while a run waits for the cluster to place it: a folder holding a run
    gets the resume line, a new run's folder the bare stop line."""
    from goldnas_ray.cli.outputs import output_folder

    def waiting():
        output_folder(tmp_path / "run", True, stage)
        raise KeyboardInterrupt

    assert run_main(waiting) == 130
    assert capsys.readouterr().err == "stopped\n"
    (tmp_path / "run" / marker).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "run" / marker).write_bytes(b"state")
    assert run_main(waiting) == 130
    err = capsys.readouterr().err
    assert err == f"stopped; resume with: python {sys.argv[0]} --resume --out {tmp_path / 'run'}\n"

    def terminated():
        output_folder(tmp_path / "run", True, stage)
        raise SystemExit(143)

    with pytest.raises(SystemExit) as ended:
        run_main(terminated)
    assert ended.value.code == 143 and "--resume --out" in capsys.readouterr().err

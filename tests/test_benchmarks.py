"""The GPU check, rehearsed in miniature on CPU, so that it is known to work when a GPU is
lent: every part runs and passes its own checks, and the table names each part. The rehearsal
runs in the test process: each part's pipeline or benchmark script as its main, in place of a
process of its own (the sync and peer parts' commands still through gpu_check.run's process)."""
import contextlib
import io
import json
import math
import runpy
import signal
import sys
import time
import traceback
from pathlib import Path
from unittest import mock

import pytest
import torch
from drivers import Driven, drive

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT.parent / "shared" / "peers" / "gold_nas_unofficial"
sys.path.insert(0, str(ROOT / "benchmarks"))


def _script(path: Path, argv: list[str]) -> Driven:
    """``python path argv`` in this process: its exit status and console (an exception: 1 and
    its traceback), torch's threads and sys.path as they were after."""
    console = io.StringIO()
    threads, paths = torch.get_num_threads(), list(sys.path)
    with mock.patch.object(sys, "argv", [str(path), *argv]), contextlib.redirect_stdout(console), \
            contextlib.redirect_stderr(console):
        try:
            runpy.run_path(str(path), run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # noqa: BLE001 - a broken part: its row says so, as a process's exit would
            traceback.print_exc()
            code = 1
        finally:
            torch.set_num_threads(threads)
            sys.path[:] = paths
    return Driven(code, console.getvalue(), "")


class PartTimedOut(BaseException):
    """A part run in this process outlived its --part-timeout: raised in it by SIGALRM, a
    BaseException so that no ``except Exception`` of the part takes it; the test fails."""


def _on_alarm(signum, frame):
    raise PartTimedOut("a part ran past its --part-timeout")


def _in_process(cluster, run):
    """gpu_check.run for the rehearsal: a pipeline's command (drivers.drive, joined to
    ``cluster``) or a benchmark script's run in this process, answered as ``run`` answers, and
    ended by :class:`PartTimedOut` after the part's timeout (SIGALRM); the other commands (the
    sync part's ``python -c``, the peer's step, which imports the public code's modules) through
    ``run`` itself."""
    def in_process(cmd: list[str], timeout: float, log: Path) -> tuple[bool, str]:
        script = cmd[1]
        if not script.startswith(("pipelines/", "benchmarks/")) or script.endswith("peer_step.py"):
            return run(cmd, timeout, log)
        started = time.time()
        before = signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(math.ceil(timeout))
        try:
            if script.startswith("pipelines/"):
                done = drive(Path(script).name, *cmd[2:], cluster=cluster)
            else:
                done = _script(ROOT / script, cmd[2:])
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, before)
        log.write_text(done.console)
        lines = [line for line in done.console.splitlines() if line.strip()]
        if done.returncode != 0:
            return False, f"exit {done.returncode}: {lines[-1] if lines else ''}"[:160]
        return True, f"{time.time() - started:.0f} s"
    return in_process


@pytest.mark.ray
def test_gpu_check_rehearsal_runs_every_part(ray_cluster, tmp_path, monkeypatch, capsys):
    import gpu_check

    parts = "sync,steps,loop,latency,search,retrain" + (",peer" if PEER.is_dir() else "")
    monkeypatch.setattr(gpu_check, "run", _in_process(ray_cluster, gpu_check.run))
    with pytest.raises(SystemExit) as ended:
        gpu_check.main(["--device", "cpu", "--smoke", "--only", parts, "--json", str(tmp_path / "check.json"),
                        "--keep", str(tmp_path / "parts"), "--part-timeout", "240"])
    table = capsys.readouterr().out
    logs = "".join(p.read_text()[-1500:] for p in (tmp_path / "parts").glob("*.log"))
    assert ended.value.code == 0, table + logs
    result = json.loads((tmp_path / "check.json").read_text())["results"]
    assert set(result) == set(parts.split(","))
    assert "worker on cpu with gloo" in result["search"]["detail"]
    assert "two at once" in result["retrain"]["detail"]
    assert result["sync"]["detail"].count("no synchronising call") == 2  # the search's and the retrain's
    assert set(result["latency"]["batches"]) == {"1", "8"}  # a table and its check at both batches
    for b in result["latency"]["batches"].values():  # 6 networks from 5% to 95% of the operators kept
        assert 0 < b["measured_range_ms"][0] < b["measured_range_ms"][1]
    loop = [r["mflops"] for r in result["loop"]["steps"]]  # architectures at 100, 60 and 30% of the FLOPs
    assert len(loop) == 3 and loop[0] > loop[1] > loop[2]
    steps = result["steps"]["rows"]
    # full, 60 % and 30 % of the FLOPs, then the two options switched on the full supernet
    assert [round(r["fraction"], 1) for r in steps] == [1.0, 0.6, 0.3, 1.0, 1.0]
    assert steps[2]["flops"] <= 0.3 * steps[0]["flops"] < steps[1]["flops"] <= 0.6 * steps[0]["flops"]
    projection = result["steps"]["projection"]
    assert projection["epochs"] == 100  # the default --search-epochs
    for name in parts.split(","):  # its row in the table, passed
        assert any(line.split()[:2] == [name, "yes"] for line in table.splitlines()), (name, table)


def test_the_projection_of_a_whole_search_on_worked_numbers():
    """Step times of 0.2, 0.5 and 1.0 s at 30, 60 and 100% of a 1.6 GFLOPs supernet, batch 100
    (500 steps per CIFAR-10 epoch), 3 epochs falling linearly to the 480 MFLOPs stop (30%):
    epoch 0 at 100% (1.0 s), epoch 1 at 65% (0.5 + 0.05 / 0.4 x 0.5 = 0.5625 s), epoch 2 at 30%
    (0.2 s): 500 x 1.7625 = 881.25 s."""
    from gpu_check import project

    rows = [{"flops": 0.48e9, "step_s": 0.2}, {"flops": 0.96e9, "step_s": 0.5}, {"flops": 1.6e9, "step_s": 1.0}]
    assert project(rows, 1.6e9, 100, 3) == pytest.approx(
        {"epochs": 3, "stop_fraction": 0.3, "hours": 881.25 / 3600, "mean_epoch_s": 293.75,
         "epochs_in_one_hour": 12})

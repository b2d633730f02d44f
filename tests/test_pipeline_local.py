"""pipelines/search.py --local with a user's flags, its main(argv) run in this process
(tests/drivers.py): exit status, console and files as the command line gives them."""
import json

from drivers import drive


def run(*args):
    return drive("search.py", *args)


def test_smoke_run_writes_the_contract_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "run"
    proc = run("--local", "--smoke-test", "--out", str(out), "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert "search space: 10^" in proc.stdout and "epoch   1/3" in proc.stdout
    records = json.loads((out / "records.json").read_text())
    assert records["config"]["seed"] == 3 and records["finished"] is True
    assert records["architectures"] and all((out / a["genotype"]).is_file() for a in records["architectures"])
    assert (out / "history.parquet").is_file() and (out / "checkpoints" / "latest.pt").is_file()
    before = (out / "records.json").read_bytes()

    again = run("--local", "--smoke-test", "--out", str(out))
    assert again.returncode == 2 and "already exists and is not empty" in again.stderr
    assert (out / "records.json").read_bytes() == before

    # resuming a finished search changes nothing and says so
    resumed = run("--local", "--resume", "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "already finished after epoch 3; nothing to do" in resumed.stdout
    assert json.loads((out / "records.json").read_text())["architectures"] == records["architectures"]


def test_bad_input_fails_before_training(tmp_path):
    proc = run("--local", "--out", str(tmp_path / "x"), "--set", "search.xi_min=0.9")
    assert proc.returncode == 2 and "search.xi_min" in proc.stderr
    assert not (tmp_path / "x").exists()
    (tmp_path / "notes.txt").write_text("not a run")  # an empty folder: --resume starts one (test_resubmit.py)
    proc = run("--local", "--resume", "--out", str(tmp_path))
    assert proc.returncode == 2 and "not a search output folder" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("space:\n  operators: [conv_9x9]\n")
    proc = run("--local", "--config", str(bad), "--out", str(tmp_path / "y"))
    assert proc.returncode == 2 and "space.operators.0: 'conv_9x9' is not one of 'skip_connect'" in proc.stderr

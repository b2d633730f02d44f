"""pipelines/compare.py: the fronts of several retrains (and a search's records) on one chart."""
from pathlib import Path

import pandas as pd
from drivers import drive

from goldnas_ray.retrain import report


def _retrain(folder: Path, shift: float, latency: list[float] | None = None) -> pd.DataFrame:
    """A retrain's report files as retrain.py writes them, from made-up trials."""
    archs = pd.DataFrame({"arch_id": ["arch-000", "arch-001", "random-000"],
                          "kind": ["searched", "searched", "random"],
                          "flops": [2_000_000, 1_000_000, 1_100_000], "params": [10, 5, 6]})
    if latency:
        archs["latency_ms"] = latency
    trials = pd.DataFrame({"arch_id": ["arch-000", "arch-001", "random-000"], "seed": 0, "epoch": 2,
                           "test_acc": [0.90 + shift, 0.85 + shift, 0.80 + shift]})
    table = report.summarise(trials, archs)
    report.write_report(folder, table)
    return table


def test_two_retrains_and_a_search_on_one_chart(tmp_path):
    a, b = tmp_path / "a" / "retrain", tmp_path / "b" / "retrain"
    _retrain(a, 0.0)
    _retrain(b, 0.05)
    search = tmp_path / "s"
    done = drive("search.py", "--local", "--smoke-test", "--max-epochs", "1", "--no-mlflow", "--out", str(search))
    assert done.returncode == 0, done.stderr[-2000:]
    chart, csv = tmp_path / "cmp.png", tmp_path / "cmp.csv"
    proc = drive("compare.py", str(a), str(b), str(search), "--out", str(chart), "--csv", str(csv))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(csv)
    # both retrains under their own (full, since both folders are called retrain) names
    assert set(table["source"]) == {str(a), str(b), "s"}
    retrains = table[table["stage"] == "retrain"]
    assert len(retrains) == 6 and retrains["accuracy_mean"].notna().all()
    assert retrains.groupby("source")["on_front"].sum().tolist() == [2, 2]  # random-000 is dominated
    assert (table[table["stage"] == "search"]["flops"] > 0).all()
    assert "arch-001" in proc.stdout and "chart:" in proc.stdout


def test_a_folder_that_is_no_run_is_refused(tmp_path):
    proc = drive("compare.py", str(tmp_path), "--out", str(tmp_path / "c.png"))
    assert proc.returncode == 2 and "neither a retrain's frontier.parquet nor a search's records.json" in proc.stderr


def test_fronts_against_measured_latency(tmp_path):
    """--x latency: the retrains' measured latency on the axis. random-000 is dominated in FLOPs
    (arch-001 has fewer and is more accurate) but on the front in latency (faster than both)."""
    a = tmp_path / "a"
    table = _retrain(a, 0.0, latency=[6.0, 5.0, 3.0])
    by_id = table.set_index("arch_id").loc[["arch-000", "arch-001", "random-000"]]
    assert list(by_id["on_front"]) == [True, True, False]
    assert list(by_id["on_front_latency"]) == [True, True, True]  # random-000 is the fastest
    assert (a / "frontier_latency.png").read_bytes()[:4] == b"\x89PNG"
    chart, csv = tmp_path / "lat.png", tmp_path / "lat.csv"
    proc = drive("compare.py", str(a), "--x", "latency", "--out", str(chart), "--csv", str(csv))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert chart.read_bytes()[:4] == b"\x89PNG" and list(pd.read_csv(csv)["latency_ms"]) == [5.0, 3.0, 6.0]
    b = tmp_path / "b"
    _retrain(b, 0.0)  # made without latencies: refused on a latency chart, naming why
    proc = drive("compare.py", str(a), str(b), "--x", "latency", "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "b has no latency_ms: its retrain measured no latency" in proc.stderr
    assert not (tmp_path / "x.png").exists()

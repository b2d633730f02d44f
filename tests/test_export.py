"""Picking a retrained network under a budget and exporting it (goldnas_ray.models.pick, .export,
pipelines/export.py): the pick rule against an independent computation on a synthetic retrain
folder, the refusals (a budget nothing meets, a seed never trained, an --out in use), and on the
session's smoke pipeline, an ONNX export that onnxruntime runs in a process without goldnas_ray."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from drivers import drive
from goldnas_ray.core.counting import count_params, total_flops
from goldnas_ray.core.discrete import build_network
from goldnas_ray.core.genotype import Genotype
from goldnas_ray.core.space import OpKey
from goldnas_ray.files.store import location
from goldnas_ray.models.card import model_card
from goldnas_ray.models.export import ONNX_OPSET, check_exports, export_folder
from goldnas_ray.models.pick import PickError, pick, representatives
from goldnas_ray.models.saved import read_info

# architecture -> (kind, each seed's last-epoch test accuracy); seed 3 of a1 did not finish
ACCURACY = {"a1": ("searched", {0: 0.80, 1: 0.60, 2: 0.70}),
            "a2": ("searched", {0: 0.90, 1: 0.80, 2: 0.85}),
            "r1": ("random", {0: 0.72, 1: 0.74}),  # a tie: 0.73 +- 0.01, the lower seed represents it
            "a3": ("searched", {0: 0.99})}         # trained, but its model folder is missing
UNFINISHED = ("a1", 3, 0.99)


def small_genotype(drop: int) -> Genotype:
    """A 3-cell digits-sized network; ``drop`` sep convs removed from its first cell."""
    full = Genotype.full(3, 2, ["skip_connect", "sep_conv_3x3"], 4, 3, 8, 1, 10)
    keys = [OpKey(0, e.src, e.dst, "sep_conv_3x3") for e in sorted(full.cells[0].edges)][:drop]
    return full.without(keys)


def info_of(arch: str, kind: str, seed: int, acc: float, net, out) -> dict:
    return {"format": "goldnas-ray/model", "version": 1, "arch_id": arch, "seed": seed, "kind": kind,
            "init": "scratch",
            "dataset": {"name": "digits", "train_split": "train", "eval_split": "test", "train_size": 1437,
                        "eval_size": 360, "num_classes": 10, "in_channels": 1, "input_size": 8,
                        "scale": 16, "mean": [0.3], "std": [0.4]},
            "metrics": {"test_acc": acc, "epochs": 2}, "flops": total_flops(net, (1, 8, 8)),
            "params": count_params(net), "search": "runs/search-x", "retrain": str(out)}


@pytest.fixture(scope="module")
def retrain_dir(tmp_path_factory):
    """A retrain's output as a finished one leaves it: frontier.parquet, trials.parquet (an
    earlier epoch better than the last one; one unfinished trial), models/<arch>-s<seed>/."""
    from goldnas_ray.models.saved import save_model

    out = tmp_path_factory.mktemp("retrain")
    archs, trials = [], []
    for i, (arch, (kind, accs)) in enumerate(ACCURACY.items()):
        geno = small_genotype(drop=2 * i)
        net = build_network(geno).eval()
        archs.append({"arch_id": arch, "kind": kind, "flops": total_flops(net, (1, 8, 8)), "params": count_params(net),
                      "latency_ms": 1.0 + i, "latency_device": "test cpu (1 thread)", "on_front": True})
        for seed, acc in accs.items():
            trials += [{"key": f"{arch}-s{seed}", "arch_id": arch, "seed": seed, "epoch": e, "finished": True,
                        "test_acc": acc if e == 1 else 0.999} for e in (0, 1)]
            if arch != "a3":
                torch.manual_seed(seed)
                seeded = build_network(geno).eval()
                save_model(location(out / "models" / f"{arch}-s{seed}"), seeded, geno,
                           info_of(arch, kind, seed, acc, seeded, out))
    arch, seed, acc = UNFINISHED
    trials.append({"key": f"{arch}-s{seed}", "arch_id": arch, "seed": seed, "epoch": 0, "finished": False,
                   "test_acc": acc})
    pd.DataFrame(archs).to_parquet(out / "frontier.parquet")
    pd.DataFrame(trials).to_parquet(out / "trials.parquet")
    return out


def expected(frontier: pd.DataFrame, trials: pd.DataFrame, column: str, limit: float, saved: set[str]):
    """The best mean last-epoch accuracy under ``column <= limit`` among architectures with a model
    folder, and its seed closest to the mean, computed here from the two tables."""
    done = trials[trials["finished"]]
    last = done[done["epoch"] == done.groupby(["arch_id", "seed"])["epoch"].transform("max")]
    means = last.groupby("arch_id")["test_acc"].mean()
    fit = frontier[(frontier[column] <= limit) & frontier["arch_id"].isin(saved)]
    best = max(fit["arch_id"], key=lambda a: (round(means[a], 12), -int(frontier.set_index("arch_id").at[a, "flops"])))
    mine = last[last["arch_id"] == best]
    gaps = {int(s): round(abs(acc - means[best]), 12) for s, acc in zip(mine["seed"], mine["test_acc"])}
    return best, min(gaps, key=lambda s: (gaps[s], s))


def test_representatives_are_each_architectures_seeds_mean_and_closest_seed(retrain_dir):
    table = representatives(retrain_dir).set_index("arch_id")
    assert table.at["a1", "seeds"] == [0, 1, 2]  # the unfinished seed 3 is not counted
    assert table.at["a1", "accuracy_mean"] == pytest.approx(0.70)  # last epochs, not the better first
    assert table.at["a1", "seed"] == 2
    assert table.at["r1", "seed"] == 0  # a tie goes to the lower seed
    interval = table.at["a2", "accuracy"]
    assert interval["n"] == 3 and "student-t" in interval["method"] and interval["low"] < 0.85 < interval["high"]
    assert table.at["a3", "models"] == [] and table.at["a2", "models"] == [0, 1, 2]


@pytest.mark.parametrize("column, budget", [("flops", "max_flops"), ("params", "max_params"),
                                            ("latency_ms", "max_latency_ms")])
def test_pick_takes_the_best_mean_under_every_budget(retrain_dir, column, budget):
    frontier = pd.read_parquet(retrain_dir / "frontier.parquet")
    trials = pd.read_parquet(retrain_dir / "trials.parquet")
    saved = {"a1", "a2", "r1"}
    table = representatives(retrain_dir)
    for limit in sorted(frontier[column]):
        if not frontier[(frontier[column] <= limit) & frontier["arch_id"].isin(saved)].empty:
            row = pick(table, **{budget: limit})
            assert (row["arch_id"], row["seed"]) == expected(frontier, trials, column, limit, saved)
    assert pick(table)["arch_id"] == "a2"  # no budget: the best of all; a3 (0.99) has no model to ship


def test_pick_refuses_a_budget_nothing_meets_naming_the_smallest(retrain_dir):
    frontier = pd.read_parquet(retrain_dir / "frontier.parquet")
    shippable = frontier[frontier["arch_id"] != "a3"]
    smallest = shippable.loc[shippable["flops"].idxmin()]
    with pytest.raises(PickError, match=f"FLOPs <= 10: the smallest there is: {smallest['arch_id']} ") as err:
        pick(representatives(retrain_dir), max_flops=10)
    assert f"{int(smallest['flops']):,} FLOPs" in str(err.value)


def test_pick_takes_a_named_architecture_and_a_trained_seed_only(retrain_dir):
    table = representatives(retrain_dir)
    assert (pick(table, arch="a1", seed=1)["arch_id"], pick(table, arch="a1", seed=1)["seed"]) == ("a1", 1)
    with pytest.raises(PickError, match="not trained with seed 3"):  # its trial never finished
        pick(table, arch="a1", seed=3)
    with pytest.raises(PickError, match="not trained with seed 7"):
        pick(table, max_flops=1e12, seed=7)
    with pytest.raises(PickError, match="no trained architecture a3 with a saved model"):
        pick(table, arch="a3")


def test_export_writes_checked_files_and_a_card(retrain_dir, tmp_path):
    from goldnas_ray import load_model

    lines = []
    differences = export_folder(retrain_dir / "models" / "a1-s2", tmp_path / "m", ["python", "x.py"], log=lines.append)
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert names == {"model.onnx", "model.pt2", "weights.safetensors", "genotype.json", "model.json", "MODEL_CARD.md"}
    assert all(d <= 1e-4 for d in differences.values()) and len(lines) == 2
    card = (tmp_path / "m" / "MODEL_CARD.md").read_text()
    for fact in ("digits", "trained on: train (1437 images)", "evaluated on: test (360 images)",
                 "pixels divided by 16 (to [0, 1]), then per channel `(x - mean) / std` with mean [0.3] and std [0.4]",
                 "70.00%", "Apache License", "`python x.py`"):
        assert fact in card, fact
    import onnx
    opset = next(o.version for o in onnx.load(str(tmp_path / "m" / "model.onnx")).opset_import if o.domain == "")
    assert f"ONNX (opset {opset})" in card  # the card says the file's own opset
    # a1's seeds score 80, 60 and 70%: seed 2 is the one closest to the mean, seed 0 is not
    table = representatives(retrain_dir)
    for seed, closest in ((2, True), (0, False)):
        row = pick(table, arch="a1", seed=seed)
        card = model_card(read_info(retrain_dir / "models" / f"a1-s{seed}"), differences, ["x"], row, opset=ONNX_OPSET)
        assert ("this seed is the one closest to the mean" in card) == closest, seed
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m")(x), load_model(retrain_dir / "models" / "a1-s2")(x))
    other = build_network(small_genotype(0)).eval()  # another network's weights: the check sees it
    assert min(check_exports(tmp_path / "m", other, (1, 8, 8)).values()) > 1e-4


def test_export_refuses_an_out_in_use_before_any_work(retrain_dir, tmp_path):
    out = tmp_path / "used"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    done = drive("export.py", "--retrain-dir", str(retrain_dir), "--out", str(out))
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: --out")
    assert "picked" not in done.stdout and [p.name for p in out.iterdir()] == ["keep.txt"]
    done = drive("export.py", "--retrain-dir", str(retrain_dir), "--max-flops", "10", "--out", str(tmp_path / "n"))
    assert done.returncode == 2 and "the smallest there is" in done.stderr and not (tmp_path / "n").exists()


def test_export_of_a_damaged_model_folder_is_one_error_line(retrain_dir, tmp_path):
    damaged = tmp_path / "r"
    shutil.copytree(retrain_dir, damaged)
    (damaged / "models" / "a1-s2" / "weights.safetensors").write_bytes(b"not safetensors")
    (damaged / "models" / "a2-s0" / "genotype.json").unlink()
    for arch, seed, file in (("a1", "2", "weights.safetensors"), ("a2", "0", "genotype.json")):
        done = drive("export.py", "--retrain-dir", str(damaged), "--arch", arch, "--seed", seed, "--out", str(tmp_path / "o"))
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 2 and last.startswith("error: ") and file in last, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and not (tmp_path / "o").exists()


# the ONNX model run as a user without goldnas-ray would: onnxruntime and numpy alone
RUN_ONNX = """
import sys, numpy as np, onnxruntime as ort
x = np.load(sys.argv[2])
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
np.save(sys.argv[3], session.run(None, {session.get_inputs()[0].name: x})[0])
assert "goldnas_ray" not in sys.modules and "torch" not in sys.modules, sorted(sys.modules)
"""


@pytest.mark.ray
@pytest.mark.mlflow
def test_export_of_the_pipelines_retrain_picks_under_flops_and_runs_without_goldnas_ray(pipeline, tmp_path):
    from goldnas_ray import load_model

    retrain = pipeline[0] / "retrain"
    frontier = pd.read_parquet(retrain / "frontier.parquet")
    trials = pd.read_parquet(retrain / "trials.parquet")
    saved = {p.name.rsplit("-s", 1)[0] for p in (retrain / "models").iterdir()}
    best, _ = expected(frontier, trials, "flops", frontier["flops"].max(), saved)  # with no budget
    smaller = frontier["flops"][frontier["flops"] < frontier.set_index("arch_id").loc[best, "flops"]]
    limit = smaller.max() if len(smaller) else frontier["flops"].max()  # a budget that leaves the best out
    want, seed = expected(frontier, trials, "flops", limit, saved)
    assert want != best or not len(smaller)  # so a pick that ignored the budget would fail below
    out = tmp_path / "model"
    done = drive("export.py", "--retrain-dir", str(retrain), "--max-flops", str(int(limit)), "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    info = json.loads((out / "model.json").read_text())
    assert (info["arch_id"], info["seed"]) == (want, seed), done.stdout
    shape = (8, info["dataset"]["in_channels"], info["dataset"]["input_size"], info["dataset"]["input_size"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ran = subprocess.run([sys.executable, "-I", "-c", RUN_ONNX, str(out / "model.onnx"), str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy")], capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    with torch.no_grad():
        want_logits = load_model(out)(torch.from_numpy(x)).numpy()
    assert np.abs(np.load(tmp_path / "y.npy") - want_logits).max() <= 1e-4
    smallest = frontier.loc[frontier["flops"].idxmin(), "arch_id"]
    refused = drive("export.py", "--retrain-dir", str(retrain), "--max-flops", str(int(frontier["flops"].min()) - 1),
                    "--out", str(tmp_path / "none"))
    assert refused.returncode == 2 and f"the smallest there is: {smallest} " in refused.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.ray
@pytest.mark.mlflow
def test_export_from_the_registry_takes_the_registered_best(pipeline, mlflow_server, tmp_path):
    retrain = pipeline[0] / "retrain"
    frontier = pd.read_parquet(retrain / "frontier.parquet")
    trials = pd.read_parquet(retrain / "trials.parquet")
    want, _ = expected(frontier, trials, "flops", float("inf"), set(frontier["arch_id"]))
    out = tmp_path / "model"
    done = drive("export.py", "--mlflow-model", "models:/ci-pipe@best", "--mlflow-uri", mlflow_server,
                 "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    info = json.loads((out / "model.json").read_text())
    assert info["arch_id"] == want and (out / "model.onnx").is_file()
    assert "## Accuracy" in (out / "MODEL_CARD.md").read_text()
    refused = drive("export.py", "--mlflow-model", "models:/ci-pipe@best", "--mlflow-uri", mlflow_server,
                    "--max-flops", "1", "--out", str(tmp_path / "none"))
    assert refused.returncode == 2 and "--max-flops pick from a --retrain-dir" in refused.stderr

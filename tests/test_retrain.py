"""Retraining core: the recipe and its exact resume, random baselines, the frontier report,
and the checks on a search's files. In one process, no Ray."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config

from goldnas_ray.files.search_files import OutputDirError
from goldnas_ray.retrain.candidates import load_search, random_candidates
from goldnas_ray.core.config import ConfigError, RetrainConfig, SpaceConfig
from goldnas_ray.core.counting import count_params, total_flops
from goldnas_ray.data import Dataset
from goldnas_ray.core.discrete import build_network
from goldnas_ray.retrain.report import non_dominated, staircase, summarise, write_report
from goldnas_ray.core.genotype import Genotype, GenotypeError
from goldnas_ray.retrain.recipe import Retrainer
from goldnas_ray.retrain.sampling import SpaceTable, matched_targets, sample_genotype, sample_matched

TINY_SPACE = SpaceConfig(num_cells=3, num_nodes=4, init_channels=4)


@pytest.fixture(scope="module")
def table():
    return SpaceTable.build(TINY_SPACE, (1, 8, 8), 10)


@pytest.fixture(scope="module")
def small_digits(digits):
    """A quarter of digits: a retrain epoch in a fraction of a second."""
    return Dataset("digits", digits.x_train[:384], digits.y_train[:384], digits.x_test[:120],
                   digits.y_test[:120], 10)


# ---- the recipe ------------------------------------------------------------------------------
def test_recipe_schedules_and_exact_resume(table, small_digits):
    geno = sample_genotype(table, 0.5, np.random.default_rng(1))
    cfg = RetrainConfig(epochs=4, batch_size=64, drop_path=0.3, cutout=2)
    straight = Retrainer(geno, cfg, seed=7)
    rows = [straight.train_epoch(small_digits) for _ in range(4)]
    # cosine learning rate from lr to lr_min, drop-path rising linearly from 0
    assert [r["lr"] for r in rows] == pytest.approx(
        [cfg.lr * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    assert [r["drop_path"] for r in rows] == pytest.approx([0.3 * e / 4 for e in range(4)])
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert straight.finished and straight.flops == table.flops(geno)

    # two epochs, checkpoint through torch.save / weights_only load, then two more: identical
    first = Retrainer(geno, cfg, seed=7)
    for _ in range(2):
        first.train_epoch(small_digits)
    path = small_digits.name + ".pt"
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        torch.save(first.state_dict(), f"{d}/{path}")
        state = torch.load(f"{d}/{path}", weights_only=True)
    resumed = Retrainer.from_state_dict(state)
    for _ in range(2):
        resumed.train_epoch(small_digits)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second", "end_time")} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name

    # a different seed is a different trial
    other = Retrainer(geno, cfg, seed=8)
    other.train_epoch(small_digits)
    assert other.history[0]["train_loss"] != rows[0]["train_loss"]


def test_retrain_config_is_validated():
    with pytest.raises(ConfigError, match="retrain.drop_path"):
        tiny_config().override(["retrain.drop_path=1.0"])
    with pytest.raises(ConfigError, match="retrain.seeds"):
        tiny_config().override(["retrain.seeds=0"])
    with pytest.raises(ConfigError, match="retrain.lr_min"):
        tiny_config().override(["retrain.lr_min=0.5"])


# ---- the non-dominated set ---------------------------------------------------------------------
def test_non_dominated_on_hand_made_points():
    flops = [1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 0.5]
    acc = [0.90, 0.95, 0.93, 0.94, 0.97, 0.97, 0.80]
    # 2.0/0.93 loses to 2.0/0.95 (same FLOPs, lower accuracy); 3.0/0.94 to 2.0/0.95;
    # the two identical 4.0/0.97 points do not dominate each other
    assert non_dominated(flops, acc) == [True, True, False, False, True, True, True]
    assert staircase(flops, acc) == ([0.5, 1.0, 2.0, 4.0, 4.0], [0.80, 0.90, 0.95, 0.97, 0.97])
    assert non_dominated([], []) == []
    assert non_dominated([5.0], [0.1]) == [True]
    with pytest.raises(ValueError):
        non_dominated([1.0, 2.0], [0.5])


def test_summary_uses_the_last_epoch_of_every_seed(tmp_path):
    trials = pd.DataFrame([
        # arch a: two seeds, last-epoch accuracies 0.8 and 0.9 (a better epoch 1 is ignored)
        {"arch_id": "a", "seed": 0, "epoch": 1, "test_acc": 0.95},
        {"arch_id": "a", "seed": 0, "epoch": 2, "test_acc": 0.80},
        {"arch_id": "a", "seed": 1, "epoch": 2, "test_acc": 0.90},
        {"arch_id": "a", "seed": 1, "epoch": 1, "test_acc": 0.10},
        {"arch_id": "b", "seed": 0, "epoch": 2, "test_acc": 0.70},
        {"arch_id": "c", "seed": 0, "epoch": 2, "test_acc": 0.99},
    ])
    archs = pd.DataFrame([
        {"arch_id": "a", "kind": "searched", "flops": 100, "params": 10},
        {"arch_id": "b", "kind": "random", "flops": 120, "params": 12},
        {"arch_id": "c", "kind": "random", "flops": 300, "params": 30},
    ])
    table = summarise(trials, archs)
    assert list(table["arch_id"]) == ["a", "b", "c"]
    a = table.iloc[0]
    assert a["accuracy_mean"] == pytest.approx(0.85) and a["accuracy_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert a["seeds"] == 2 and a["epochs"] == 2
    assert math.isnan(table.iloc[1]["accuracy_std"])  # one seed: no spread to report
    assert list(table["on_front"]) == [True, False, True]
    paths = write_report(tmp_path, table, "test")
    assert [p.name for p in paths] == ["frontier.parquet", "frontier.csv", "frontier.png"]
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    back = pd.read_parquet(tmp_path / "frontier.parquet")
    assert list(back["on_front"]) == [True, False, True]
    assert list(pd.read_csv(tmp_path / "frontier.csv")["arch_id"]) == ["a", "b", "c"]


# ---- random baselines --------------------------------------------------------------------------
def test_flops_table_matches_the_built_network(table):
    rng = np.random.default_rng(0)
    for p in (0.05, 0.3, 0.5, 0.9):
        geno = sample_genotype(table, p, rng)
        assert table.flops(geno) == total_flops(build_network(geno), (1, 8, 8))
        assert all(any(e.dst == d for e in cell.edges) for cell in geno.cells for d in range(2, 6))
        Genotype.from_dict(json.loads(json.dumps(geno.to_dict())))  # a valid genotype file


def test_half_keep_probability_is_uniform_over_operators(table):
    rng = np.random.default_rng(3)
    kept = [len(sample_genotype(table, 0.5, rng).op_keys()) for _ in range(200)]
    total = 3 * 14 * 2
    # redrawing empty nodes lifts the mean a hair above total / 2 (p(empty node) <= 1/16)
    assert np.mean(kept) == pytest.approx(total / 2, rel=0.05)


def test_sampled_architectures_match_their_flops_targets(table):
    full = table.flops(sample_genotype(table, 1.0, np.random.default_rng(0)))
    targets = matched_targets([0.3 * full, 0.6 * full, 0.9 * full], 3)
    assert targets == pytest.approx([0.3 * full, 0.6 * full, 0.9 * full], abs=0.5)  # whole FLOPs
    genos = sample_matched(table, targets, seed=0, tolerance=0.02)
    for geno, target in zip(genos, targets):
        assert abs(geno.metadata["flops"] - target) <= 0.02 * target
        assert geno.metadata["flops"] == total_flops(build_network(geno), (1, 8, 8))
        assert geno.metadata["params"] == count_params(build_network(geno))
    assert len({json.dumps(g.to_dict()["cells"]) for g in genos}) == 3
    again = sample_matched(table, targets, seed=0, tolerance=0.02)
    assert [g.to_dict() for g in again] == [g.to_dict() for g in genos]  # reproducible from the seed
    assert len(matched_targets([1e6, 2e6], 5)) == 5 and matched_targets([1e6], 0) == []


# ---- a search's files --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def search_dir(small_search):
    return small_search.out  # read only: the tests that break its files break copies


def test_load_search_and_random_candidates(search_dir):
    search = load_search(search_dir)
    records = json.loads((search_dir / "records.json").read_text())
    assert [c.arch_id for c in search.searched] == [a["id"] for a in records["architectures"]]
    assert [c.flops for c in search.searched] == [a["flops"] for a in records["architectures"]]
    randoms = random_candidates(search, len(search.searched), seed=0)
    assert [c.kind for c in randoms] == ["random"] * len(search.searched)
    for r, s in zip(randoms, sorted(search.searched, key=lambda c: c.flops)):
        assert abs(r.flops - s.flops) <= 0.02 * s.flops


def _copy_search(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "mlflow.db"))
    return dst


def test_bad_search_files_are_refused_with_their_path(search_dir, tmp_path):
    broken = _copy_search(search_dir, tmp_path / "broken")
    (broken / "genotypes" / "arch-001.json").write_text("{ not json")
    with pytest.raises(GenotypeError, match=r"arch-001\.json is not valid JSON"):
        load_search(broken)

    edited = _copy_search(search_dir, tmp_path / "edited")
    path = edited / "genotypes" / "arch-000.json"
    raw = json.loads(path.read_text())
    edge = next(e for cell in raw["cells"] if not cell["reduction"] for e in cell["edges"]
                if "sep_conv_3x3" in e["ops"] and len(e["ops"]) == 2)
    edge["ops"] = ["skip_connect"]
    path.write_text(json.dumps(raw))
    with pytest.raises(GenotypeError, match=r"arch-000\.json: its network has \d+ FLOPs but records.json records"):
        load_search(edited)

    other = _copy_search(search_dir, tmp_path / "other")
    path = other / "genotypes" / "arch-000.json"
    raw = json.loads(path.read_text())
    raw["init_channels"] = 16
    path.write_text(json.dumps(raw))
    with pytest.raises(GenotypeError, match="init_channels is 16, the search space has 4"):
        load_search(other)

    with pytest.raises(OutputDirError, match="holds no records.json"):
        load_search(tmp_path / "nowhere")


def test_step_and_warmup_schedules():
    from goldnas_ray.retrain.recipe import make_scheduler

    def lrs(**kw):
        cfg = RetrainConfig(**({"epochs": 6, "lr": 0.1} | kw))
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        sched, out = make_scheduler(opt, cfg), []
        for _ in range(cfg.epochs):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs(schedule="step", lr_gamma=0.5) == pytest.approx([0.1 * 0.5 ** e for e in range(6)])
    warm = lrs(warmup_epochs=2, lr_min=0.0)
    cosine = [0.05 * (1 + math.cos(math.pi * e / 6)) for e in range(6)]
    assert warm[:3] == pytest.approx([cosine[0] / 3, cosine[1] * 2 / 3, cosine[2]])
    assert warm[3:] == pytest.approx(cosine[3:])
    assert lrs() == pytest.approx(cosine)  # the default: torch's cosine annealing, unchanged
    with pytest.raises(ConfigError, match="retrain.warmup_epochs"):
        RetrainConfig(epochs=3, warmup_epochs=3)

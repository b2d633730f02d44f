"""Searched against random: hypervolumes and Student-t intervals on hand-made results."""
import math

import numpy as np

import pandas as pd
import pytest

from scipy import stats as scipy_stats

from goldnas_ray.retrain.stats import compare_fronts, describe, hypervolume, summary, t_interval, verdict


def test_hypervolume_of_a_staircase():
    # two points (error, log FLOPs) = (0.2, 1) and (0.4, 0.5) against (1, 2):
    # [0.5, 1) x (0.6 tall) + [1, 2) x (0.8 tall) = 0.3 + 0.8
    assert hypervolume([0.2, 0.4], [1.0, 0.5], (1.0, 2.0)) == pytest.approx(1.1)
    # a dominated point adds nothing; a point beyond the reference counts for nothing
    assert hypervolume([0.2, 0.4, 0.5], [1.0, 0.5, 1.5], (1.0, 2.0)) == pytest.approx(1.1)
    assert hypervolume([1.2], [0.1], (1.0, 2.0)) == 0.0


def _results(acc_searched, acc_random, seeds=3, noise=0.01):
    archs = pd.DataFrame({"arch_id": ["arch-000", "arch-001", "random-000", "random-001"],
                          "kind": ["searched", "searched", "random", "random"],
                          "flops": [2e6, 1e6, 2.1e6, 0.95e6]})
    rows = []
    for arch, acc in zip(archs["arch_id"], acc_searched + acc_random):
        for s in range(seeds):
            rows.append({"arch_id": arch, "seed": s, "test_acc": acc + noise * (s - (seeds - 1) / 2)})
    return pd.DataFrame(rows), archs


def _t(values):
    """The 95% Student-t interval of the mean, from the formula."""
    x = np.asarray(values, float)
    half = scipy_stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean() - half, x.mean() + half


def test_a_better_searched_front_has_the_larger_hypervolume_and_t_intervals_over_seeds_and_pairs():
    last, archs = _results([0.95, 0.90], [0.85, 0.80])
    # arch-000's seeds differ from random-000's by +0.10 each, but not exactly: seed 1 of the
    # searched one gains 0.01, so the paired differences are 0.10, 0.11, 0.10
    last.loc[(last["arch_id"] == "arch-000") & (last["seed"] == 1), "test_acc"] += 0.01
    stats = compare_fronts(last, archs)
    hv = stats["hypervolume"]
    assert hv["searched"]["value"] > hv["random"]["value"]
    # each seed's two fronts, t over the 3 seeds, paired for the difference
    per_seed = {k: [hypervolume(1 - g["test_acc"], [math.log10(archs.set_index("arch_id").loc[a, "flops"])
                                                      for a in g["arch_id"]], (1.0, math.log10(1.1 * 2.1e6)))
                    for _, g in last[last["arch_id"].str.startswith(prefix)].groupby("seed")]
                for k, prefix in (("searched", "arch"), ("random", "random"))}
    for k in ("searched", "random"):
        assert hv[k]["n"] == 3 and (hv[k]["low"], hv[k]["high"]) == pytest.approx(_t(per_seed[k]))
    difference = [s - r for s, r in zip(per_seed["searched"], per_seed["random"])]
    assert hv["difference"]["method"] == "student-t over 3 paired seeds (each seed's two fronts)"
    assert (hv["difference"]["value"], hv["difference"]["low"], hv["difference"]["high"]) == pytest.approx(
        (np.mean(difference), *_t(difference)))
    assert stats["reference"]["log10_flops"] == pytest.approx(math.log10(1.1 * 2.1e6))
    matched = {m["arch_id"]: m for m in stats["matched"]}
    assert matched["arch-000"]["random_id"] == "random-000" and matched["arch-001"]["random_id"] == "random-001"
    d0 = matched["arch-000"]["difference"]
    assert d0["value"] == pytest.approx(0.31 / 3) and d0["n"] == 3 and d0["method"] == "student-t over 3 paired seeds"
    assert (d0["low"], d0["high"]) == pytest.approx(_t([0.10, 0.11, 0.10]))
    assert matched["arch-000"]["verdict"] == "better"
    # arch-001's differences are exactly 0.10 at every seed: a zero-width interval, above 0
    assert (matched["arch-001"]["difference"]["low"], matched["arch-001"]["difference"]["high"]) == pytest.approx((0.1, 0.1))
    # overall: t over the 2 random networks' (one pair each) mean differences
    overall = stats["overall"]
    assert overall["difference"]["value"] == pytest.approx((0.31 / 3 + 0.1) / 2) and overall["difference"]["n"] == 2
    assert (overall["difference"]["low"], overall["difference"]["high"]) == pytest.approx(_t([0.31 / 3, 0.1]))
    assert overall["verdict"] == "better" and (overall["pairs"], overall["better"], overall["worse"]) == (2, 2, 0)
    a0 = stats["architectures"]["arch-000"]
    assert (a0["low"], a0["high"]) == pytest.approx(_t([0.94, 0.96, 0.96])) and a0["n"] == 3
    lines = describe(stats)
    assert any("arch-000 vs random-000" in line and "student-t over 3 paired seeds" in line and line.endswith("better")
               for line in lines)
    assert any(line.startswith("hypervolume difference") and f"  {verdict(hv['difference'])}  (error" in line
               for line in lines)
    metrics, tags = summary(stats)
    assert metrics["matched_low"] == pytest.approx(overall["difference"]["low"]) and metrics["matched_pairs_better"] == 2
    assert metrics["hypervolume_difference_low"] == pytest.approx(hv["difference"]["low"])
    assert tags["goldnas.hypervolume_difference.verdict"] == verdict(hv["difference"])
    assert tags["goldnas.matched.verdict"] == "better"


def test_an_interval_that_contains_zero_is_not_resolved():
    rng = np.random.default_rng(1)
    archs = pd.DataFrame({"arch_id": [f"s{i}" for i in range(5)] + [f"r{i}" for i in range(5)],
                          "kind": ["searched"] * 5 + ["random"] * 5, "flops": [1e6 * (i + 1) for i in range(5)] * 2})
    last = pd.DataFrame([{"arch_id": a, "seed": s, "test_acc": 0.9 + 0.02 * rng.standard_normal()}
                         for a in archs["arch_id"] for s in range(2)])
    stats = compare_fronts(last, archs)
    hv = stats["hypervolume"]["difference"]
    assert hv["n"] == 2 and hv["method"] == "student-t over 2 paired seeds (each seed's two fronts)"
    assert hv["low"] < hv["value"] < hv["high"] and hv["low"] < 0 < hv["high"]
    lines = describe(stats)
    assert any(line.startswith("hypervolume difference") and "not resolved" in line for line in lines)
    o = stats["overall"]
    assert o["difference"]["n"] == 5 and o["difference"]["method"] == "student-t over 5 random networks matched"
    assert o["difference"]["low"] < 0 < o["difference"]["high"] and o["verdict"] == "not resolved"
    assert "not resolved" in lines[-1] and "better" not in lines[-1].split(";")[0]
    assert summary(stats)[1]["goldnas.matched.verdict"] == "not resolved"


def test_pairs_sharing_a_random_network_count_once_and_a_pair_without_a_common_seed_is_left_out():
    """a0 and a1 are both nearest to r0 (differences 0.11 and 0.21 over seeds 0 and 1): one
    random network, so the overall difference is their mean, 0.16, with n = 1 and no interval,
    whatever the two pairs' own intervals say. a2's only seed is 0, its match r1's only seed 1:
    no pair. No seed is finished by every architecture: the hypervolumes are the fronts of the
    means, without an interval."""
    archs = pd.DataFrame({"arch_id": ["a0", "a1", "a2", "r0", "r1"], "kind": ["searched"] * 3 + ["random"] * 2,
                          "flops": [1e6, 1.05e6, 5e6, 1e6, 5e6]})
    acc = {("a0", 0): 0.9, ("a0", 1): 0.92, ("a1", 0): 1.0, ("a1", 1): 1.02, ("r0", 0): 0.8, ("r0", 1): 0.8,
           ("a2", 0): 0.9, ("r1", 1): 0.7}
    last = pd.DataFrame([{"arch_id": a, "seed": s, "test_acc": v} for (a, s), v in acc.items()])
    stats = compare_fronts(last, archs)
    assert [(m["arch_id"], m["random_id"]) for m in stats["matched"]] == [("a0", "r0"), ("a1", "r0")]
    o = stats["overall"]
    assert o["difference"]["value"] == pytest.approx(0.16) and o["difference"]["n"] == 1
    assert o["difference"]["low"] is None and o["verdict"] == "not resolved" and o["pairs"] == 2
    for hv in stats["hypervolume"].values():
        assert hv["n"] == 0 and hv["low"] is None and "no seed that every architecture finished" in hv["method"]
    assert describe(stats)  # printable without intervals


def test_one_seed_gives_no_interval_and_equal_fronts_a_zero_difference():
    last, archs = _results([0.9, 0.8], [0.9, 0.8], seeds=1)
    stats = compare_fronts(last, archs)
    hv = stats["hypervolume"]
    assert hv["searched"]["low"] is None and hv["searched"]["high"] is None
    d = stats["matched"][0]["difference"]
    assert (d["low"], d["high"], d["n"], d["method"]) == (None, None, 1, "none: 1 paired seeds, no interval")
    assert stats["matched"][0]["verdict"] == "not resolved"
    metrics, tags = summary(stats)  # without an interval: "not resolved" in MLflow too, never a win
    assert tags["goldnas.matched.verdict"] == tags["goldnas.hypervolume_difference.verdict"] == "not resolved"
    assert "hypervolume_difference_low" not in metrics and "hypervolume_searched_low" not in metrics
    assert t_interval([0.5]) == {"value": 0.5, "low": None, "high": None, "n": 1, "method": "none: 1 seeds, no interval"}
    # worked by hand: against (error 1, log10 2.31e6), each front is two steps; the cheaper
    # point (error 0.2) holds 0.8 of height from its log FLOPs to the dearer one's, the dearer
    # (error 0.1) 0.9 from there to the reference
    ref = math.log10(2.31e6)
    searched = 0.8 * (math.log10(2e6) - 6.0) + 0.9 * (ref - math.log10(2e6))
    random = 0.8 * (math.log10(2.1e6) - math.log10(0.95e6)) + 0.9 * (ref - math.log10(2.1e6))
    assert (searched, random) == pytest.approx((0.297148, 0.312850), abs=1e-6)
    assert hv["searched"]["value"] == pytest.approx(searched)
    assert hv["difference"]["value"] == pytest.approx(searched - random)


def test_the_hypervolume_in_latency_space_uses_the_measured_latency():
    """The same comparison with latency_ms on the axis. random-000 (accuracy 0.9) runs in 2 ms,
    random-001 (0.8) in 8 ms: in latency random-000 alone is the random front, and each searched
    architecture is matched to the random one nearest in latency, not in FLOPs (where the pairs
    are arch-000/random-000 and arch-001/random-001); worked by hand as above."""
    last, archs = _results([0.9, 0.8], [0.9, 0.8], seeds=1)
    archs["latency_ms"] = [8.0, 2.0, 2.0, 8.0]
    stats = compare_fronts(last, archs, column="latency_ms")
    ref = math.log10(1.1 * 8.0)
    searched = 0.8 * (math.log10(8.0) - math.log10(2.0)) + 0.9 * (ref - math.log10(8.0))
    random = 0.9 * (ref - math.log10(2.0))
    assert stats["axis"] == "latency_ms" and stats["reference"]["log10_latency_ms"] == pytest.approx(ref)
    assert stats["hypervolume"]["searched"]["value"] == pytest.approx(searched)
    assert stats["hypervolume"]["random"]["value"] == pytest.approx(random)
    assert random > searched  # the best accuracy at the lowest latency
    matched = {m["arch_id"]: m["random_id"] for m in stats["matched"]}
    assert matched == {"arch-000": "random-001", "arch-001": "random-000"}
    assert any("arch-000 vs random-001 (8.000 vs 8.000 ms)" in line for line in describe(stats))
    assert any("error x log10 latency" in line for line in describe(stats))


def test_the_mlflow_parent_run_holds_each_interval_and_says_not_resolved(tmp_path):
    """The summary as metrics and tags of a retrain's parent run in a real (sqlite) store: each
    interval's value, low and high, its method and n, and each difference's verdict."""
    from goldnas_ray.tracking.retrain import RetrainTracker

    last, archs = _results([0.95, 0.90], [0.85, 0.80])
    metrics, tags = summary(compare_fronts(last, archs))
    tracker = RetrainTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    parent, _ = tracker.start("exp", "retrain", {"seeds": 3}, {}, {})
    tracker.log_report(parent, tmp_path, metrics, None, tags)
    run = tracker.client.get_run(parent)
    assert run.data.tags["goldnas.hypervolume_difference.verdict"] == "better"  # every seed's fronts: the same gap
    assert run.data.metrics["hypervolume_difference_low"] == pytest.approx(metrics["hypervolume_difference_low"])
    assert metrics["hypervolume_difference_low"] > 0
    assert run.data.tags["goldnas.matched.verdict"] == "better"
    assert run.data.tags["goldnas.matched.interval"] == "n=2, student-t over 2 random networks matched"
    assert run.data.metrics["matched_low"] == pytest.approx(_t([0.1, 0.1])[0])

"""Searched against random: hypervolume and bootstrap intervals on hand-made results."""
import math

import pandas as pd
import pytest

from goldnas_ray.retrain.stats import compare_fronts, describe, hypervolume


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


def test_a_better_searched_front_has_the_larger_hypervolume_and_a_positive_interval():
    last, archs = _results([0.95, 0.90], [0.85, 0.80])
    stats = compare_fronts(last, archs, resamples=500)
    hv = stats["hypervolume"]
    assert hv["searched"]["value"] > hv["random"]["value"]
    assert hv["difference"]["low"] > 0 and hv["difference"]["low"] <= hv["difference"]["value"] <= hv["difference"]["high"]
    assert stats["reference"]["log10_flops"] == pytest.approx(math.log10(1.1 * 2.1e6))
    matched = {m["arch_id"]: m for m in stats["matched"]}
    assert matched["arch-000"]["random_id"] == "random-000" and matched["arch-001"]["random_id"] == "random-001"
    assert matched["arch-000"]["difference"] == pytest.approx(0.10)
    assert 0 < matched["arch-000"]["low"] <= 0.10 <= matched["arch-000"]["high"]
    assert any("arch-000 vs random-000" in line for line in describe(stats))


def test_one_seed_gives_a_point_interval_and_equal_fronts_a_zero_difference():
    last, archs = _results([0.9, 0.8], [0.9, 0.8], seeds=1)
    hv = compare_fronts(last, archs, resamples=100)["hypervolume"]
    assert hv["searched"]["low"] == hv["searched"]["value"] == hv["searched"]["high"]
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
    stats = compare_fronts(last, archs, resamples=100, column="latency_ms")
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

"""Pruning rule and lambda schedule on hand-made weights."""
from goldnas_ray.core.schedule import LambdaSchedule, ParetoRecorder, select_prunes
from goldnas_ray.core.space import OpKey


def k(cell, src, dst, op="sep_conv_3x3"):
    return OpKey(cell, src, dst, op)


def test_prunes_below_xi_min_then_the_weakest_below_xi_max_each_round():
    """Gates of one node (cell 0, node 3): weights are gates over the node's alive sum,
    computed afresh every round."""
    skip = "skip_connect"
    gates = {k(0, 0, 3): 0.005, k(0, 0, 3, skip): 0.9, k(0, 1, 3): 0.009, k(0, 1, 3, skip): 0.05,
             k(0, 2, 3): 0.03, k(0, 2, 3, skip): 0.04}
    # round 1: 0.005/1.034 and 0.009/1.029 <= 0.01 go; then the weakest, 0.03/1.02 <= 0.05
    assert select_prunes(gates, 0.01, 0.05, 1) == [k(0, 0, 3), k(0, 1, 3), k(0, 2, 3)]
    # round 2: 0.04 / 0.99 = 0.0404 <= 0.05 goes too
    two = [k(0, 0, 3), k(0, 1, 3), k(0, 2, 3), k(0, 2, 3, skip)]
    assert select_prunes(gates, 0.01, 0.05, 2) == two
    # round 3: 0.05 / 0.95 = 0.0526 > 0.05: the renormalised weight now stays
    assert select_prunes(gates, 0.01, 0.05, 3) == two


def test_never_prunes_the_last_input_of_a_node():
    # 0.5 <= xi_min goes, and the other operator, alone in its node now, weighs 1
    gates = {k(0, 0, 2): 0.5, k(0, 1, 2): 0.5, k(1, 0, 2): 0.003}
    assert select_prunes(gates, xi_min=0.6, xi_max=0.9, n0=4) == [k(0, 0, 2)]


def test_nothing_pruned_when_all_weights_are_high():
    w = {k(0, 0, 2): 0.4, k(0, 1, 2): 0.6}  # weights 0.4 and 0.6
    assert select_prunes(w, 0.01, 0.05, 4) == []


def test_lambda_schedule_grows_until_n0_pruned_then_backs_off():
    s = LambdaSchedule(lambda0=1.0, c0=2.0, n0=4)
    s.update(0)  # delta 2, lambda 2
    assert (s.delta, s.lam) == (2.0, 2.0)
    s.update(3)  # fewer than n0: keep growing
    assert (s.delta, s.lam) == (4.0, 6.0)
    s.update(4)  # n0 reached: halve lambda, reset delta
    assert (s.delta, s.lam) == (1.0, 3.0)
    s.update(0)
    assert (s.delta, s.lam) == (2.0, 5.0)
    restored = LambdaSchedule(1.0, 2.0, 4)
    restored.load_state_dict(s.state_dict())
    assert (restored.lam, restored.delta) == (s.lam, s.delta)


def test_recorder_records_only_after_more_than_t0_epochs_without_pruning():
    r = ParetoRecorder(t0=3)
    assert [r.end_epoch(will_change=False) for _ in range(3)] == [False] * 3
    assert r.end_epoch(will_change=True) is False  # 3 quiet epochs: not more than t0
    r.changed()
    assert [r.end_epoch(will_change=False) for _ in range(4)] == [False] * 4
    assert r.end_epoch(will_change=True) is True   # 4 quiet epochs > 3
    r.changed()
    assert r.end_epoch(will_change=False) is False
    assert r.end_epoch(will_change=True) is False


def _record(flops):
    from goldnas_ray.core.records import ArchRecord
    return ArchRecord("arch", 0, flops, 0, 0.0, 0, None)


def test_dense_rule_counts_only_pruning_that_changes_flops():
    paper, dense = ParetoRecorder(t0=2, rule="paper"), ParetoRecorder(t0=2, rule="dense", gap=0.5)
    for r in (paper, dense):
        r.end_epoch(False, 100, 100, 100)
        r.end_epoch(False, 100, 100, 100)
        r.end_epoch(True, 100, 100, 100)  # a free skip connection goes: FLOPs stay 100
        r.changed(flops_changed=False)
    assert paper.end_epoch(True, 100, 90, 100) is False  # the paper's counter was reset
    assert dense.end_epoch(True, 100, 90, 100) is True   # 3 epochs at 100 FLOPs > t0


def test_dense_rule_records_before_a_gap_opens_and_never_too_close():
    r = ParetoRecorder(t0=10, rule="dense", gap=0.2, min_gap=0.05)
    assert r.end_epoch(True, 100, 85, 100) is False   # 15% below the supernet: no gap yet
    r.changed()
    assert r.end_epoch(True, 85, 79, 100) is True     # next would be 21% below: record 85 first
    r.records.append(_record(85))
    r.changed()
    assert r.end_epoch(True, 79, 60, 100) is True     # 85 -> 60 would be 25%: record 79
    r.records.append(_record(79))
    r.changed()
    assert r.end_epoch(True, 77, 50, 100) is False    # 77 is within 5% of 79: never recorded


def test_record_rule_is_checked():
    import pytest
    from conftest import tiny_config
    from goldnas_ray.core.config import ConfigError
    with pytest.raises(ConfigError, match="record_rule"):
        tiny_config(record_rule="often")
    with pytest.raises(ConfigError, match="record_gap"):
        tiny_config(record_gap=0.02, record_min_gap=0.05)

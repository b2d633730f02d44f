"""Pruning rule and lambda schedule on hand-made weights."""
from goldnas_ray.core.schedule import LambdaSchedule, ParetoRecorder, select_prunes
from goldnas_ray.core.space import OpKey


def k(cell, src, dst, op="sep_conv_3x3"):
    return OpKey(cell, src, dst, op)


def test_prunes_everything_below_xi_min_then_at_most_n0_below_xi_max():
    w = {
        k(0, 0, 2): 0.005, k(0, 1, 2): 0.008,                # <= xi_min: both go
        k(0, 0, 3): 0.02, k(0, 1, 3): 0.03, k(0, 2, 3): 0.04,  # <= xi_max: weakest first
        k(0, 0, 4): 0.045, k(0, 1, 4): 0.6,                   # 0.045 is the 4th candidate
        k(0, 2, 2, "skip_connect"): 0.9, k(0, 2, 4): 0.3, k(0, 3, 3): 0.5, k(0, 3, 4): 0.2,
        k(0, 1, 2, "skip_connect"): 0.06,                     # above xi_max: stays
    }
    pruned = select_prunes(w, xi_min=0.01, xi_max=0.05, n0=2)
    assert pruned == [k(0, 0, 2), k(0, 1, 2), k(0, 0, 3), k(0, 1, 3)]
    pruned = select_prunes(w, xi_min=0.01, xi_max=0.05, n0=4)
    assert set(pruned) == {k(0, 0, 2), k(0, 1, 2), k(0, 0, 3), k(0, 1, 3), k(0, 2, 3), k(0, 0, 4)}


def test_never_prunes_the_last_input_of_a_node():
    w = {k(0, 0, 2): 0.001, k(0, 1, 2): 0.002, k(1, 0, 2): 0.003}
    pruned = select_prunes(w, xi_min=0.01, xi_max=0.05, n0=4)
    # node (0, 2) keeps its stronger input; node (1, 2) has only one input
    assert pruned == [k(0, 0, 2)]


def test_nothing_pruned_when_all_weights_are_high():
    w = {k(0, 0, 2): 0.4, k(0, 1, 2): 0.6}
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


def test_recorder_records_only_after_more_than_t0_stable_epochs():
    r = ParetoRecorder(t0=3)
    assert [r.end_epoch(will_change=False) for _ in range(3)] == [False] * 3
    assert r.end_epoch(will_change=True) is True  # 4 stable epochs > 3
    r.changed()
    assert r.end_epoch(will_change=False) is False
    assert r.end_epoch(will_change=True) is False  # only 2 stable epochs

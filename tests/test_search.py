"""The search loop: exact resume, and a smoke search whose records build and train."""
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from goldnas_ray import build_network, load_genotype
from goldnas_ray.files.search_files import load_checkpoint, save_checkpoint
from goldnas_ray.core.counting import count_params, total_flops
from goldnas_ray.data import Dataset, eval_batches, iterate_batches
from goldnas_ray.retrain.recipe import count_correct
from goldnas_ray.run.loop import run_local
from goldnas_ray.core.search import GoldSearch

FAST = dict(lambda0=0.05, t0=1, max_epochs=12, flops_min_ratio=0.05)
QUARTER = ["data.subset=0.25"]  # a quarter of digits: where what is checked needs no more data


def _quarter(digits):
    return Dataset("digits", digits.x_train[:384], digits.y_train[:384], digits.x_test, digits.y_test, 10)


def _epochs(search, data, n):
    for _ in range(n):
        batches = iterate_batches(data.x_train, data.y_train, search.cfg.data.batch_size,
                                  search.cfg.seed, search.epoch)
        search.end_epoch(search.train_epoch(batches))


def test_resumed_search_continues_exactly(tmp_path, digits):
    # xi_max 0.5: n0 operators go every epoch whatever the float trajectory, before the
    # checkpoint and after it; a quarter of digits is enough for that
    fast = dict(FAST, lambda0=0.3, xi_max=0.5)
    digits = _quarter(digits)
    straight = GoldSearch(tiny_config(**fast), digits.input_shape, 10)
    _epochs(straight, digits, 7)

    first = GoldSearch(tiny_config(**fast), digits.input_shape, 10)
    _epochs(first, digits, 4)
    save_checkpoint(tmp_path, first.state_dict())
    del first
    torch.manual_seed(1234)  # whatever happened in between must not matter
    resumed = GoldSearch.from_state_dict(load_checkpoint(tmp_path / "checkpoints" / "latest.pt"))
    _epochs(resumed, digits, 3)

    pruned = [row["pruned"] for row in straight.history]
    assert sum(pruned[:4]) > 0 and sum(pruned[4:]) > 0, f"test needs pruning on both sides: {pruned}"
    assert resumed.model.alive_ops() == straight.model.alive_ops()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert [r.id for r in resumed.records] == [r.id for r in straight.records]
    assert resumed.schedule.state_dict() == pytest.approx(straight.schedule.state_dict())
    cols = ["epoch", "lambda", "flops", "alive_ops", "pruned", "loss"]
    flat = lambda h: [float(row[c]) for row in h for c in cols]  # noqa: E731
    assert flat(resumed.history) == pytest.approx(flat(straight.history), rel=1e-5)


def test_pruning_keeps_momentum_of_survivors(digits):
    search = GoldSearch(tiny_config(**FAST), digits.input_shape, 10)
    _epochs(search, _quarter(digits), 1)
    survivor = search.model.arch_parameters()[-1]
    before = search.a_opt.state[survivor]["momentum_buffer"].clone()
    n_w = sum(p.numel() for p in search.model.weight_parameters())
    victims = [k for k in search.model.alive_ops() if k.op == "sep_conv_3x3"][:2]
    search.model.prune(victims)
    search._rebuild_optimizers()
    assert torch.equal(search.a_opt.state[survivor]["momentum_buffer"], before)
    n_opt = sum(p.numel() for g in search.w_opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in search.model.weight_parameters()) < n_w


def test_smoke_search_records_falling_flops_that_build_and_train(small_search, digits):
    search, out, lines = small_search.search, small_search.out, small_search.lines
    import json

    records = json.loads((out / "records.json").read_text())
    archs = records["architectures"]
    # how many get recorded depends on the float trajectory, which differs between CPUs: assert
    # what holds on every machine. The final architecture is always recorded, and FLOPs fall.
    assert archs, lines
    flops = [a["flops"] for a in archs]
    assert all(a > b for a, b in zip(flops, flops[1:])), flops
    assert archs[-1]["epoch"] == search.epoch and flops[-1] == search.model.flops()
    assert records["space_log10_size"] == pytest.approx(search.model.log10_size, abs=0.01)
    history = pd.read_parquet(out / "history.parquet")
    assert list(history["epoch"]) == list(range(1, search.epoch + 1))
    for col in ("lambda", "delta", "flops", "params", "alive_ops", "pruned", "loss", "accuracy",
                "seconds", "images_per_second"):
        assert col in history.columns
    assert history["flops"].is_monotonic_decreasing
    assert any("recorded" in line for line in lines) and "search space: 10^" in lines[0] + lines[1]
    for arch in archs:
        geno = load_genotype(out / arch["genotype"])
        net = build_network(geno)
        assert total_flops(net, digits.input_shape) == arch["flops"]
        assert count_params(net) == arch["params"]
    # the smallest recorded architecture trains from scratch well above chance (10%)
    torch.manual_seed(0)
    net = build_network(load_genotype(out / archs[-1]["genotype"]))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(3):
        net.train()
        for x, y in iterate_batches(digits.x_train, digits.y_train, 64, 0, epoch):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    correct, total = count_correct(net, eval_batches(digits.x_test, digits.y_test, 512))
    assert total == 360 and correct / total > 0.5


def _stats():
    from goldnas_ray.core.comm import EpochStats

    return EpochStats(loss=1.0, accuracy=0.5, images=10, seconds=1.0)


def test_stop_at_max_epochs_records_the_final_architecture(digits):
    search = GoldSearch(tiny_config(max_epochs=2), digits.input_shape, 10)
    search.end_epoch(_stats(), prunes=[])
    assert not search.finished and not search.records
    row = search.end_epoch(_stats(), prunes=[])
    assert search.finished and row["recorded"] == "arch-000"
    assert search.records[0].flops == search.model.flops() == search.model.full_flops


def test_stop_when_flops_fall_to_flops_min(digits):
    search = GoldSearch(tiny_config(max_epochs=50), digits.input_shape, 10)
    victims = [k for k in search.model.alive_ops() if k.op == "sep_conv_3x3" and k.cell == 0][:3]
    after = search.model.full_flops - sum(search.model.costs.flops_by_part[k] for k in victims)
    search.flops_min = after  # the stop rule compares with <=
    search.end_epoch(_stats(), prunes=victims)
    assert search.finished and search.epoch == 1
    assert [r.flops for r in search.records] == [after]


def test_an_architecture_with_the_last_records_flops_is_not_recorded_again(digits):
    search = GoldSearch(tiny_config(), digits.input_shape, 10)
    assert search._record(0.0) == "arch-000"
    assert search._record(0.0) is None  # unchanged
    skips = [k for k in search.model.alive_ops()
             if k.op == "skip_connect" and k.src >= 2]  # stride-1 skips cost no FLOPs
    search.model.prune(skips[:1])
    assert search.model.flops() == search.records[-1].flops
    assert search._record(0.0) is None  # changed, but not cheaper: no new record
    search.model.prune([k for k in search.model.alive_ops() if k.op == "sep_conv_3x3"][:1])
    assert search._record(0.0) == "arch-001" and len(search.records) == 2


# ---- how a search starts and ends, decided once ---------------------------------------------
class _Tracker:
    """A tracker that records what happens to its run; ``finish`` may be made to fail."""

    def __init__(self, broken: bool = False):
        self.run_id, self.uri, self.rows, self.ended, self.broken = "r", "memory://", [], [], broken

    def log_epoch(self, row):
        self.rows.append(row["epoch"])

    def log_outputs(self, out):
        pass

    def finish(self, status="FINISHED"):
        self.ended.append(status)
        if self.broken:
            raise ConnectionError("tracking server gone")

    def page(self):
        return "memory://runs"


def test_a_tracker_that_fails_to_end_its_run_never_hides_the_error_that_ended_it(tmp_path, monkeypatch):
    from goldnas_ray.run import loop

    tracker, lines = _Tracker(broken=True), []

    def failing_epoch(self, *args, **kwargs):
        raise RuntimeError("the search's own error")

    monkeypatch.setattr(GoldSearch, "run_epoch", failing_epoch)
    with pytest.raises(RuntimeError, match="the search's own error"):
        loop.run_local(tiny_config(max_epochs=2), tmp_path / "s", log=lines.append,
                       tracker=lambda *a: tracker)
    assert tracker.ended == ["FAILED"]
    assert any("could not mark the tracked run FAILED: ConnectionError: tracking server gone" in x for x in lines)


def test_resuming_a_finished_search_runs_nothing_and_reopens_no_run(tmp_path):
    from goldnas_ray.run.loop import run_local

    out, first = tmp_path / "s", _Tracker()
    done = run_local(tiny_config(max_epochs=2).override(QUARTER), out, log=lambda _: None, tracker=lambda *a: first)
    assert first.rows == [1, 2] and first.ended == ["FINISHED"]
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    opened, lines = [], []
    again = run_local(None, out, resume=True, log=lines.append, tracker=lambda *a: opened.append(a))
    assert opened == [] and lines == [f"search in {out} already finished after epoch 2; nothing to do"]
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    assert again.epoch == done.epoch == 2 and again.finished


def test_plots_are_an_output_of_the_search_whether_tracked_or_not(tmp_path):
    from goldnas_ray.run.loop import run_local

    run_local(tiny_config(max_epochs=2).override(QUARTER), tmp_path / "s", log=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "s" / "plots").iterdir()) == ["flops.png", "lambda.png"]


def test_params_mean_the_discrete_network_and_lambda_the_epochs_everywhere(tmp_path, digits):
    """A record's params and the history's are the trained network's (no auxiliary head, the
    supernet's weights are ``supernet_params``); every record carries the lambda its epoch
    trained under, the final one too."""
    cfg = tiny_config(max_epochs=3, lambda0=1.0, xi_max=0.5, t0=0, record_gap=0.02, record_min_gap=0.0)
    cfg = cfg.override(["space.auxiliary=true"])
    search = GoldSearch(cfg, digits.input_shape, 10)
    for _ in range(3):
        search.end_epoch(search.train_epoch(iterate_batches(digits.x_train[:256], digits.y_train[:256], 128,
                                                            0, search.epoch)))
    rows = {row["epoch"]: row for row in search.history}
    for rec in search.records:
        assert rec.params == count_params(build_network(rec.genotype, auxiliary=True))
        assert rec.lam == rows[rec.epoch]["lambda"]
    assert search.records[-1].epoch == 3  # the final record, after the last update of lambda
    last = rows[3]
    assert last["params"] == count_params(build_network(search.model.genotype()))
    assert last["supernet_params"] == sum(p.numel() for p in search.model.weight_parameters()) != last["params"]


def test_a_genotype_file_is_written_once(tmp_path, digits):
    """A record never changes: its file, once written, is not rewritten by later epochs."""
    from goldnas_ray.files.search_files import write_outputs

    search = GoldSearch(tiny_config(max_epochs=5), digits.input_shape, 10)
    search._record(0.0)
    write_outputs(tmp_path, search, {})
    path = tmp_path / search.records[0].genotype_path
    path.write_text(path.read_text() + "\n")  # marked: a rewrite would drop the mark
    write_outputs(tmp_path, search, {})
    assert path.read_text().endswith("}\n")


def test_weights_sizes_are_noted_as_written_and_only_the_writing_rank_builds_weights(tmp_path, digits, monkeypatch):
    """records.json's weights_bytes come from the writes (a store is not asked each epoch for
    every file's size); a rank that does not write outputs builds no inherited weights."""
    import json

    from goldnas_ray.files.search_files import write_outputs
    from goldnas_ray.files.store import Location

    search = GoldSearch(tiny_config(max_epochs=5), digits.input_shape, 10)
    search._record(0.0)
    write_outputs(tmp_path, search, {})
    monkeypatch.setattr(Location, "size", lambda self: pytest.fail(f"asked the size of {self}"))
    write_outputs(tmp_path, search, {})
    arch = json.loads((tmp_path / "records.json").read_text())["architectures"][0]
    assert arch["weights_bytes"] == (tmp_path / arch["weights"]).stat().st_size > 0
    other = GoldSearch(tiny_config(max_epochs=5), digits.input_shape, 10)
    other.keeps_weights = False
    assert other._record(0.0) == "arch-000" and not other.inherited


def test_a_diverging_search_stops_before_it_records_prunes_or_writes_anything(tmp_path, digits):
    """A learning rate that overflows the weights makes the loss NaN in the first epoch: the
    search stops with an error naming the learning rates, its output folder holds no records
    and no checkpoint (nothing garbage to retrain or resume from)."""
    from goldnas_ray.core.search import SearchDiverged

    search = GoldSearch(tiny_config(w_lr=1e30), digits.input_shape, digits.num_classes)
    alive = len(search.model.alive_ops())
    batches = iterate_batches(digits.x_train[:256], digits.y_train[:256], 128, 0, 0)
    with pytest.raises(SearchDiverged, match=r"epoch 1: the training loss is nan.*search.w_lr \(1e\+30\)"):
        search.run_epoch(batches)
    assert search.records == [] and len(search.model.alive_ops()) == alive and search.epoch == 0

    out = tmp_path / "s"
    with pytest.raises(SearchDiverged):
        run_local(tiny_config(w_lr=1e30, max_epochs=2), out)
    assert not (out / "records.json").exists() and not (out / "checkpoints").exists()

"""Latency tables and search.cost=latency: a table keyed to its space, input and batch, the
cost's gradient, the profile pipeline's file, and a search that carries predicted latency."""
import json
import re

import pytest
import torch
from conftest import tiny_config
from drivers import drive

from goldnas_ray.core.config import Config, ConfigError
from goldnas_ray.core.genotype import Genotype
from goldnas_ray.core.latency import LatencyTable, LatencyTableError, measure, part_name, table_key
from goldnas_ray.core.search import GoldSearch
from goldnas_ray.core.supernet import SuperNet
from goldnas_ray.run.loop import read_latency


def load_table(path):
    """The table a cost=latency search on ``path`` reads (through the storage layer)."""
    return read_latency(tiny_config(cost="latency", latency_table=str(path)))

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    """A table of the tiny space on digits' input, timed quickly (3 repeats)."""
    cfg = tiny_config()
    torch.set_num_threads(1)  # as every test runs (conftest): a module fixture sets up before
    table = measure(cfg.space, SHAPE, 10, batch=1, warmup=1, repeats=3)
    path = tmp_path_factory.mktemp("latency") / "tiny.json"
    path.write_text(json.dumps(table.to_dict()))
    return cfg, table, path


def test_every_part_is_timed_and_the_sum_covers_the_network(tiny_table):
    cfg, table, path = tiny_table
    s = cfg.space
    full = Genotype.full(s.num_cells, s.num_nodes, s.operators, s.init_channels, s.stem_multiplier, 8, 1, 10, s.stem)
    ops = [part_name(k) for cell in range(s.num_cells) for k in full.op_keys_of(cell)]
    assert len(ops) == s.num_cells * 14 * len(s.operators)  # 14 edges of 4 nodes, every operator
    assert set(ops) | {"stem", "head"} <= set(table.parts_ms)
    assert all(table.parts_ms[name] > 0 for name in ops if "skip_connect" not in name)
    # a separable convolution costs more than the identity on the same edge
    assert table.parts_ms["op/0/0/2/sep_conv_3x3"] > table.parts_ms["op/0/0/2/skip_connect"]
    # an architecture with fewer operators is predicted faster; written and read back, the same
    smaller = Genotype.from_dict(json.loads(full.to_json()))
    for cell in smaller.cells:
        for edge in list(cell.edges):
            cell.edges[edge] = tuple(op for op in cell.edges[edge] if op == "skip_connect") or cell.edges[edge]
    assert table.parts_sum_ms(smaller) < table.parts_sum_ms(full)
    again = load_table(path)
    assert again.latency_ms(full) == pytest.approx(table.latency_ms(full))
    assert again.device == table.device and table.device["threads"] >= 1 and table.device["dtype"] == "float32"


@pytest.mark.parametrize("change, message", [
    ({"space": {"init_channels": 8}}, r"made for space.init_channels=4, not 8"),
    ({"space": {"operators": ["skip_connect", "sep_conv_3x3", "max_pool_3x3"]}}, r"made for space.operators="),
    ({"input_shape": (3, 8, 8)}, r"made for input_shape \[1, 8, 8\], not \[3, 8, 8\]"),
    ({"batch": 64}, r"made for batch 1, not 64"),
    ({"num_classes": 4}, r"made for num_classes 10, not 4"),
])
def test_a_table_made_for_another_space_input_or_batch_is_refused(tiny_table, change, message):
    cfg, table, path = tiny_table
    space = cfg.space.model_copy(update=change.get("space", {}))
    key = table_key(space, change.get("input_shape", SHAPE), change.get("num_classes", 10), change.get("batch", 1))
    with pytest.raises(LatencyTableError, match=message):
        table.check(key)
    # a search with that config refuses the table when it is built, before any step
    search_cfg = Config.from_dict(cfg.to_dict() | {"space": space.model_dump()} | {"search": {
        "cost": "latency", "latency_table": str(path), "latency_batch": change.get("batch", 1)}})
    with pytest.raises(ConfigError, match=message):
        GoldSearch(search_cfg, change.get("input_shape", SHAPE), change.get("num_classes", 10),
                   latency=read_latency(search_cfg))


def test_a_missing_or_foreign_table_file_is_named(tmp_path):
    with pytest.raises(LatencyTableError, match=r"latency table .*none.json does not exist"):
        load_table(tmp_path / "none.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(LatencyTableError, match=r"other.json is not a goldnas-ray latency table"):
        load_table(tmp_path / "other.json")
    with pytest.raises(ConfigError, match="search.cost=latency needs search.latency_table"):
        Config().override(["search.cost=latency"])


def test_the_cost_gradient_is_each_operators_latency_times_the_gates_slope(tiny_table):
    """d cost / d alpha_o = latency(o) x sigmoid'(alpha_o) / the supernet's predicted latency."""
    cfg, measured, _ = tiny_table
    s = cfg.space
    net = SuperNet(s.num_cells, s.num_nodes, s.operators, s.init_channels, 8, 1, 10, s.stem_multiplier)
    keys = net.alive_ops()
    # worked entries: operator i costs (i % 7) + 1 ms, the fixed parts 5 ms each
    parts = {part_name(k): float(i % 7 + 1) for i, k in enumerate(keys)} | {"stem": 5.0, "head": 5.0}
    table = LatencyTable(measured.key, measured.device, parts)
    net.use_latency(table)
    # stem + head + the operators: this table has no preprocessing, concatenation or addition entries
    full = 10.0 + sum(i % 7 + 1 for i in range(len(keys)))
    assert net.full_latency_ms == pytest.approx(full)
    with torch.no_grad():
        for i, k in enumerate(keys):
            net.alpha(k).fill_((i % 5 - 2) * 0.7)
    cost = net.expected_cost("latency")
    cost.backward()
    for i, k in enumerate(keys):
        a = torch.tensor((i % 5 - 2) * 0.7)
        slope = float(torch.sigmoid(a) * (1 - torch.sigmoid(a)))
        assert float(net.alpha(k).grad) == pytest.approx((i % 7 + 1) * slope / full, rel=1e-5), k
    expected = sum((i % 7 + 1) * float(torch.sigmoid(torch.tensor((i % 5 - 2) * 0.7))) for i in range(len(keys)))
    assert float(cost) == pytest.approx(expected / full, rel=1e-5)

    # with a fitted correction (scale 2, 3 ms) and a node sum of 0.5 ms in every cell, an
    # operator costs 2 x (its entry + 0.5) over the corrected prediction of the whole network
    cells = {k: {"concat": 0.25, "add": 0.5} for k in range(s.num_cells)}
    net.use_latency(LatencyTable(measured.key, measured.device, parts, cells_ms=cells,
                                 correction={"scale": 2.0, "constant": 3.0}))
    sums = sum(n - 1 for k in range(s.num_cells) for n in _inputs_per_node(keys, k).values())
    full = 2.0 * (10.0 + sum(i % 7 + 1 for i in range(len(keys))) + 0.25 * s.num_cells + 0.5 * sums) + 3.0
    assert net.full_latency_ms == pytest.approx(full)
    for p in net.arch_parameters():
        p.grad = None
    net.expected_cost("latency").backward()
    for i, k in enumerate(keys):
        a = torch.tensor((i % 5 - 2) * 0.7)
        slope = float(torch.sigmoid(a) * (1 - torch.sigmoid(a)))
        assert float(net.alpha(k).grad) == pytest.approx(2.0 * (i % 7 + 1 + 0.5) * slope / full, rel=1e-5), k


def _inputs_per_node(keys, cell):
    found = {}
    for k in keys:
        if k.cell == cell:
            found[k.dst] = found.get(k.dst, 0) + 1
    return found


def test_a_search_carries_its_table_in_its_checkpoint(tiny_table, tmp_path, capsys):
    """Workers on other nodes and a resume never read the file again: the state holds the
    table, and a table missing an entry is refused rather than read as 0 ms. Reading it
    prints its checks' figures."""
    _, table, path = tiny_table
    copy = tmp_path / "t.json"
    copy.write_text(path.read_text())
    cfg = tiny_config(cost="latency", latency_table=str(copy))
    search = GoldSearch(cfg, SHAPE, 10, latency=read_latency(cfg))
    c = table.checks
    assert (f"t.json: worst same-operator ratio {c['same_op_worst_ratio']:.3g}x (limit 10x: 0 part(s) over), "
            f"no calibration; profile {c['attempts']}") in capsys.readouterr().out
    state = search.state_dict()
    copy.unlink()
    again = GoldSearch.from_state_dict(state)
    assert again.latency.to_dict() == table.to_dict() and again.model.full_latency_ms == search.model.full_latency_ms
    partial = table.to_dict()
    del partial["parts_ms"]["op/1/0/2/sep_conv_3x3"]
    with pytest.raises(ConfigError, match=r"has no entry for 1 part\(s\) of this space, e.g. op/1/0/2/sep_conv_3x3"):
        GoldSearch(cfg, SHAPE, 10, latency=LatencyTable.from_dict(partial))


def test_a_latency_search_records_dense_in_predicted_latency(tiny_table, tmp_path, digits):
    """Digits with the default recording (gaps of 12%, none within 3%) down to the stop at 30%
    of the supernet's latency: the gaps are in predicted latency, so at least 6 records, and
    each still carries its FLOPs."""
    from goldnas_ray.run.loop import run_local

    _, table, path = tiny_table
    cfg = tiny_config(lambda0=0.2, max_epochs=60, cost="latency", latency_table=str(path))
    cfg = cfg.override(["data.subset=0.25"])
    search = run_local(cfg, tmp_path / "s", log=lambda _: None)
    full, q = search.model.full_latency_ms, cfg.search
    assert search.recorder.cost == "latency" and search.state_dict()["recorder"]["records"][0]["latency_ms"] <= full
    records = json.loads((tmp_path / "s" / "records.json").read_text())["architectures"]
    assert len(records) >= 6 and records[-1]["latency_ms"] <= q.latency_min_ratio * full < records[-2]["latency_ms"]
    for rec in records:  # each record's latency is its genotype's, by the table, and its FLOPs too
        geno = Genotype.from_dict(json.loads((tmp_path / "s" / rec["genotype"]).read_text()))
        assert rec["latency_ms"] == pytest.approx(table.latency_ms(geno))
        assert rec["flops"] == search.network_costs.flops(geno) > 0
    # the decisions, replayed in latency: a record before a pruning that would take the latency
    # more than 12% below the last record's (or after t0 quiet epochs), none otherwise
    latency = [full] + [row["latency_ms"] for row in search.history]  # before each epoch's pruning, then last
    by_id, last = {r["id"]: r for r in records}, full
    for epoch, row in enumerate(search.history, 1):
        before, after = latency[epoch - 1], latency[epoch]
        ids = [i for i in row["recorded"].split(",") if i and i != records[-1]["id"]]
        quiet = epoch > q.t0 + 1 and len(set(latency[epoch - q.t0 - 2:epoch])) == 1
        if ids:
            assert by_id[ids[0]]["latency_ms"] == pytest.approx(before)
            assert quiet or last - after > q.record_gap * full
            last = before
        elif after != before and last - before >= q.record_min_gap * full:
            assert last - after <= q.record_gap * full and not quiet
    import pandas as pd
    history = pd.read_parquet(tmp_path / "s" / "history.parquet")
    assert history["latency_ms"].is_monotonic_decreasing and len(history) == len(search.history)
    assert json.loads((tmp_path / "s" / "latency.json").read_text()) == table.to_dict()


def test_the_dense_rule_measures_its_gaps_in_the_cost_it_is_given():
    """The same architectures, recorded by FLOPs and by latency: a pruning that takes the
    latency 20% below the last record but the FLOPs only 5% below is recorded before only when
    the gaps are in latency."""
    from goldnas_ray.core.records import ArchRecord
    from goldnas_ray.core.schedule import ParetoRecorder

    full = Genotype.full(1, 2, ["skip_connect"], 4, 3, 8, 1, 10)
    last = ArchRecord("arch-000", 1, 1000, 10, 0.1, 5, full, latency_ms=10.0)
    by_flops = ParetoRecorder(t0=9, rule="dense", records=[last])
    by_latency = ParetoRecorder(t0=9, rule="dense", cost="latency", records=[last])
    assert not by_flops.end_epoch(True, 1000 * 0.96, 1000 * 0.91, 1000)
    assert by_latency.end_epoch(True, 10.0 * 0.96, 10.0 * 0.76, 10.0)
    assert not by_latency.end_epoch(True, 10.0 * 0.99, 10.0 * 0.76, 10.0)  # within 3% of the last record
    with pytest.raises(ValueError, match="arch-000 has no predicted latency"):
        ArchRecord("arch-000", 1, 1000, 10, 0.1, 5, full).cost("latency")


def test_profile_latency_writes_a_described_table_and_never_overwrites(tmp_path):
    out = tmp_path / "t.json"
    cmd = ["--out", str(out), "--set", "space.num_cells=3", "--set", "space.init_channels=4", "--repeats", "3",
           "--warmup", "1", "--calibration", "3", "--threads", "1"]
    proc = drive("profile_latency.py", *cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = json.loads(out.read_text())
    assert raw["device"]["type"] == "cpu" and raw["device"]["threads"] == 1 and raw["device"]["name"]
    assert raw["key"]["batch"] == 1 and raw["key"]["input_shape"] == [1, 8, 8]
    assert raw["key"]["space"]["init_channels"] == 4 and raw["measured"]["calibration"] == 3
    assert set(raw["correction"]) == {"scale", "constant"} and raw["measured"]["statistic"] == "min"
    assert len(raw["checks"]["residuals_pct"]) == 4 and raw["checks"]["scale"] == raw["correction"]["scale"]
    assert "checks: worst same-operator ratio" in proc.stdout
    again = drive("profile_latency.py", *cmd)
    assert again.returncode == 2 and again.stderr.startswith("error: --out") and "never overwritten" in again.stderr
    assert json.loads(out.read_text()) == raw


def slowed(monkeypatch, part: str, networks: int):
    """The profiler's full network with ``part`` made 10 ms slower (a busy loop before it runs)
    in the first ``networks`` networks built: a busy spell that hits one part."""
    import time

    from goldnas_ray.core import discrete

    real, built = discrete.build_network, []

    def build(geno):
        net = real(geno)
        built.append(net)
        if len(built) <= networks:
            module = {part_name(label): m for label, m in net.parts()}[part]
            module.register_forward_pre_hook(lambda *_: _busy(time.perf_counter() + 0.01))
        return net
    monkeypatch.setattr(discrete, "build_network", build)


def _busy(until: float) -> None:
    import time
    while time.perf_counter() < until:
        pass


SLOW = "op/2/2/3/sep_conv_3x3"  # the reduction cell's, on its smallest input


def test_a_profile_whose_part_disagrees_is_measured_again_then_refused_naming_it(monkeypatch, tiny_table):
    _, clean, _ = tiny_table  # a clean profile passes the same checks, and the table keeps their figures
    assert clean.checks["disagreeing"] == []
    assert clean.checks["same_op_worst_ratio"] <= clean.checks["same_op_ratio_limit"]
    assert LatencyTable.from_dict(clean.to_dict()).checks == clean.checks
    cfg = tiny_config()
    lines = []
    slowed(monkeypatch, SLOW, networks=1)  # a busy spell during the first profile only: measured again
    table = measure(cfg.space, SHAPE, 10, batch=1, warmup=1, repeats=3, log=lines.append)
    assert table.checks["attempts"] >= 2 and table.checks["disagreeing"] == []  # 3 if the machine was busy too
    assert any(line.startswith("  profile 1 of 3 disagrees") and SLOW in line for line in lines)
    # busy through every profile: refused, naming the part (through the pipeline, below)


def test_a_calibration_scale_outside_its_range_fails_the_checks(tiny_table):
    from goldnas_ray.core.latency import check_profile

    _, clean, _ = tiny_table
    table = LatencyTable.from_dict(clean.to_dict())
    table.correction = {"scale": 0.022, "constant": 1.0}
    figures, failures = check_profile(table, {}, [10.0, -30.0])
    assert failures == ["the calibration's scale 0.022 is outside 0.5-2"] and figures["residuals_pct"] == [10.0, -30.0]
    table.correction["scale"] = 1.2
    assert check_profile(table, {}, [10.0])[1] == []


def test_profile_latency_refuses_a_busy_profile_and_writes_nothing_unless_told(monkeypatch, tmp_path):
    slowed(monkeypatch, SLOW, networks=99)
    cmd = ["--set", "space.num_cells=3", "--set", "space.init_channels=4", "--repeats", "3", "--warmup", "1",
           "--calibration", "0", "--threads", "1"]
    refused = drive("profile_latency.py", "--out", str(tmp_path / "busy.json"), *cmd)
    assert refused.returncode == 2 and refused.stderr.startswith("error: the machine looked busy while profiling")
    assert re.search(rf"3 profile\(s\).*{SLOW} took \d+x op/", refused.stderr) and not (tmp_path / "busy.json").exists()
    kept = drive("profile_latency.py", "--out", str(tmp_path / "kept.json"), "--no-check", *cmd)
    assert kept.returncode == 0 and SLOW in kept.stdout  # the one try's complaint, on the console
    checks = json.loads((tmp_path / "kept.json").read_text())["checks"]
    assert checks["disagreeing"][0][0] == SLOW == checks["same_op_worst"][0] and checks["attempts"] == 1

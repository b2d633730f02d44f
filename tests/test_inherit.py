"""Inherited weights: the discrete network of a record computes what the pruned supernet computed."""
import pytest
import torch

from goldnas_ray.core.discrete import DiscreteNet, load_inherited
from goldnas_ray.core.supernet import SuperNet

OPS = ("skip_connect", "sep_conv_3x3", "max_pool_3x3", "dil_conv_3x3")


def _pruned_supernet() -> SuperNet:
    """Five cells (two reductions, so strided skips are FactorizedReduce), gates far from 1/2,
    running statistics moved by two batches, a third of the operators pruned."""
    torch.manual_seed(0)
    net = SuperNet(5, 3, OPS, 8, 16, 3, 10, auxiliary=True)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_(0, 2)
    net.train()
    for _ in range(2):
        net(torch.randn(16, 3, 16, 16))
    net.prune(net.alive_ops()[::3])
    return net


def test_the_inherited_network_computes_what_the_pruned_supernet_computes():
    """Eval mode (running statistics) and training mode (batch statistics), up to float32
    rounding: 1e-5 of the logits' scale (measured: about 3e-7 in eval, 2e-6 in training)."""
    net = _pruned_supernet()
    state = net.inherited_state()
    assert not any(".alphas." in k for k in state)
    assert any(k.endswith(".scale") for k in state)  # a kept identity: its gate as a fixed scale
    inherited = DiscreteNet(net.genotype(), auxiliary=True)
    load_inherited(inherited, state)
    x = torch.randn(8, 3, 16, 16)
    for train in (False, True):
        net.train(train), inherited.train(train)
        with torch.no_grad():
            want, got = net(x), inherited(x)
        assert (got - want).abs().max() <= 1e-5 * want.abs().max(), train
    # a channels-last supernet (channels_last=true) gives contiguous tensors, which safetensors stores
    net.to(memory_format=torch.channels_last)
    assert all(v.is_contiguous() for v in net.inherited_state().values())
    # the gates matter: the same network from scratch, or without its gates, computes something else
    plain = DiscreteNet(net.genotype())
    load_inherited(plain, {k: v for k, v in state.items() if not k.endswith(".scale")})
    plain.eval()
    with torch.no_grad():
        assert (plain(x) - want).abs().max() > 1e-3


def test_inherited_weights_of_another_architecture_are_refused():
    net = _pruned_supernet()
    state = net.inherited_state()
    other = DiscreteNet(SuperNet(5, 3, OPS, 8, 16, 3, 10).genotype())
    with pytest.raises(ValueError, match="not this architecture's"):
        load_inherited(other, state)


def test_a_search_keeps_each_records_weights_and_a_retrain_starts_from_them(small_search, tmp_path):
    """records.json names each record's safetensors file and its size; the last record's is the
    supernet as the search ended; retrain.init=inherited gives the searched networks (only
    them) those weights, which classify digits far above chance before any step."""
    import json
    import shutil

    from safetensors.torch import load_file

    from goldnas_ray.core.config import ConfigError
    from goldnas_ray.data.from_config import load_data
    from goldnas_ray.retrain.candidates import save_genotypes
    from goldnas_ray.retrain.plan import Resources, plan_retrain
    from goldnas_ray.retrain.recipe import Retrainer

    out, search = small_search.out, small_search.search
    archs = json.loads((out / "records.json").read_text())["architectures"]
    assert archs and all(a["weights"] == f"genotypes/{a['id']}.safetensors" for a in archs)
    assert all(a["weights_bytes"] == (out / a["weights"]).stat().st_size > 0 for a in archs)
    assert not search.inherited  # written, not kept in memory
    last = load_file(out / archs[-1]["weights"])
    now = search.model.inherited_state()
    assert last.keys() == now.keys() and all(torch.equal(last[k], now[k]) for k in now)

    manifest = plan_retrain(tmp_path / "rt", out, overrides=["retrain.init=inherited"], random_k=1)
    (tmp_path / "rt").mkdir()
    save_genotypes(tmp_path / "rt", manifest.candidates)
    specs = manifest.specs(tmp_path / "rt", Resources(1, 1, 0))
    assert [s.weights is None for s in specs.values()] == [c.kind == "random" for c in manifest.candidates]
    spec = specs["arch-000-s0"]
    assert spec.weights.endswith("/genotypes/arch-000.safetensors")
    data = load_data(manifest.data())
    trainer = Retrainer(manifest.candidates[0].genotype, manifest.config.retrain, 0,
                        weights=load_file(tmp_path / "rt" / "genotypes" / "arch-000.safetensors"))
    scratch = Retrainer(manifest.candidates[0].genotype, manifest.config.retrain, 0)
    stale, start, chance = trainer.evaluate(data), trainer.calibrate(data), scratch.evaluate(data)
    assert start > 0.6 and chance < 0.2 and start > stale, (start, chance, stale)
    # a resumed trial rebuilds the inherited network from its checkpoint alone
    again = Retrainer.from_state_dict(trainer.state_dict())
    assert again.evaluate(data) == start and again.start_test_acc == start

    bare = tmp_path / "bare"
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors"))
    records = json.loads((bare / "records.json").read_text())
    for a in records["architectures"]:
        del a["weights"], a["weights_bytes"]
    (bare / "records.json").write_text(json.dumps(records))
    with pytest.raises(ConfigError, match="retrain.init=inherited: arch-000 has no inherited weights"):
        plan_retrain(tmp_path / "rt2", bare, overrides=["retrain.init=inherited"])
    assert all(c.weights is None for c in plan_retrain(tmp_path / "rt3", out).candidates)  # scratch: none
    # checked before any trial: a missing file, and another record's weights under this one's name
    from goldnas_ray.files.search_files import OutputDirError

    shutil.rmtree(bare)
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns("checkpoints"))
    (bare / "genotypes" / "arch-000.safetensors").unlink()
    with pytest.raises(OutputDirError, match="arch-000's inherited weights are missing"):
        plan_retrain(tmp_path / "rt4", bare, overrides=["retrain.init=inherited"])
    shutil.copy(bare / archs[-1]["weights"], bare / "genotypes" / "arch-000.safetensors")
    with pytest.raises(OutputDirError, match="arch-000.safetensors: the inherited weights are not this architecture's"):
        plan_retrain(tmp_path / "rt4", bare, overrides=["retrain.init=inherited"])
    assert not (tmp_path / "rt4").exists()


def test_a_quick_front_fine_tunes_inherited_weights_for_a_tenth_of_the_epochs(small_search, tmp_path):
    import importlib.util

    from goldnas_ray.core.config import ConfigError
    from goldnas_ray.retrain.plan import plan_retrain

    spec = importlib.util.spec_from_file_location("retrain_pipeline", "pipelines/retrain.py")
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)
    args = pipeline.parse_args(["--search-dir", str(small_search.out), "--quick", "--set", "retrain.epochs=25"])
    manifest = plan_retrain(tmp_path / "q", small_search.out, overrides=args.overrides)
    recipe = manifest.config.retrain
    assert (recipe.quick, recipe.init, recipe.epochs) == (True, "inherited", 3)  # ceil(2.5)
    assert all(c.weights for c in manifest.candidates)
    with pytest.raises(ConfigError, match="drop --random"):
        plan_retrain(tmp_path / "q2", small_search.out, overrides=args.overrides, random_k=1)

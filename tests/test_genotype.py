"""Genotype JSON round trip, validation and build_network."""
import json

import pytest
import torch

import goldnas_ray
from goldnas_ray import GenotypeError, build_network, load_genotype
from goldnas_ray.core.costs import total_flops
from goldnas_ray.files.search_files import write_genotype
from goldnas_ray.core.space import OpKey
from goldnas_ray.core.supernet import SuperNet


@pytest.fixture
def geno():
    net = SuperNet(3, 4, ("skip_connect", "sep_conv_3x3"), 4, input_size=8, in_channels=1, num_classes=10)
    net.prune([OpKey(0, 0, 2, "sep_conv_3x3"), OpKey(1, 1, 3, "skip_connect"),
               OpKey(2, 0, 4, "sep_conv_3x3"), OpKey(2, 0, 4, "skip_connect")])
    return net.genotype()


def test_round_trip(tmp_path, geno):
    path = tmp_path / "a.json"
    write_genotype(path, geno)
    back = goldnas_ray.load_genotype(path)
    assert back.to_dict() == geno.to_dict()
    assert set(back.op_keys()) == set(geno.op_keys())
    net = goldnas_ray.build_network(back)
    out = net(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert total_flops(net, (1, 8, 8)) == total_flops(build_network(geno), (1, 8, 8))


def _write(tmp_path, raw):
    path = tmp_path / "bad.json"
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return path


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(version=99), "unsupported version"),
    (lambda d: d.update(format="pickle"), "format"),
    (lambda d: d.pop("num_nodes"), "num_nodes"),
    (lambda d: d.update(init_channels=0), "init_channels"),
    (lambda d: d["cells"][1]["edges"][0].update(ops=["conv_9x9"]), r"cells\[1\].edges\[0\].ops: unknown operator 'conv_9x9'"),
    (lambda d: d["cells"][0]["edges"][0].update(src=5), r"cells\[0\].edges\[0\]: no edge 5->"),
    (lambda d: d["cells"][0]["edges"][0].update(ops=[]), "non-empty"),
    (lambda d: d["cells"][2].update(edges=[e for e in d["cells"][2]["edges"] if e["dst"] != 5]), "node 5 has no input"),
    (lambda d: d["cells"][0].update(reduction=True), r"cells\[0\].reduction"),
    (lambda d: d["cells"].pop(), "num_cells=3"),
    (lambda d: d.update(input_size=6), "even"),
])
def test_malformed_files_are_rejected_with_a_location(tmp_path, geno, mutate, message):
    raw = geno.to_dict()
    mutate(raw)
    with pytest.raises(GenotypeError, match=message):
        load_genotype(_write(tmp_path, raw))


def test_not_json_and_missing_file(tmp_path):
    with pytest.raises(GenotypeError, match="not valid JSON"):
        load_genotype(_write(tmp_path, "{not json"))
    with pytest.raises(GenotypeError, match="does not exist"):
        load_genotype(tmp_path / "nope.json")
    with pytest.raises(GenotypeError, match="JSON object"):
        load_genotype(_write(tmp_path, "[1, 2]"))

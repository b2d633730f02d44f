"""Genotype JSON round trip, validation and build_network."""
import json

import pytest
import torch

import goldnas_ray
from goldnas_ray import GenotypeError, build_network, load_genotype
from goldnas_ray.core.counting import total_flops
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
    (lambda d: d.update(format="pickle"), "format must be 'goldnas-ray/genotype', got 'pickle': not a genotype file"),
    (lambda d: d.pop("format"), "format must be 'goldnas-ray/genotype', got None"),
    (lambda d: d.update(num_nodes=4.0), r"num_nodes: 4\.0 is not of type 'integer'"),
    (lambda d: d.update(metadata={"flops": float("nan")}), "flops"),
    (lambda d: d.update(metadata={"params": float("inf")}), "params"),
    (lambda d: d.pop("num_nodes"), "num_nodes"),
    (lambda d: d.update(init_channels=0), "init_channels"),
    (lambda d: d["cells"][1]["edges"][0].update(ops=["conv_9x9"]), r"cells\[1\].edges\[0\].ops\[0\]: 'conv_9x9' is not one of"),
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
    with pytest.raises(GenotypeError, match=r"\[1, 2\] is not of type 'object'"):
        load_genotype(_write(tmp_path, "[1, 2]"))


# ---- the format: schema, version, widening (docs/genotypes.md) ------------------------------
def _schema():
    import subprocess
    import sys

    import jsonschema

    done = subprocess.run([sys.executable, "-m", "goldnas_ray.core.genotype", "--schema"], capture_output=True,
                          text=True, check=True)
    schema = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_schema_validates_every_genotype_a_search_writes(small_search):
    files = sorted((small_search.out / "genotypes").glob("*.json"))
    assert len(files) >= 3
    validator = _schema()
    for path in files:
        raw = json.loads(path.read_text())
        assert list(validator.iter_errors(raw)) == [], path.name
        assert raw["version"] == 1 and load_genotype(path).to_dict() == raw


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda d: d.pop("format"), id="no-format"),
    pytest.param(lambda d: d.update(format="darts"), id="other-format"),
    pytest.param(lambda d: d.update(version=2), id="newer-version"),
    pytest.param(lambda d: d.update(version="1"), id="version-as-text"),
    pytest.param(lambda d: d.update(num_cells="3"), id="count-as-text"),
    pytest.param(lambda d: d.update(num_classes=1), id="one-class"),
    pytest.param(lambda d: d.update(stem="resnet"), id="unknown-stem"),
    pytest.param(lambda d: d.update(extra=1), id="unknown-field"),
    pytest.param(lambda d: d["cells"][0].update(reduction="no"), id="reduction-not-boolean"),
    pytest.param(lambda d: d["cells"][1]["edges"][0].update(ops=["conv_9x9"]), id="unknown-operator"),
    pytest.param(lambda d: d["cells"][1]["edges"][0].update(ops=[]), id="no-operator"),
    pytest.param(lambda d: d["cells"][1]["edges"][0].update(ops=["skip_connect", "skip_connect"]), id="operator-twice"),
    pytest.param(lambda d: d["cells"][1]["edges"][0].pop("dst"), id="edge-without-dst"),
    pytest.param(lambda d: d.update(metadata={"flops": -1}), id="negative-flops"),
])
def test_the_schema_and_the_reader_reject_malformed_genotypes(tmp_path, geno, mutate):
    raw = geno.to_dict()
    mutate(raw)
    assert list(_schema().iter_errors(raw)), "the schema accepted it"
    with pytest.raises(GenotypeError):
        load_genotype(_write(tmp_path, raw))


def test_a_file_without_version_is_version_1_and_a_newer_one_is_refused_by_number(tmp_path, geno):
    raw = geno.to_dict()
    assert raw["version"] == goldnas_ray.core.genotype.VERSION == 1
    del raw["version"]  # written before the field existed
    assert load_genotype(_write(tmp_path, raw)).to_dict() == geno.to_dict()
    with pytest.raises(GenotypeError, match="unsupported version 2: newer than this release reads"):
        load_genotype(_write(tmp_path, raw | {"version": 2}))
    with pytest.raises(GenotypeError, match="version: 0 is less than the minimum of 1"):
        load_genotype(_write(tmp_path, raw | {"version": 0}))


def test_a_widened_network_has_the_same_cells_and_more_params_and_flops(geno):
    base, wide = build_network(geno), build_network(geno, channels=2 * geno.init_channels)
    assert wide.genotype.init_channels == 8 and wide.genotype.metadata["widened_from"] == 4
    assert "flops" not in wide.genotype.metadata and "params" not in wide.genotype.metadata
    assert set(wide.genotype.op_keys()) == set(geno.op_keys())
    assert [c.reduction for c in wide.genotype.cells] == [c.reduction for c in geno.cells]
    assert wide.flops() == total_flops(wide, (1, 8, 8)) > 3 * base.flops() > 0
    assert wide.params() > 2 * base.params()
    assert wide(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert build_network(geno, channels=2).flops() < base.flops()
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        build_network(geno, channels=0)

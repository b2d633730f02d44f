"""The retrain plan, checked and written without Ray: what is trained, its trials, retrain.json."""
import json

import pytest

from goldnas_ray.core.config import ConfigError
from goldnas_ray.files.search_files import OutputDirError
from goldnas_ray.retrain.plan import MANIFEST, Manifest, Resources, plan_retrain


@pytest.fixture(scope="module")
def search_dir(small_search):
    return small_search.out  # read only: a plan writes nothing beside the search


def test_plan_trials_specs_and_manifest_round_trip(search_dir, tmp_path):
    out = tmp_path / "rt"
    manifest = plan_retrain(out, search_dir, overrides=["retrain.seeds=2", "retrain.epochs=3"], random_k=2)
    assert not out.exists()  # planning writes nothing
    searched = [c for c in manifest.candidates if c.kind == "searched"]
    records = json.loads((search_dir / "records.json").read_text())
    assert [c.arch_id for c in searched] == [a["id"] for a in records["architectures"]]
    assert [c.kind for c in manifest.candidates].count("random") == 2
    assert manifest.seeds == [0, 1] and manifest.config.retrain.epochs == 3
    ids = [a["id"] for a in records["architectures"]] + ["random-000", "random-001"]
    assert [c.arch_id for c in manifest.candidates] == ids
    assert manifest.trials == [f"{arch}-s{seed}" for arch in ids for seed in (0, 1)]  # "arch-000-s0", ...
    specs = manifest.specs(out, Resources(1, 2, 0.5))
    assert list(specs) == manifest.trials
    spec = specs[manifest.trials[-1]]
    assert (spec.seed, spec.threads, spec.use_gpu, spec.recipe["epochs"]) == (1, 2, True, 3)
    assert (spec.workers, spec.stream, spec.eval_stream) == (1, None, False)  # digits: in memory
    assert spec.genotype == manifest.candidates[-1].genotype.to_dict()
    wide = manifest.specs(out, Resources(2, 0.5, 0))[manifest.trials[0]]
    assert (wide.workers, wide.cpus_per_worker, wide.threads, wide.use_gpu) == (2, 0.5, 1, False)

    from goldnas_ray.retrain.candidates import save_genotypes

    out.mkdir()
    save_genotypes(out, manifest.candidates)
    manifest.mlflow_run_id = "abc"
    manifest.write(out)
    back = Manifest.read(out)
    assert back.trials == manifest.trials and back.mlflow_run_id == "abc"
    assert [c.flops for c in back.candidates] == [c.flops for c in manifest.candidates]
    assert back.config.to_dict() == manifest.config.to_dict()


def test_plan_refuses_bad_input_before_writing(search_dir, tmp_path):
    with pytest.raises(ConfigError, match="retrain.lr"):
        plan_retrain(tmp_path / "a", search_dir, overrides=["retrain.lr=-1"])
    with pytest.raises(ConfigError, match="--random"):
        plan_retrain(tmp_path / "a", search_dir, random_k=-1)
    taken = tmp_path / "taken"
    (taken / "x").mkdir(parents=True)
    with pytest.raises(OutputDirError, match="already exists"):
        plan_retrain(taken, search_dir)
    with pytest.raises(OutputDirError, match="no retrain.json"):
        Manifest.read(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST).write_text("{}")
    with pytest.raises(OutputDirError, match="not a goldnas-ray retrain manifest"):
        Manifest.read(tmp_path / "bad")
    assert not (tmp_path / "a").exists()

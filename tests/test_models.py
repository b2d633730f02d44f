"""Model folders (goldnas_ray.models.saved): what a retrain keeps of each trained network and
``goldnas_ray.load_model`` reads. Round trips on small networks, every refusal named, and on the
session's smoke pipeline, a folder per finished trial whose network, evaluated again here on the
same test split, scores the accuracy its trial recorded at its last epoch."""
import json

import pandas as pd
import pytest
import torch

import goldnas_ray
from goldnas_ray.core.discrete import build_network
from goldnas_ray.core.genotype import Genotype
from goldnas_ray.data.from_config import eval_augment, load_data
from goldnas_ray.models.saved import (GENOTYPE, INFO, WEIGHTS, ModelError, load_model, model_folders, read_info,
                                      save_model)
from goldnas_ray.retrain.plan import Manifest
from goldnas_ray.retrain.recipe import EVAL_BATCH, count_correct


def test_every_finished_trial_keeps_a_model_that_scores_its_recorded_accuracy(pipeline):
    """The strongest check: each folder's network, read by load_model alone, evaluated on the
    trial's test split (same transforms, memory format) gets the trial's last-epoch test_acc."""
    out = pipeline[0] / "retrain"
    trials = pd.read_parquet(out / "trials.parquet")
    last = trials[trials["finished"]].sort_values("epoch").groupby("key").last()
    folders = model_folders(out)
    assert set(folders) == set(last.index) and len(folders) >= 3, (sorted(folders), sorted(last.index))
    manifest = Manifest.read(out)
    data_cfg = manifest.data()
    data = load_data(data_cfg)
    fmt = torch.channels_last if manifest.config.retrain.channels_last else torch.contiguous_format
    for key, folder in folders.items():
        info, net = read_info(folder), goldnas_ray.load_model(folder.local)
        assert not net.training and info["arch_id"] == last.loc[key, "arch_id"] and info["seed"] == last.loc[key, "seed"]
        assert info["metrics"]["test_acc"] == last.loc[key, "test_acc"]
        assert info["dataset"]["eval_size"] == len(data.y_test) and info["dataset"]["name"] == data_cfg.dataset
        correct, total = count_correct(net.to(memory_format=fmt), data.eval_batches(EVAL_BATCH, eval_augment(data_cfg)),
                                       fmt, manifest.config.retrain.amp == "bf16")
        assert correct / total == pytest.approx(last.loc[key, "test_acc"], abs=0.5 / total), key


def test_a_model_folder_says_the_normalisation_a_set_normalised_when_loaded_got():
    """digits is normalised when loaded: model.json's (pixels / scale - mean) / std, applied to
    scikit-learn's raw pixels, gives the test images the network saw, a subset's too."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from goldnas_ray.core.config import DataConfig
    from goldnas_ray.models.saved import dataset_info

    d = DataConfig(dataset="digits", subset=0.5)
    data = load_data(d)
    info = dataset_info(d, data)
    bunch = load_digits()
    _, raw_test = train_test_split(bunch.images.astype(np.float32), test_size=0.2, random_state=0, stratify=bunch.target)
    assert info["scale"] == 16 and len(info["mean"]) == len(info["std"]) == info["in_channels"] == 1
    expected = (torch.from_numpy(raw_test) / info["scale"] - info["mean"][0]) / info["std"][0]
    torch.testing.assert_close(expected, data.x_test[:, 0], rtol=1e-5, atol=1e-5)
    assert data.num_train < 1437 * 0.6  # the subset was taken


def small_net(channels: int = 4, seed: int = 0, auxiliary: bool = True):
    geno = Genotype.full(3, 2, ["skip_connect", "sep_conv_3x3"], channels, 3, 8, 1, 10)
    torch.manual_seed(seed)
    net = build_network(geno, auxiliary=auxiliary)
    for m in net.modules():  # trained-looking batch-norm statistics, so that eval mode differs from train
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return geno, net.eval()


INFO_FIELDS = {"arch_id": "a1", "seed": 0, "kind": "searched", "init": "scratch", "dataset": {"name": "digits"},
               "metrics": {"test_acc": 0.5, "epochs": 2}}


@pytest.fixture
def saved(tmp_path):
    geno, net = small_net()
    folder = tmp_path / "models" / "a1-s0"
    save_model(folder, net, geno, INFO_FIELDS)
    return folder, geno, net


def test_round_trip_gives_the_same_outputs_without_the_auxiliary_head(saved):
    folder, geno, net = saved
    back = goldnas_ray.load_model(str(folder))
    x = torch.randn(5, 1, 8, 8)
    assert not back.training and back.aux_head is None
    assert torch.equal(back(x), net(x))
    assert back.genotype.to_dict() == geno.to_dict()
    info = read_info(folder)
    assert info["format"] == "goldnas-ray/model" and info["version"] == 1 and info["arch_id"] == "a1"
    assert info["flops"] == back.flops() and info["params"] == back.params()  # counted when not given


def test_an_inherited_networks_edge_scales_come_back(tmp_path):
    geno, net = small_net(auxiliary=False)
    edge = net.cells[0].edges[next(iter(net.cells[0].edges))]
    edge.scale = torch.tensor([0.25, 1.0])
    save_model(tmp_path, net, geno, INFO_FIELDS)
    back = load_model(tmp_path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(back(x), net(x)) and any(k.endswith(".scale") for k in back.state_dict())


def test_model_folders_lists_complete_folders_only(saved, tmp_path):
    (tmp_path / "models" / "half-s0").mkdir()  # no model.json: a folder being written
    (tmp_path / "models" / "half-s0" / WEIGHTS).write_bytes(b"")
    assert list(model_folders(tmp_path)) == ["a1-s0"] and model_folders(tmp_path / "nowhere") == {}


def _other_weights(folder):
    geno, net = small_net(channels=6)
    save_model(folder / "other", net, geno, INFO_FIELDS)
    (folder / WEIGHTS).write_bytes((folder / "other" / WEIGHTS).read_bytes())


def _no_metadata(folder):
    import safetensors.torch
    (folder / WEIGHTS).write_bytes(safetensors.torch.save({"x": torch.zeros(2)}))


def _fewer_ops(folder):
    raw = json.loads((folder / GENOTYPE).read_text())
    raw["cells"][0]["edges"][0]["ops"] = ["skip_connect"]
    (folder / GENOTYPE).write_text(json.dumps(raw))


@pytest.mark.parametrize("damage,message", [
    (lambda f: (f / INFO).unlink(), "not a model folder: model.json is missing"),
    (lambda f: (f / WEIGHTS).unlink(), "weights.safetensors is missing"),
    (lambda f: (f / GENOTYPE).unlink(), "genotype.json is missing"),
    (lambda f: (f / INFO).write_text("{oops"), "model.json is not valid JSON"),
    (lambda f: (f / INFO).write_text(json.dumps({"format": "onnx", "version": 1})), "format must be 'goldnas-ray/model'"),
    (lambda f: (f / INFO).write_text(json.dumps({"format": "goldnas-ray/model", "version": 2})),
     "version 2 is newer than this release reads"),
    (lambda f: (f / INFO).write_text(json.dumps({"format": "goldnas-ray/model"})), "version must be a positive integer"),
    (lambda f: (f / INFO).write_text(json.dumps({"format": "goldnas-ray/model", "version": 1, "arch_id": "a1",
                                                   "seed": 0, "kind": "searched"})), "model.json lacks dataset, metrics"),
    (lambda f: (f / GENOTYPE).write_text(json.dumps({"format": "goldnas-ray/genotype", "version": 7})),
     "genotype.json: unsupported version 7"),
    (lambda f: (f / WEIGHTS).write_bytes(b"PK\x03\x04 a zip, not safetensors"), "is not a safetensors file"),
    (_no_metadata, "safetensors metadata format must be 'goldnas-ray/model', got None"),
    (_other_weights, r"does not hold the weights of genotype.json's network: .* of other shapes"),
    (_fewer_ops, r"does not hold the weights of genotype.json's network: missing \[\], unexpected \['cells.0"),
])
def test_a_damaged_folder_is_refused_naming_the_file_and_problem(saved, damage, message):
    folder = saved[0]
    damage(folder)
    with pytest.raises(ModelError, match=message):
        load_model(folder)


def test_a_model_folder_in_a_bucket_is_written_listed_and_loaded_by_its_uri(s3):
    """A retrain whose --out is a bucket keeps its models there (moto S3 server)."""
    from goldnas_ray.files.store import location

    geno, net = small_net()
    retrain = location(s3["uri"]("models-unit/retrain"))
    save_model(retrain / "models" / "a1-s0", net, geno, INFO_FIELDS)
    folders = model_folders(retrain)
    assert list(folders) == ["a1-s0"] and folders["a1-s0"].is_remote
    back = load_model(folders["a1-s0"].uri)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(back(x), net(x)) and read_info(folders["a1-s0"])["arch_id"] == "a1"
    (folders["a1-s0"] / WEIGHTS).delete()
    with pytest.raises(ModelError, match="weights.safetensors is missing"):
        load_model(folders["a1-s0"])

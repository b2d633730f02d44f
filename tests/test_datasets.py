"""Every dataset of the registry, read from files the test writes in the real formats, with the
errors a bad file gets; then through a smoke search and a smoke retrain each."""
import numpy as np
import pytest
import torch
from conftest import tiny_config
from datafiles import image_bytes, write_cifar100, write_imagefolder, write_parquet
from drivers import drive

from goldnas_ray.core.config import Config, DataConfig, RetrainConfig
from goldnas_ray.data import DataError, load_dataset
from goldnas_ray.data.from_config import eval_augment, load_data, train_augment
from goldnas_ray.retrain.recipe import Retrainer
from goldnas_ray.run.loop import run_local


def test_cifar100_fine_and_coarse_labels(tmp_path):
    write_cifar100(tmp_path)
    fine = load_dataset("cifar100", tmp_path)
    assert fine.num_classes == 100 and fine.x_train.dtype == torch.uint8
    assert fine.x_train.shape == (120, 3, 32, 32) and fine.x_test.shape == (40, 3, 32, 32)
    assert torch.equal(fine.y_train, torch.arange(120) % 100)
    assert torch.equal(fine.x_train[:, 0, 0, 0].long(), fine.y_train * 2)  # pixels match their record
    coarse = load_dataset("cifar100", tmp_path, labels="coarse")
    assert coarse.num_classes == 20 and torch.equal(coarse.y_train, fine.y_train // 5)


def test_bad_cifar_files_are_named(tmp_path):
    write_cifar100(tmp_path)
    train = tmp_path / "cifar-100-binary" / "train.bin"
    train.write_bytes(train.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"train\.bin is not a cifar100 binary file"):
        load_dataset("cifar100", tmp_path)
    write_cifar100(tmp_path)
    raw = bytearray(train.read_bytes())
    raw[1] = 150  # a fine label of 150
    train.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train\.bin holds label 150"):
        load_dataset("cifar100", tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_dataset("cifar100", tmp_path / "nowhere")


def test_imagefolder_needs_one_size_or_image_size(tmp_path):
    write_imagefolder(tmp_path / "same", size=(24, 24))
    data = load_dataset("imagefolder", tmp_path / "same")
    assert data.num_classes == 3 and data.x_train.shape == (18, 3, 24, 24) and len(data.y_test) == 6
    # the channel statistics of the training images the test wrote, decoded as any reader would
    from PIL import Image
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float64) / 255
                       for f in sorted((tmp_path / "same" / "train").rglob("*.*"))])
    assert data.mean == pytest.approx(tuple(pixels.mean(axis=(0, 1, 2))), abs=1e-5)
    assert data.std == pytest.approx(tuple(pixels.std(axis=(0, 1, 2), ddof=1)), abs=1e-5)
    write_imagefolder(tmp_path / "mixed", size=(24, 24))
    (tmp_path / "mixed" / "train" / "dog" / "9.png").write_bytes(
        image_bytes(np.zeros((30, 20, 3), np.uint8), "PNG"))
    with pytest.raises(DataError, match=r"images differ in size .*9\.png is 30x20.*data.image_size"):
        load_dataset("imagefolder", tmp_path / "mixed")
    resized = load_dataset("imagefolder", tmp_path / "mixed", image_size=28)
    assert resized.x_train.shape[1:] == (3, 32, 32)  # stored at 28 x 256/224, cropped to 28


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "train" / "fox" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken"),
     r"fox/0\.png is not a readable image"),
    (lambda root: [p.unlink() for p in (root / "train" / "cat").iterdir()], r"train/cat holds no JPEG or PNG"),
    (lambda root: __import__("shutil").rmtree(root / "val" / "dog"), r"missing \['dog'\]"),
    (lambda root: __import__("shutil").rmtree(root / "val"), r"split .*val is missing"),
])
def test_bad_image_folders_are_named(tmp_path, damage, message):
    write_imagefolder(tmp_path, size=(16, 16))
    damage(tmp_path)
    with pytest.raises(DataError, match=message):
        load_dataset("imagefolder", tmp_path)


def test_parquet_columns_and_errors(tmp_path):
    write_parquet(tmp_path / "d.parquet", image_column="jpeg", label_column="cls")
    data = load_dataset("parquet", tmp_path / "d.parquet", image_column="jpeg", label_column="cls")
    assert data.num_classes == 4 and len(data.y_train) == 54 and len(data.y_test) == 6
    with pytest.raises(DataError, match=r"has no column 'image' .*jpeg, cls"):
        load_dataset("parquet", tmp_path / "d.parquet")
    from goldnas_ray.core.config import DataConfig
    from goldnas_ray.data.stream import inspect

    for column in ("label", "image"):  # the streamed path names the column too, before reading rows
        with pytest.raises(DataError, match=rf"has no column '{column}' .*jpeg, cls"):
            inspect(DataConfig(dataset="parquet", root=str(tmp_path / "d.parquet"), path="stream",
                               **{"label_column": "cls", "image_column": "jpeg"} | {f"{column}_column": column}))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [image_bytes(np.zeros((8, 8, 3), np.uint8), "PNG")] * 3,
                             "label": [0, -1, 1]}), tmp_path / "neg.parquet")
    with pytest.raises(DataError, match="integers >= 0"):
        load_dataset("parquet", tmp_path / "neg.parquet")
    with pytest.raises(DataError, match="cannot read Parquet data"):
        load_dataset("parquet", tmp_path / "missing.parquet")


def test_subset_keeps_a_fixed_fraction_of_every_class(tmp_path):
    write_cifar100(tmp_path, n_train=1000)
    full = load_dataset("cifar100", tmp_path)
    half = load_dataset("cifar100", tmp_path, subset=0.5)
    again = load_dataset("cifar100", tmp_path, subset=0.5)
    assert torch.equal(half.y_train, again.y_train) and torch.equal(half.x_train, again.x_train)
    counts = torch.bincount(half.y_train, minlength=100)
    assert (counts == 5).all() and len(half.y_test) == len(full.y_test)


@pytest.mark.parametrize("dataset", ["cifar100", "imagefolder", "parquet"])
def test_each_dataset_through_a_smoke_search_and_a_smoke_retrain(tmp_path, dataset):
    root = {"cifar100": lambda: write_cifar100(tmp_path / "d"),
            "imagefolder": lambda: write_imagefolder(tmp_path / "d", size=(36, 40)),
            "parquet": lambda: write_parquet(tmp_path / "d" / "all.parquet")}[dataset]()
    cfg = tiny_config(max_epochs=2, lambda0=1.0, xi_max=0.2, t0=0)
    cfg.data = DataConfig(dataset=dataset, root=str(root), batch_size=16,
                          image_size=32 if dataset == "imagefolder" else None)
    search = run_local(cfg, tmp_path / "search", log=lambda _: None)
    assert search.records and search.input_shape == (3, 32, 32)
    data = load_data(cfg.data)
    trainer = Retrainer(search.records[-1].genotype, RetrainConfig(epochs=1, batch_size=16, cutout=8), 0)
    row = trainer.train_epoch(data, cfg.data)
    assert row["epoch"] == 1 and np.isfinite(row["train_loss"])
    # the reported accuracy is the trained network's on the whole test split, counted here
    model = trainer.model.eval()
    with torch.no_grad():
        x, y = next(data.eval_batches(len(data.y_test), eval_augment(cfg.data)))
        correct = int((model(x.contiguous(memory_format=trainer.memory_format)).argmax(1) == y).sum())
    assert len(y) == len(data.y_test) and row["test_acc"] == correct / len(y)
    aug = train_augment(cfg.data, cutout=0)
    assert aug.flip and (aug.crop_padding == 4) == (dataset == "cifar100")
    assert (aug.resized_crop == 32) == (dataset == "imagefolder")


def test_the_documented_smoke_command_on_cifar100(tmp_path):
    write_cifar100(tmp_path / "c100", n_train=160)  # at least one batch of the smoke preset's 128
    proc = drive("search.py", "--smoke-test", "--local", "--no-mlflow", "--set", "data.dataset=cifar100",
                 "--set", f"data.root={tmp_path / 'c100'}", "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GOLD-NAS search on cifar100" in proc.stdout and (tmp_path / "s" / "records.json").is_file()
    bad = drive("search.py", "--smoke-test", "--local", "--no-mlflow", "--set", "data.dataset=cifar100",
                "--set", f"data.root={tmp_path / 'none'}", "--out", str(tmp_path / "t"))
    assert bad.returncode == 2 and "CIFAR-100 not found" in bad.stderr and not (tmp_path / "t").exists()


def test_config_checks_the_data_fields():
    from goldnas_ray.core.config import ConfigError

    for override, field in [("data.dataset=svhn", "data.dataset"), ("data.subset=0", "data.subset"),
                            ("data.path=disk", "data.path"), ("data.labels=middle", "data.labels"),
                            ("data.random_resized_crop=true", "data.random_resized_crop"),
                            ("space.stem=vgg", "space.stem")]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            Config().override([override])

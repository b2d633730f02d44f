"""Bad configuration is rejected, naming the field and the value, before any training; the typed
models build every config (YAML, --set, dicts, direct construction) and publish its schema and
reference table."""
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from drivers import drive

from goldnas_ray.core.config import (DATASETS, Config, ConfigError, DataConfig, RetrainConfig, SearchConfig,
                                     json_schema, reference_table)
from goldnas_ray.core.search import GoldSearch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override,field", [
    ("space.operators=[conv_9x9]", "space.operators.0"),
    ("space.init_channels=0", "space.init_channels"),
    ("space.num_cells=-2", "space.num_cells"),
    ("space.num_nodes=0", "space.num_nodes"),
    ("search.xi_min=0.2", "search.xi_min"),
    ("search.c0=1.0", "search.c0"),
    ("search.lambda0=0", "search.lambda0"),
    ("search.cost=energy", "search.cost"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.dataset=mnist", "data.dataset"),
    ("search.n0=two", "search.n0"),
    ("search.nonsense=1", "search.nonsense"),
    ("data.crop_padding=abc", "data.crop_padding"),
    ("data.flip=3", "data.flip"),
    ("data.flip=1", "data.flip"),
    ("retrain.warmup_epochs=30", "retrain.warmup_epochs"),
    ("search.record_min_gap=0.2", "search.record_min_gap"),
])
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        Config().override([override])


def test_errors_name_the_value_and_what_is_expected():
    with pytest.raises(ConfigError) as err:
        Config().override(["data.crop_padding=abc"])
    assert str(err.value) == "data.crop_padding: input should be a valid integer, got 'abc'"
    with pytest.raises(ConfigError, match=r"^data.batch_size: input should be a valid integer, got 3.5$"):
        Config().override(["data.batch_size=3.5"])
    with pytest.raises(ConfigError, match=r"^data.batch_size: input should be a valid integer, got True$"):
        Config().override(["data.batch_size=true"])  # a count is an integer, not a flag
    config = Config()
    with pytest.raises(ConfigError, match=r"xi_min \(0.9\) must not exceed"):
        config.search.xi_min = 0.9
    assert config.search.xi_min == 0.01  # a refused assignment leaves the old value
    with pytest.raises(ConfigError, match=r"^unknown config field 'search.nonsense'; known: max_epochs, w_lr"):
        Config().override(["search.nonsense=1"])
    with pytest.raises(ConfigError, match=r"^data.flip: input should be a valid boolean, got 3$"):
        Config().override(["data.flip=3"])


def test_overrides_are_applied_together_then_checked():
    # each alone would break xi_min <= xi_max against the other's default
    cfg = Config().override(["search.xi_max=0.5", "search.xi_min=0.3"])
    assert (cfg.search.xi_min, cfg.search.xi_max) == (0.3, 0.5)
    # YAML scalars for numbers, lists and null; the written text for text fields
    cfg = Config().override(["data.root=123", "data.image_column=yes", "search.flops_min=1e12",
                             "space.operators=skip_connect,max_pool_3x3", "data.image_size=null", "seed=3"])
    assert (cfg.data.root, cfg.data.image_column, cfg.search.flops_min) == ("123", "yes", 1e12)
    assert cfg.space.operators == ["skip_connect", "max_pool_3x3"] and cfg.data.image_size is None
    assert Config().seed == 0 and cfg.seed == 3  # a new config each time: the original is untouched


def test_every_construction_is_validated():
    with pytest.raises(ConfigError, match=r"retrain.epochs: input should be greater than 0, got 0"):
        RetrainConfig(epochs=0)
    with pytest.raises(ConfigError, match=r"retrain.lr_min \(0.5\) must not exceed retrain.lr \(0.025\)"):
        RetrainConfig.from_dict({"lr_min": 0.5})
    retrain = RetrainConfig()
    with pytest.raises(ConfigError, match="retrain.drop_path: input should be less than 1"):
        retrain.drop_path = 1.0
    with pytest.raises(ConfigError, match=r"data.random_resized_crop needs data.image_size"):
        DataConfig(random_resized_crop=True)
    with pytest.raises(ConfigError, match=r"data.path=stream reads imagefolder, parquet data, not digits"):
        DataConfig(path="stream")
    with pytest.raises(ConfigError, match="search.amp"):
        SearchConfig(amp="fp16")


def test_flops_min_above_the_supernet_is_rejected_before_training():
    cfg = Config().override(["search.flops_min=1e12", "space.num_cells=3"])
    with pytest.raises(ValueError, match="search.flops_min"):
        GoldSearch(cfg, (1, 8, 8), 10)


def test_yaml_round_trip_and_errors(tmp_path):
    cfg = Config().override(["search.lambda0=0.5", "space.operators=skip_connect,max_pool_3x3"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    back = Config.from_yaml(path)
    assert back == cfg and back.search.lambda0 == 0.5
    assert Config().merge_yaml(path).space.operators == ["skip_connect", "max_pool_3x3"]
    path.write_text("search: [1, 2]")
    with pytest.raises(ConfigError, match="search: input should be a valid dictionary"):
        Config.from_yaml(path)
    path.write_text("search:\n  xi_min: 0.2\n")
    with pytest.raises(ConfigError, match=r"search.xi_min \(0.2\) must not exceed search.xi_max \(0.05\)"):
        Config.from_yaml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        Config.from_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize("override, message", [
    ("data.crop_padding=abc", "error: data.crop_padding: input should be a valid integer, got 'abc'"),
    ("data.flip=3", "error: data.flip: input should be a valid boolean, got 3"),
])
def test_the_search_pipeline_prints_one_error_line(tmp_path, override, message):
    proc = drive("search.py", "--local", "--no-mlflow", "--out", str(tmp_path / "x"), "--set", override)
    assert proc.returncode == 2 and proc.stderr == message + "\n", proc.stderr
    assert not (tmp_path / "x").exists()


def test_the_schema_validates_every_preset_and_catches_typos(capsys):
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    presets = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(presets) >= 3
    for path in presets:
        raw = yaml.safe_load(path.read_text())
        jsonschema.validate(raw, schema)
        assert Config.from_dict(raw).to_dict()["space"] == Config.from_yaml(path).space.model_dump()
    with pytest.raises(jsonschema.ValidationError, match="'batchsize' was unexpected"):
        jsonschema.validate({"data": {"batchsize": 64}}, schema)
    with pytest.raises(jsonschema.ValidationError, match="'mnist' is not one of"):
        jsonschema.validate({"data": {"dataset": "mnist"}}, schema)
    from goldnas_ray.core.config import main  # python -m goldnas_ray.core.config --schema

    capsys.readouterr()
    assert main(["--schema"]) == 0
    printed = capsys.readouterr()
    assert printed.err == "" and json.loads(printed.out) == schema


def test_the_reference_table_in_the_docs_is_the_models():
    """docs/configuration.md holds the table generated from the models, between its markers."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    start, end = "<!-- generated: python -m goldnas_ray.core.config --markdown -->\n", "<!-- end generated -->"
    assert start in text and end in text
    assert text.split(start, 1)[1].split(end, 1)[0] == reference_table(), \
        "regenerate it: python -m goldnas_ray.core.config --markdown"
    fields, datasets = reference_table().split("\n\n")
    assert [line.split("`")[1] for line in datasets.splitlines()[2:]] == list(DATASETS)
    rows = [line for line in fields.splitlines() if line.startswith("| `")]
    expected = sum(len(section.model_fields) for section in (Config.model_fields[s].annotation for s in
                                                             ("space", "data", "search", "retrain"))) + 1
    assert len(rows) == expected  # every field of every section, and the seed
    assert "| `search.xi_min` | float | `0.01` | >= 0, < 1 |" in reference_table()


def test_one_dataset_registry_with_a_loader_for_every_name():
    from goldnas_ray.data.datasets import LOADERS

    assert set(LOADERS) == set(DATASETS)
    assert json_schema()["$defs"]["DataConfig"]["properties"]["dataset"]["enum"] == list(DATASETS)

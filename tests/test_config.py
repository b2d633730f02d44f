"""Bad configuration is rejected, naming the field, before any training."""
import pytest

from goldnas_ray.core.config import Config, ConfigError
from goldnas_ray.core.search import GoldSearch


@pytest.mark.parametrize("override,field", [
    ("space.operators=[conv_9x9]", "space.operators"),
    ("space.init_channels=0", "space.init_channels"),
    ("space.num_cells=-2", "space.num_cells"),
    ("space.num_nodes=0", "space.num_nodes"),
    ("search.xi_min=0.2", "search.xi_min"),
    ("search.c0=1.0", "search.c0"),
    ("search.lambda0=0", "search.lambda0"),
    ("search.cost=latency", "search.cost"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.dataset=mnist", "data.dataset"),
    ("search.n0=two", "search.n0"),
    ("search.nonsense=1", "search.nonsense"),
])
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        Config().override([override]).validate()


def test_flops_min_above_the_supernet_is_rejected_before_training():
    cfg = Config().override(["search.flops_min=1e12", "space.num_cells=3"]).validate()
    with pytest.raises(ValueError, match="search.flops_min"):
        GoldSearch(cfg, (1, 8, 8), 10)


def test_yaml_round_trip_and_errors(tmp_path):
    cfg = Config().override(["search.lambda0=0.5", "space.operators=skip_connect,max_pool_3x3"])
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg.to_dict()))
    back = Config.from_yaml(path).validate()
    assert back.search.lambda0 == 0.5 and back.space.operators == ["skip_connect", "max_pool_3x3"]
    path.write_text("search: [1, 2]")
    with pytest.raises(ConfigError, match="search"):
        Config.from_yaml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        Config.from_yaml(tmp_path / "missing.yaml")

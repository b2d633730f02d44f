"""goldnas-ray: GOLD-NAS (Gradual, One-Level, Differentiable NAS) at scale on Ray.

The core (config, space, operations, supernet, cost, schedule, search, genotype, discrete,
data) is pure PyTorch. Ray Train / Ray Tune / MLflow orchestration lives in separate modules.
"""
from goldnas_ray.config import Config, ConfigError, DataConfig, SearchConfig, SpaceConfig
from goldnas_ray.cost import count_params, total_flops
from goldnas_ray.discrete import DiscreteNet, build_network
from goldnas_ray.genotype import Genotype, GenotypeError, load_genotype
from goldnas_ray.search import GoldSearch
from goldnas_ray.supernet import SuperNet

__version__ = "0.1.0"

__all__ = [
    "Config", "ConfigError", "DataConfig", "SearchConfig", "SpaceConfig", "count_params",
    "total_flops", "DiscreteNet", "build_network", "Genotype", "GenotypeError", "load_genotype",
    "GoldSearch", "SuperNet", "__version__",
]

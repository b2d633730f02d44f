"""goldnas-ray: GOLD-NAS (Gradual, One-Level, Differentiable NAS) at scale on Ray.

Layers, each importing only those before it:

    core           the algorithm in pure PyTorch (space, operators, genotypes, networks,
                   costs, pruning schedule, the search state and its epoch protocol, config)
    data           datasets and each epoch's deterministic batches
    files          run files, local or in object storage, each replaced whole
    retrain        the retraining recipe, random baselines, retrain plans, the front report
    run            the search loop shared by both backends, console output, plots
    tracking       MLflow
    orchestration  Ray Train (search) and Ray Tune (retrain)
    cli            what the pipelines/ scripts share

The first five import neither Ray nor MLflow (tests/test_layers.py checks it).
"""
from goldnas_ray.core.config import Config, ConfigError, DataConfig, SearchConfig, SpaceConfig
from goldnas_ray.core.costs import count_params, total_flops
from goldnas_ray.core.discrete import DiscreteNet, build_network
from goldnas_ray.core.genotype import Genotype, GenotypeError, load_genotype
from goldnas_ray.core.search import GoldSearch
from goldnas_ray.core.supernet import SuperNet
from goldnas_ray.run.drawing import plot_genotype

__version__ = "0.2.0"

__all__ = [
    "Config", "ConfigError", "DataConfig", "SearchConfig", "SpaceConfig", "count_params",
    "total_flops", "DiscreteNet", "build_network", "Genotype", "GenotypeError", "load_genotype",
    "GoldSearch", "SuperNet", "plot_genotype", "__version__",
]

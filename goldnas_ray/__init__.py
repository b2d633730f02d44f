"""goldnas-ray: GOLD-NAS (Gradual, One-Level, Differentiable NAS) at scale on Ray.

Layers, each importing only those before it:

    core           the algorithm in pure PyTorch (space, operators, genotypes, networks,
                   costs, pruning schedule, the search state and its epoch protocol, config)
    files          run files, local or in object storage, each replaced whole
    data           datasets (read through ``files``' storage layer) and each epoch's batches
    retrain        the retraining recipe, random baselines, retrain plans, the front report
    sweep          a sweep's plan, report and retrain (grid points x seeds)
    models         trained networks kept as files (``load_model``), picked and exported
    run            the search loop shared by both backends, console output, plots
    tracking       MLflow
    orchestration  Ray Train (search) and Ray Tune (retrain, sweep)
    cli            what the pipelines/ scripts share

The first seven import neither Ray nor MLflow (tests/test_layers.py checks it). The names below
are imported when first used, so ``import goldnas_ray`` itself costs nothing.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

_EXPORTS = {
    "Config": "core.config", "ConfigError": "core.config", "DataConfig": "core.config",
    "SearchConfig": "core.config", "SpaceConfig": "core.config", "RetrainConfig": "core.config",
    "count_params": "core.costs", "total_flops": "core.costs",
    "DiscreteNet": "core.discrete", "build_network": "core.discrete",
    "Genotype": "core.genotype", "GenotypeError": "core.genotype", "load_genotype": "core.genotype",
    "GoldSearch": "core.search", "SuperNet": "core.supernet", "plot_genotype": "run.drawing",
    "load_model": "models.saved",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'goldnas_ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"goldnas_ray.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

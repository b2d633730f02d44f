"""The errors that mean "the user's input or environment is wrong", not a bug: a bad config
value, missing or malformed data or genotype files, an unusable output folder, an unreachable
or too small cluster, an unreachable MLflow server or storage, trials left unfinished. A
pipeline prints them as one line (``cli.run_main``); a sweep reports them as the reason a
search failed, without retrying it."""
from __future__ import annotations

from goldnas_ray.core.config import ConfigError
from goldnas_ray.core.genotype import GenotypeError
from goldnas_ray.core.space import SpaceError
from goldnas_ray.data import DataError
from goldnas_ray.files.search_files import OutputDirError
from goldnas_ray.files.store import StorageError
from goldnas_ray.orchestration.cluster import ClusterError
from goldnas_ray.retrain.plan import RetrainError
from goldnas_ray.sweep.plan import SweepError
from goldnas_ray.tracking.common import TrackingError

USER_ERRORS = (ConfigError, SpaceError, GenotypeError, DataError, OutputDirError, ClusterError,
               TrackingError, RetrainError, StorageError, SweepError)

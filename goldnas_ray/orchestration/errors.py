"""The errors that mean "the user's input or environment is wrong", not a bug: a bad config
value, missing or malformed data or genotype files, an unusable output folder, an unreachable
or too small cluster, an unreachable MLflow server or storage, trials left unfinished. A
pipeline prints them as one line (``cli.run_main``).

Of those, the errors of a run's own input (its config, space, data, genotypes; a diverged
schedule is a config error) come back the same however often the run is tried again: a sweep
reports them as the reason a search failed and does not retry it. Raised inside a Ray Train
worker, such an error reaches the driver wrapped in Ray Train's own (:func:`user_error` finds
it there)."""
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
NOT_RETRIED = (ConfigError, SpaceError, GenotypeError, DataError)


def user_error(exc: BaseException, kinds: tuple[type, ...] = USER_ERRORS) -> BaseException | None:
    """``exc`` itself when it is one of ``kinds``, else the first such error among the worker
    failures of a Ray Train error and the causes it wraps; None when there is none."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kinds):
            return e
        todo += list(getattr(e, "worker_failures", {}).values())
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None), getattr(e, "controller_failure", None)]
    return None


def failed_on_input(why: str) -> bool:
    """Whether a failure a sweep reported (``"<ErrorType>: <message>"``) came from its search's
    own input: trying it again would fail the same way."""
    kinds, todo = set(), list(NOT_RETRIED)
    while todo:
        kind = todo.pop()
        kinds.add(kind.__name__)
        todo += kind.__subclasses__()
    return why.split(":", 1)[0] in kinds

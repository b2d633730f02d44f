"""The errors that mean "the user's input or environment is wrong", not a bug: a bad config
value, missing or malformed data, genotype or model files, an unusable output folder, an unreachable
or too small cluster, an unreachable MLflow server or storage, trials left unfinished. A
pipeline prints them as one line (``cli.process.run_main``).

Each has a kind (:func:`kind_of`): :data:`INPUT` when it is a fault of the run's own input
(its config, space, data, genotypes, a location or bucket that does not exist; a diverged
schedule is a config error), which comes back the same however often the run is tried again,
so a sweep reports it as the reason a search failed and does not retry it; :data:`INFRASTRUCTURE`
otherwise (a storage outage the storage layer gave up on, a lost cluster, an unreachable
tracking server), which a sweep retries. Where one class covers both (StorageError,
TrackingError, RetrainError, SweepError), the code that raises it decides: its ``kind``
attribute; the others have their class's (:data:`KINDS`, the one table of user errors).
Raised inside a Ray Train worker, such an error reaches the driver wrapped in Ray Train's own
(:func:`user_error` finds it there, through the wrappers' failures and explicit causes only:
an error handled earlier, kept as ``__context__``, says nothing about this one)."""
from __future__ import annotations

from goldnas_ray.core.config import ConfigError
from goldnas_ray.core.genotype import GenotypeError
from goldnas_ray.core.space import SpaceError
from goldnas_ray.data import DataError
from goldnas_ray.files.search_files import OutputDirError
from goldnas_ray.files.store import INFRASTRUCTURE, INPUT, StorageError
from goldnas_ray.models.saved import ModelError
from goldnas_ray.orchestration.cluster import ClusterError
from goldnas_ray.retrain.plan import RetrainError
from goldnas_ray.sweep.plan import SweepError
from goldnas_ray.tracking.common import TrackingError

# each user error's class and its kind (one with a ``kind`` of its own says it; this one when it
# lost it on the way)
KINDS: dict[type, str] = {ConfigError: INPUT, SpaceError: INPUT, GenotypeError: INPUT, DataError: INPUT,
                          RetrainError: INPUT, SweepError: INPUT, ModelError: INPUT, OutputDirError: INFRASTRUCTURE,
                          ClusterError: INFRASTRUCTURE, TrackingError: INFRASTRUCTURE,
                          StorageError: INFRASTRUCTURE}
USER_ERRORS = tuple(KINDS)


def kind_of(exc: BaseException) -> str | None:
    """:data:`INPUT` or :data:`INFRASTRUCTURE` for a user error, None for anything else."""
    if not isinstance(exc, USER_ERRORS):
        return None
    own = getattr(exc, "kind", None)
    if own in (INPUT, INFRASTRUCTURE):
        return own
    return next(kind for cls, kind in KINDS.items() if isinstance(exc, cls))


def user_error(exc: BaseException) -> BaseException | None:
    """``exc`` itself when it is a user error, else the user error among the worker failures of
    a Ray Train error and the causes it wraps (one of kind input first, when several workers
    failed); None when there is none. Only explicit causes are followed (``raise ... from``,
    Ray's ``cause``), never ``__context__``."""
    seen: set[int] = set()
    found: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, USER_ERRORS):
            found.append(e)  # its own kind counts, not that of what it wraps
            continue
        todo += list(getattr(e, "worker_failures", {}).values())
        todo += [e.__cause__, getattr(e, "cause", None), getattr(e, "controller_failure", None)]
    return next((e for e in found if kind_of(e) == INPUT), found[0] if found else None)


def error_kind(exc: BaseException) -> str | None:
    """The kind of the user error ``exc`` is or wraps (:func:`user_error`); None for a bug."""
    found = user_error(exc)
    return kind_of(found) if found is not None else None

"""What the pipeline scripts share: the default output folder and the error convention
(a user error is printed as ``error: ...`` with exit status 2, before compute is spent)."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from goldnas_ray.artifacts import OutputDirError
from goldnas_ray.config import ConfigError
from goldnas_ray.data import DataError

USER_ERRORS = (ConfigError, OutputDirError, DataError, ValueError, RuntimeError)


def output_folder(out: Path | None, resume: bool, stage: str) -> Path:
    """``out``, or ``runs/<stage>-<date>-<time>`` for a new run; --resume needs ``out``."""
    if out is not None:
        return out
    if resume:
        raise OutputDirError(f"--resume needs --out, the folder of the {stage} to continue")
    return Path("runs") / time.strftime(f"{stage}-%Y%m%d-%H%M%S")


def run_main(body: Callable[[], object]) -> int:
    """Run a pipeline's body; a user error becomes ``error: ...`` on stderr and status 2."""
    try:
        body()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

"""How a tracked run ends, written once for the search (in-process or on Ray Train) and the
retrain (Ray Tune).

A run whose work returns ends FINISHED (its driver says so after the last files are written);
one that was stopped ends KILLED: Ctrl-C raises KeyboardInterrupt, and ``ray job stop``'s
SIGTERM raises SystemExit in the pipelines' processes (``cli.process.configure_process``); any
other error ends it FAILED. Marking the tracker never hides what ended the run: when the
tracker itself fails (a tracking server gone, say), that is logged in one line and the original
error goes on.

A stop that comes while Ray Tune or Ray Train runs asks them to stop through their own graceful
stop (Tune saves its experiment state one last time, Train aborts its workers; their
checkpoints stay): ``cli.process.configure_process`` installs the signal handlers and puts the
way to run such a fit in :data:`GRACEFUL`, which ``orchestration.cluster.interruptible`` uses.
The fit returns, and the driver that called it sees the stop as KeyboardInterrupt or
SystemExit, as if the signal had come then.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

# the tracker's way to end its run(s) with a status: FINISHED, KILLED or FAILED
Finish = Callable[[str], None]
# how this process runs a fit that a stop signal ends gracefully (cli.process.fit_until_stopped,
# put here by cli.process.configure_process); empty in a process cli did not set up
GRACEFUL: list[Callable[[Callable[[], Any]], Any]] = []


class RunStopped(Exception):
    """A run stopped by Ctrl-C or SIGTERM, its tracked runs already ended KILLED. ``progress``
    says how far it got ("3 of 8 trials finished"), ``out`` where it lies (``--resume --out``
    continues it); ``code`` is the exit status, the shell's convention: 130 after Ctrl-C, 143
    after SIGTERM (raised as SystemExit(143) by the pipelines' handler, or SystemExit(15) by
    the one ``ray.init`` installs in its stead, outside a fit)."""

    def __init__(self, progress: str, cause: BaseException, out: object = None):
        super().__init__(progress)
        self.progress, self.out = progress, out
        code = cause.code if isinstance(cause, SystemExit) and isinstance(cause.code, int) else 130
        self.code = 128 + code if 0 < code < 64 else code


def end_status(exc: BaseException) -> str:
    """KILLED when ``exc`` is a stop (Ctrl-C, or SIGTERM raised as SystemExit), FAILED otherwise."""
    return "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"


def mark_ended(finish: Finish | None, status: str, log: Callable[[str], None] = print) -> None:
    """``finish(status)``; a tracker that fails to take it is reported, never raised."""
    if finish is None:
        return
    try:
        finish(status)
    except Exception as exc:  # noqa: BLE001 - the run's own outcome matters more than its record
        log(f"could not mark the tracked run {status}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def ends_tracked_run(finish: Finish | None, log: Callable[[str], None] = print) -> Iterator[None]:
    """Run the block; when it raises, end the tracked run KILLED or FAILED, then re-raise."""
    try:
        yield
    except BaseException as exc:
        mark_ended(finish, end_status(exc), log)
        raise


@contextlib.contextmanager
def tracked_or_stopped(finish: Finish | None, out: object, progress: Callable[[], str],
                       log: Callable[[str], None] = print) -> Iterator[None]:
    """How every driver runs its work: :func:`ends_tracked_run` around the block, and a stop in
    it (Ctrl-C, SIGTERM) raised as RunStopped, ``progress()`` saying how far it got."""
    try:
        with ends_tracked_run(finish, log):
            yield
    except (KeyboardInterrupt, SystemExit) as exc:
        raise RunStopped(progress(), exc, out) from None

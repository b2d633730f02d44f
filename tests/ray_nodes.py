"""Stopping only the Ray processes a test session started.

``ray stop`` (with or without ``--force``) ends every Ray process of the user on the machine,
a developer's own cluster included. The test session instead marks everything it starts:
conftest.py sets ``GOLDNAS_TEST_SESSION`` to a value of its own before any subprocess starts,
and every process started from the session (``ray start`` and the raylet, GCS and dashboard it
spawns, embedded clusters of pipelines, job drivers) inherits it. Ray's workers and agents
rename themselves (``ray::IDLE``), which wipes the environment /proc shows, so they are found
as what they are: descendants of a marked process (a raylet). Stopping a session's processes
means signalling the marked processes and their descendants, and nothing else. Linux only
(it reads /proc).

    python tests/ray_nodes.py stop VALUE     # what the README's `ray stop` becomes in the tests
"""
from __future__ import annotations

import os
import signal
import sys
import time

MARKER = "GOLDNAS_TEST_SESSION"


def marked(value: str, prefix: bool = False) -> list[int]:
    """Pids of the processes whose environment has MARKER=value (``prefix``: a value that starts
    with ``value``) and of all their descendants (this process and the ones it runs under, a
    shell say, excluded)."""
    needle = f"{MARKER}={value}".encode()
    mine = _ancestry()
    parents, roots = {}, set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat") as f:
                state, parent = f.read().rsplit(") ", 1)[1].split()[:2]
            if state == "Z":  # exited, waiting for its parent to reap it: nothing left to stop
                continue
            parents[pid] = int(parent)
            with open(f"/proc/{pid}/environ", "rb") as f:
                if any(e == needle or (prefix and e.startswith(needle)) for e in f.read().split(b"\0")):
                    roots.add(pid)
        except (OSError, IndexError, ValueError):  # gone, or not ours to read
            continue
    return sorted(_with_descendants(roots, parents) - mine)


def descendants(pid: int) -> list[int]:
    """Pids of every process under ``pid`` (its children, theirs, ...)."""
    return sorted(_with_descendants({pid}, _parents()) - {pid})


def children(pid: int) -> list[int]:
    """Pids of the processes ``pid`` started itself."""
    return sorted(child for child, parent in _parents().items() if parent == pid)


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process /proc shows."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def _with_descendants(roots: set[int], parents: dict[int, int]) -> set[int]:
    """``roots`` and every process under them, from a pid -> parent pid table."""
    found, grew = set(roots), True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in found and child not in found:
                found.add(child)
                grew = True
    return found


def stop(value: str, timeout: float = 10.0, rounds: int = 3, prefix: bool = False) -> int:
    """SIGTERM every marked process, then SIGKILL what is left after ``timeout``; again, up to
    ``rounds`` times, for what a dying process started meanwhile (a raylet restarting a worker,
    an agent's helper). Returns how many were marked."""
    seen: set[int] = set()
    for _ in range(rounds):
        left = marked(value, prefix)
        if not left:
            break
        seen.update(left)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + (timeout if sig == signal.SIGTERM else 5)
            while time.time() < deadline and any(_alive(p) for p in left):
                time.sleep(0.2)
            left = [p for p in left if _alive(p)]
            if not left:
                break
    return len(seen)


def describe(pids: list[int]) -> list[str]:
    """``pid: command line`` of each of ``pids`` (for a test's message)."""
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid}: {command[:200]}")
        except OSError:
            found.append(f"{pid}: (gone)")
    return found


def _ancestry() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"  # a zombie has exited
    except OSError:
        return False


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "stop":
        sys.exit("usage: python tests/ray_nodes.py stop VALUE")
    stop(sys.argv[2])

"""The README's command blocks, run as a user pastes them into one shell.

A block is the indented code that follows a ``<!-- readme-test: NAME -->`` line in README.md.
:class:`ReadmeShell` runs blocks one after another like one interactive shell: variables and
exports of a block (``source``, ``export``, ``RUN=...``) stay for the next ones. Each command
is run as written, except for what shrinks or isolates the work:

- a ``pipelines/*.py`` command gets ``--smoke-test`` and one epoch (a search's ``--max-epochs 1``:
  up to 2 architectures recorded; a retrain's ``--epochs 1``), and ``--out`` below a temporary
  folder;
- ``ray start --head`` gets the test's own ports and CPUs, and the dashboard address follows;
- ``$PWD/runs`` is a temporary folder; ``mlflow ui`` gets a free port;
- ``python3 -m venv`` and ``pip install`` steps of the set-up line are left out (CI did them)
  and ``.venv/bin`` is the venv running the tests;
- ``ray stop`` stops the processes of the shell's cluster only (``tests/ray_nodes.py``): as
  written it would end every Ray cluster of the user on the machine, a developer's own too.
  Everything the shell starts carries a mark of its own (``GOLDNAS_TEST_SESSION``), and Ray's
  files go under the test session's ``RAY_TMPDIR``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
MARK = re.compile(r"^<!-- readme-test: ([\w-]+) -->\s*$")
MARKER = "GOLDNAS_TEST_SESSION"  # tests/ray_nodes.py
ONE_EPOCH = {"search.py": " --max-epochs 1", "retrain.py": " --epochs 1"}


def blocks(text: str | None = None) -> dict[str, list[str]]:
    """NAME -> the block's commands (continuation lines joined) in README order."""
    lines = (README.read_text() if text is None else text).splitlines()
    found: dict[str, list[str]] = {}
    i = 0
    while i < len(lines):
        m = MARK.match(lines[i])
        i += 1
        if not m:
            continue
        body: list[str] = []
        while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
            if lines[i].strip():
                body.append(lines[i][4:])
            elif body:
                break
            i += 1
        commands, current = [], ""
        for line in body:
            current += line.rstrip()
            if current.endswith("\\"):
                current = current[:-1].rstrip() + " "
                continue
            commands.append(current.strip())
            current = ""
        found[m.group(1)] = commands
    return found


class ReadmeShell:
    """One shell session: HOME of its own (so ~/.ray/auth_token is this session's), the
    environment carried from block to block."""

    def __init__(self, home: Path, runs: Path, gcs_port: int, dashboard_port: int, mlflow_port: int):
        home.mkdir(parents=True, exist_ok=True)
        self.runs, self.gcs_port, self.dashboard_port = runs, gcs_port, dashboard_port
        self.mlflow_port = mlflow_port
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        self.env = base | {"HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0",
                           "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", "/tmp"),
                           MARKER: f"{os.environ.get(MARKER, 'readme')}-cluster"}
        self.blocks = blocks()

    def adapt(self, command: str) -> str:
        steps = [s for s in command.split(" && ")
                 if not s.startswith("python3 -m venv") and "pip install" not in s]
        out = []
        for step in steps:
            step = step.split(" #")[0].rstrip()  # a trailing comment would swallow added flags
            step = step.replace(".venv/bin/", f"{BIN}/").replace("$PWD/runs", str(self.runs))
            step = step.replace("http://127.0.0.1:8265", f"http://127.0.0.1:{self.dashboard_port}")
            if re.search(r"\bpipelines/\w+\.py\b", step):
                step = self._smoke(step)
            if step.startswith("ray start --head"):
                step += (f" --port {self.gcs_port} --dashboard-port {self.dashboard_port} --num-cpus 1"
                         f" --disable-usage-stats")
            if step == "ray stop":
                step = f'{sys.executable} {ROOT / "tests" / "ray_nodes.py"} stop "${MARKER}"'
            if step.startswith("mlflow ui"):
                step = re.sub(r"--port \d+", f"--port {self.mlflow_port}", step)
            out.append(step)
        return " && ".join(out)

    def _smoke(self, step: str) -> str:
        if "--out" not in step:
            step += f" --out {self.runs}/local-run"
        return step + " --smoke-test" + ONE_EPOCH.get(re.search(r"\bpipelines/(\w+\.py)\b", step).group(1), "")

    def script(self, name: str) -> str:
        return "\n".join(self.adapt(c) for c in self.blocks[name])

    def run(self, name: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """Run block ``name``; on success, what it exported or set stays for later blocks."""
        env_file = self.runs.parent / f".env-{name}"
        self.runs.mkdir(parents=True, exist_ok=True)
        wrapped = f"set -ea\n{self.script(name)}\nenv -0 > {env_file}\n"
        proc = subprocess.run(["bash", "-c", wrapped], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode == 0 and env_file.is_file():
            pairs = [item.split("=", 1) for item in env_file.read_text().split("\0") if "=" in item]
            self.env = {k: v for k, v in pairs}
        return proc

    def start(self, name: str) -> subprocess.Popen:
        """Start a block that runs until stopped (a server), in the current environment."""
        return subprocess.Popen(["bash", "-c", f"exec {self.script(name)}"], cwd=ROOT, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

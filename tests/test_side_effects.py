"""Library code leaves the process as it found it: no environment variables, logger levels,
global RNG seeds, signal handlers or plotting backends set below goldnas_ray/cli/, the one
place that sets them (for the pipelines' processes and, through the Ray job's runtime_env, for
the Ray processes of a job)."""
import ast
import logging
import os
from pathlib import Path

import torch

from conftest import tiny_config

PACKAGE = Path(__file__).resolve().parents[1] / "goldnas_ray"
ALLOWED = set((PACKAGE / "cli").glob("*.py"))

# (attribute chain of the callee, what it changes)
FORBIDDEN_CALLS = {
    ("os", "environ", "setdefault"): "an environment variable",
    ("os", "environ", "update"): "environment variables",
    ("os", "environ", "pop"): "an environment variable",
    ("os", "putenv"): "an environment variable",
    ("os", "unsetenv"): "an environment variable",
    ("torch", "manual_seed"): "the global RNG",
    ("torch", "set_rng_state"): "the global RNG",
    ("torch", "cuda", "manual_seed"): "the global CUDA RNG",
    ("torch", "cuda", "manual_seed_all"): "the global CUDA RNG",
    ("torch", "use_deterministic_algorithms"): "torch's global mode",
    ("matplotlib", "use"): "the plotting backend",
    ("logging", "basicConfig"): "the root logger",
    ("signal", "signal"): "a signal handler",
    ("warnings", "filterwarnings"): "the warning filters",
}


def _chain(node: ast.AST) -> tuple[str, ...]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def _restored_blocks(tree: ast.AST) -> set[int]:
    """Lines inside ``with torch.random.fork_rng(...)``: the RNG is given back at its end."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(
                isinstance(item.context_expr, ast.Call) and _chain(item.context_expr.func)[-1:] == ("fork_rng",)
                for item in node.items):
            lines |= set(range(node.lineno, node.end_lineno + 1))
    return lines


def side_effects(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if path in ALLOWED:
            continue
        tree = ast.parse(path.read_text())
        restored = _restored_blocks(tree)
        for node in ast.walk(tree):
            where = f"{path.relative_to(root.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                chain = _chain(node.func)
                if chain in FORBIDDEN_CALLS and chain[0] == "torch" and node.lineno in restored:
                    continue
                if chain in FORBIDDEN_CALLS:
                    found.append(f"{where} {'.'.join(chain)} changes {FORBIDDEN_CALLS[chain]}")
                elif chain[-1:] == ("setLevel",):
                    found.append(f"{where} sets a logger's level")
            elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Subscript) and _chain(target.value) == ("os", "environ"):
                        found.append(f"{where} sets an environment variable")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.startswith("matplotlib.pyplot") for n in names):
                    found.append(f"{where} imports pyplot (a global figure registry and backend)")
    return found


def test_no_library_module_sets_process_wide_state():
    assert side_effects() == []


def test_the_check_catches_each_kind(tmp_path):
    fake = tmp_path / "goldnas_ray"
    fake.mkdir()
    (fake / "bad.py").write_text(
        "import os, torch, logging, matplotlib\nimport matplotlib.pyplot as plt\n"
        "os.environ['X'] = '1'\nos.environ.setdefault('Y', '2')\ntorch.manual_seed(0)\n"
        "logging.getLogger('ray').setLevel(logging.WARNING)\nmatplotlib.use('Agg')\n"
        "with torch.random.fork_rng():\n    torch.manual_seed(1)\n")  # given back: allowed
    found = side_effects(fake)
    assert len(found) == 6, found


def test_a_search_with_tracking_and_a_retrain_epoch_leave_the_process_as_they_found_it(tmp_path, digits):
    """Run the in-process search (MLflow tracker, drawings, plots) and a retrain epoch; the
    environment, every logger's level, the global RNG and matplotlib's backend are unchanged."""
    import matplotlib
    import mlflow  # noqa: F401 - MLflow's own import-time logging set-up is not ours to judge

    from goldnas_ray.data.datasets import keep_subset
    from goldnas_ray.retrain.recipe import Retrainer
    from goldnas_ray.run.loop import run_local
    from goldnas_ray.tracking.search import search_tracker

    def snapshot():
        loggers = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
                   if isinstance(logger, logging.Logger)}
        return dict(os.environ), loggers, torch.get_rng_state(), matplotlib.get_backend()

    # torch's and MLflow's own first uses set state of their own (the first optimizer imports
    # torch._dynamo, which sets TORCHINDUCTOR_CACHE_DIR; a new sqlite store's migrations set
    # sqlalchemy's and alembic's logger levels): not ours to judge, so they happen before
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    from mlflow.tracking import MlflowClient
    MlflowClient(f"sqlite:///{tmp_path / 'warm-up.db'}").search_experiments()
    torch.manual_seed(123)
    before = snapshot()
    out = tmp_path / "s"
    tracker = search_tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "side-effects", out, workers=1)
    search = run_local(tiny_config(max_epochs=2, lambda0=1.0, xi_max=0.2, t0=0).override(["data.subset=0.25"]),
                       out, log=lambda _: None, tracker=tracker)  # a quarter of digits: what is run is the same
    Retrainer(search.records[-1].genotype, tiny_config().retrain.model_copy(update={"epochs": 1}), seed=3
              ).train_epoch(keep_subset(digits, 0.25))
    after = snapshot()
    assert after[0] == before[0]
    new_loggers = {k: v for k, v in after[1].items() if before[1].get(k, logging.NOTSET) != v}
    assert new_loggers == {}
    assert torch.equal(after[2], before[2])
    assert after[3] == before[3]
    assert (out / "plots" / "flops.png").is_file()

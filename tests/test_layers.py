"""The package's layers: every import of every module (lazy ones inside functions included)
goes downward, no import cycle, and the pure layers import neither Ray nor MLflow."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "goldnas_ray"
# bottom to top; a module may import its own layer and those listed before it
LAYERS = ["core", "files", "data", "retrain", "sweep", "models", "run", "tracking", "orchestration", "cli"]
PURE = {"core", "files", "data", "retrain", "sweep", "models", "run"}


def layer_of(module: str) -> str | None:
    """'goldnas_ray.core.search' -> 'core'; the package root itself has no layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "goldnas_ray" else None


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, module) of every import statement in the file ``module`` lives in, at any depth;
    relative imports (``from .x import y``, ``from .. import z``) resolved against it."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[:len(package) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.append((node.lineno, base))
            # from goldnas_ray import cli / from . import loop: the names may be modules
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        yield name, path


def violations(root: Path = PACKAGE) -> list[str]:
    bad = []
    for name, path in modules():
        own = layer_of(name)
        if own is None:
            continue
        for line, target in imports(path, name):
            top = target.split(".")[0]
            if own in PURE and top in ("ray", "mlflow"):
                bad.append(f"{path.name}:{line} ({own}) imports {target}")
            other = layer_of(target)
            if other is not None and other in LAYERS and LAYERS.index(other) > LAYERS.index(own):
                bad.append(f"{path.name}:{line} ({own}) imports upward: {target}")
    return bad


def test_every_module_belongs_to_a_layer():
    found = {layer_of(name) for name, _ in modules()} - {None}
    assert found <= set(LAYERS), found - set(LAYERS)
    assert PURE <= found


def test_imports_only_go_downward_and_pure_layers_avoid_ray_and_mlflow():
    assert violations() == []


def test_the_check_catches_a_lazy_ray_import(tmp_path, monkeypatch):
    """A pure module that imports ray inside a function is caught."""
    fake = tmp_path / "goldnas_ray"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "bad.py").write_text("def f():\n    import ray.train\n    from goldnas_ray.run import loop\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    found = violations()
    assert any("imports ray.train" in v for v in found) and any("upward" in v for v in found), found


def test_the_check_catches_relative_imports(tmp_path, monkeypatch):
    """``from ..run import loop`` in core is as upward as the absolute form."""
    fake = tmp_path / "goldnas_ray"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "rel.py").write_text("from ..run import loop\nfrom .. import tracking\nfrom . import space\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    found = violations()
    assert sorted(found) == ["rel.py:1 (core) imports upward: goldnas_ray.run",
                             "rel.py:1 (core) imports upward: goldnas_ray.run.loop",
                             "rel.py:2 (core) imports upward: goldnas_ray.tracking"], found


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports, at any depth (lazy imports included).
    ``from pkg import sub`` imports the module pkg.sub, not pkg's own names: pkg (its
    __init__) counts only when no module is imported through it on that line."""
    known = dict(modules())
    graph = {}
    for name, path in known.items():
        by_line: dict[int, set[str]] = {}
        for line, target in imports(path, name):
            by_line.setdefault(line, set()).add(target)
        graph[name] = {t for targets in by_line.values() for t in targets if t in known and t != name
                       and not any(u in known and u.startswith(t + ".") for u in targets)}
    return graph


def import_cycle() -> list[str] | None:
    """One import cycle among the package's modules (a, b, ..., a), or None."""
    graph, state, path = import_graph(), {}, []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_cycle():
    """No module imports one that imports it back, directly or through others, lazily or not:
    a cycle hides which layer a module belongs to and breaks on import order."""
    assert import_cycle() is None, " -> ".join(import_cycle())


def test_the_cycle_check_catches_a_lazy_cycle_and_passes_a_package_importing_its_modules(tmp_path, monkeypatch):
    fake = tmp_path / "goldnas_ray"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "__init__.py").write_text("from goldnas_ray.core.a import f\n")
    (fake / "core" / "a.py").write_text("from goldnas_ray.core import b\ndef f():\n    pass\n")
    (fake / "core" / "b.py").write_text("def g():\n    from .c import h\n")
    (fake / "core" / "c.py").write_text("X = 1\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert import_cycle() is None
    (fake / "core" / "c.py").write_text("def h():\n    from goldnas_ray.core.a import f\n")
    assert import_cycle() == ["goldnas_ray.core.a", "goldnas_ray.core.b", "goldnas_ray.core.c", "goldnas_ray.core.a"]


@pytest.mark.parametrize("module, expected", [("goldnas_ray.core.search", "core"),
                                              ("goldnas_ray.cli", "cli"), ("goldnas_ray", None)])
def test_layer_of(module, expected):
    assert layer_of(module) == expected


# what a test runs to start a Ray node, an MLflow server or an S3 endpoint of its own, or to join
# or submit to one: such a test carries the mark by hand
STARTS_A_SERVICE = ('BIN / "ray"', 'BIN / "mlflow"', 'BIN / "moto_server"', "ray.init(", "start_moto(",
                    "run_mlflow_server(", "submit(")
# `pytest --collect-only -p report_tests` prints, for each test, its id, whether it is marked
# `services` (what `-m "not services"` leaves out), the fixtures it uses (the closure: those of
# its fixtures too) and its function's source
REPORT = """
import inspect, json
def pytest_collection_finish(session):
    for item in session.items:
        print("TEST " + json.dumps([item.nodeid, item.get_closest_marker("services") is not None,
                                    sorted(item.fixturenames), inspect.getsource(item.function)]))
"""


def test_the_fast_selection_starts_no_server(tmp_path):
    """`pytest -m "not services"` (CONTRIBUTING.md) selects no test that uses the session's Ray
    cluster, MLflow server or S3 endpoint (conftest's service fixtures, through any fixture it
    uses), nor one that starts, joins or submits to a Ray node, MLflow server or S3 endpoint of
    its own: the markers follow the fixtures a test uses, and a test that starts one itself is
    marked by hand. The tests it leaves out hold each kind, so the check is not empty."""
    from conftest import SERVICE_FIXTURES

    (tmp_path / "report_tests.py").write_text(REPORT)
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             "-p", "report_tests", "tests"], cwd=PACKAGE.parent, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert listed.returncode == 0, listed.stdout[-2000:] + listed.stderr[-2000:]
    tests = [json.loads(line[len("TEST "):]) for line in listed.stdout.splitlines() if line.startswith("TEST ")]
    fast = [(nodeid, set(fixtures), source) for nodeid, services, fixtures, source in tests if not services]
    left_out = [(nodeid, set(fixtures), source) for nodeid, services, fixtures, source in tests if services]
    assert len(fast) > 100 and left_out
    for nodeid, fixtures, source in fast:
        assert not fixtures & set(SERVICE_FIXTURES), (nodeid, fixtures & set(SERVICE_FIXTURES))
        assert not [s for s in STARTS_A_SERVICE if s in source], (nodeid, [s for s in STARTS_A_SERVICE if s in source])
    for fixture in SERVICE_FIXTURES:
        assert any(fixture in fixtures for _, fixtures, _ in left_out), fixture
    assert any(s in source for _, fixtures, source in left_out if not fixtures & set(SERVICE_FIXTURES)
               for s in STARTS_A_SERVICE)  # a test marked by hand

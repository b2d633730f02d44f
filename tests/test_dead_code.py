"""No dead code: every function and class the package defines is used by the product (the
package itself, the pipelines, the benchmarks) or is part of its public API, so that what a
reader finds is what runs."""
import ast
import importlib
import inspect
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USERS = ("goldnas_ray", "pipelines", "benchmarks")


def _names_used(path: Path) -> set[str]:
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name):
            used.add(node.id)
        elif isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            used.update(a.name for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            used.update(node.value.replace(":", ".").split("."))  # "module.function" hooks, __all__
    return used


def _overrides(module: str, cls: str, name: str) -> bool:
    """``cls.name`` is a framework's hook: a base class other than object defines ``name``."""
    obj = getattr(importlib.import_module(module), cls, None)
    return inspect.isclass(obj) and any(name in vars(base) for base in obj.__mro__[1:] if base is not object)


# decorators through which a framework finds what they decorate: a dataset registry, pydantic
REGISTERING = {"register", "field_validator", "model_validator"}


def _registered(node: ast.AST) -> bool:
    """Found through a registry or a framework, not by name."""
    return any(isinstance(d, ast.Call) and getattr(d.func, "id", getattr(d.func, "attr", "")) in REGISTERING
               for d in node.decorator_list)


def unused(root: Path = ROOT) -> list[str]:
    used: set[str] = set()
    defined = []
    for folder in USERS:
        for path in sorted((root / folder).rglob("*.py")):
            used |= _names_used(path)
            if folder != "goldnas_ray":
                continue
            module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            tree = ast.parse(path.read_text())
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not _registered(node):
                    defined.append((module, None, node.name, node.lineno))
                if isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef) and not _registered(item):
                            defined.append((module, node.name, item.name, item.lineno))
    found = []
    for module, cls, name, line in defined:
        if name in used or (name.startswith("__") and name.endswith("__")):
            continue
        if cls is not None and _overrides(module, cls, name):
            continue
        found.append(f"{module}:{line} {cls + '.' if cls else ''}{name}")
    return found


def test_every_definition_is_used():
    assert unused() == []


def test_the_check_finds_an_unused_function(tmp_path):
    for folder in USERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "goldnas_ray" / "m.py").write_text("def used():\n    pass\n\n\ndef forgotten():\n    used()\n")
    assert unused(tmp_path) == ["goldnas_ray.m:5 forgotten"]


def test_no_assert_checks_anything_in_the_product():
    """``assert`` vanishes under ``python -O``: input is checked with errors that name it."""
    found = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in sorted((ROOT / "goldnas_ray").rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Assert)]
    assert found == []

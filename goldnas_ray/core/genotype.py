"""Genotypes: plain data describing one architecture of the relaxed space, stored as JSON.

A genotype holds everything needed to rebuild the network (operators per edge of every
cell, reduction flags, channels, nodes, input size, classes). Files are versioned and
checked on load; every problem is reported with its location (``cells[3].edges[2].ops``).
Never pickle: genotypes are exchanged between runs, people and tools.

The format (docs/genotypes.md) has a JSON Schema, printed by
``python -m goldnas_ray.core.genotype --schema`` (:func:`json_schema`): it says the type and
range of every field, which another tool can check files against; :func:`load_genotype` checks
those and what a schema cannot say (an edge exists in a cell of ``num_nodes`` nodes, every node
has an input, ``num_cells`` cells, reduction cells where the space puts them). ``version``: a
file without one was written before the field (version 1); a newer version than
:data:`VERSION` is refused, naming both.
"""
from __future__ import annotations

import copy
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match, relevance

from goldnas_ray.core.operations import PRIMITIVES
from goldnas_ray.core.space import STEM_STRIDE, Edge, OpKey, cell_edges, check_spatial, reduction_cells

FORMAT = "goldnas-ray/genotype"
VERSION = 1  # the format's version: raise it when a reader of the previous one would misread a file


class GenotypeError(ValueError):
    """A genotype file or dict is malformed; the message says where."""


@dataclass
class CellGenotype:
    reduction: bool
    edges: dict[Edge, tuple[str, ...]]  # only edges that keep at least one operator

    def uses_input(self, node: int) -> bool:
        return any(e.src == node for e in self.edges)


@dataclass
class Genotype:
    cells: list[CellGenotype]
    num_nodes: int
    init_channels: int
    stem_multiplier: int
    input_size: int
    in_channels: int
    num_classes: int
    metadata: dict[str, Any] = field(default_factory=dict)
    stem: str = "cifar"  # cifar | imagenet (goldnas_ray/core/network.py)

    @property
    def num_cells(self) -> int:
        return len(self.cells)

    def op_keys(self) -> list[OpKey]:
        return [key for k in range(self.num_cells) for key in self.op_keys_of(k)]

    def op_keys_of(self, cell: int) -> list[OpKey]:
        """The operators cell ``cell`` keeps."""
        return [OpKey(cell, e.src, e.dst, op) for e, ops in self.cells[cell].edges.items() for op in ops]

    def without(self, keys: Iterable[OpKey]) -> "Genotype":
        """A copy with the operators ``keys`` removed (an edge left empty goes)."""
        geno = copy.deepcopy(self)
        for key in keys:
            cell = geno.cells[key.cell]
            remaining = tuple(o for o in cell.edges.get(key.edge, ()) if o != key.op)
            if remaining:
                cell.edges[key.edge] = remaining
            else:
                cell.edges.pop(key.edge, None)
        return geno

    def live_cells(self) -> list[bool]:
        """Which cells feed the classifier; a cell whose output no later live cell reads
        is dead: the network neither builds nor runs it."""
        n = self.num_cells
        live = [False] * n
        for k in reversed(range(n)):
            if k == n - 1:
                live[k] = True
            else:
                nxt = live[k + 1] and self.cells[k + 1].uses_input(1)
                nxt2 = k + 2 < n and live[k + 2] and self.cells[k + 2].uses_input(0)
                live[k] = nxt or nxt2
        return live

    # ---- JSON --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "num_cells": self.num_cells,
            "num_nodes": self.num_nodes,
            "init_channels": self.init_channels,
            "stem_multiplier": self.stem_multiplier,
            "input_size": self.input_size,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "stem": self.stem,
            "cells": [
                {
                    "reduction": cell.reduction,
                    "edges": [{"src": e.src, "dst": e.dst, "ops": list(ops)}
                              for e, ops in sorted(cell.edges.items())],
                }
                for cell in self.cells
            ],
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> "Genotype":
        return _parse(raw)

    def to_json(self) -> str:
        """The file format (written by ``goldnas_ray.files``, read by :func:`load_genotype`)."""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def full(cls, num_cells: int, num_nodes: int, operators: Iterable[str], init_channels: int,
             stem_multiplier: int, input_size: int, in_channels: int, num_classes: int,
             stem: str = "cifar") -> "Genotype":
        """The whole relaxed space as one genotype: every operator on every edge of every cell."""
        ops = tuple(operators)
        reductions = reduction_cells(num_cells)
        cells = [CellGenotype(k in reductions, {e: ops for e in cell_edges(num_nodes)})
                 for k in range(num_cells)]
        return cls(cells, num_nodes, init_channels, stem_multiplier, input_size, in_channels, num_classes,
                   stem=stem)


def load_genotype(path: str | Path) -> Genotype:
    """Read and validate a genotype JSON file (a path, or anything with ``is_file`` and
    ``read_text``, such as a storage location)."""
    path = path if hasattr(path, "read_text") else Path(path)
    if not path.is_file():
        raise GenotypeError(f"genotype file {path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GenotypeError(f"genotype file {path} is not valid JSON: {exc}") from exc
    try:
        return _parse(raw)
    except GenotypeError as exc:
        raise GenotypeError(f"genotype file {path}: {exc}") from None


def _parse_cell(cell_raw: dict, where: str, num_nodes: int) -> CellGenotype:
    valid_edges = set(cell_edges(num_nodes))
    edges: dict[Edge, tuple[str, ...]] = {}
    for i, e in enumerate(cell_raw["edges"]):
        edge = Edge(e["src"], e["dst"])
        if edge not in valid_edges:
            raise GenotypeError(
                f"{where}.edges[{i}]: no edge {edge.src}->{edge.dst} in a cell with {num_nodes} nodes "
                f"(src must be < dst, dst in 2..{num_nodes + 1})")
        if edge in edges:
            raise GenotypeError(f"{where}.edges[{i}]: edge {edge.src}->{edge.dst} listed twice")
        edges[edge] = tuple(e["ops"])
    for dst in range(2, num_nodes + 2):
        if not any(e.dst == dst for e in edges):
            raise GenotypeError(f"{where}: node {dst} has no input edge")
    return CellGenotype(cell_raw["reduction"], edges)


# The schema's validator, except that a count written 4.0 is refused (JSON Schema calls it an integer).
_Validator = validators.extend(Draft202012Validator, type_checker=Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _, value: type(value) is int))


def _parse(raw: Any) -> Genotype:
    """The file's shape is checked by :func:`json_schema`; here, only what a schema cannot say."""
    # before the schema, whose errors would not say what the file is instead, or "upgrade"
    if isinstance(raw, dict) and raw.get("format") != FORMAT:
        raise GenotypeError(f"format must be {FORMAT!r}, got {raw.get('format')!r}: not a genotype file")
    version = raw.get("version") if isinstance(raw, dict) else None
    if type(version) is int and version > VERSION:
        raise GenotypeError(f"unsupported version {version}: newer than this release reads (versions 1 to "
                            f"{VERSION}); upgrade goldnas-ray")
    error = best_match(_Validator(json_schema()).iter_errors(raw), key=relevance)  # one error, the shallowest
    if error is not None:
        place = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        raise GenotypeError(f"{place}: {error.message}" if place else error.message)
    num_cells, num_nodes = raw["num_cells"], raw["num_nodes"]
    if len(raw["cells"]) != num_cells:
        raise GenotypeError(f"field 'cells' must be a list of num_cells={num_cells} cells")
    cells = [_parse_cell(cell_raw, f"cells[{k}]", num_nodes) for k, cell_raw in enumerate(raw["cells"])]
    metadata = raw.get("metadata", {})
    for name in ("flops", "params"):  # Python reads NaN and Infinity in JSON; both pass the schema
        if not math.isfinite(metadata.get(name, 1)):
            raise GenotypeError(f"metadata.{name} must be a positive number, got {metadata[name]!r}")
    sizes = {name: raw[name] for name in ("init_channels", "stem_multiplier", "input_size", "in_channels",
                                          "num_classes")}
    geno = Genotype(cells, num_nodes, metadata=metadata, stem=raw.get("stem", "cifar"), **sizes)  # absent: cifar
    try:
        check_reductions(geno)
    except ValueError as exc:
        raise GenotypeError(str(exc)) from None
    return geno


def check_reductions(geno: Genotype) -> None:
    """Reduction flags must sit where the space puts them, at sizes that halve evenly."""
    expected = reduction_cells(geno.num_cells)
    for k, cell in enumerate(geno.cells):
        if cell.reduction != (k in expected):
            raise ValueError(f"cells[{k}].reduction is {cell.reduction}; with {geno.num_cells} cells "
                             f"the reduction cells are {sorted(expected)}")
    check_spatial(geno.input_size, geno.num_cells, geno.stem)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a genotype file: every field's type and range."""
    count = {"type": "integer", "minimum": 1}
    edge = {"type": "object", "required": ["src", "dst", "ops"], "additionalProperties": False, "properties": {
        "src": {"type": "integer", "minimum": 0, "description": "0 and 1: the cell's inputs; 2..: its nodes"},
        "dst": {"type": "integer", "minimum": 2, "description": "an intermediate node, > src"},
        "ops": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(PRIMITIVES)},
                "description": "the operators the edge keeps; their outputs are summed"}}}
    cell = {"type": "object", "required": ["reduction", "edges"], "additionalProperties": False, "properties": {
        "reduction": {"type": "boolean", "description": "stride 2 and twice the channels (cells L/3 and 2L/3)"},
        "edges": {"type": "array", "items": {"$ref": "#/$defs/edge"},
                  "description": "the edges that keep an operator; every node needs one"}}}
    positive = {"type": "number", "exclusiveMinimum": 0}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "title": "goldnas-ray genotype",
        "description": f"One architecture of the GOLD-NAS space (format version {VERSION}); docs/genotypes.md",
        "type": "object", "additionalProperties": False,
        "required": ["format", "num_cells", "num_nodes", "init_channels", "stem_multiplier", "input_size",
                     "in_channels", "num_classes", "cells"],
        "properties": {
            "format": {"const": FORMAT},
            "version": {"type": "integer", "minimum": 1, "maximum": VERSION, "description": "absent: 1"},
            "num_cells": count, "num_nodes": count, "init_channels": count, "stem_multiplier": count,
            "input_size": count, "in_channels": count, "num_classes": {"type": "integer", "minimum": 2},
            "stem": {"enum": list(STEM_STRIDE), "description": "absent: cifar"},
            "cells": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/cell"}},
            "metadata": {"type": "object", "properties": {"flops": positive, "params": positive},
                         "description": "free-form; flops and params, when present, are positive"}},
        "$defs": {"cell": cell, "edge": edge},
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--schema"]:
        print("usage: python -m goldnas_ray.core.genotype --schema", file=sys.stderr)
        return 2
    print(json.dumps(json_schema(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

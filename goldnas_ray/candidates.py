"""The architectures a retrain trains: those a search recorded, plus random ones to compare.

Everything is checked before any training starts. A search output folder must hold a
frontier.json of this project, and every genotype it names must load, belong to the search's
space (cells, nodes, channels, operators, input, classes) and have exactly the FLOPs the
frontier records for it: a file edited by hand or copied from another search is refused with
its path in the message.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goldnas_ray.artifacts import OutputDirError, read_frontier
from goldnas_ray.config import Config
from goldnas_ray.genotype import Genotype, GenotypeError, load_genotype
from goldnas_ray.sampling import FlopsTable, matched_targets, sample_matched

SEARCHED, RANDOM = "searched", "random"


@dataclass
class Candidate:
    arch_id: str
    kind: str  # searched | random
    genotype: Genotype
    flops: int
    params: int
    search_epoch: int | None = None
    search_lambda: float | None = None

    def row(self) -> dict[str, Any]:
        return {"arch_id": self.arch_id, "kind": self.kind, "flops": self.flops,
                "params": self.params, "search_epoch": self.search_epoch,
                "search_lambda": self.search_lambda, "genotype": f"genotypes/{self.arch_id}.json"}


@dataclass
class SearchResult:
    """A search's frontier.json, its recorded architectures and its space's FLOPs table."""

    folder: Path
    frontier: dict[str, Any]
    config: Config
    table: FlopsTable
    searched: list[Candidate]


def load_search(folder: Path) -> SearchResult:
    """Read and check a search output folder (frontier.json + genotypes/)."""
    folder = Path(folder)
    frontier = read_frontier(folder)
    if frontier.get("format") != "goldnas-ray/frontier":
        raise OutputDirError(f"{folder / 'frontier.json'} is not a goldnas-ray frontier "
                             f"(format {frontier.get('format')!r})")
    archs = frontier.get("architectures") or []
    if not archs:
        raise OutputDirError(f"{folder / 'frontier.json'} records no architectures yet; "
                             f"nothing to retrain")
    for name in ("config", "input_shape", "num_classes"):
        if name not in frontier:
            raise OutputDirError(f"{folder / 'frontier.json'} lacks {name!r}")
    config = Config.from_dict(frontier["config"]).validate()
    table = FlopsTable.build(config.space, frontier["input_shape"], frontier["num_classes"])
    searched = []
    for arch in archs:
        path = folder / arch["genotype"]
        geno = load_genotype(path)
        why = table.matches(geno)
        if why:
            raise GenotypeError(f"genotype file {path}: not an architecture of this search: {why}")
        flops = table.flops(geno)
        if flops != arch["flops"]:
            raise GenotypeError(
                f"genotype file {path}: its network has {flops} FLOPs but frontier.json records "
                f"{arch['flops']} for {arch['id']}; the file was changed or belongs to another search")
        searched.append(Candidate(arch["id"], SEARCHED, geno, flops, int(arch["params"]),
                                  int(arch["epoch"]), float(arch["lambda"])))
    ids = [c.arch_id for c in searched]
    if len(set(ids)) != len(ids):
        raise OutputDirError(f"{folder / 'frontier.json'} lists an architecture id twice")
    return SearchResult(folder, frontier, config, table, searched)


def random_candidates(search: SearchResult, k: int, seed: int) -> list[Candidate]:
    """``k`` random architectures of the search's space, FLOPs matched to the searched ones."""
    targets = matched_targets([c.flops for c in search.searched], k)
    genos = sample_matched(search.table, targets, seed, avoid=[c.genotype for c in search.searched])
    return [Candidate(f"random-{i:03d}", RANDOM, g, g.metadata["flops"], g.metadata["params"])
            for i, g in enumerate(genos)]


def save_genotypes(out: Path, candidates: list[Candidate]) -> None:
    for c in candidates:
        geno = c.genotype
        geno.metadata = dict(geno.metadata) | {"id": c.arch_id, "kind": c.kind, "flops": c.flops,
                                               "params": c.params}
        geno.save(Path(out) / "genotypes" / f"{c.arch_id}.json")


def candidates_from_manifest(out: Path, manifest: dict[str, Any]) -> list[Candidate]:
    """The candidates of an interrupted retrain, read back from its own folder."""
    found = []
    for row in manifest["architectures"]:
        geno = load_genotype(Path(out) / row["genotype"])
        found.append(Candidate(row["arch_id"], row["kind"], geno, row["flops"], row["params"],
                               row.get("search_epoch"), row.get("search_lambda")))
    return found


def read_manifest(out: Path) -> dict[str, Any]:
    path = Path(out) / "retrain.json"
    if not path.is_file():
        raise OutputDirError(f"--resume: {out} is not a retrain output folder (no retrain.json inside)")
    return json.loads(path.read_text())

"""The architectures a retrain trains: those a search recorded, plus random ones to compare.

Everything is checked before any training starts. A search output folder must hold a
records.json of this project, and every genotype it names must load, belong to the search's
space (cells, nodes, channels, operators, input, classes) and have exactly the FLOPs the
records give it: a file edited by hand or copied from another search is refused with its
path in the message.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goldnas_ray.core.config import Config
from goldnas_ray.core.genotype import Genotype, GenotypeError, load_genotype
from goldnas_ray.files.search_files import OutputDirError, read_records, records_path, write_genotype
from goldnas_ray.files.store import location
from goldnas_ray.retrain.sampling import SpaceTable, matched_targets, sample_matched

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
    sources: list[str] = field(default_factory=list)  # a sweep's searches that recorded it
    # its inherited weights (retrain.init=inherited): in the search's folder (a URI) until
    # save_genotypes copies them to the retrain's weights_path
    weights: str | None = None

    @property
    def genotype_path(self) -> str:
        return f"genotypes/{self.arch_id}.json"

    @property
    def weights_path(self) -> str:
        return f"genotypes/{self.arch_id}.safetensors"

    def row(self) -> dict[str, Any]:
        return {"arch_id": self.arch_id, "kind": self.kind, "flops": self.flops,
                "params": self.params, "search_epoch": self.search_epoch,
                "search_lambda": self.search_lambda, "genotype": self.genotype_path} | (
                    {"sources": list(self.sources)} if self.sources else {}) | (
                    {"weights": self.weights} if self.weights else {})

    @classmethod
    def from_row(cls, row: dict[str, Any], folder: Path) -> "Candidate":
        return cls(row["arch_id"], row["kind"], load_genotype(location(folder) / row["genotype"]),
                   row["flops"], row["params"], row.get("search_epoch"), row.get("search_lambda"),
                   list(row.get("sources") or []), row.get("weights"))


@dataclass
class SearchResult:
    """A search's records.json, its recorded architectures and its space's cost table."""

    folder: Path
    records: dict[str, Any]
    config: Config
    table: SpaceTable
    searched: list[Candidate]


def load_search(folder: Path) -> SearchResult:
    """Read and check a search output folder (records.json + genotypes/)."""
    folder = Path(folder)
    records = read_records(folder)
    where = records_path(folder)
    archs = records.get("architectures") or []
    if not archs:
        raise OutputDirError(f"{where} records no architectures yet; nothing to retrain")
    for name in ("config", "input_shape", "num_classes"):
        if name not in records:
            raise OutputDirError(f"{where} lacks {name!r}")
    config = Config.from_dict(records["config"])
    table = SpaceTable.build(config.space, records["input_shape"], records["num_classes"])
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
                f"genotype file {path}: its network has {flops} FLOPs but {where.name} records "
                f"{arch['flops']} for {arch['id']}; the file was changed or belongs to another search")
        weights = (location(folder) / arch["weights"]).uri if arch.get("weights") else None
        searched.append(Candidate(arch["id"], SEARCHED, geno, flops, int(arch["params"]),
                                  int(arch["epoch"]), float(arch["lambda"]), weights=weights))
    ids = [c.arch_id for c in searched]
    if len(set(ids)) != len(ids):
        raise OutputDirError(f"{where} lists an architecture id twice")
    return SearchResult(folder, records, config, table, searched)


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
        write_genotype(location(out) / c.genotype_path, geno)
        if c.weights and c.weights != c.weights_path:
            (location(out) / c.weights_path).write_bytes(location(c.weights).read_bytes())
            c.weights = c.weights_path

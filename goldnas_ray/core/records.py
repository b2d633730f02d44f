"""A recorded architecture: what the search keeps of an architecture that held still.

One typed record, spelled once: the search creates it, the checkpoint stores its dict, the
search's ``records.json`` lists its fields (the genotype in its own file), the genotype file
carries them as metadata, and the retrain reads them back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from goldnas_ray.core.genotype import Genotype


@dataclass
class ArchRecord:
    id: str
    epoch: int  # epochs completed when it was recorded
    flops: int  # one image, multiply-add = 2
    params: int  # of the discrete network, auxiliary head excluded
    lam: float  # lambda during the epoch that ended when it was recorded
    alive_ops: int
    genotype: Genotype
    latency_ms: float | None = None  # predicted by the search's latency table (cost=latency)

    def cost(self, name: str) -> float:
        """What records are decided by: the predicted latency for ``latency``, else the FLOPs."""
        if name == "latency":
            if self.latency_ms is None:
                raise ValueError(f"record {self.id} has no predicted latency")
            return self.latency_ms
        return self.flops

    @property
    def genotype_path(self) -> str:
        """Where the genotype file lies, relative to the search's output folder."""
        return f"genotypes/{self.id}.json"

    def fields(self) -> dict[str, Any]:
        """Everything but the genotype, under the names the files use."""
        found = {"id": self.id, "epoch": self.epoch, "flops": self.flops, "params": self.params,
                 "lambda": self.lam, "alive_ops": self.alive_ops}
        return found | ({"latency_ms": self.latency_ms} if self.latency_ms is not None else {})

    def to_dict(self) -> dict[str, Any]:
        return self.fields() | {"genotype": self.genotype.to_dict()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ArchRecord":
        return cls(str(raw["id"]), int(raw["epoch"]), int(raw["flops"]), int(raw["params"]),
                   float(raw["lambda"]), int(raw["alive_ops"]), Genotype.from_dict(raw["genotype"]),
                   float(raw["latency_ms"]) if raw.get("latency_ms") is not None else None)

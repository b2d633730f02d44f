"""Drawings of architectures: every recorded genotype gets one beside its JSON."""
import json

from conftest import tiny_config
from goldnas_ray import plot_genotype
from goldnas_ray.core.genotype import Genotype
from goldnas_ray.run.loop import run_local

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_genotype_draws_any_architecture(tmp_path):
    geno = Genotype.full(6, 4, ("skip_connect", "sep_conv_3x3"), 8, 3, 8, 1, 10, "cifar")
    del geno.cells[5].edges[next(iter(geno.cells[5].edges))]  # a cell with an edge gone
    out = plot_genotype(geno, tmp_path / "full.png")
    assert out.local.read_bytes()[:8] == PNG and out.local.stat().st_size > 20_000


def test_each_recorded_architecture_is_drawn_beside_its_genotype(tmp_path, digits):
    cfg = tiny_config(lambda0=0.3, t0=1, max_epochs=6, flops_min_ratio=0.05)
    run_local(cfg, tmp_path / "s", log=lambda _: None)
    records = json.loads((tmp_path / "s" / "records.json").read_text())["architectures"]
    assert records
    for rec in records:
        png = tmp_path / "s" / rec["genotype"].replace(".json", ".png")
        assert png.read_bytes()[:8] == PNG, png

"""Drawings of architectures: what a drawing shows (the layout, checked panel by panel and label
by label on a hand-made genotype), and that every recorded genotype gets one beside its JSON."""
import json

from PIL import Image

from goldnas_ray import plot_genotype
from goldnas_ray.core.genotype import CellGenotype, Genotype
from goldnas_ray.core.space import Edge
from goldnas_ray.run.drawing import COLOURS, OUTPUT, layout


def _hand_made() -> Genotype:
    """3 cells of 2 nodes (reduction at 1 and 2). Cell 2 (the last) reads only its c[k-1], cell
    1's output, so cell 1 is live and cell 0 too (cell 1 reads its c[k-1], cell 0's output)."""
    full = {Edge(0, 2): ("skip_connect",), Edge(1, 2): ("sep_conv_3x3",),
            Edge(0, 3): ("sep_conv_3x3", "skip_connect"), Edge(2, 3): ("skip_connect",)}
    last = {Edge(1, 2): ("sep_conv_3x3",), Edge(1, 3): ("skip_connect",)}
    cells = [CellGenotype(False, dict(full)), CellGenotype(True, dict(full)), CellGenotype(True, last)]
    return Genotype(cells, 2, 4, 3, 8, 1, 10, metadata={"id": "arch-007", "flops": 1_234_000})


def test_the_layout_of_a_hand_made_genotype():
    drawing = layout(_hand_made(), columns=2)
    assert drawing.title == "arch-007: 3 cells, stem cifar, input 1x8x8, 1.234 MFLOPs (N normal, R reduction)"
    assert [(b.cell, b.live, b.reduction, b.label) for b in drawing.stack] == [
        (0, True, False, "0\nN\n5 ops"), (1, True, True, "1\nR\n5 ops"), (2, True, True, "2\nR\n2 ops")]
    assert [p.title for p in drawing.panels] == ["cell 0", "cell 1 (reduction)", "cell 2 (reduction)"]
    assert (drawing.columns, drawing.rows) == (2, 2)
    last = drawing.panels[2]
    assert [(e.src, e.dst, e.label, e.colour) for e in last.edges] == [
        (1, 2, "sep3", COLOURS["sep_conv_3x3"]), (1, 3, "skip", COLOURS["skip_connect"])]
    assert [(n.node, n.label, n.used) for n in last.nodes] == [
        (0, "c[k-2]", False), (1, "c[k-1]", True), (2, "0", True), (3, "1", True), (OUTPUT, "c[k]", True)]
    first = drawing.panels[0]
    assert [(e.src, e.dst, e.label, e.colour) for e in first.edges] == [
        (0, 2, "skip", COLOURS["skip_connect"]), (0, 3, "sep3+skip", "black"),
        (1, 2, "sep3", COLOURS["sep_conv_3x3"]), (2, 3, "skip", COLOURS["skip_connect"])]


def test_a_dead_cell_is_greyed_in_the_stack_and_gets_no_panel():
    geno = _hand_made()
    geno.cells[1].edges = {Edge(0, 2): ("skip_connect",), Edge(0, 3): ("skip_connect",)}  # reads c[k-2] only
    geno.cells[2].edges = {Edge(1, 2): ("sep_conv_3x3",), Edge(1, 3): ("skip_connect",)}  # reads cell 1
    drawing = layout(geno)
    assert [(b.cell, b.live, b.label) for b in drawing.stack] == [
        (0, False, "0\n(unused)"), (1, True, "1\nR\n2 ops"), (2, True, "2\nR\n2 ops")]
    assert [p.cell for p in drawing.panels] == [1, 2] and drawing.columns == 2 and drawing.rows == 1


def test_the_picture_has_the_layouts_shape(tmp_path):
    """One panel row per row of the layout: a drawing of 3 panels in 2 columns is taller than one
    of the same panels in 3 columns, and the PNG is what matplotlib wrote at 90 dpi."""
    geno = _hand_made()
    tall = Image.open(plot_genotype(geno, tmp_path / "tall.png", columns=2).local)
    wide = Image.open(plot_genotype(geno, tmp_path / "wide.png", columns=3).local)
    assert tall.size == (round(3.2 * 2 * 90), round((0.9 + 2.6 * 2) * 90))
    assert wide.size == (round(3.2 * 3 * 90), round((0.9 + 2.6 * 1) * 90))


def test_each_recorded_architecture_is_drawn_beside_its_genotype(small_search, tmp_path):
    out = small_search.out
    records = json.loads((out / "records.json").read_text())["architectures"]
    assert len(records) > 1
    for rec in records:
        png = Image.open(out / rec["genotype"].replace(".json", ".png"))
        panels = len(layout(Genotype.from_dict(json.loads((out / rec["genotype"]).read_text())),
                            ).panels)
        assert png.format == "PNG" and png.size[1] == round((0.9 + 2.6 * -(-panels // 4)) * 90)
        # the drawing of the recorded genotype, not of another one: drawn again, the same bytes
        fresh = plot_genotype(Genotype.from_dict(json.loads((out / rec["genotype"]).read_text())),
                              tmp_path / "fresh.png")
        assert fresh.read_bytes() == (out / rec["genotype"].replace(".json", ".png")).read_bytes()

"""The gallery's cross-family hybrids (src/archdsl/specs/gallery/hybrid_*.yaml): each validates,
builds, runs at 224 and 448, its analytic FLOPs equal fvcore, its parameters and FLOPs are the ones its
header states, and it loads by bundled name and by path and serves as a base for `extends:`.
The README's table of them is checked in tests/test_readme.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import archdsl
from archdsl.cost import count_params, graph_params
from archdsl.loading import gallery_spec_names

GALLERY = Path(__file__).resolve().parents[1] / "src" / "archdsl" / "specs" / "gallery"
HYBRIDS = sorted(path.stem for path in GALLERY.glob("hybrid_*.yaml"))
# the header line every hybrid carries: its parameters (total) and FLOPs at 224
HEADER = re.compile(
    r"^# Parameters: ([\d,]+)(?: \([^)]*\))?\. FLOPs at 224 \(multiply-adds, fvcore and analytic alike\): ([\d,]+)\.$", re.M
)


def stated_counts(name: str) -> tuple[int, int]:
    """(parameters, FLOPs at 224) as the spec's header states them."""
    found = HEADER.search((GALLERY / f"{name}.yaml").read_text())
    assert found, f"{name}.yaml: no '# Parameters: N. FLOPs at 224 ...: N.' header line"
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


def test_there_are_at_least_six_and_archdsl_list_names_them_in_full():
    from typer.testing import CliRunner

    from archdsl.cli import app

    assert len(HYBRIDS) >= 6
    assert {f"gallery/{name}" for name in HYBRIDS} <= set(gallery_spec_names())
    result = CliRunner().invoke(app, ["list", "gallery/hybrid_"], catch_exceptions=False)  # 80 columns
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("│")}
    assert set(rows) == {f"gallery/{name}" for name in HYBRIDS}  # the names whole, not cut to fit
    assert f"{stated_counts('hybrid_convnext_nommer')[0] / 1e6:.2f} M" in rows["gallery/hybrid_convnext_nommer"]


@pytest.mark.parametrize("name", HYBRIDS)
def test_a_hybrid_counts_what_its_header_says(name):
    """At full depth, from the lowered graph (parameters counted on the meta device, no module)."""
    graph = archdsl.lower_spec(archdsl.load_spec(f"gallery/{name}"))
    assert graph.spec.name == name and graph.image_size == (224, 224)
    assert (graph_params(graph).total, graph.flops) == stated_counts(name)


@pytest.mark.parametrize("name", HYBRIDS)
def test_a_hybrid_builds_and_runs_at_224_and_its_flops_are_fvcores(name):
    """Built at 224 with each stage one repeat of its block pattern deep: every kind of block of
    the full network, at its own map size, in a few seconds instead of twenty (two busy cores).
    The repeats are the same blocks at the same sites, so their FLOP rules are the ones checked."""
    full = archdsl.load_spec(f"gallery/{name}")
    shallow = archdsl.load_spec(full, {f"stages.{index}.depth": len(stage.blocks) for index, stage in enumerate(full.stages)})
    model = archdsl.create_model(shallow).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    counts = archdsl.count_flops(model)
    assert counts.analytic == counts.flops  # the ops' FLOP rules equal fvcore with the handles
    assert count_params(model).total == graph_params(archdsl.lower_spec(shallow)).total


@pytest.mark.parametrize("name", HYBRIDS)
def test_a_hybrid_runs_at_448_too(name):
    """A second size every hybrid takes: 448, where 7x7 windows still divide every map (at 384
    only the ConvNeXt-based ones run as written: Swin's windows would need `fit:`)."""
    full = archdsl.load_spec(f"gallery/{name}", img_size=448)
    shallow = archdsl.load_spec(full, {f"stages.{index}.depth": len(stage.blocks) for index, stage in enumerate(full.stages)})
    model = archdsl.create_model(shallow).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 448, 448)).shape == (1, 1000)


@pytest.mark.parametrize("name", HYBRIDS)
def test_a_hybrid_loads_by_bundled_name_and_by_path(name):
    by_name, by_path = archdsl.load_spec(f"gallery/{name}"), archdsl.load_spec(GALLERY / f"{name}.yaml")
    assert by_name == by_path


def test_a_hybrid_is_a_starting_point_for_extends(tmp_path):
    """A user's file extends a hybrid by bundled name and varies one value: everything else is
    the hybrid's, and the change shows in the counts."""
    path = tmp_path / "deeper.yaml"
    path.write_text("extends: gallery/hybrid_swin_attn_conv\nname: deeper\nstages: {2: {depth: 8}}\n")
    base, deeper = archdsl.load_spec("gallery/hybrid_swin_attn_conv"), archdsl.load_spec(path)
    assert deeper.name == "deeper" and deeper.stages[2].depth == 8 and base.stages[2].depth == 6
    assert deeper.stages[2].blocks == base.stages[2].blocks and deeper.stem == base.stem
    base_graph, deeper_graph = archdsl.lower_spec(base), archdsl.lower_spec(deeper)
    assert graph_params(deeper_graph).total > graph_params(base_graph).total and deeper_graph.flops > base_graph.flops


def test_an_error_in_a_hybrid_points_at_its_own_line(tmp_path):
    """A value the hybrid writes over its base is located in the hybrid's file, not the base's."""
    text = (GALLERY / "hybrid_convnext_significance.yaml").read_text()
    old = "{op: hybrid_scale_attention, heads: 12,"
    line = next(number for number, row in enumerate(text.splitlines(), 1) if old in row)
    (tmp_path / "convnext_t.yaml").write_text((GALLERY / "convnext_t.yaml").read_text())  # its base, beside it
    path = tmp_path / "hybrid_convnext_significance.yaml"
    path.write_text(text.replace(old, "{op: hybrid_scale_attention, heads: many,"))
    with pytest.raises(archdsl.SpecError) as caught:
        archdsl.load_spec(path)
    assert f"hybrid_convnext_significance.yaml:{line}:" in str(caught.value)
    assert "stages[2].blocks[0].mixer.candidates[0].heads" in str(caught.value)

"""`archdsl graph`: the picture of the lowered graph, read back from its SVG text."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from collections import defaultdict

from typer.testing import CliRunner

import archdsl
from archdsl.cli import app
from archdsl.drawing import repeating_units

SVG = "{http://www.w3.org/2000/svg}"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def svg_texts(path) -> dict[str, list[str]]:
    """Each SVG group id -> the texts directly inside it (the drawing gives each text a group id)."""
    texts = defaultdict(list)
    for group in ElementTree.parse(path).getroot().iter(f"{SVG}g"):
        for text in group.findall(f"{SVG}text"):
            texts[group.get("id")].append(text.text)
    return texts


def drawn(spec, tmp_path, *options) -> dict[str, list[str]]:
    output = tmp_path / f"{spec}.svg"
    result = run("graph", spec, "-o", str(output), *options)
    assert result.exit_code == 0, result.output
    assert f"wrote {output}" in result.stdout
    return svg_texts(output)


def block_text(texts) -> str:
    return "\n".join(line for gid, lines in texts.items() if gid.startswith("block-") for line in lines)


def candidate_ops(spec_name: str) -> set[str]:
    spec = archdsl.load_spec(spec_name)
    return {candidate.op for stage in spec.stages for block in stage.blocks for candidate in block.mixer.candidates}


def test_mixformer_b6_collapses_each_stage_to_one_counted_box(tmp_path):
    texts = drawn("mixformer_b6", tmp_path)
    for stage, (width, side, depth) in enumerate([(96, 56, 2), (192, 28, 4), (384, 14, 16), (768, 7, 12)]):
        assert texts[f"stage-{stage}-line-0"] == [f"stage {stage}"]
        assert texts[f"stage-{stage}-line-1"] == [f"width {width} · {side}×{side}"]
        assert texts[f"stage-{stage}-line-2"] == [f"depth {depth}"]
        # 34 blocks, drawn as one box per stage that says how many it stands for
        assert texts[f"block-{stage}-0-line-0"] == [f"blocks 0–{depth - 1}"]
        assert texts[f"block-{stage}-0-count"] == [f"×{depth}"]
    titles = sorted(gid for gid in texts if gid.startswith("block-") and gid.endswith("-line-0"))
    assert len(titles) == 4
    lines = block_text(texts)
    assert candidate_ops("mixformer_b6") == {"window_attention", "depthwise_conv"}
    assert "[0] window_attention  1/2 · 192 ch" in lines and "[1] depthwise_conv    1/2 · 384 ch" in lines
    assert "fusion concat_projection" in lines and "channel_interaction [1]→[0] values" in lines
    assert "ffn mlp (ratio 4)" in lines and "norm layer_norm · pad to multiple of 7" in lines
    assert texts["stem-line-1"] == ["mixformer_stem"] and texts["head-line-1"] == ["projection_head"]
    assert "384×14×14 → 768×7×7" in texts["downsample-3-line-3"]
    assert not any(gid.startswith("side-channel") for gid in texts)


def test_sgformer_b_draws_its_pattern_once_and_the_significance_map_as_edges(tmp_path):
    texts = drawn("sgformer_b", tmp_path)
    for stage in range(4):
        assert texts[f"stage-{stage}-line-0"] == [f"stage {stage}"]
    # stages 0-2 alternate a hybrid-scale and a self-guided block: one framed pattern each
    for stage, repeats in enumerate([2, 3, 12]):
        assert texts[f"repeat-{stage}-0-count"] == [f"×{repeats}"]
        assert texts[f"repeat-{stage}-0-label"] == ["pattern of 2 blocks"]
    assert texts["block-2-0-line-0"] == ["blocks 0, 2, …, 22"] and texts["block-2-1-line-0"] == ["blocks 1, 3, …, 23"]
    assert texts["block-3-0-count"] == ["×2"]  # stage 3: two global-attention blocks
    lines = block_text(texts)
    for op in candidate_ops("sgformer_b"):
        assert f"] {op} " in lines, op
    assert "[0] hybrid_scale_attention  all · 96 ch" in lines
    # each pattern's hybrid-scale block hands its map to the self-guided block after it: one labelled edge a stage
    edges = {gid: lines for gid, lines in texts.items() if gid.startswith("side-channel-")}
    assert edges == {f"side-channel-significance-block-{stage}-0-to-block-{stage}-1": ["significance"] for stage in range(3)}


def test_options_reach_the_lowered_graph_and_unequal_blocks_stay_apart(tmp_path):
    texts = drawn("cloformer_xxs", tmp_path, "--img-size", "256", "--set", "stages.2.depth=4")
    assert texts["stage-2-line-1"] == ["width 128 · 16×16"] and texts["stage-2-line-2"] == ["depth 4"]
    # the stage's last block has no FFN (the next downsample runs it), so it is not one of the run
    assert texts["block-2-0-line-0"] == ["blocks 0–2"] and texts["block-2-0-count"] == ["×3"]
    assert texts["block-2-3-line-0"] == ["block 3"] and "ffn: run by the next downsample" in texts["block-2-3-line-5"]
    assert "[0] attn_conv         3/4 · 24 ch" in block_text(texts)


def test_png_is_written(tmp_path):
    output = tmp_path / "arch.png"
    result = run("graph", "sgformer_b", "-o", str(output))
    assert result.exit_code == 0, result.output
    data = output.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_a_suffix_that_is_no_picture_format_is_one_clean_error(tmp_path):
    for name in ("arch.pdf", "arch"):
        result = run("graph", "sgformer_b", "-o", str(tmp_path / name))
        assert result.exit_code == 2
        assert result.stderr.startswith(f"error: {tmp_path / name}: cannot draw into ")
        assert "which must be .svg or .png" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1  # one paragraph, no traceback
    assert not list(tmp_path.iterdir())


def test_without_matplotlib_the_command_names_the_plot_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    result = run("graph", "sgformer_b", "-o", str(tmp_path / "arch.svg"))
    assert result.exit_code == 2
    assert "`archdsl graph` needs the 'plot' extra" in " ".join(result.stderr.split())
    assert not list(tmp_path.iterdir())


def test_repeating_units_cover_runs_and_patterns():
    assert repeating_units(list("AAAA")) == [(0, 1, 4)]
    assert repeating_units(list("HSHSH")) == [(0, 2, 2), (4, 1, 1)]
    assert repeating_units(list("AAAAAB")) == [(0, 1, 5), (5, 1, 1)]
    assert repeating_units(list("AB")) == [(0, 1, 1), (1, 1, 1)]
    assert repeating_units(list("ABABAB")) == [(0, 2, 3)]

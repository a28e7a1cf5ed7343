"""Detection sizes (800x1333 and its like): every family runs there, padding a map where an op's
maths needs a multiple (`fit: pad` / `divisor_or_pad`, a strided merge's `fit: pad`), and counts
what the padded modules compute: analytic FLOPs equal fvcore's and follow the neighbouring sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import archdsl
from archdsl.blocks.attention import WindowAttentionModule
from archdsl.blocks.layers import fit_to_map, fitted_map, pads_map
from archdsl.blocks.nommer import CompressedGlobalAttentionModule
from archdsl.blocks.sgformer import HybridScaleAttentionModule
from archdsl.errors import SpecError
from archdsl.loading import bundled_spec_names
from archdsl.network import pad_to_multiple
from archdsl.ops import FeatureShape

SMALLEST = ["cloformer_xxs", "mixformer_b0", "sgformer_s", "nommer_t"]
FAMILIES = ("cloformer", "mixformer", "sgformer", "nommer")


def one_pattern_per_stage(name: str) -> dict:
    """Overrides giving each stage one run of its block pattern: every op and every padding path
    of the spec at a fraction of its depth (the deep stages repeat the same blocks)."""
    spec = archdsl.load_spec(name)
    return {f"stages.{index}.depth": len(stage.blocks) for index, stage in enumerate(spec.stages)}


# --- the rules ---------------------------------------------------------------------------------


def test_fit_rules_pad_only_where_the_size_does_not_divide():
    assert [fit_to_map(7, 200, 333, rule) for rule in ("exact", "nearest_divisor", "pad", "divisor_or_pad")] == [7, 1, 7, 7]
    assert fit_to_map(7, 96, 96, "divisor_or_pad") == 8  # 8/7 < 2: NomMer at 384, as nearest_divisor
    assert fit_to_map(7, 100, 168, "divisor_or_pad") == 4  # 7/4 < 2: 800x1344's stage 1, as nearest_divisor
    assert fit_to_map(4, 100, 166, "divisor_or_pad") == 4  # the divisor 2 is a factor 2 off: pad instead
    assert [pads_map(rule) for rule in ("exact", "nearest_divisor", "pad", "divisor_or_pad")] == [False, False, True, True]
    shape = FeatureShape(96, 200, 333)
    assert fitted_map(shape, 7, "pad") == FeatureShape(96, 203, 336)
    assert fitted_map(shape, 8, "exact") == shape and shape.padded(1) == shape
    x = torch.randn(1, 2, 5, 6)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (1, 2, 8, 8) and torch.equal(padded[..., :5, :6], x) and not padded[..., 5:, :].any()
    assert pad_to_multiple(x, 1) is x


@pytest.mark.parametrize(
    "module",
    [
        WindowAttentionModule(16, 16, 2, 7, False, True, None, pad=True),
        CompressedGlobalAttentionModule(16, 16, 2, 4, 2, 8, pad=True),
        HybridScaleAttentionModule(16, 16, 2, 4, (4, 4), emit=True, pad=True),
    ],
    ids=["window_attention", "compressed_global_attention", "hybrid_scale_attention"],
)
def test_padding_modules_compute_on_the_zero_padded_map_and_crop(module):
    module.eval()
    x = torch.randn(2, 16, 13, 22)
    multiple = 7 if isinstance(module, WindowAttentionModule) else 4
    with torch.no_grad():
        out = module(x)
        module.pad = False
        by_hand = module(F.pad(x, (0, (-22) % multiple, 0, (-13) % multiple)))
        module.pad = True
    outputs, expected = (out, by_hand) if isinstance(out, tuple) else ((out,), (by_hand,))  # the significance map too
    for got, want in zip(outputs, expected):
        assert got.shape[-2:] == (13, 22)
        assert torch.equal(got, want[..., :13, :22])


# --- the four families at 800x1333 ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, sizes",
    [
        ("cloformer_xxs", [(200, 334), (100, 167), (50, 84), (25, 42)]),
        ("mixformer_b0", [(200, 334), (100, 167), (50, 84), (25, 42)]),
        ("sgformer_s", [(200, 334), (100, 167), (50, 84), (25, 42)]),
        # a 4x4 stride-4 patch conv and 2x2 max-pools, as the released code (and timm's patchify
        # stems) floor: the maps of 800x1332
        ("nommer_t", [(200, 333), (100, 166), (50, 83), (25, 41)]),
    ],
)
def test_features_at_800x1333(name, sizes):
    backbone = archdsl.create_model(name, img_size=(800, 1333), overrides=one_pattern_per_stage(name), features_only=True).eval()
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 800, 1333))
    assert [tuple(m.shape[-2:]) for m in maps] == sizes == [info["map_size"] for info in backbone.feature_info]
    assert [m.shape[1] for m in maps] == backbone.feature_info.channels()
    assert all(torch.isfinite(m).all() for m in maps)


@pytest.mark.parametrize("name", SMALLEST)
def test_analytic_flops_equal_fvcore_where_maps_are_padded(name):
    # 64x165 pads on every path that 800x1333 pads, at a fraction of the cost: stage maps with
    # sides 42, 21, 11 (CloFormer's pools, SG-Former's scales, MixFormer's odd merges) and
    # NomMer's 16x41 (no divisor near its window or DCT block)
    counts = archdsl.count_flops(archdsl.load_spec(name, one_pattern_per_stage(name), img_size=(64, 165)))
    assert counts.analytic == counts.flops


PAPER_VARIANTS = [name for name in bundled_spec_names() if name.startswith(FAMILIES)]


@pytest.mark.parametrize("name", PAPER_VARIANTS)
def test_flops_at_800x1333_follow_the_neighbouring_sizes(name):
    """Within 5% of the line through 800x1312 and 800x1344 (by pixel count). SG-Former's own
    figures are the least smooth: its aggregation rates are divisors of each map's token count,
    so neighbouring sizes differ by several percent without any padding."""
    spec = archdsl.load_spec(name)
    below, at, above = (archdsl.lower_spec(archdsl.load_spec(spec, img_size=[800, width])).flops for width in (1312, 1333, 1344))
    expected = below + (above - below) * (1333 - 1312) / (1344 - 1312)
    assert abs(at / expected - 1) < 0.05, (below, at, above)


def test_a_size_padding_cannot_fix_is_still_a_located_error():
    # SG-Former pads maps to its scales, but self-guided attention cuts a stage's tokens in
    # quarters: 200x200 gives stage 1 a 25x25 map of 625 tokens
    with pytest.raises(SpecError) as caught:
        archdsl.lower_spec(archdsl.load_spec("sgformer_s", img_size=200))
    message = str(caught.value)
    assert "sgformer_s.yaml:" in message and "stages[1].blocks[1].mixer.candidates[0].shares:" in message
    assert "the 625 tokens of the 25x25 map of stage 1 cannot be cut in shares [1, 2, 1]" in message

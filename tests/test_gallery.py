"""The gallery (src/archdsl/specs/gallery/): mainstream backbones written in the language, equal
to timm's models: exact parameters, fvcore FLOPs within 1% of fvcore on timm's model, and timm's
logits on the same weights, loaded through the family's converter.

The test vectors (tests/vectors/gallery/, written by bench/gallery_vectors.py) hold timm's key
list, the seeds of the weight and input rule (tests/gallery_rule.py) and timm's logits; the
weights themselves are rebuilt here from the rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gallery_rule import rule_input, rule_state

import archdsl
from archdsl.cost import count_params
from archdsl.errors import SpecError

VECTORS = Path(__file__).resolve().parent / "vectors" / "gallery"
GALLERY = Path(__file__).resolve().parents[1] / "src" / "archdsl" / "specs" / "gallery"
# spec -> timm's parameter count (timm.create_model(...), counted with timm 1.0.29.dev0)
PARAMS = {"convnext_t": 28_589_128, "deit_ti": 5_717_416, "pvt_v2_b0": 3_666_760}


def vector(name: str) -> dict:
    return torch.load(VECTORS / f"{name}.pt", weights_only=True)


@pytest.fixture(scope="module", params=sorted(PARAMS))
def loaded(request, tmp_path_factory):
    """(spec name, its vector, the model with the rule's weights loaded from timm's names)."""
    name = request.param
    stored = vector(name)
    path = tmp_path_factory.mktemp(name) / "timm.pth"
    torch.save(rule_state(stored["keys"], stored["weight_seed"]), path)  # timm's names: the converter renames
    return name, stored, archdsl.create_model(f"gallery/{name}", pretrained=path)


def test_parameters_are_timms(loaded):
    name, stored, model = loaded
    trainable, total = count_params(model)
    assert trainable == total == stored["params"] == PARAMS[name]


def test_logits_are_timms_on_the_same_weights(loaded):
    _, stored, model = loaded
    assert not model.training
    with torch.no_grad():
        logits = model(rule_input(stored["input_seed"]))
    assert (logits - stored["logits"]).abs().max().item() < 1e-4


def test_flops_are_fvcore_on_timm_within_one_percent(loaded):
    _, stored, model = loaded
    counts = archdsl.count_flops(model)
    assert counts.analytic == counts.flops  # the project's rule: FLOP rules equal fvcore with the handles
    assert abs(counts.flops - stored["fvcore_flops"]) / stored["fvcore_flops"] < 0.01


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_loadable_by_bundled_name_and_by_path(name):
    by_name, by_path = archdsl.load_spec(f"gallery/{name}"), archdsl.load_spec(GALLERY / f"{name}.yaml")
    assert by_name.name == by_path.name == name


def test_gallery_is_not_among_the_searchs_paper_variants():
    """The search's final stage compares with the bundled paper variants (`paper_variants`, drawn
    from `bundled_spec_names`): the four families' specs, not the gallery's."""
    from archdsl.loading import bundled_spec_names

    assert not any(name.startswith("gallery") for name in bundled_spec_names())
    assert {path.stem for path in GALLERY.glob("*.yaml")} >= set(PARAMS)


def spec_error(tmp_path, name: str, old: str, new: str) -> str:
    text = (GALLERY / f"{name}.yaml").read_text()
    assert old in text, old
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace(old, new))
    with pytest.raises(SpecError) as caught:
        archdsl.lower_spec(archdsl.load_spec(path))
    return str(caught.value)


def line_of(name: str, needle: str) -> int:
    lines = (GALLERY / f"{name}.yaml").read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if needle in line)


def test_layer_scale_of_the_wrong_type_is_located(tmp_path):
    message = spec_error(tmp_path, "convnext_t", "layer_scale: 1.0e-6", "layer_scale: small")
    line = line_of("convnext_t", "layer_scale: 1.0e-6")
    assert f"convnext_t.yaml:{line}:22: stages[0].blocks[0].layer_scale: input should be a valid number" in message
    assert "found 'small'" in message
    message = spec_error(tmp_path, "convnext_t", "layer_scale: 1.0e-6", "layer_scale: true")
    assert (
        "stages[0].blocks[0].layer_scale: value error, expected a positive number such as 1.0e-6, not the boolean true" in message
    )


def test_whole_block_residual_without_ffn_is_located(tmp_path):
    message = spec_error(tmp_path, "convnext_t", "ffn: {op: mlp, ratio: 4}", "ffn: null")
    line = line_of("convnext_t", "- residual: whole_block")
    assert f"convnext_t.yaml:{line}:19: stages[0].blocks[0].residual: residual: whole_block" in message
    assert "this block has no ffn; give the block an ffn, or use residual: per_branch" in message


def test_class_token_head_without_a_class_token_is_located(tmp_path):
    message = spec_error(tmp_path, "deit_ti", "class_token: true, ", "")
    assert "deit_ti.yaml:" in message and "head: class_token_head reads the class token, but the last stage outputs a " in message
    assert "(a stem or downsample with class_token: true: patch_embedding, conv_max_pool)" in message


@pytest.mark.parametrize("loaded", ["deit_ti"], indirect=True)
def test_vit_tokens_are_the_class_token_then_the_patches(loaded):
    """The stem's output row: the class token plus its position first, then the 14x14 patches
    row-major, each with its own position (timm's order)."""
    _, stored, model = loaded
    stem = model.stem
    image = rule_input(stored["input_seed"])[:1]
    with torch.no_grad():
        row = stem(image)
        patches = stem.conv(image).flatten(2)
    assert row.shape == (1, 192, 1, 197)
    assert torch.equal(row[0, :, 0, 0], stem.class_token[0, :, 0, 0] + stem.position_embedding[0, :, 0, 0])
    assert torch.equal(row[0, :, 0, 1:], patches[0] + stem.position_embedding[0, :, 0, 1:])


def test_json_schema_accepts_the_gallery():
    import json

    import jsonschema
    import yaml

    from archdsl.schema import json_schema

    checker = jsonschema.Draft202012Validator(json_schema())
    for path in sorted(GALLERY.glob("*.yaml")):
        data = json.loads(json.dumps(yaml.safe_load(path.read_text())))
        assert not [error.message for error in checker.iter_errors(data)], path.name


def test_layer_scale_scales_each_branch_of_a_pre_norm_block():
    """`layer_scale` on a per_branch block: one LayerScale per branch, starting at the value given;
    at 0 the block passes its input through."""
    spec = archdsl.load_spec("gallery/deit_ti", {"stages.0.depth": 1, "stages.0.blocks.0.layer_scale": 0.25}, img_size=32)
    model = archdsl.create_model(spec).eval()
    block = model.stages[0].blocks[0]
    assert torch.equal(block.layer_scale1.scale, torch.full((192,), 0.25))
    assert torch.equal(block.layer_scale2.scale, torch.full((192,), 0.25))
    plain = archdsl.create_model(archdsl.load_spec(spec, {"stages.0.blocks.0.layer_scale": None}))
    assert count_params(model).total - count_params(plain).total == 2 * 192
    with torch.no_grad():
        block.layer_scale1.scale.zero_()
        block.layer_scale2.scale.zero_()
        tokens = model.stem(torch.randn(2, 3, 32, 32))
        assert torch.equal(block(tokens, {}), tokens)


def test_a_checkpoint_of_the_other_model_is_refused_with_the_list(tmp_path):
    from archdsl.errors import CheckpointError

    path = tmp_path / "deit.pth"
    stored = vector("deit_ti")
    torch.save(rule_state(stored["keys"], stored["weight_seed"]), path)
    with pytest.raises(CheckpointError, match=r"checkpoint does not fit convnext_t: .*missing.*unexpected"):
        archdsl.create_model("gallery/convnext_t", pretrained=path)


PVT_STAGE_0_ATTENTION = "{op: pooled_attention, heads: 1, pool: 8, reduction: strided_conv, output_projection: true}"


def test_unknown_reduction_is_located(tmp_path):
    message = spec_error(tmp_path, "pvt_v2_b0", "pool: 8, reduction: strided_conv", "pool: 8, reduction: strided_pool")
    line = line_of("pvt_v2_b0", PVT_STAGE_0_ATTENTION)
    assert f"pvt_v2_b0.yaml:{line}:" in message
    assert "stages[0].blocks[0].mixer.candidates[0].reduction: input should be 'average_pool', 'strided_conv' or " in message
    assert "'adaptive_pool_conv'" in message and "strided_pool" in message


@pytest.mark.parametrize(
    ("pool", "problem"),
    [
        (
            "5",
            "pool 5 (the strided conv's kernel and stride) does not divide the 56x56 map of stage 0; "
            "pools that do: [1, 2, 4, 7, 8, 14, 28, 56]",
        ),
        ("64", "pool 64 (the strided conv's kernel and stride) is larger than the 56x56 map of stage 0"),
    ],
)
def test_reduction_ratio_that_does_not_fit_the_map_is_located(tmp_path, pool, problem):
    message = spec_error(tmp_path, "pvt_v2_b0", "pool: 8, reduction: strided_conv", f"pool: {pool}, reduction: strided_conv")
    line = line_of("pvt_v2_b0", PVT_STAGE_0_ATTENTION)
    assert f"pvt_v2_b0.yaml:{line}:" in message
    assert f"stages[0].blocks[0].mixer.candidates[0].pool: {problem}" in message
    assert "`fit: pad`" in message


def test_adaptive_pool_conv_with_a_ratio_is_located(tmp_path):
    message = spec_error(tmp_path, "pvt_v2_b0", "pool: 8, reduction: strided_conv", "pool: 8, reduction: adaptive_pool_conv")
    assert "stages[0].blocks[0].mixer.candidates[0].pool: adaptive_pool_conv reduces every map to pooled_size x " in message
    assert "so it takes no ratio; remove `pool: 8`" in message


def test_pvt_v2_linear_reduction_is_timms_in_parameters_and_flops():
    """PVTv2-li in B0: in every stage, the linear spatial reduction (`reduction: adaptive_pool_conv`:
    adaptive pool to 7x7, 1x1 conv, LayerNorm, GELU) and the MLP's ReLU before its depthwise conv
    (`relu_before_depthwise`). timm's `pvt_v2_b0(linear=True)` has 3,393,864 parameters and
    559,091,200 FLOPs under fvcore at 224 (timm 1.0.29.dev0); here 12,544 more, the head's average
    pool (256 x 7 x 7 adds) that fvcore skips in timm's `mean`. (On the rule's weights its logits
    were measured within 1.2e-6 of timm's; no vector is kept for it.)"""
    linear = {}
    for stage in range(4):
        candidate, ffn = f"stages.{stage}.blocks.0.mixer.candidates.0", f"stages.{stage}.blocks.0.ffn"
        linear |= {f"{candidate}.reduction": "adaptive_pool_conv", f"{candidate}.pool": 1, f"{ffn}.relu_before_depthwise": True}
    spec = archdsl.load_spec("gallery/pvt_v2_b0", linear)
    model = archdsl.create_model(spec)
    reduce = model.stages[0].blocks[0].mixer.candidates[0].reduce
    assert [type(layer).__name__ for layer in reduce.children()] == ["AdaptiveAvgPool2d", "Conv2d", "ChannelLayerNorm", "GELU"]
    assert isinstance(model.stages[3].blocks[1].ffn.hidden_relu, torch.nn.ReLU)
    assert count_params(model).total == 3_393_864
    assert archdsl.lower_spec(spec).flops == 559_091_200 + 256 * 7 * 7
    # the FLOP rule is fvcore's on the module, also where the pool enlarges a map smaller than 7x7
    # (at 64: maps 16, 8, 4, 2; fvcore traces faster there than at 224)
    counts = archdsl.count_flops(archdsl.create_model(archdsl.load_spec(spec, img_size=64)))
    assert counts.analytic == counts.flops

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
PARAMS = {"convnext_t": 28_589_128, "deit_ti": 5_717_416, "swin_t": 28_288_354, "pvt_v2_b0": 3_666_760, "pit_ti": 4_847_272}


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


def test_a_class_token_on_a_stage_whose_ops_cannot_carry_it_is_located(tmp_path):
    """A stem with a class token makes a token sequence: a window attention there would window
    the token row, so the graph refuses it at its YAML line and names the ops that can run there."""
    old = "{op: pooled_attention, heads: 3, pool: 1, qkv_bias: true, output_projection: true}"
    message = spec_error(tmp_path, "deit_ti", old, "{op: window_attention, heads: 3, window: 7}")
    assert f"deit_ti.yaml:{line_of('deit_ti', old)}:" in message
    assert "stages[0].blocks[0].mixer.candidates[0]" in message and "pooled_attention" in message


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


def test_shift_that_does_not_fit_the_window_is_located(tmp_path):
    old = "window: 7, shift: 3}]}   # SW-MSA"
    line = line_of("swin_t", old)
    message = spec_error(tmp_path, "swin_t", old, "window: 7, shift: 7}]}")
    assert f"swin_t.yaml:{line}:81: stages[0].blocks[1].mixer.candidates[0].shift: shift 7 does not fit the window 7" in message
    assert "use 0 to 6 (Swin: window // 2 = 3), or 0 for no shift" in message
    message = spec_error(tmp_path, "swin_t", old, "window: 7, shift: -3}]}")
    assert (
        f"swin_t.yaml:{line}:81: stages[0].blocks[1].mixer.candidates[0].shift: input should be greater than or equal to 0"
        in message
    )


def test_patch_merging_concatenates_in_swins_order():
    """The released Swin code's PatchMerging: cat([x0, x1, x2, x3]) of the 2x2 neighbourhood,
    x1 the pixel below x0 and x2 the one right of it (timm's reshape-permute gives the same)."""
    from archdsl.blocks.merging import space_to_depth

    x = torch.randn(2, 5, 6, 4)
    swin = x.permute(0, 2, 3, 1)  # B H W C, as Swin's code runs
    parts = [swin[:, 0::2, 0::2], swin[:, 1::2, 0::2], swin[:, 0::2, 1::2], swin[:, 1::2, 1::2]]
    assert torch.equal(space_to_depth(x, 2), torch.cat(parts, dim=-1).permute(0, 3, 1, 2))


def test_strided_conv_downsample_on_an_odd_map_is_located(tmp_path):
    message = spec_error(tmp_path, "convnext_t", "size: 224", "size: 84")  # stage 0's map is 21x21
    line = line_of("convnext_t", "downsample: &downsample")
    assert f"convnext_t.yaml:{line}:" in message
    assert "stages[1].downsample.kernel: the 21x21 map entering stage 1 is not a multiple of the stride 2x2" in message
    assert "or `fit: pad` to zero-pad it to a multiple" in message


def test_patch_merging_on_an_odd_map_is_located_or_padded(tmp_path):
    message = spec_error(tmp_path, "swin_t", "size: 224", "size: 84")  # stage 0's map is 21x21
    assert (
        f"swin_t.yaml:{line_of('swin_t', 'downsample: {op: patch_merging}')}:17: stages[1].downsample.stride: the 21x21 map entering stage 1 is not a multiple of the merged "
        "neighbourhood 2x2" in message
    )
    assert "or `fit: pad` to zero-pad it to a multiple" in message
    text = (GALLERY / "swin_t.yaml").read_text().replace("size: 224", "size: 84").replace("window: 7", "window: 7, fit: pad")
    path = tmp_path / "odd.yaml"
    path.write_text(text.replace("{op: patch_merging}", "{op: patch_merging, fit: pad}"))
    model = archdsl.create_model(path)  # maps 21, 11, 6, 3, padded to 7s; shifted where a side exceeds 7
    with torch.no_grad():
        assert model(torch.randn(1, 3, 84, 84)).shape == (1, 1000)
    counts = archdsl.count_flops(model)
    assert counts.analytic == counts.flops


def test_released_swin_checkpoint_names_convert_like_timms():
    """The released checkpoints (microsoft/Swin-Transformer) close a stage with its patch merging
    and name the classifier `head`; they carry the relative position index and the shifted-window
    mask, constants that the converter takes from the model, not from the file."""
    from archdsl.converters.swin import convert_swin

    model = archdsl.create_model("gallery/swin_t")
    timm_state = {key: torch.full((1,), float(index)) for index, (key, _) in enumerate(vector("swin_t")["keys"])}
    released = {}
    for key, value in timm_state.items():
        if ".downsample." in key:
            stage, rest = key.removeprefix("layers.").split(".", 1)
            key = f"layers.{int(stage) - 1}.{rest}"
        released[key.replace("head.fc.", "head.")] = value
    released["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    released["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    from_timm, from_released = convert_swin(timm_state, model), convert_swin(released, model)
    assert from_timm.keys() == from_released.keys() == model.state_dict().keys()
    assert all(torch.equal(from_timm[key], from_released[key]) for key in from_timm)
    index = "stages.0.blocks.0.mixer.candidates.0.relative_position_index"
    assert torch.equal(from_released[index], model.state_dict()[index])


def test_shifted_window_mask_follows_the_map_size():
    """The mask is made once for the map the op was placed on; another map gets its own, and the
    module then computes what one placed on that map does."""
    from archdsl.blocks.attention import WindowAttentionModule

    torch.manual_seed(0)
    placed = WindowAttentionModule(8, 8, 2, 7, False, True, None, shift=(3, 3), map_size=(14, 14)).eval()
    other = WindowAttentionModule(8, 8, 2, 7, False, True, None, shift=(3, 3), map_size=(21, 28)).eval()
    other.load_state_dict(placed.state_dict())
    x = torch.randn(2, 8, 21, 28)
    with torch.no_grad():
        assert torch.equal(placed(x), other(x))
    assert placed.shift_mask.shape == (4, 49, 49) and other.shift_mask.shape == (12, 49, 49)


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


def pvt_v2_linear_overrides() -> dict:
    """gallery/pvt_v2_b0 made PVTv2-li: in every stage, the linear spatial reduction
    (`reduction: adaptive_pool_conv`: adaptive pool to 7x7, 1x1 conv, LayerNorm, GELU) and the MLP's
    ReLU before its depthwise conv (`relu_before_depthwise`)."""
    linear = {}
    for stage in range(4):
        candidate, ffn = f"stages.{stage}.blocks.0.mixer.candidates.0", f"stages.{stage}.blocks.0.ffn"
        linear |= {f"{candidate}.reduction": "adaptive_pool_conv", f"{candidate}.pool": 1, f"{ffn}.relu_before_depthwise": True}
    return linear


def test_pvt_v2_linear_reduction_is_timms_in_parameters_and_flops():
    """PVTv2-li in B0 (`pvt_v2_linear_overrides`). timm's `pvt_v2_b0(linear=True)` has 3,393,864
    parameters and 559,091,200 FLOPs under fvcore at 224 (timm 1.0.29.dev0); here 12,544 more, the
    head's average pool (256 x 7 x 7 adds) that fvcore skips in timm's `mean`. Its logits are
    timm's: test_pvt_v2_linear_reduction_logits_are_timms_on_the_same_weights."""
    spec = archdsl.load_spec("gallery/pvt_v2_b0", pvt_v2_linear_overrides())
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


def test_pvt_v2_linear_reduction_logits_are_timms_on_the_same_weights(tmp_path):
    """The vector pvt_v2_b0_li is timm's `pvt_v2_b0(linear=True)`: the rule's weights under timm's
    names, loaded through the PVTv2 converter, give its logits. The MLP's ReLU has no weights, so
    only the logits would show it missing."""
    stored = vector("pvt_v2_b0_li")
    assert (stored["timm_model"], stored["timm_kwargs"]) == ("pvt_v2_b0", {"linear": True})
    path = tmp_path / "timm.pth"
    torch.save(rule_state(stored["keys"], stored["weight_seed"]), path)  # timm's names: the converter renames
    model = archdsl.create_model(archdsl.load_spec("gallery/pvt_v2_b0", pvt_v2_linear_overrides()), pretrained=path)
    assert not model.training
    assert count_params(model).total == stored["params"]
    with torch.no_grad():
        logits = model(rule_input(stored["input_seed"]))
    assert (logits - stored["logits"]).abs().max().item() < 1e-4


def test_deit_weights_at_224_load_at_384_with_the_position_embedding_resized(tmp_path):
    """Fine-tuning at 384 starts from the 224 checkpoint: the class token keeps its position
    vector, the 14x14 grid of the others is resized bicubically to 24x24 (timm's rule)."""
    from archdsl.blocks.position import resize_position_embedding

    stored = vector("deit_ti")
    state = rule_state(stored["keys"], stored["weight_seed"])
    path = tmp_path / "timm.pth"
    torch.save(state, path)
    model = archdsl.create_model(archdsl.load_spec("gallery/deit_ti", img_size=384), pretrained=path)
    table = model.stem.position_embedding.detach()  # (1, C, 1, 1 + 24 * 24)
    original = state["pos_embed"].float()  # timm's (1, 1 + 14 * 14, C)
    assert table.shape == (1, 192, 1, 1 + 24 * 24)
    assert torch.equal(table[0, :, 0, 0], original[0, 0])
    expected = resize_position_embedding(original[:, 1:], (24, 24))
    assert torch.equal(table[0, :, 0, 1:], expected[0].T)


def test_a_shift_larger_than_a_fitted_window_that_covers_its_map_is_no_error(tmp_path):
    """Swin-T at 64 px with windows fitted to the maps (16, 8, 4, 2): on the 2x2 stage-4 map the
    window is 2 and covers it, so nothing is shifted there and the written shift 3 is no error."""
    text = (GALLERY / "swin_t.yaml").read_text().replace("size: 224", "size: 64")
    path = tmp_path / "swin_64.yaml"
    path.write_text(text.replace("window: 7", "window: 7, fit: nearest_divisor"))
    model = archdsl.create_model(path).eval()
    assert model.stages[3].blocks[1].mixer.candidates[0].shift == (0, 0)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_token_pooling_to_a_width_that_is_not_a_multiple_is_located(tmp_path):
    """PiT's depthwise pooling conv widens each input channel alike: 64 -> 96 cannot be done."""
    message = spec_error(tmp_path, "pit_ti", "  - width: 128", "  - width: 96")
    line = line_of("pit_ti", "downsample: {op: token_pooling, stride: 2}   # 3x3")
    assert f"pit_ti.yaml:{line}:17: stages[1].downsample: the depthwise conv widens each of the 64 input channels" in message
    assert "the stage width must be a multiple of 64, not 96: 64, 128, 192, 256, ..." in message


def test_pit_carries_the_class_token_across_stages_and_embeds_only_the_map():
    """The stem adds its position embedding to the 27x27 map, then puts the class token first;
    each token_pooling keeps the class token in front at the new width."""
    model = archdsl.create_model("gallery/pit_ti").eval()
    assert model.stem.position_embedding.shape == (1, 64, 27, 27)
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape[1:]) for f in features] == [(64, 1, 1 + 27 * 27), (128, 1, 1 + 14 * 14), (256, 1, 1 + 7 * 7)]


def test_the_gallery_backbones_carry_timms_preprocessing_and_the_hybrids_none():
    crops = {name: archdsl.create_model(f"gallery/{name}").pretrained_cfg["crop_pct"] for name in ("convnext_t", "pit_ti")}
    assert crops == {"convnext_t": 0.875, "pit_ti": 0.9}  # timm's convnext_tiny.fb_in1k, pit_ti_224.in1k
    spec = archdsl.load_spec("gallery/hybrid_swin_attn_conv")
    from archdsl.pretrained import pretrained_cfg

    assert pretrained_cfg(archdsl.load_spec("gallery/swin_t"))["interpolation"] == "bicubic"
    assert pretrained_cfg(spec) is None  # a hybrid has no training of its authors to match

"""Validation: every problem is a SpecError naming file:line:column, YAML path, what was found
and what would be valid; checked before any module exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pytest
import torch
from torch import nn

import archdsl
from archdsl.errors import SpecError
from archdsl.loading import bundled_spec_names
from archdsl.ops import CandidateOp, Site, register, unregister

SPECS = Path(__file__).resolve().parents[1] / "src" / "archdsl" / "specs"
XXS = (SPECS / "cloformer_xxs.yaml").read_text()


def broken(tmp_path, old, new, count=1):
    assert old in XXS, old
    path = tmp_path / "spec.yaml"
    path.write_text(XXS.replace(old, new, count))
    return path


def error_of(path, **kwargs) -> str:
    with pytest.raises(SpecError) as caught:
        archdsl.lower_spec(archdsl.load_spec(path, **kwargs))
    return str(caught.value)


def line_of(path, needle) -> int:
    return next(number for number, line in enumerate(Path(path).read_text().splitlines(), 1) if needle in line)


def test_unknown_key_with_did_you_mean(tmp_path):
    path = broken(tmp_path, "ffn: {op: conv_ffn, ratio: 4, kernel: 5}", "ffn: {op: conv_ffn, ratio: 4, kernal: 5}")
    message = error_of(path)
    assert re.search(
        rf"{path}:{line_of(path, 'kernal')}:\d+: stages\[0\]\.blocks\[0\]\.ffn\.kernal: unknown key 'kernal'", message
    )
    assert "Did you mean 'kernel'?" in message and "Valid keys here: ratio, kernel" in message


def test_unknown_structural_key(tmp_path):
    path = broken(tmp_path, "    depth: 6\n", "    depth: 6\n    dept: 3\n")
    message = error_of(path)
    assert f"{path}:{line_of(path, 'dept: 3')}:" in message and "stages[2].dept: unknown key 'dept'" in message
    assert "Did you mean 'depth'?" in message


def test_unknown_op_with_did_you_mean(tmp_path):
    path = broken(tmp_path, "{op: attn_conv, channels: 24", "{op: atn_conv, channels: 24")
    message = error_of(path)
    assert f"{path}:{line_of(path, 'atn_conv')}:" in message
    assert "stages[0].blocks[0].mixer.candidates[0].op: unknown op 'atn_conv'. Did you mean 'attn_conv'" in message
    assert "pooled_attention" in message  # lists what is valid


@pytest.mark.parametrize(
    "old, new, path_text, expected",
    [
        ("depth: 6", "depth: 0", "stages[2].depth", "greater than 0; found 0"),
        ("width: 128", "width: -128", "stages[2].width", "greater than 0; found -128"),
        (
            "ratio: 4, kernel: 5}\n  - width: 64",
            "ratio: four, kernel: 5}\n  - width: 64",
            "stages[0].blocks[0].ffn.ratio",
            "valid integer",
        ),
        ("size: 224", "size: 0", "input.size", "greater than 0"),
        ("classes: 1000", "classes: -1", "head.classes", "greater than or equal to 0"),  # 0: headless
    ],
)
def test_types_and_ranges(tmp_path, old, new, path_text, expected):
    path = broken(tmp_path, old, new)
    message = error_of(path)
    assert f"{path}:{line_of(path, new.splitlines()[0])}:" in message
    assert path_text in message and expected in message


def test_heads_must_divide_channels(tmp_path):
    path = broken(tmp_path, "channels: 24, heads: 3", "channels: 24, heads: 5")
    message = error_of(path)
    assert f"{path}:{line_of(path, 'heads: 5')}:" in message
    assert "stages[0].blocks[0].mixer.candidates[0].heads: 5 heads do not divide this candidate's 24 channels" in message
    assert "[1, 2, 3, 4, 6, 8, 12, 24]" in message


def test_channel_shares_must_sum_to_width(tmp_path):
    path = broken(tmp_path, "channels: 24, heads: 3", "channels: 20, heads: 2")
    message = error_of(path)
    assert "stages[0].blocks[0].mixer.fusion: candidate channel shares [20, 8] sum to 28, not the stage width 32" in message


def test_input_size_the_pools_cannot_divide():
    # under the released code's rule, `fit: exact` (the bundled spec pads such maps instead)
    message = error_of("cloformer_xxs", overrides=["stages.0.blocks.0.mixer.candidates.1.fit=exact"], img_size=240)
    assert "cloformer_xxs.yaml:21:" in message
    assert "stages[0].blocks[0].mixer.candidates[1].pool: pool 8 does not divide the 60x60 map of stage 0" in message
    assert "pools that do: [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60]" in message and "`fit: pad`" in message


def test_pool_larger_than_map():
    message = error_of("cloformer_xxs", overrides=["stages.3.blocks.0.mixer.candidates.1.pool=14"])
    assert "stages[3].blocks[0].mixer.candidates[1].pool: pool 14 is larger than the 7x7 map of stage 3" in message


def test_shorthand_works_in_optional_slots():
    spec = archdsl.load_spec("cloformer_xxs", {"stages.0.blocks.0.ffn": "conv_ffn", "stages.1.downsample": "strided_conv_ffn"})
    assert spec.stages[0].blocks[0].ffn.op == "conv_ffn" and spec.stages[1].downsample.kernel == 5
    assert archdsl.load_spec("cloformer_xxs", {"stages.0.blocks.0.ffn": None}).stages[0].blocks[0].ffn is None


def test_stage_width_without_downsample(tmp_path):
    message = error_of("cloformer_xxs", overrides=["stages.1.downsample=null"])
    assert "stages[1].width: stage 1 has width 64 but receives 32 channels and has no downsample" in message


def test_interaction_indices_are_checked():
    spec = archdsl.load_spec(
        "cloformer_xxs", {"stages.0.blocks.0.mixer.interactions": [{"op": "channel_interaction", "source": 0, "target": 5}]}
    )
    with pytest.raises(
        SpecError,
        match=r"stages\[0\]\.blocks\[0\]\.mixer\.interactions\[0\]\.target: target 5 is not a candidate of this mixer \(0\.\.1\)",
    ):
        archdsl.lower_spec(spec)


class _ConsumerModule(nn.Module):
    def forward(self, x, context):
        return x * context.mean()


@pytest.fixture
def consumer_op():
    @register
    class ContextConsumer(CandidateOp):
        op: Literal["test_context_consumer"] = "test_context_consumer"
        consumes: str = "significance"

        def flops(self, site: Site) -> int:
            return 0

        def build(self, site: Site) -> nn.Module:
            return _ConsumerModule()

    yield ContextConsumer
    unregister("candidate", "test_context_consumer")


def test_side_channel_consumed_but_never_produced(consumer_op):
    overrides = {"stages.1.blocks.0.mixer.candidates": [{"op": "test_context_consumer"}], "stages.1.blocks.0.mixer.fusion": "sum"}
    with pytest.raises(SpecError) as caught:
        archdsl.lower_spec(archdsl.load_spec("cloformer_xxs", overrides))
    message = str(caught.value)
    assert (
        "stages[1].blocks[0].mixer.candidates[0].consumes: side channel 'significance' is consumed by block 0 of stage 1"
        in message
    )
    assert "no earlier block of this stage emits it" in message


@pytest.mark.parametrize("name", bundled_spec_names())
@pytest.mark.parametrize("size", [224, 256])
def test_what_validates_builds_and_runs(name, size):
    spec = archdsl.load_spec(name, img_size=size, num_classes=7)
    graph = archdsl.lower_spec(spec)
    model = archdsl.create_model(spec).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, size, size))
        logits = model.head(features[-1])
    assert logits.shape == (1, 7) and torch.isfinite(logits).all()
    stage_shapes = [graph.stage_nodes(i)[-1].out_shape.tensor_size for i in range(len(spec.stages))]
    assert [tuple(f.shape[1:]) for f in features] == stage_shapes


def test_even_kernels_are_refused_where_written(tmp_path):
    path = broken(
        tmp_path, "{op: attn_conv, channels: 24, heads: 3, kernel: 3}", "{op: attn_conv, channels: 24, heads: 3, kernel: 4}"
    )
    message = error_of(path)
    assert f"{path}:{line_of(path, 'kernel: 4')}:" in message
    assert "stages[0].blocks[0].mixer.candidates[0].kernel: value error, kernel 4 is even" in message and "use 3 or 5" in message


NOMMER = (SPECS / "nommer_t.yaml").read_text()
NOMMER_STAGE_3_ATTENTION = "{op: pooled_attention, heads: 8, pool: 1, qkv_bias: false, output_projection: true}"


@pytest.mark.parametrize(
    "old, new, needle, path_text, expected",
    [
        (
            NOMMER_STAGE_3_ATTENTION,
            "{op: window_attention, heads: 8, window: 7}",
            "op: window_attention, heads: 8",
            "stages[3].blocks[0].mixer.candidates[0]",
            "window_attention works on a spatial map, but stage 3 carries a token sequence here (768x7x7 + 1 token: the 7x7 "
            "map and its extra tokens in one row); candidate ops that run on tokens: pooled_attention, or move the class token "
            "to a later stage",
        ),
        (
            NOMMER_STAGE_3_ATTENTION,
            "{op: pooled_attention, heads: 8, pool: 7}",
            "pool: 7}",
            "stages[3].blocks[0].mixer.candidates[0].pool",
            "pool 7 averages neighbouring pixels, but stage 3 carries a token sequence (768x7x7 + 1 token)",
        ),
        (
            "{op: class_token_head, norm: layer_norm, classes: 1000}",
            "{op: pool_linear, norm: layer_norm, classes: 1000}",
            "op: pool_linear",
            "head",
            "pool_linear works on a spatial map, but stage 3 carries a token sequence here",
        ),
        (
            "pool: 2, class_token: true}",
            "pool: 2}",
            "op: class_token_head",
            "head",
            "class_token_head reads the class token, but the last stage outputs a 768x7x7 map with none",
        ),
        (
            "          candidates:\n            - {op: pooled_attention, heads: 8,",
            "          pad_multiple: 7\n          candidates:\n            - {op: pooled_attention, heads: 8,",
            "pad_multiple: 7",
            "stages[3].blocks[0].mixer.pad_multiple",
            "pad_multiple pads a map, but stage 3 carries a token sequence (768x7x7 + 1 token); remove it",
        ),
    ],
)
def test_spatial_ops_are_refused_on_a_token_sequence(tmp_path, old, new, needle, path_text, expected):
    assert old in NOMMER, old
    path = tmp_path / "nommer.yaml"
    path.write_text(NOMMER.replace(old, new))
    message = error_of(path)
    assert f"{path}:{line_of(path, needle)}:" in message and f"{path_text}: " in message
    assert expected in message


def test_one_wrong_value_is_one_problem():
    # the op is known from `op:`, so only that op's rules apply (not every candidate type's)
    with pytest.raises(SpecError) as caught:
        archdsl.load_spec("cloformer_xxs", {"stages.0.blocks.0.mixer.candidates.0.heads": 0})
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].path == ("stages", 0, "blocks", 0, "mixer", "candidates", 0, "heads")

"""NomMer's released checkpoints (TencentYoutuResearch/VisualRecognition-NomMer) -> this
project's module names."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from archdsl.blocks.attention import WindowAttentionModule
from archdsl.blocks.convolution import BottleneckModule
from archdsl.blocks.multihead import SpatialReductionAttention
from archdsl.blocks.nommer import CompressedGlobalAttentionModule, ConvMaxPoolModule
from archdsl.blocks.position import resize_position_embedding, resize_relative_position_table
from archdsl.weights import index_of, register_converter, rename_by_table


@register_converter("nommer")
def convert_nommer(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """Official names (transformer1.layers.0.0.fn.attentionG.dw, ...) -> this project's.

    The global attention's fused `to_qkv` Linear is split into the query and key/value 1x1
    convs; Linear weights that are 1x1 convs here are reshaped; the position embedding and the
    class token are stored channel-first here; a position embedding for another input size (the
    authors' 224 weights at 384, 448 or 800x1333) is resized bicubically to this model's map, and
    so is a window's relative position bias table where `fit` gives another window (384: 8)."""
    expected = net.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for name, part in _rename(key, value, net):
            target = expected.get(name)
            if target is not None and part.ndim == 2 and target.ndim == 4:
                part = part.reshape(*part.shape, 1, 1)
            elif target is not None and target.shape != part.shape and name.endswith("relative_position_bias_table"):
                part = resize_relative_position_table(part, window=(math.isqrt(target.shape[0]) + 1) // 2)
            elif target is not None and target.shape != part.shape and name.endswith("relative_position_index"):
                part = target  # a constant of the window: the model's own
            converted[name] = part
    return converted


def _position_embedding_for(table: torch.Tensor, grid: torch.Size) -> torch.Tensor:
    """The official (1, h, w, C) table as this project's (1, C, H, W), resized where the grid differs."""
    _, height, width, channels = table.shape
    if (height, width) != tuple(grid) and height == width:
        table = resize_position_embedding(table.reshape(1, height * width, channels), tuple(grid)).reshape(1, *grid, channels)
    return table.permute(0, 3, 1, 2)


def _downsample_with(net: nn.Module, parameter: str) -> str | None:
    """The path of the first reduction module that has `parameter` (position_embedding, class_token)."""
    for index, stage in enumerate(net.stages):
        if isinstance(stage.downsample, ConvMaxPoolModule) and getattr(stage.downsample, parameter) is not None:
            return f"stages.{index}.downsample.{parameter}"
    return None


# a mixer's official names (after `fn.`) -> (the candidate module kind, its name there); QKV:
# the fused to_qkv weight, split into the query and key/value projections
_MIXER_KEYS = [
    (r"cnn\.(.+)", BottleneckModule, r"\1"),
    (r"attention\.proj\.(.+)", WindowAttentionModule, r"projection.\1"),
    (r"attention\.(.+)", WindowAttentionModule, r"\1"),
    (r"attentionG\.dct_conv_8x8\.(.+)", CompressedGlobalAttentionModule, r"dct.\1"),
    (r"attentionG\.idct_conv\.0\.(.+)", CompressedGlobalAttentionModule, r"idct.\1"),
    (r"attentionG\.dw\.(.+)", CompressedGlobalAttentionModule, r"compress.\1"),
    (r"attentionG\.bn1\.(.+)", CompressedGlobalAttentionModule, r"compress_norm.\1"),
    (r"attentionG\.up\.(.+)", CompressedGlobalAttentionModule, r"expand.\1"),
    (r"attentionG\.attn\.to_qkv\.weight", CompressedGlobalAttentionModule, "attention.QKV"),
    (r"attentionG\.attn\.to_out\.0\.(.+)", CompressedGlobalAttentionModule, r"attention.projection.\1"),
    (r"to_qkv\.weight", SpatialReductionAttention, "QKV"),
    (r"to_out\.0\.(.+)", SpatialReductionAttention, r"projection.\1"),
]


# official name pattern -> this project's name, outside the blocks
_NETWORK_NAMES = (
    (r"cnn1\.(.+)", lambda m: f"stem.conv.{m[1]}"),
    (r"bn1\.(.+)", lambda m: f"stem.norm.{m[1]}"),
    (r"mlp_head\.([01])\.(.+)", lambda m: f"head.{'norm' if m[1] == '0' else 'fc'}.{m[2]}"),
    (r"merge(\d)\.(.+)", lambda m: f"stages.{m[1]}.downsample.{m[2]}"),
)


def _rename(key: str, value: torch.Tensor, net: nn.Module) -> list[tuple[str, torch.Tensor]]:
    if key == "pos_embedding":
        name = _downsample_with(net, "position_embedding")
        if name is None:
            return [(key, value)]  # reported as unexpected
        return [(name, _position_embedding_for(value, net.get_parameter(name).shape[2:]))]
    if key == "cls_token":
        return [(_downsample_with(net, "class_token") or key, value.reshape(1, -1, 1, 1))]
    if (name := rename_by_table(key, _NETWORK_NAMES)) is not None:
        return [(name, value)]
    match = re.fullmatch(r"transformer(\d)\.layers\.(\d+)\.([01])\.(.+)", key)
    if not match or int(match[1]) - 1 >= len(net.stages) or int(match[2]) >= len(net.stages[int(match[1]) - 1].blocks):
        return [(key, value)]
    stage, block, half, rest = int(match[1]) - 1, int(match[2]), int(match[3]), match[4]
    prefix = f"stages.{stage}.blocks.{block}"
    if match := re.fullmatch(r"norm\.(.+)", rest):  # layers.i.0 is the mixer's pre-norm, layers.i.1 the FFN's
        return [(f"{prefix}.norm{half + 1}.{match[1]}", value)]
    if match := re.fullmatch(r"fn\.net\.([03])\.(.+)", rest):
        return [(f"{prefix}.ffn.{'fc1' if match[1] == '0' else 'fc2'}.{match[2]}", value)]
    if match := re.fullmatch(r"fn\.fc\.(.+)", rest):
        return [(f"{prefix}.mixer.fusion.fc.{match[1]}", value)]
    inner = rest[len("fn.") :] if rest.startswith("fn.") else None
    for pattern, kind, template in _MIXER_KEYS:
        if inner is not None and (match := re.fullmatch(pattern, inner)):
            index = index_of(net.stages[stage].blocks[block].mixer.candidates, kind)
            name = f"{prefix}.mixer.candidates.{index}.{match.expand(template)}"
            if name.endswith("QKV"):
                channels = value.shape[0] // 3
                base = name[: -len("QKV")]
                return [(f"{base}query.weight", value[:channels]), (f"{base}key_value.weight", value[channels:])]
            return [(name, value)]
    return [(key, value)]

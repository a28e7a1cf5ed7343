"""MixFormer's released Paddle checkpoints (PaddleClas) -> this project's module names and
PyTorch layouts."""

from __future__ import annotations

import re

import torch
from torch import nn

from archdsl.blocks.attention import WindowAttentionModule
from archdsl.blocks.convolution import DepthwiseConvModule
from archdsl.blocks.interactions import ChannelInteractionModule, SpatialInteractionModule
from archdsl.weights import index_of, register_converter, rename_by_table


@register_converter("mixformer")
def convert_mixformer(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """Official Paddle names and layouts -> this project's module names and PyTorch layouts.

    Paddle stores Linear weights [in, out] (every 2-D `*.weight` of the release is a Linear),
    BatchNorm statistics as `_mean` / `_variance` and no `num_batches_tracked` (left at the
    model's value here). A Linear that is a 1x1 conv here (the fusion's projection) is reshaped.
    """
    expected = net.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2:
            value = value.t()
        name = _rename(key, net)
        name = re.sub(r"\._mean$", ".running_mean", re.sub(r"\._variance$", ".running_var", name))
        target = expected.get(name)
        if target is not None and target.ndim == 4 and value.ndim == 2 and tuple(target.shape[2:]) == (1, 1):
            value = value.reshape(*value.shape, 1, 1)
        converted[name] = value
        if name.endswith(".running_mean"):
            counter = name[: -len("running_mean")] + "num_batches_tracked"
            if counter in expected:
                converted[counter] = expected[counter]
    return converted


# official name inside `attn.` -> (module kind, where among the mixer's parts, name inside it)
_MIXER_PARTS = {
    "relative_position_bias_table": (WindowAttentionModule, "candidates", "relative_position_bias_table"),
    "relative_position_index": (WindowAttentionModule, "candidates", "relative_position_index"),
    "proj_attn": (WindowAttentionModule, "candidates", "input_projection"),
    "proj_attn_norm": (WindowAttentionModule, "candidates", "input_norm"),
    "qkv": (WindowAttentionModule, "candidates", "qkv"),
    "attn_norm": (WindowAttentionModule, "candidates", "output_norm"),
    "proj_cnn": (DepthwiseConvModule, "candidates", "input_projection"),
    "proj_cnn_norm": (DepthwiseConvModule, "candidates", "input_norm"),
    "dwconv3x3.0": (DepthwiseConvModule, "candidates", "depthwise"),
    "dwconv3x3.1": (DepthwiseConvModule, "candidates", "depthwise_norm"),
    "projection": (DepthwiseConvModule, "candidates", "projection"),
    "conv_norm": (DepthwiseConvModule, "candidates", "output_norm"),
    "channel_interaction": (ChannelInteractionModule, "interactions", "module.layers"),
    "spatial_interaction": (SpatialInteractionModule, "interactions", "module.layers"),
}


# official name pattern -> this project's name, outside the blocks
_NETWORK_NAMES = (
    (r"patch_embed\.stem\.(.+)", lambda m: f"stem.layers.{m[1]}"),
    (r"patch_embed\.(proj|norm)\.(.+)", lambda m: f"stem.{m[1]}.{m[2]}"),
    (r"norm\.(.+)", lambda m: f"head.norm.{m[1]}"),
    (r"last_proj\.(.+)", lambda m: f"head.projection.{m[1]}"),
    (r"head\.(.+)", lambda m: f"head.fc.{m[1]}"),
    (r"layers\.(\d+)\.downsample\.(.+)", lambda m: f"stages.{int(m[1]) + 1}.downsample.{m[2]}"),
)


def _rename(key: str, net: nn.Module) -> str:
    if (name := rename_by_table(key, _NETWORK_NAMES)) is not None:
        return name
    match = re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)", key)
    if not match or int(match[1]) >= len(net.stages) or int(match[2]) >= len(net.stages[int(match[1])].blocks):
        return key
    stage, block, rest = int(match[1]), int(match[2]), match[3]
    prefix = f"stages.{stage}.blocks.{block}"
    if match := re.fullmatch(r"mlp\.(.+)", rest):
        return f"{prefix}.ffn.{match[1]}"
    if rest == "attn.relative_position_bias_table" or rest == "attn.relative_position_index":
        part, leaf = rest[len("attn.") :], ""
    elif match := re.fullmatch(r"attn\.(.+)\.(weight|bias|_mean|_variance)", rest):
        part, leaf = match[1], "." + match[2]
    else:
        return f"{prefix}.{rest}"
    if part == "proj":
        return f"{prefix}.mixer.fusion.projection{leaf}"
    if part not in _MIXER_PARTS and (inner := re.fullmatch(r"(channel_interaction|spatial_interaction)\.(\d)", part)):
        kind, group, name = _MIXER_PARTS[inner[1]]
        name = f"{name}.{inner[2]}"
    elif part in _MIXER_PARTS:
        kind, group, name = _MIXER_PARTS[part]
    else:
        return f"{prefix}.{rest}"
    mixer = net.stages[stage].blocks[block].mixer
    index = index_of(getattr(mixer, group), kind)
    return f"{prefix}.mixer.{group}.{index}.{name}{leaf}"

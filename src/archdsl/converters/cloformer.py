"""CloFormer's released checkpoints (qhfan/CloFormer) -> this project's module names."""

from __future__ import annotations

import re

import torch
from torch import nn

from archdsl.blocks.cloformer import AttnConvModule
from archdsl.blocks.multihead import SpatialReductionAttention
from archdsl.weights import index_of, register_converter, rename_by_table


@register_converter("cloformer")
def convert_cloformer(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """Official names (layers.{s}.blocks.{b}.attn.qkvs.0, ...) -> this project's module names."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        renamed[_rename(key, net)] = value
    return renamed


# official name pattern -> this project's name, outside the blocks
_NETWORK_NAMES = (
    (r"patch_embed\.conv([1-4])\.conv\.(\d)\.(.+)", lambda m: f"stem.layers.{int(m[1]) - 1}.{m[2]}.{m[3]}"),
    (r"patch_embed\.conv5\.(.+)", lambda m: f"stem.layers.4.{m[1]}"),
    (r"patch_embed\.layernorm\.(.+)", lambda m: f"stem.norm.{m[1]}"),
    (r"norm\.(.+)", lambda m: f"head.norm.{m[1]}"),
    (r"head\.(.+)", lambda m: f"head.fc.{m[1]}"),
)
# inside a block's `attn`: official prefix -> (the candidate module it belongs to, its name there)
_CANDIDATE_NAMES = {
    "global_q": (SpatialReductionAttention, "query"),
    "global_kv": (SpatialReductionAttention, "key_value"),
    "convs.0": (AttnConvModule, "depthwise"),
    "act_blocks.0.act_block": (AttnConvModule, "gate"),
    "qkvs.0": (AttnConvModule, "qkv"),
}
# the FFN half of a block: official prefix -> (name in a block, name in a downsample)
_FFN_NAMES = {"norm2": ("norm2", "norm"), "mlp": ("ffn", "ffn"), "downsample": (None, "shortcut")}


def _rename(key: str, net: nn.Module) -> str:
    if (name := rename_by_table(key, _NETWORK_NAMES)) is not None:
        return name
    match = re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.(\w+)\.(.+)", key)
    if not match or int(match[1]) >= len(net.stages) or int(match[2]) >= len(net.stages[int(match[1])].blocks):
        return key
    stage, block, module, rest = int(match[1]), int(match[2]), match[3], match[4]
    prefix = f"stages.{stage}.blocks.{block}"
    if module == "attn":
        if rest.startswith("proj."):
            return f"{prefix}.mixer.fusion.projection.{rest[len('proj.') :]}"
        for official, (kind, name) in _CANDIDATE_NAMES.items():
            if rest.startswith(official + "."):
                index = index_of(net.stages[stage].blocks[block].mixer.candidates, kind)
                return f"{prefix}.mixer.candidates.{index}.{name}.{rest[len(official) + 1 :]}"
    if module in ("norm2", "mlp", "downsample"):
        # the block whose FFN downsamples is, in this project, the next stage's downsample
        downsamples = net.stages[stage].blocks[block].ffn is None and stage + 1 < len(net.stages)
        in_block, in_downsample = _FFN_NAMES[module]
        if downsamples:
            return f"stages.{stage + 1}.downsample.{in_downsample}.{rest}"
        if in_block is not None:
            return f"{prefix}.{in_block}.{rest}"
    return f"{prefix}.{module}.{rest}"

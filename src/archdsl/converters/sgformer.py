"""SG-Former's released checkpoints (OliverRensu/SG-Former) -> this project's modules: names,
Linear -> 1x1 conv shapes, the position embedding resized to another input size, and the
aggregation layers of each self-guided block joined (and resampled where the rate differs)."""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.blocks.convolution import LePEModule
from archdsl.blocks.multihead import SpatialReductionAttention
from archdsl.blocks.position import resize_position_embedding
from archdsl.blocks.sgformer import HybridScaleAttentionModule, SelfGuidedAttentionModule
from archdsl.weights import index_of, register_converter, rename_by_table


def _is_square(count: int) -> bool:
    return math.isqrt(count) ** 2 == count


def resample_rank_weights(weight: torch.Tensor, rate: int) -> torch.Tensor:
    """A run's weights (r,) -> (rate,): linear resampling over rank position, scaled by r / rate
    so the run's total weight is kept (used where the derived rate differs from the checkpoint's)."""
    weight = weight.reshape(-1).float()
    if weight.numel() == rate:
        return weight
    resampled = F.interpolate(weight.view(1, 1, -1), size=rate, mode="linear", align_corners=False).view(-1)
    return resampled * (weight.numel() / rate)


_HYBRID_NAMES = {
    "sr": "coarse.reduce.merge",
    "norm": "coarse.reduce.norm",
    "q1": "coarse.query",
    "kv1": "coarse.key_value",
    "q2": "window_query",
    "kv2": "window_key_value",
}
_SELF_GUIDED_NAMES = {"q": "query", "kv1": "row_key_value", "kv2": "column_key_value"}
_PLAIN_NAMES = {"q": "query", "kv": "key_value"}
_ATTENTION_NAMES = {
    HybridScaleAttentionModule: _HYBRID_NAMES,
    SelfGuidedAttentionModule: _SELF_GUIDED_NAMES,
    SpatialReductionAttention: _PLAIN_NAMES,
}


def _candidate(net: nn.Module, stage: int, block: int, kinds: tuple[type, ...]) -> tuple[int, nn.Module | None]:
    candidates = net.stages[stage].blocks[block].mixer.candidates
    index = index_of(candidates, kinds)
    return index, candidates[index] if index >= 0 else None


def _self_guided_candidate(net: nn.Module, stage: int, block: int) -> str | None:
    """The module path of the self-guided candidate of stages.{stage}.blocks.{block}, if any."""
    if not (0 <= stage < len(net.stages) and block < len(net.stages[stage].blocks)):
        return None
    index, module = _candidate(net, stage, block, (SelfGuidedAttentionModule,))
    return f"stages.{stage}.blocks.{block}.mixer.candidates.{index}" if module is not None else None


# official name pattern -> this project's name, outside the blocks (c/bn: a conv and its norm)
_NETWORK_NAMES = (
    (r"pos_embed", lambda m: "stem.pos_embed"),
    (r"patch_embed1\.conv\.(\d)\.(c|bn)\.(.+)", lambda m: f"stem.layers.{m[1]}.{0 if m[2] == 'c' else 1}.{m[3]}"),
    (r"patch_embed1\.norm\.(.+)", lambda m: f"stem.norm.{m[1]}"),
    (
        r"patch_embed(\d+)\.conv(\d)\.(c|bn)\.(.+)",
        lambda m: f"stages.{int(m[1]) - 1}.downsample.layers.{2 * (int(m[2]) - 1)}.{0 if m[3] == 'c' else 1}.{m[4]}",
    ),
    (r"head\.(.+)", lambda m: f"head.fc.{m[1]}"),
)


def _rename(key: str, net: nn.Module) -> str:
    last_stage = len(net.stages)
    if (name := rename_by_table(key, _NETWORK_NAMES)) is not None:
        return name
    if match := re.fullmatch(r"norm(\d+)\.(.+)", key):  # a stage's closing norm: the next downsample's, or the head's
        stage = int(match[1])
        return f"head.norm.{match[2]}" if stage == last_stage else f"stages.{stage}.downsample.norm.{match[2]}"
    match = re.fullmatch(r"block(\d+)\.(\d+)\.(.+)", key)
    if not match or not 1 <= int(match[1]) <= last_stage or int(match[2]) >= len(net.stages[int(match[1]) - 1].blocks):
        return key
    stage, block, rest = int(match[1]) - 1, int(match[2]), match[3]
    prefix = f"stages.{stage}.blocks.{block}"
    if match := re.fullmatch(r"mlp\.(fc1|fc2|dwconv\.dwconv)\.(.+)", rest):
        return f"{prefix}.ffn.{match[1].split('.')[0]}.{match[2]}"
    if match := re.fullmatch(r"attn\.(lepe_linear|lepe_conv)\.(.+)", rest):
        index, _ = _candidate(net, stage, block, (LePEModule,))
        return f"{prefix}.mixer.candidates.{index}.{'linear' if match[1] == 'lepe_linear' else 'conv'}.{match[2]}"
    if match := re.fullmatch(r"attn\.proj\.(.+)", rest):
        return f"{prefix}.mixer.fusion.projection.{match[1]}"
    if match := re.fullmatch(r"attn\.(\w+)\.(.+)", rest):
        index, module = _candidate(net, stage, block, tuple(_ATTENTION_NAMES))
        names = _ATTENTION_NAMES[type(module)] if module is not None else {}
        if match[1] in names:
            return f"{prefix}.mixer.candidates.{index}.{names[match[1]]}.{match[2]}"
    return f"{prefix}.{rest}"


@register_converter("sgformer")
def convert_sgformer(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """Official names (block1.0.attn.q1, patch_embed2.conv1.c, ...) -> this project's modules.

    Shapes: Linear weights become 1x1 conv weights where this project uses convs; a position
    embedding for another input size is resized bicubically; the f1/f2/f3 aggregation layers of
    each self-guided block are joined into its `aggregate.weight` / `aggregate.bias`, resampled
    where the rate derived for this input size differs from the checkpoint's (not at 224)."""
    expected = net.state_dict()
    converted: dict[str, torch.Tensor] = {}
    rank_layers: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in state.items():
        if match := re.fullmatch(r"block(\d+)\.(\d+)\.attn\.f(\d)\.(weight|bias)", key):
            owner = _self_guided_candidate(net, int(match[1]) - 1, int(match[2]))
            if owner is None:
                converted[key] = value  # reported as unexpected
            else:
                rank_layers.setdefault(owner, {}).setdefault(int(match[3]), {})[match[4]] = value
            continue
        name = _rename(key, net)
        if name in expected and value.shape != expected[name].shape:
            shape = tuple(expected[name].shape)
            if name == "stem.pos_embed" and value.dim() == 3 and value.shape[-1] == shape[-1] and _is_square(value.shape[1]):
                value = resize_position_embedding(value, net.stem.grid)
            elif shape == tuple(value.shape) + (1, 1):
                value = value.reshape(shape)  # Linear [out, in] -> 1x1 conv [out, in, 1, 1]
        converted[name] = value
    for owner, layers in rank_layers.items():
        module = net.get_submodule(f"{owner}.aggregate")
        parts = sorted(layers)
        if parts != list(range(1, len(module.rates) + 1)) or any(set(layers[p]) != {"weight", "bias"} for p in parts):
            for part in parts:
                for kind, value in layers[part].items():
                    converted[f"{owner}.f{part}.{kind}"] = value  # reported as unexpected, with the missing aggregate
            continue
        converted[f"{owner}.aggregate.weight"] = torch.cat(
            [resample_rank_weights(layers[p]["weight"], rate) for p, rate in zip(parts, module.rates)]
        )
        converted[f"{owner}.aggregate.bias"] = torch.cat([layers[p]["bias"].reshape(1).float() for p in parts])
    return converted

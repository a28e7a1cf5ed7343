"""timm's PiT checkpoints (timm/models/pit.py: `pit_ti_224`, ...; the released ones name the
poolings `pools.N` where timm has `transformers.N+1.pool`) -> this project's module names
(specs/gallery/pit_ti.yaml). A stage's blocks are timm's VisionTransformer blocks, renamed as
the `vit` converter does; the position embedding is already a (1, C, h, w) map, the class token
is stored channel-first."""

from __future__ import annotations

import re

import torch
from torch import nn

from archdsl.converters.vit import linear_as_conv, renamed_block_key
from archdsl.pretrained import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, register_preprocessing
from archdsl.weights import register_converter, rename_by_table

_NAMES = (
    (r"patch_embed\.conv\.(.+)", lambda m: f"stem.conv.{m[1]}"),
    (r"pos_embed", lambda m: "stem.position_embedding"),
    (r"transformers\.(\d+)\.pool\.(conv|fc)\.(.+)", lambda m: f"stages.{m[1]}.downsample.{m[2]}.{m[3]}"),
    (r"norm\.(.+)", lambda m: f"head.norm.{m[1]}"),
    (r"head\.(.+)", lambda m: f"head.fc.{m[1]}"),
)


def _renamed(key: str, value: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    key = re.sub(r"^pools\.(\d+)\.", lambda m: f"transformers.{int(m[1]) + 1}.pool.", key)
    if match := re.fullmatch(r"transformers\.(\d+)\.(blocks\..+)", key):
        return renamed_block_key(match[2], value, stage=int(match[1]))
    if key == "cls_token":  # (1, 1, C) -> (1, C, 1, 1)
        return [("stem.class_token", value.permute(0, 2, 1).unsqueeze(2))]
    return [(rename_by_table(key, _NAMES) or key, value)]


@register_converter("pit")
def convert_pit(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """timm's names (transformers.1.pool.conv.weight, ...) -> this project's. A key it does not
    know stays as it is, to be reported as unexpected."""
    expected = net.state_dict()
    return {name: linear_as_conv(part, expected.get(name)) for key, value in state.items() for name, part in _renamed(key, value)}


# the evaluation preprocessing of the released ImageNet-1k weights, as timm's `pit_ti_224.in1k` states it
register_preprocessing("pit", Preprocessing(IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.9, interpolation="bicubic"))

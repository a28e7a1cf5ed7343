"""timm's VisionTransformer checkpoints (timm/models/vision_transformer.py: DeiT, ViT) -> this
project's module names (specs/gallery/deit_ti.yaml).

timm keeps tokens channel-last, (B, tokens, C); here a token sequence is a (B, C, 1, tokens) row,
so the class token and the position embedding are stored channel-first, and the attention's and
its output projection's Linears are 1x1 convs. timm's fused qkv Linear is split into the query
and the key/value projections (rows: query, key, value, each head after head, as here). A
position embedding for another input size (the 224 weights at 384) keeps its class token's
vector and has its grid resized bicubically, as timm's `resample_abs_pos_embed` does."""

from __future__ import annotations

import re

import torch
from torch import nn

from archdsl.blocks.position import resize_position_embedding
from archdsl.graph import lower
from archdsl.pretrained import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, register_preprocessing
from archdsl.weights import register_converter, rename_by_table

_CANDIDATE = "mixer.candidates.0"

# timm's name pattern -> this project's, outside the blocks
_NAMES = (
    (r"patch_embed\.proj\.(.+)", lambda m: f"stem.conv.{m[1]}"),
    (r"cls_token", lambda m: "stem.class_token"),
    (r"pos_embed", lambda m: "stem.position_embedding"),
    (r"norm\.(.+)", lambda m: f"head.norm.{m[1]}"),
    (r"head\.(.+)", lambda m: f"head.fc.{m[1]}"),
)
# inside timm's transformer block `blocks.N.`, outside the fused qkv -> inside this project's block
_BLOCK_NAMES = (
    (r"(norm[12])\.(.+)", lambda m: f"{m[1]}.{m[2]}"),
    (r"attn\.proj\.(.+)", lambda m: f"{_CANDIDATE}.projection.{m[1]}"),
    (r"mlp\.(fc[12])\.(.+)", lambda m: f"ffn.{m[1]}.{m[2]}"),
)


def renamed_block_key(key: str, value: torch.Tensor, stage: int) -> list[tuple[str, torch.Tensor]]:
    """(this project's name, value) pairs for a key of timm's VisionTransformer block
    (`blocks.N.attn.qkv.weight`, ...) in stage `stage`: two for the fused qkv; the key as it is
    if it is not one. PiT's stages are made of these blocks too."""
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if not match:
        return [(key, value)]
    block, rest = f"stages.{stage}.blocks.{match[1]}", match[2]
    if qkv := re.fullmatch(r"attn\.qkv\.(weight|bias)", rest):
        channels = value.shape[0] // 3
        attention = f"{block}.{_CANDIDATE}"
        return [(f"{attention}.query.{qkv[1]}", value[:channels]), (f"{attention}.key_value.{qkv[1]}", value[channels:])]
    name = rename_by_table(rest, _BLOCK_NAMES)
    return [(f"{block}.{name}" if name else key, value)]


def linear_as_conv(part: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """A Linear's [out, in] weight as the [out, in, 1, 1] of the 1x1 conv it is here."""
    return part.reshape(*part.shape, 1, 1) if target is not None and part.ndim == 2 and target.ndim == 4 else part


def _renamed(key: str, value: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(this project's name, value) pairs for one of timm's keys: two for the fused qkv."""
    if key.startswith("blocks."):
        return renamed_block_key(key, value, stage=0)
    if key in ("cls_token", "pos_embed"):  # (1, tokens, C) -> (1, C, 1, tokens)
        value = value.permute(0, 2, 1).unsqueeze(2)
    return [(rename_by_table(key, _NAMES) or key, value)]


def _resized_position_embedding(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, C, 1, 1 + g*g) -> (1, C, 1, 1 + h*w): the class token's vector kept, the g x g grid resized."""
    class_token, patches = table[..., :1], table[..., 1:]
    resized = resize_position_embedding(patches.squeeze(2).transpose(1, 2), grid)  # (1, h*w, C)
    return torch.cat([class_token.float(), resized.transpose(1, 2).unsqueeze(2)], dim=3)


@register_converter("vit")
def convert_vit(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """timm's names (blocks.0.attn.qkv.weight, ...) -> this project's. A key it does not know
    stays as it is, to be reported as unexpected."""
    expected = net.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for name, part in _renamed(key, value):
            target = expected.get(name)
            part = linear_as_conv(part, target)
            if name == "stem.position_embedding" and target is not None and target.shape != part.shape:
                part = _resized_position_embedding(part, lower(net.spec).node("stem").out_shape.map_size)
            converted[name] = part
    return converted


# the evaluation preprocessing of the released ImageNet-1k weights, as timm's `deit_tiny_patch16_224.fb_in1k` states it
register_preprocessing("vit", Preprocessing(IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.9, interpolation="bicubic"))

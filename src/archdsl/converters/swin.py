"""Swin Transformer checkpoints -> this project's module names (specs/gallery/swin_t.yaml): timm's
(timm/models/swin_transformer.py, `swin_tiny_patch4_window7_224` and its kin) and the released
ones (microsoft/Swin-Transformer), whose patch merging closes a stage where timm's opens the next
and whose classifier is `head`, not `head.fc`.

The relative position index and the shifted-window mask are constants of the geometry: a
checkpoint's copies (the released ones carry both; timm's neither) are dropped, and the index is
the model's own."""

from __future__ import annotations

import torch
from torch import nn

from archdsl.pretrained import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, register_preprocessing
from archdsl.weights import register_converter, rename_by_table

_CONSTANTS = ("relative_position_index", "attn_mask")

# timm's name pattern -> this project's
_NAMES = (
    (r"patch_embed\.proj\.(.+)", lambda m: f"stem.conv.{m[1]}"),
    (r"patch_embed\.norm\.(.+)", lambda m: f"stem.norm.{m[1]}"),
    (r"layers\.(\d+)\.downsample\.(norm|reduction)\.(.+)", lambda m: f"stages.{m[1]}.downsample.{m[2]}.{m[3]}"),
    (r"layers\.(\d+)\.blocks\.(\d+)\.(norm[12])\.(.+)", lambda m: f"stages.{m[1]}.blocks.{m[2]}.{m[3]}.{m[4]}"),
    (
        r"layers\.(\d+)\.blocks\.(\d+)\.attn\.(qkv\.weight|qkv\.bias|relative_position_bias_table)",
        lambda m: f"stages.{m[1]}.blocks.{m[2]}.mixer.candidates.0.{m[3]}",
    ),
    (
        r"layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.(.+)",
        lambda m: f"stages.{m[1]}.blocks.{m[2]}.mixer.candidates.0.projection.{m[3]}",
    ),
    (r"layers\.(\d+)\.blocks\.(\d+)\.mlp\.(fc[12])\.(.+)", lambda m: f"stages.{m[1]}.blocks.{m[2]}.ffn.{m[3]}.{m[4]}"),
    (r"norm\.(.+)", lambda m: f"head.norm.{m[1]}"),
    (r"head\.fc\.(.+)", lambda m: f"head.fc.{m[1]}"),
)

# the released names timm renames (its checkpoint_filter_fn): a stage's closing patch merging is
# the next stage's opening one here, and the classifier is `head`
_RELEASED_NAMES = (
    (r"layers\.(\d+)\.downsample\.(.+)", lambda m: f"layers.{int(m[1]) + 1}.downsample.{m[2]}"),
    (r"head\.(weight|bias)", lambda m: f"head.fc.{m[1]}"),
)


@register_converter("swin")
def convert_swin(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """timm's names (layers.0.blocks.1.attn.qkv.weight, ...) or the released ones -> this
    project's; the values keep their shapes. A key it does not know stays as it is, to be
    reported as unexpected."""
    released = "head.weight" in state
    converted = {}
    for key, value in state.items():
        if key.rsplit(".", 1)[-1] in _CONSTANTS:
            continue
        if released:
            key = rename_by_table(key, _RELEASED_NAMES) or key
        converted[rename_by_table(key, _NAMES) or key] = value
    converted.update({name: value for name, value in net.state_dict().items() if name.endswith(".relative_position_index")})
    return converted


# the evaluation preprocessing of the released ImageNet-1k weights, as timm's `swin_tiny_patch4_window7_224.ms_in1k` states it
register_preprocessing("swin", Preprocessing(IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.9, interpolation="bicubic"))

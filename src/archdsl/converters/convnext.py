"""timm's ConvNeXt checkpoints (timm/models/convnext.py, `convnext_tiny` and its kin) -> this
project's module names (specs/gallery/convnext_t.yaml)."""

from __future__ import annotations

import torch
from torch import nn

from archdsl.pretrained import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, register_preprocessing
from archdsl.weights import register_converter, rename_by_table

# timm's name pattern -> this project's; the block's one norm sits before its FFN (`norm2`), and
# its layer scale `gamma` scales that one branch (`layer_scale2`)
_NAMES = (
    (r"stem\.0\.(.+)", lambda m: f"stem.conv.{m[1]}"),
    (r"stem\.1\.(.+)", lambda m: f"stem.norm.{m[1]}"),
    (r"stages\.(\d+)\.downsample\.0\.(.+)", lambda m: f"stages.{m[1]}.downsample.norm.{m[2]}"),
    (r"stages\.(\d+)\.downsample\.1\.(.+)", lambda m: f"stages.{m[1]}.downsample.reduction.{m[2]}"),
    (r"(stages\.\d+\.blocks\.\d+)\.conv_dw\.(.+)", lambda m: f"{m[1]}.mixer.candidates.0.depthwise.{m[2]}"),
    (r"(stages\.\d+\.blocks\.\d+)\.norm\.(.+)", lambda m: f"{m[1]}.norm2.{m[2]}"),
    (r"(stages\.\d+\.blocks\.\d+)\.mlp\.(fc[12])\.(.+)", lambda m: f"{m[1]}.ffn.{m[2]}.{m[3]}"),
    (r"(stages\.\d+\.blocks\.\d+)\.gamma", lambda m: f"{m[1]}.layer_scale2.scale"),
    (r"head\.(norm|fc)\.(.+)", lambda m: f"head.{m[1]}.{m[2]}"),
)


@register_converter("convnext")
def convert_convnext(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """timm's names (stages.0.blocks.0.conv_dw.weight, ...) -> this project's; the values keep
    their shapes. A key it does not know stays as it is, to be reported as unexpected."""
    return {rename_by_table(key, _NAMES) or key: value for key, value in state.items()}


# the evaluation preprocessing of the released ImageNet-1k weights, as timm's `convnext_tiny.fb_in1k` (the paper's ImageNet-1k weights) states it
register_preprocessing("convnext", Preprocessing(IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.875, interpolation="bicubic"))

"""timm's PVTv2 checkpoints (timm/models/pvt_v2.py, `pvt_v2_b0` ... `pvt_v2_b5`, `pvt_v2_b2_li`)
-> this project's module names (specs/gallery/pvt_v2_b0.yaml).

timm's Linears (the attention's q, kv and proj, the MLP's fc1 and fc2) run on channel-last tokens;
here they are 1x1 convs over the map, so their weights gain two unit dimensions. timm closes every
stage with a LayerNorm (`stages.i.norm`); here that norm is the next stage's downsample's
`input_norm`, and the last stage's is the head's norm."""

from __future__ import annotations

import torch
from torch import nn

from archdsl.pretrained import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, register_preprocessing
from archdsl.weights import register_converter, rename_by_table

_CANDIDATE = "mixer.candidates.0"

# timm's name pattern -> this project's, outside the stages' closing norms
_NAMES = (
    (r"patch_embed\.proj\.(.+)", lambda m: f"stem.conv.{m[1]}"),
    (r"patch_embed\.norm\.(.+)", lambda m: f"stem.norm.{m[1]}"),
    (r"(stages\.\d+)\.downsample\.proj\.(.+)", lambda m: f"{m[1]}.downsample.conv.{m[2]}"),
    (r"(stages\.\d+)\.downsample\.norm\.(.+)", lambda m: f"{m[1]}.downsample.norm.{m[2]}"),
    (r"(stages\.\d+\.blocks\.\d+)\.(norm[12])\.(.+)", lambda m: f"{m[1]}.{m[2]}.{m[3]}"),
    (r"(stages\.\d+\.blocks\.\d+)\.attn\.q\.(.+)", lambda m: f"{m[1]}.{_CANDIDATE}.query.{m[2]}"),
    (r"(stages\.\d+\.blocks\.\d+)\.attn\.kv\.(.+)", lambda m: f"{m[1]}.{_CANDIDATE}.key_value.{m[2]}"),
    (r"(stages\.\d+\.blocks\.\d+)\.attn\.proj\.(.+)", lambda m: f"{m[1]}.{_CANDIDATE}.projection.{m[2]}"),
    # the spatial reduction: strided conv (sr) and norm, or PVTv2-li's 1x1 conv and norm
    (r"(stages\.\d+\.blocks\.\d+)\.attn\.sr\.(.+)", lambda m: f"{m[1]}.{_CANDIDATE}.reduce.conv.{m[2]}"),
    (r"(stages\.\d+\.blocks\.\d+)\.attn\.norm\.(.+)", lambda m: f"{m[1]}.{_CANDIDATE}.reduce.norm.{m[2]}"),
    (r"(stages\.\d+\.blocks\.\d+)\.mlp\.(fc[12]|dwconv)\.(.+)", lambda m: f"{m[1]}.ffn.{m[2]}.{m[3]}"),
    (r"head\.(.+)", lambda m: f"head.fc.{m[1]}"),
)


def _closing_norm(key: str, stages: int) -> str | None:
    """Where timm's closing norm of a stage lives here: the next downsample's input norm, or the
    head's norm after the last stage; None for any other key."""

    def place(match) -> str:
        stage = int(match[1])
        owner = "head.norm" if stage == stages - 1 else f"stages.{stage + 1}.downsample.input_norm"
        return f"{owner}.{match[2]}"

    return rename_by_table(key, ((r"stages\.(\d+)\.norm\.(.+)", place),))


@register_converter("pvt_v2")
def convert_pvt_v2(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """timm's names (stages.0.blocks.0.attn.q.weight, ...) -> this project's. A key it does not
    know stays as it is, to be reported as unexpected."""
    expected = net.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = _closing_norm(key, len(net.stages)) or rename_by_table(key, _NAMES) or key
        target = expected.get(name)
        if target is not None and value.ndim == 2 and target.ndim == 4:  # a Linear that is a 1x1 conv here
            value = value.reshape(*value.shape, 1, 1)
        converted[name] = value
    return converted


# the evaluation preprocessing of the released ImageNet-1k weights, as timm's `pvt_v2_b0.in1k` states it
register_preprocessing("pvt_v2", Preprocessing(IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.9, interpolation="bicubic"))
